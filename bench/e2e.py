"""End to end: warm transcribe() of every engine, each in its worker process, interleaved round-robin;
token equality with the reference backend; where our time goes inside the real run; and cold start
as a fresh process."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REFERENCE = "numpy"
#: Seconds of quiet before each timed call.  An engine's worker threads keep spinning after its run (CTranslate2's
#: OpenMP, ONNX Runtime's pool, libgomp's default spin), and the next engine's run shares the cores with them
#: until they sleep: numba's jfk greedy took 0.287 s right after the others' runs against 0.226 s in a race
#: with faster-whisper alone.  The pause is the same for every engine.
PAUSE_S = 0.3

#: The in-run profile figures of our engines (bench/worker.py `Profile`), as the JSON records name them.
PROFILE_UNITS = {
    "encoder_windows": "count", "encoder_ms_per_window": "ms", "encoder_share": "fraction of wall",
    "decoder_steps": "count", "decoder_ms_per_step": "ms", "decoder_rows_per_step": "rows",
    "decoder_share": "fraction of wall", "decoder_prefill_calls": "count", "decoder_prefill_s": "s",
    "cross_kv_s": "s", "other_share": "fraction of wall", "decoder_drafted_steps": "count", "decoder_head_s": "s",
}


def mode_label(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


@dataclass
class ClipResult:
    engine: str
    kind: str
    clip: str
    duration_s: float
    beam: int = 1
    warm_s: list[float] = field(default_factory=list)
    pids: set = field(default_factory=set)
    n_tokens: int | None = None
    tokens_equal_ref: bool | None = None
    profile: dict | None = None  # of the fastest timed run (ours only)
    host_gbps: list[float] = field(default_factory=list)  # the host's read bandwidth before each timed round
    cold: dict | None = None
    error: str | None = None

    @property
    def mode(self) -> str:
        return mode_label(self.beam)

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
        """Every figure of this engine on this clip and mode: name -> (value, unit)."""
        c = self.cold or {}
        p = self.profile or {}
        out = {
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
            "n_tokens": (self.n_tokens, "count"),
            "tokens_equal_ref": (self.tokens_equal_ref, "bool"),
            "worker_pids": (sorted(self.pids), "pids of the processes the timed runs ran in"),
            "host_read_gbps_min": (min(self.host_gbps) if self.host_gbps else None, "GB/s"),
            "host_read_gbps_max": (max(self.host_gbps) if self.host_gbps else None, "GB/s"),
        }
        if self.kind == "backend":
            out.update({k: (p.get(k), unit) for k, unit in PROFILE_UNITS.items()})
        return out


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def cold_start(spec: str, audio: Path, model: str, threads: int, env: dict, ct2_dir: str | None = None,
               timeout: float = 1800) -> dict:
    """Import + load + first transcription (greedy) in a fresh Python process, timed inside and outside.
    `env`: the workers' environment (threads, BLAS variables)."""
    cmd = [sys.executable, "-m", "whisperkit.bench.cold", spec, str(audio), "--model", model, "--threads", str(threads)]
    if ct2_dir is not None:
        cmd += ["--ct2-dir", ct2_dir]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    outside = time.perf_counter() - t
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"cold-start process exited {proc.returncode}: {tail[0]}")
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1])
    out["outside_s"] = outside
    return out


def run_clip(workers: dict, kinds: dict, clip: Path, duration: float, beam: int, *, runs: int, warmup: int,
             ref_tokens: list[int] | None, progress=None, probe=None) -> list[ClipResult]:
    """Every engine's warm figures on one clip in one decoding mode.  `workers`: engine name -> Worker.
    Round r visits the engines in an order rotated by r, so drift in machine speed hits everyone alike.
    `probe()`: the host's read bandwidth (`machine.read_bandwidth`), taken before each timed round while the
    workers wait, and kept with every engine's figures of the clip."""
    names = list(workers)
    results = {n: ClipResult(n, kinds[n], clip.name, duration, beam) for n in names}
    tokens: dict[str, list[int]] = {}

    def step(label: str):
        if progress is not None:
            progress.set_postfix_str(f"{clip.name} {mode_label(beam)} {label}", refresh=False)
            progress.update(1)

    def timed(n: str):
        res = results[n]
        if res.error:
            return None
        time.sleep(PAUSE_S)
        try:
            reply = workers[n].call("transcribe", audio=str(clip), beam=beam)
        except Exception as exc:
            res.error = _err(exc)
            return None
        tokens.setdefault(n, reply["tokens"])
        res.pids.add(reply["pid"])
        return reply

    for _ in range(warmup):
        for n in names:
            timed(n)
            step(f"{n} warm-up")
    host: list[float] = []
    for r in range(runs):
        if probe is not None:
            host.append(probe())
        k = r % len(names) if names else 0
        for n in names[k:] + names[:k]:
            reply = timed(n)
            if reply is not None:
                res = results[n]
                if "profile" in reply and (not res.warm_s or reply["seconds"] < min(res.warm_s)):
                    res.profile = reply["profile"]
                res.warm_s.append(reply["seconds"])
            step(f"{n} run {r + 1}/{runs}")

    if ref_tokens is None:
        ref_tokens = tokens.get(REFERENCE)
    for res in results.values():
        res.host_gbps = list(host)
    for n, toks in tokens.items():
        results[n].n_tokens = len(toks)
        results[n].tokens_equal_ref = None if ref_tokens is None else toks == ref_tokens
    return [results[n] for n in names]


def steps_per_clip(n_engines: int, runs: int, warmup: int) -> int:
    return n_engines * (warmup + runs)
