"""Long file: a MINUTES-long WAV built from the shared clips with silence and noise between them,
transcribed in a fresh process per engine and mode (wall time, RTF, peak RSS, and the word error rate when
every clip's text is known): each backend sequentially (`transcribe()`'s defaults) and batched
(`transcribe(batch_size=N)`), and faster-whisper, when installed, sequentially and with its
BatchedInferencePipeline(batch_size=N).  Every engine decodes greedily with openai's temperature fallback
(faster-whisper is given beam_size=1, its default being 5), and both batched modes use their default VAD
(Silero, regions of at most 30 s split at pauses of 160 ms, merged into chunks of at most 30 s).

Child process: ``python -m whisperkit.bench.long ENGINE WAV [--batch_size N] [--model M] [--threads N]``
prints one JSON line with the load and transcription times, the peak resident set size (VmHWM of
/proc/self/status) and the text.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16000
GAP_S = 20          # each stretch between two clips, alternately digital silence and noise
NOISE_LEVEL = 0.01  # standard deviation of the Gaussian noise stretches (about -40 dBFS)
BLOCK = 60 * SR     # samples written per call: the builder never holds more than a block of gap
FASTER_WHISPER = "faster-whisper-fp32"

# What is said in the shared clips (their ground truth, as ../shared/README.md gives it): a long file built
# from these alone has a known text, and its word error rate is measured.
LABELLED = {
    "jfk_16k.wav": "And so my fellow Americans, ask not what your country can do for you, ask what you can do for "
                   "your country.",
    "pv_en.wav": "Mister Quilter is the apostle of the middle classes, and we are glad to welcome his gospel.",
    "osr_16k.wav": "A gold ring will please most any girl. The long journey home took a year. She saw a cat in the "
                   "neighbor's house. A pink shell was found on the sandy beach. Small children came to see him. The "
                   "grass and bushes were wet with dew. The blind man counted his old coins. A severe storm tore down "
                   "the barn. She called his name many times. When you hear the bell, come quickly.",
}


def normalize(text: str) -> str:
    """The text compared for the word error rate: lower case, "mr" as "mister", every character but letters,
    digits and apostrophes a space.  (Simpler than openai-whisper's EnglishTextNormalizer; the clips above
    have no numbers, and the same rule is applied to every engine.)"""
    import re
    words = re.sub(r"[^a-z0-9']+", " ", text.lower()).split()
    return " ".join("mister" if w == "mr" else w for w in words)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER in percent of the reference's words, with jiwer, after `normalize`."""
    import jiwer
    return 100.0 * jiwer.wer(normalize(reference), normalize(hypothesis))


def reference_text(names: list[str], clip_lengths: list[int], total: int) -> str | None:
    """The known text of the long file built from these clips, or None when a clip's text is not known."""
    if any(n not in LABELLED for n in names):
        return None
    return " ".join(LABELLED[names[i]] for kind, i, _ in long_layout(clip_lengths, total) if kind == "clip")


def long_layout(clip_lengths: list[int], total: int, gap: int = GAP_S * SR):
    """The pieces of a `total`-sample file: ("clip", index, n) and ("silence"|"noise", None, n), cycling
    through the clips with a gap after each, alternately silence and noise.  The last gap is cut to fit;
    a clip that does not fit whole is left out (a gap fills the rest), so that the text is known."""
    if not clip_lengths or min(clip_lengths) <= 0:
        raise ValueError("the long file needs at least one non-empty clip")
    if total <= 0:
        raise ValueError(f"the long file must have a positive length, got {total} samples")
    pieces = []
    done = k = 0
    while done < total:
        i = k % len(clip_lengths)
        gap_kind = "silence" if k % 2 == 0 else "noise"
        clip = ("clip", i, clip_lengths[i]) if clip_lengths[i] <= total - done else (gap_kind, None, total - done)
        for kind, idx, n in (clip, (gap_kind, None, gap)):
            n = min(n, total - done)
            if n > 0:
                pieces.append((kind, idx, n))
                done += n
        k += 1
    return pieces


def write_long(path: Path, minutes: float, clips: list[np.ndarray], seed: int = 0) -> float:
    """Write the long file (16 kHz mono PCM_16) block by block; returns its duration in seconds."""
    import soundfile as sf
    total = int(round(minutes * 60 * SR))
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:
        for kind, idx, n in long_layout([len(c) for c in clips], total):
            if kind == "clip":
                f.write(np.asarray(clips[idx][:n], np.float32))
                continue
            for start in range(0, n, BLOCK):
                k = min(BLOCK, n - start)
                block = np.zeros(k, np.float32) if kind == "silence" else \
                    np.clip(NOISE_LEVEL * rng.standard_normal(k), -1, 1).astype(np.float32)
                f.write(block)
    return total / SR


