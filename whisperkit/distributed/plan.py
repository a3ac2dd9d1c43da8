"""What a job will do, decided on the driver before Ray starts: the inputs (paths, directories, globs) as files,
the output each one gets, which are already complete (skipped on a rerun), and how long each is (the bar's
total).  Nothing here imports Ray.

Every node reads the inputs and writes the outputs by the same absolute paths, so a cluster needs the
files on a filesystem that all its nodes mount (NFS, a cloud bucket mounted with a FUSE driver, ...).
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import WhisperkitError
from ..writers import WRITERS

#: files a directory contributes: what libsndfile and FFmpeg read (a glob or a file named outright may be anything)
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .m4a .m4b .aac .mp4 .m4v .mkv .mka .webm .weba .wma .wmv .mov .avi "
    ".aif .aiff .aifc .au .snd .caf .amr .3gp .ac3 .spx .w64 .rf64".split())

#: the job's record of every input, written in the output directory
MANIFEST_NAME = "whisperkit-manifest.json"

#: the prefix of the temporary directories outputs are written in before their rename; removed at the end of a job
TMP_PREFIX = ".whisperkit-tmp-"

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Item:
    """One input file and where its outputs go: ``<output_dir>/<key>.<format>``.  ``key`` is the file's path
    relative to the directory it was found in (or its name, for a file or a glob), without its extension."""

    source: str  # absolute path of the input
    key: str  # output name relative to the output directory, without extension, '/'-separated

    def output(self, output_dir: str, fmt: str = "json") -> str:
        return os.path.join(output_dir, *self.key.split("/")) + "." + fmt


def formats_of(output_format: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The formats written for each input; json is always among them: it is what marks an input complete."""
    asked = [output_format] if isinstance(output_format, str) else list(output_format)
    formats: list[str] = []
    for fmt in asked:
        if fmt == "all":
            formats += list(WRITERS)
        elif fmt in WRITERS:
            formats.append(fmt)
        else:
            raise WhisperkitError(f"output_format: unknown format {fmt!r}; expected one of {', '.join([*WRITERS, 'all'])}")
    formats = [f for f in dict.fromkeys(formats) if f != "json"]
    return (*formats, "json")  # json last: its rename is the commit of the input's outputs


def expand_inputs(inputs, output_dir: str | os.PathLike) -> list[Item]:
    """Paths, directories (searched recursively for audio files) and glob patterns -> the input files, sorted,
    each once, with the output names they get.  One clear error for an input that matches nothing and for two
    inputs that would write the same output."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    if not inputs:
        raise WhisperkitError("inputs: expected at least one path, directory or glob pattern, got none")
    out = os.path.abspath(output_dir)
    found: dict[str, Item] = {}  # source -> item; a file reached twice (a directory and a glob) counts once
    for given in inputs:
        items = list(_expand_one(os.fspath(given), out))
        if not items:
            raise WhisperkitError(f"input {os.fspath(given)!r} holds or matches no audio file "
                                  f"(a directory contributes files ending in {', '.join(sorted(AUDIO_EXTENSIONS)[:6])}, ...)")
        for item in items:
            found.setdefault(item.source, item)
    items = sorted(found.values(), key=lambda i: i.source)
    _check_unique_outputs(items)
    return items


def _expand_one(given: str, output_dir: str):
    path = Path(given).expanduser()
    if path.is_dir():
        yield from _files_in(path.resolve(), output_dir)
    elif path.is_file():
        yield _item(path.resolve(), path.name)
    elif _GLOB_CHARS & set(given):
        for match in sorted(glob.glob(os.path.expanduser(given), recursive=True)):
            m = Path(match)
            if m.is_dir():
                yield from _files_in(m.resolve(), output_dir)
            elif m.is_file():
                yield _item(m.resolve(), m.name)
    else:
        raise WhisperkitError(f"input not found: {given} (no such file or directory, and not a glob pattern)")


def _files_in(root: Path, output_dir: str):
    """Audio files under `root`, recursively; hidden files and folders and the output directory are passed over."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.join(dirpath, d) != output_dir)
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                full = Path(dirpath, name)
                yield _item(full, full.relative_to(root).as_posix())


def _item(source: Path, relative: str) -> Item:
    # the writers name outputs after the input's name without its extension (writers.ResultWriter.output_path)
    return Item(str(source), os.path.splitext(relative)[0])


def _check_unique_outputs(items: list[Item]) -> None:
    seen: dict[str, str] = {os.path.splitext(MANIFEST_NAME)[0]: "the job's manifest"}
    for item in items:
        other = seen.setdefault(item.key, item.source)
        if other != item.source:
            raise WhisperkitError(f"two inputs would write the same outputs {item.key}.*: {other} and {item.source}; "
                                  "rename one, or transcribe them into different output directories")


def is_complete(item: Item, output_dir: str, formats: tuple[str, ...]) -> bool:
    """True when the input's outputs are all there and its JSON holds a whole result.  Outputs are renamed into
    place whole, so a file present is complete; the JSON is still parsed, against a file put there by other means."""
    if not all(os.path.isfile(item.output(output_dir, fmt)) for fmt in formats):
        return False
    try:
        with open(item.output(output_dir, "json"), encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and {"text", "segments", "language"} <= result.keys()


def probe_seconds(path: str) -> float:
    """The file's duration from its header (libsndfile, else FFmpeg's container), without decoding it; 0.0 when
    neither can tell (the file is then decoded, and fails, in the job as usual)."""
    try:
        import soundfile
        info = soundfile.info(path)
        if info.samplerate > 0 and info.frames > 0:
            return info.frames / info.samplerate
    except Exception:  # not a libsndfile format, or damaged: FFmpeg may still know
        pass
    try:
        import av
        with av.open(path) as container:
            if container.duration:
                return container.duration / 1_000_000  # in av.time_base units (microseconds)
            streams = [s for s in container.streams if s.type == "audio" and s.duration and s.time_base]
            if streams:
                return float(streams[0].duration * streams[0].time_base)
    except Exception:  # unreadable: the job records the decoder's own error for it
        pass
    return 0.0
