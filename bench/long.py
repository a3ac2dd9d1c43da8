"""Long file: a MINUTES-long WAV built from the shared clips with silence and noise between them,
transcribed with the default options in a fresh process per backend (wall time, RTF, peak RSS).

Child process: ``python -m whisperkit.bench.long BACKEND WAV [--model M] [--threads N]`` prints one JSON
line with the load and transcription times and the peak resident set size (VmHWM of /proc/self/status).
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


def long_layout(clip_lengths: list[int], total: int, gap: int = GAP_S * SR):
    """The pieces of a `total`-sample file: ("clip", index, n) and ("silence"|"noise", None, n), cycling
    through the clips with a gap after each, alternately silence and noise; the last piece is cut to fit."""
    if not clip_lengths or min(clip_lengths) <= 0:
        raise ValueError("the long file needs at least one non-empty clip")
    if total <= 0:
        raise ValueError(f"the long file must have a positive length, got {total} samples")
    pieces = []
    done = k = 0
    while done < total:
        i = k % len(clip_lengths)
        for kind, idx, n in (("clip", i, clip_lengths[i]), ("silence" if k % 2 == 0 else "noise", None, gap)):
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
    outside_s: float | None = None
    load_s: float | None = None
    transcribe_s: float | None = None
    peak_rss_mb: float | None = None
    n_segments: int | None = None
    n_tokens: int | None = None
    error: str | None = None

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
        }


def run_long(backend: str, path: Path, duration_s: float, model: str, threads: int, timeout: float = 4 * 3600,
             env: dict | None = None) -> LongResult:
    """One fresh process transcribing `path` with `backend` and the default options (`env`: the workers')."""
    from .machine import thread_env
    res = LongResult(backend, duration_s)
    cmd = [sys.executable, "-m", "whisperkit.bench.long", backend, str(path), "--model", model, "--threads", str(threads)]
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
    return res


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m whisperkit.bench.long")
    ap.add_argument("backend")
    ap.add_argument("audio")
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        from whisperkit.bench.machine import apply_threads
        apply_threads(args.threads)
    from whisperkit import Whisper
    from whisperkit.bench.cold import peak_rss_mb

    t = time.perf_counter()
    model = Whisper(args.model, backend=args.backend)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    result = model.transcribe(args.audio)  # the defaults, streaming from the file
    transcribe_s = time.perf_counter() - t
    print(json.dumps({"load_s": load_s, "transcribe_s": transcribe_s, "peak_rss_mb": peak_rss_mb(),
                      "n_segments": len(result.segments), "n_tokens": sum(len(s.tokens) for s in result.segments)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
