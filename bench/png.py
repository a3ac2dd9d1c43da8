"""A horizontal bar chart written as PNG with zlib and struct only (no plotting dependency).

Text uses a 5x7 bitmap font drawn here (upper case, digits, a little punctuation); lower case is
shown as upper case.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

# Each glyph: 7 rows of 5 pixels, '#' on.
_FONT_SRC = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "####.|....#|....#|.###.|....#|....#|####.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    ".": ".....|.....|.....|.....|.....|.##..|.##..", "-": ".....|.....|.....|.###.|.....|.....|.....",
    "_": ".....|.....|.....|.....|.....|.....|#####", ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.", ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "/": "....#|....#|...#.|..#..|.#...|#....|#....", "=": ".....|.....|#####|.....|#####|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....", ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    "%": "##..#|##..#|...#.|..#..|.#...|#..##|#..##", "'": "..#..|..#..|.#...|.....|.....|.....|.....",
    " ": ".....|.....|.....|.....|.....|.....|.....", "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}
_FONT = {ch: np.array([[c == "#" for c in row] for row in src.split("|")], bool) for ch, src in _FONT_SRC.items()}

PALETTE = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123), (193, 125, 17), (164, 0, 0)]


def text_width(text: str, scale: int = 2) -> int:
    return len(text) * 6 * scale


def draw_text(img: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0), scale: int = 2) -> None:
    h, w, _ = img.shape
    for i, ch in enumerate(text.upper()):
        glyph = _FONT.get(ch, _FONT["?"])
        gx = x + i * 6 * scale
        big = np.kron(glyph, np.ones((scale, scale), bool))
        y0, y1, x0, x1 = max(y, 0), min(y + big.shape[0], h), max(gx, 0), min(gx + big.shape[1], w)
        if y0 >= y1 or x0 >= x1:
            continue
        region = big[y0 - y:y1 - y, x0 - gx:x1 - gx]
        img[y0:y1, x0:x1][region] = color


def encode_png(img: np.ndarray) -> bytes:
    """RGB uint8 (h, w, 3) -> PNG bytes (8-bit truecolor, no interlace, filter 0 on every row)."""
    img = np.ascontiguousarray(img, np.uint8)
    h, w, _ = img.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1).tobytes()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def bar_chart(groups: list[tuple[str, list[tuple[str, float, int]]]], title: str, subtitle: str = "",
              width: int = 1000) -> bytes:
    """groups: [(group title, [(bar label, value, colour index), ...]), ...] -> PNG bytes."""
    scale, row_h, pad = 2, 26, 16
    n_rows = sum(len(bars) + 1 for _, bars in groups)
    height = pad * 2 + 24 * 2 + n_rows * row_h + 10
    img = np.full((height, width, 3), 255, np.uint8)
    draw_text(img, pad, pad, title, scale=scale)
    if subtitle:
        draw_text(img, pad, pad + 22, subtitle, color=(90, 90, 90), scale=1)
    labels = [lbl for _, bars in groups for lbl, _, _ in bars]
    label_w = max([text_width(lbl, scale) for lbl in labels] + [80]) + 24
    values = [v for _, bars in groups for _, v, _ in bars if v is not None and np.isfinite(v)]
    vmax = max(values) if values else 1.0
    bar_x0 = pad + label_w
    bar_span = max(width - bar_x0 - pad - text_width("00.000", scale) - 8, 50)
    y = pad + 48
    for gtitle, bars in groups:
        draw_text(img, pad, y + 6, gtitle, color=(60, 60, 60), scale=scale)
        y += row_h
        for lbl, v, colour in bars:
            draw_text(img, pad + 12, y + 5, lbl, scale=scale)
            img[y:y + row_h, bar_x0 - 1] = (0, 0, 0)  # the zero axis
            if v is None or not np.isfinite(v):
                draw_text(img, bar_x0, y + 5, "n/a", color=(150, 150, 150), scale=scale)
            else:
                length = max(1, int(round(bar_span * v / vmax)))
                img[y + 2:y + row_h - 4, bar_x0:bar_x0 + length] = PALETTE[colour % len(PALETTE)]
                draw_text(img, bar_x0 + length + 6, y + 5, f"{v:.3f}", scale=scale)
            y += row_h
    return encode_png(img)