@dataclass
class LongResult:
    engine: str
    duration_s: float
    batch_size: int | None = None  # None: the sequential loop
    outside_s: float | None = None
    load_s: float | None = None
    transcribe_s: float | None = None
    peak_rss_mb: float | None = None
    n_segments: int | None = None
    n_tokens: int | None = None
    wer: float | None = None  # percent, when the file's text is known
    error: str | None = None

    @property
    def mode(self) -> str:
        return "sequential" if self.batch_size is None else f"batched {self.batch_size}"

    @property
    def rtf(self):
        return self.transcribe_s / self.duration_s if self.transcribe_s is not None and self.duration_s > 0 else None

    def figures(self) -> dict:
        return {
            "long_duration_s": (self.duration_s, "s"),
            "long_wall_s": (self.transcribe_s, "s"),
            "long_rtf": (self.rtf, "x realtime"),
            "long_load_s": (self.load_s, "s"),
            "long_process_s": (self.outside_s, "s"),
            "long_peak_rss_mb": (self.peak_rss_mb, "MB"),
            "long_segments": (self.n_segments, "count"),
            "long_tokens": (self.n_tokens, "count"),
            "long_wer": (self.wer, "%"),
        }


def run_long(engine: str, path: Path, duration_s: float, model: str, threads: int, timeout: float = 4 * 3600,
             env: dict | None = None, batch_size: int | None = None, reference: str | None = None) -> LongResult:
    """One fresh process transcribing `path` with `engine` (a backend, or FASTER_WHISPER), sequentially or
    with `batch_size` (`env`: the workers').  The word error rate against `reference` when it is given."""
    from .machine import thread_env
    res = LongResult(engine, duration_s, batch_size)
    cmd = [sys.executable, "-m", "whisperkit.bench.long", engine, str(path), "--model", model, "--threads", str(threads)]
    if batch_size is not None:
        cmd += ["--batch_size", str(batch_size)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env if env is not None else thread_env(threads), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        res.error = f"timed out after {timeout:.0f} s"
        return res
    res.outside_s = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        res.error = f"long-file process exited {proc.returncode}: {tail[0]}"
        return res
    out = json.loads(lines[-1])
    res.load_s, res.transcribe_s = out["load_s"], out["transcribe_s"]
    res.peak_rss_mb, res.n_segments, res.n_tokens = out["peak_rss_mb"], out["n_segments"], out["n_tokens"]
    if reference is not None:
        try:
            res.wer = word_error_rate(reference, out["text"])
        except ImportError:  # jiwer comes with the test extra
            pass
    return res


def _transcribe_whisperkit(engine: str, audio: str, model: str, batch_size: int | None):
    from whisperkit import Whisper
    from .engines import split_engine
    backend, compute_type = split_engine(engine)
    t = time.perf_counter()
    m = Whisper(model, backend=backend, compute_type=compute_type)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    # the defaults (greedy, temperature fallback), streaming from the file; batched: the default VAD too
    result = m.transcribe(audio) if batch_size is None else m.transcribe(audio, batch_size=batch_size)
    return load_s, time.perf_counter() - t, result.text, [len(s.tokens) for s in result.segments]


def _transcribe_faster_whisper(audio: str, model: str, threads: int | None, batch_size: int | None):
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from whisperkit.weights import resolve_model
    from .engines import _ct2_dir
    t = time.perf_counter()
    m = WhisperModel(str(_ct2_dir(resolve_model(model))), device="cpu", compute_type="float32",
                     cpu_threads=threads or 0, num_workers=1)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    if batch_size is None:  # beam_size=1: greedy, as whisperkit's default; faster-whisper's own default is 5
        segments, _ = m.transcribe(audio, beam_size=1)
    else:
        segments, _ = BatchedInferencePipeline(model=m).transcribe(audio, batch_size=batch_size, beam_size=1)
    segments = list(segments)  # a generator: the work happens here
    return load_s, time.perf_counter() - t, "".join(s.text for s in segments), [len(s.tokens) for s in segments]


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m whisperkit.bench.long")
    ap.add_argument("engine", help=f"a backend name (with @int8 for that compute type), or {FASTER_WHISPER}")
    ap.add_argument("audio")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch_size", type=int, default=None, help="batched mode (default: the sequential loop)")
    args = ap.parse_args(argv)
    if args.threads:
        from whisperkit.bench.machine import apply_threads
        apply_threads(args.threads)
    from whisperkit.bench.cold import peak_rss_mb
    if args.engine == FASTER_WHISPER:
        load_s, transcribe_s, text, tokens = _transcribe_faster_whisper(args.audio, args.model, args.threads, args.batch_size)
    else:
        load_s, transcribe_s, text, tokens = _transcribe_whisperkit(args.engine, args.audio, args.model, args.batch_size)
    print(json.dumps({"load_s": load_s, "transcribe_s": transcribe_s, "peak_rss_mb": peak_rss_mb(),
                      "n_segments": len(tokens), "n_tokens": sum(tokens), "text": text}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
