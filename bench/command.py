"""``--cli``: the command as a user types it, cold.  Every run is a fresh process, timed from outside,
with its peak resident set size from the kernel's accounting of that child (``wait4``'s ru_maxrss),
the median of N runs, the commands interleaved round-robin with the order rotated each round.

The commands: ``whisperkit transcribe FILE`` with its defaults (backend, beam 5, every output format),
the same with each ``--backend`` asked for, a faster-whisper script of the same weights (model load +
transcribe with its defaults: beam 5), and openai-whisper's ``whisper`` command when it is installed
(on a checkpoint of the same weights written once into a temporary folder).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .engines import split_engine

FW_SCRIPT = """import sys
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="float32", cpu_threads=int(sys.argv[3]))
segments, info = model.transcribe(sys.argv[2], beam_size=5)
for s in segments:
    print(f"[{s.start:.2f} --> {s.end:.2f}] {s.text}")
"""


@dataclass
class Command:
    label: str
    argv: list[str]
    kind: str  # "whisperkit" or "peer"
    wall_s: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    pids: set = field(default_factory=set)
    error: str | None = None

    @property
    def wall_median_s(self):
        return statistics.median(self.wall_s) if self.wall_s else None

    @property
    def rss_median_mb(self):
        return statistics.median(self.peak_rss_mb) if self.peak_rss_mb else None

    def figures(self) -> dict:
        return {"cli_wall_median_s": (self.wall_median_s, "s"), "cli_wall_min_s": (min(self.wall_s) if self.wall_s else None, "s"),
                "cli_peak_rss_median_mb": (self.rss_median_mb, "MiB"), "cli_runs": (len(self.wall_s), "count")}


def _console_script(name: str) -> str | None:
    """The console script installed beside this Python (the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.is_file() else shutil.which(name)


def run_once(argv: list[str], env: dict, cwd: str, timeout: float = 600) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, pid) of one fresh process; raises on a non-zero exit."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t + timeout
    while True:  # wait4 gives this child's own rusage (ru_maxrss: its peak RSS in KiB on Linux)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            raise TimeoutError(f"{argv[0]} took over {timeout:.0f} s")
        time.sleep(0.005)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        tail = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:200]}")
    return wall, usage.ru_maxrss / 1024, proc.pid


def build_commands(audio: Path, *, model: str, backends: list[str], threads: int, ct2_dir: Path | None,
                   openai_checkpoint: Path | None, peers: bool) -> tuple[list[Command], list[dict]]:
    """The commands to race, and the ones skipped with the reason."""
    skipped: list[dict] = []
    wk = _console_script("whisperkit")
    cmds: list[Command] = []
    if wk is None:
        skipped.append(dict(engine="whisperkit transcribe", kind="cli", reason="the whisperkit command is not installed"))
    else:
        base = [wk, "transcribe", str(audio)] + ([] if model == "tiny.en" else ["--model", model])
        cmds.append(Command("whisperkit transcribe FILE", base, "whisperkit"))
        for b in backends:
            name, compute_type = split_engine(b)
            extra = [] if compute_type == "float32" else ["--compute_type", compute_type]
            label = f"whisperkit transcribe FILE --backend {name}" + "".join(" " + e for e in extra)
            cmds.append(Command(label, base + ["--backend", name] + extra, "whisperkit"))
    if not peers:
        return cmds, skipped
    if importlib.util.find_spec("faster_whisper") is None:
        skipped.append(dict(engine="faster-whisper script", kind="cli", reason="faster-whisper is not installed"))
    elif ct2_dir is None:
        skipped.append(dict(engine="faster-whisper script", kind="cli", reason=f"no CTranslate2 directory for {model}"))
    else:
        cmds.append(Command("faster-whisper script (fp32, beam 5)",
                            [sys.executable, "-c", FW_SCRIPT, str(ct2_dir), str(audio), str(threads)], "peer"))
    whisper = _console_script("whisper")
    if whisper is None or importlib.util.find_spec("whisper") is None:
        skipped.append(dict(engine="openai-whisper command", kind="cli", reason="openai-whisper is not installed"))
    elif openai_checkpoint is None:
        skipped.append(dict(engine="openai-whisper command", kind="cli", reason="no checkpoint could be written"))
    else:
        cmds.append(Command("whisper FILE (openai-whisper)",
                            [whisper, str(audio), "--model", str(openai_checkpoint), "--device", "cpu", "--fp16", "False",
                             "--threads", str(threads)], "peer"))
    return cmds, skipped


def openai_checkpoint(model: str, out_dir: Path, env: dict) -> tuple[Path | None, str | None]:
    """Write the checkpoint in a child process (the parent never imports torch)."""
    proc = subprocess.run([sys.executable, "-m", "whisperkit.bench.worker", "--model", model,
                           "--openai-checkpoint", str(out_dir)], env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        return None, tail[0]
    return Path(proc.stdout.strip().splitlines()[-1]), None


def race(cmds: list[Command], env: dict, runs: int, progress=None) -> list[Command]:
    """`runs` rounds; round r starts at command r (rotation).  Each run writes into a fresh empty folder."""
    for r in range(runs):
        k = r % len(cmds) if cmds else 0
        for c in cmds[k:] + cmds[:k]:
            if c.error is None:
                with tempfile.TemporaryDirectory(prefix="whisperkit-bench-cli-") as cwd:
                    try:
                        wall, rss, pid = run_once(c.argv, env, cwd)
                        c.wall_s.append(wall)
                        c.peak_rss_mb.append(rss)
                        c.pids.add(pid)
                    except Exception as exc:
                        c.error = f"{type(exc).__name__}: {exc}"
            if progress is not None:
                progress.set_postfix_str(f"{c.label[:40]} run {r + 1}/{runs}", refresh=False)
                progress.update(1)
    return cmds
