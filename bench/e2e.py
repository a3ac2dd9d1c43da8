"""End to end: warm transcription (interleaved across engines), encoder per window, decoder per token,
token equality with the reference backend, and cold start as a fresh process."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engines import BackendEngine, Engine
from .machine import thread_env

REFERENCE = "numpy"


@dataclass
class ClipResult:
    engine: str
    kind: str
    clip: str
    duration_s: float
    warm_s: list[float] = field(default_factory=list)
    n_tokens: int | None = None
    tokens_equal_ref: bool | None = None
    encoder_ms_per_window: float | None = None
    decoder_ms_per_token: float | None = None
    decoder_tokens_timed: int | None = None
    cold: dict | None = None
    error: str | None = None

    @property
    def warm_min_s(self):
        return min(self.warm_s) if self.warm_s else None

    @property
    def warm_median_s(self):
        return statistics.median(self.warm_s) if self.warm_s else None

    @property
    def rtf(self):
        return self.warm_min_s / self.duration_s if self.warm_s and self.duration_s > 0 else None

    def figures(self) -> dict:
        """Every figure of this engine on this clip: name -> (value, unit)."""
        c = self.cold or {}
        return {
            "warm_min_s": (self.warm_min_s, "s"),
            "warm_median_s": (self.warm_median_s, "s"),
            "warm_runs": (len(self.warm_s), "count"),
            "rtf": (self.rtf, "x realtime"),
            "cold_outside_s": (c.get("outside_s"), "s"),
            "cold_inside_s": (c.get("inside_s"), "s"),
            "cold_import_s": (c.get("import_s"), "s"),
            "cold_load_s": (c.get("load_s"), "s"),
            "cold_first_transcription_s": (c.get("first_s"), "s"),
            "peak_rss_mb": (c.get("peak_rss_mb"), "MB"),
            "encoder_ms_per_window": (self.encoder_ms_per_window, "ms"),
            "decoder_ms_per_token": (self.decoder_ms_per_token, "ms"),
            "n_tokens": (self.n_tokens, "count"),
            "tokens_equal_ref": (self.tokens_equal_ref, "bool"),
        }


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def cold_start(engine: Engine, audio: Path, model: str, threads: int, timeout: float = 1800) -> dict:
    """Import + load + first transcription in a fresh Python process, timed inside and outside."""
    cmd = [sys.executable, "-m", "whisperkit.bench.cold", engine.spec, str(audio), "--model", model, "--threads", str(threads)]
    if getattr(engine, "model_dir", None) is not None:
        cmd += ["--ct2-dir", str(engine.model_dir)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True, text=True, timeout=timeout)
    outside = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"cold-start process exited {proc.returncode}: {tail[0]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1])
    out["outside_s"] = outside
    return out


def run_clip(engines: list[Engine], clip: Path, audio: np.ndarray, *, runs: int, warmup: int, dec_tokens: int,
             cold: bool, model: str, threads: int, ref_tokens: list[int] | None, progress=None) -> list[ClipResult]:
    """Every figure of every engine on one clip.  Warm runs are interleaved: run r visits the engines
    in an order rotated by r, so drifting machine load hits everyone alike."""
    duration = len(audio) / 16000
    results = {e.name: ClipResult(e.name, e.kind, clip.name, duration) for e in engines}
    tokens: dict[str, list[int]] = {}

    def step(label: str):
        if progress is not None:
            progress.set_postfix_str(f"{clip.name} {label}", refresh=False)
            progress.update(1)

    def timed(e: Engine):
        res = results[e.name]
        if res.error:
            return None
        try:
            t = time.perf_counter()
            toks = e.transcribe(audio)
            dt = time.perf_counter() - t
        except Exception as exc:
            res.error = _err(exc)
            return None
        tokens.setdefault(e.name, toks)
        return dt

    for _ in range(warmup):
        for e in engines:
            timed(e)
            step(f"{e.name} warm-up")
    for r in range(runs):
        k = r % len(engines) if engines else 0
        for e in engines[k:] + engines[:k]:
            dt = timed(e)
            if dt is not None:
                results[e.name].warm_s.append(dt)
            step(f"{e.name} run {r + 1}/{runs}")

    if ref_tokens is None:
        ref_tokens = tokens.get(REFERENCE)
    for name, toks in tokens.items():
        results[name].n_tokens = len(toks)
        results[name].tokens_equal_ref = None if ref_tokens is None else toks == ref_tokens

    for e in engines:  # component timings: ours only (the peers do not expose their graph)
        res = results[e.name]
        if isinstance(e, BackendEngine) and not res.error:
            try:
                mel = e.first_window_mel(audio)
                enc = []
                for _ in range(max(1, runs)):
                    t = time.perf_counter()
                    features = e.model.embed_audio(mel)
                    enc.append(time.perf_counter() - t)
                res.encoder_ms_per_window = 1e3 * min(enc)
                seq = e.decoder_sequence(tokens.get(e.name, []), dec_tokens)
                cache = e.model.graph.new_cache(features)
                e.run_decoder(cache, seq[:2])  # warm the step path
                dec = []
                for _ in range(max(1, runs)):
                    t = time.perf_counter()
                    e.run_decoder(cache, seq)
                    dec.append(time.perf_counter() - t)
                res.decoder_ms_per_token = 1e3 * min(dec) / len(seq)
                res.decoder_tokens_timed = len(seq)
            except Exception as exc:
                res.error = _err(exc)
        step(f"{e.name} encoder/decoder")

    if cold:
        for e in engines:
            res = results[e.name]
            if not res.error:
                try:
                    res.cold = cold_start(e, clip, model, threads)
                except Exception as exc:
                    res.cold = {"error": _err(exc)}
            step(f"{e.name} cold start")
    return [results[e.name] for e in engines]


def steps_per_clip(n_engines: int, runs: int, warmup: int, cold: bool) -> int:
    return n_engines * (warmup + runs + 1 + (1 if cold else 0))
