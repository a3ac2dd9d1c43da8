"""Output writers with openai-whisper's formats (whisper/utils.py): txt, vtt, srt, tsv, json, or all.

    writer = get_writer("srt", "out/")
    writer(result, "talk.flac", max_line_width=42, highlight_words=True)   # -> out/talk.srt

`result` is a TranscriptionResult or its dict ({"text", "segments", "language"}).  The line options
(max_line_width, max_line_count, highlight_words, max_words_per_line) need segments with words
(``word_timestamps=True``); without words, each segment is one subtitle.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterator, TextIO

__all__ = ["format_timestamp", "get_writer", "ResultWriter", "WriteTXT", "WriteVTT", "WriteSRT", "WriteTSV",
           "WriteJSON", "WRITERS", "OUTPUT_FORMATS"]


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """[HH:]MM:SS<marker>mmm from seconds, rounded to the millisecond."""
    if seconds < 0:
        raise ValueError(f"non-negative timestamp expected, got {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _as_dict(result: Any) -> dict:
    return result.to_dict() if hasattr(result, "to_dict") else result


class ResultWriter:
    extension: str

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = os.fspath(output_dir)

    def output_path(self, audio_path: str | os.PathLike) -> str:
        """<output_dir>/<audio basename without its extension>.<extension>"""
        base = os.path.splitext(os.path.basename(os.fspath(audio_path)))[0]
        return os.path.join(self.output_dir, f"{base}.{self.extension}")

    def __call__(self, result: Any, audio_path: str | os.PathLike, options: dict | None = None, **kwargs) -> str:
        path = self.output_path(audio_path)
        with open(path, "w", encoding="utf-8") as f:
            self.write_result(_as_dict(result), file=f, options=options, **kwargs)
        return path

    def write_result(self, result: dict, file: TextIO, options: dict | None = None, **kwargs) -> None:
        raise NotImplementedError


class WriteTXT(ResultWriter):
    """One line per segment, its text stripped."""
    extension = "txt"

    def write_result(self, result, file, options=None, **kwargs):
        for segment in result["segments"]:
            print(segment["text"].strip(), file=file, flush=True)


class SubtitlesWriter(ResultWriter):
    always_include_hours: bool
    decimal_marker: str

    def format_timestamp(self, seconds: float) -> str:
        return format_timestamp(seconds, self.always_include_hours, self.decimal_marker)

    def iterate_result(self, result: dict, options: dict | None = None, *, max_line_width: int | None = None,
                       max_line_count: int | None = None, highlight_words: bool = False,
                       max_words_per_line: int | None = None) -> Iterator[tuple[str, str, str]]:
        """(start, end, text) of each cue.

        With words: lines are filled word by word up to max_line_width characters (a new line when the
        next word does not fit), at most max_line_count lines per cue; cues also break at a pause of
        more than 3 s.  When max_line_width or max_line_count is not given, segments are kept: every
        segment starts a new cue (max_words_per_line words per line then).  highlight_words yields
        one cue per word with that word underlined (<u>...</u>), plus cues that fill the gaps."""
        options = options or {}
        max_line_width = max_line_width or options.get("max_line_width")
        max_line_count = max_line_count or options.get("max_line_count")
        highlight_words = highlight_words or options.get("highlight_words", False)
        max_words_per_line = max_words_per_line or options.get("max_words_per_line")
        preserve_segments = max_line_count is None or max_line_width is None
        max_line_width = max_line_width or 1000
        max_words_per_line = max_words_per_line or 1000
        segments = result["segments"]

        def subtitles() -> Iterator[list[dict]]:
            line_len, line_count = 0, 1
            subtitle: list[dict] = []
            last: float | None = None  # the start of the word before: no pause before the first word
            for segment in segments:
                words = segment["words"]
                for chunk_index in range(0, len(words), max_words_per_line):
                    for i, original in enumerate(words[chunk_index:chunk_index + max_words_per_line]):
                        timing = dict(original)
                        long_pause = not preserve_segments and last is not None and timing["start"] - last > 3.0
                        has_room = line_len + len(timing["word"]) <= max_line_width
                        seg_break = i == 0 and len(subtitle) > 0 and preserve_segments
                        if line_len > 0 and has_room and not long_pause and not seg_break:
                            line_len += len(timing["word"])  # the line goes on
                        else:  # a new line
                            timing["word"] = timing["word"].strip()
                            if (len(subtitle) > 0 and max_line_count is not None
                                    and (long_pause or line_count >= max_line_count)) or seg_break:
                                yield subtitle  # and a new cue
                                subtitle, line_count = [], 1
                            elif line_len > 0:
                                line_count += 1
                                timing["word"] = "\n" + timing["word"]
                            line_len = len(timing["word"].strip())
                        subtitle.append(timing)
                        last = timing["start"]
            if subtitle:
                yield subtitle

        if segments and "words" in segments[0]:
            for subtitle in subtitles():
                start = self.format_timestamp(subtitle[0]["start"])
                end = self.format_timestamp(subtitle[-1]["end"])
                text = "".join(w["word"] for w in subtitle)
                if not highlight_words:
                    yield start, end, text
                    continue
                last = start
                all_words = [w["word"] for w in subtitle]
                for i, word in enumerate(subtitle):
                    w_start = self.format_timestamp(word["start"])
                    w_end = self.format_timestamp(word["end"])
                    if last != w_start:
                        yield last, w_start, text
                    yield w_start, w_end, "".join(
                        re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w) if j == i else w for j, w in enumerate(all_words))
                    last = w_end
        else:
            for segment in segments:
                yield (self.format_timestamp(segment["start"]), self.format_timestamp(segment["end"]),
                       segment["text"].strip().replace("-->", "->"))


class WriteVTT(SubtitlesWriter):
    """WebVTT: a WEBVTT header, then cues `MM:SS.mmm --> MM:SS.mmm` (hours only past an hour)."""
    extension = "vtt"
    always_include_hours = False
    decimal_marker = "."

    def write_result(self, result, file, options=None, **kwargs):
        print("WEBVTT\n", file=file)
        for start, end, text in self.iterate_result(result, options, **kwargs):
            print(f"{start} --> {end}\n{text}\n", file=file, flush=True)


class WriteSRT(SubtitlesWriter):
    """SubRip: numbered cues `HH:MM:SS,mmm --> HH:MM:SS,mmm`."""
    extension = "srt"
    always_include_hours = True
    decimal_marker = ","

    def write_result(self, result, file, options=None, **kwargs):
        for i, (start, end, text) in enumerate(self.iterate_result(result, options, **kwargs), start=1):
            print(f"{i}\n{start} --> {end}\n{text}\n", file=file, flush=True)


class WriteTSV(ResultWriter):
    """A `start<TAB>end<TAB>text` header, then one row per segment with start and end in integer
    milliseconds (no decimal separator for a locale to change)."""
    extension = "tsv"

    def write_result(self, result, file, options=None, **kwargs):
        print("start", "end", "text", sep="\t", file=file)
        for segment in result["segments"]:
            print(round(1000 * segment["start"]), file=file, end="\t")
            print(round(1000 * segment["end"]), file=file, end="\t")
            print(segment["text"].strip().replace("\t", " "), file=file, flush=True)


class WriteJSON(ResultWriter):
    """The result dict as JSON: {"text", "segments": [{id, seek, start, end, text, tokens, temperature,
    avg_logprob, compression_ratio, no_speech_prob[, words]}], "language"}."""
    extension = "json"

    def write_result(self, result, file, options=None, **kwargs):
        json.dump(result, file)


WRITERS: dict[str, type[ResultWriter]] = {"txt": WriteTXT, "vtt": WriteVTT, "srt": WriteSRT, "tsv": WriteTSV,
                                          "json": WriteJSON}
OUTPUT_FORMATS = [*WRITERS, "all"]


def get_writer(output_format: str, output_dir: str | os.PathLike) -> Callable[..., Any]:
    """A writer for one format, or for "all" of them: call it with (result, audio_path, options=None, **line options)."""
    if output_format == "all":
        writers = [cls(output_dir) for cls in WRITERS.values()]

        def write_all(result: Any, audio_path: str | os.PathLike, options: dict | None = None, **kwargs) -> list[str]:
            return [w(result, audio_path, options, **kwargs) for w in writers]

        return write_all
    if output_format not in WRITERS:
        raise ValueError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    return WRITERS[output_format](output_dir)
