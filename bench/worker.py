"""One process per engine: the bench's parent starts a worker, the worker loads its engine once and then
serves timed runs on request, one JSON line in, one JSON line out.

Why a process each: after torch or CTranslate2 has run in a process, NumPy's sgemm in that process
runs at about half speed, and our engines slow the peers the same way; and a backend's thread pools
must not share cores with another engine's idle pools.  The parent (bench/cli.py) never imports
torch, CTranslate2 or a backend's kernels itself.

Child: ``python -m whisperkit.bench.worker SPEC [--model M] [--threads N]`` where SPEC is
``backend:NAME``, ``peer:NAME``, ``ops:NAME`` (the per-op microbenchmarks of backend NAME),
``roofline`` or ``registry``.  ``--openai-checkpoint DIR`` instead writes an openai-whisper checkpoint
of the model into DIR (for the `whisper` command of ``--cli``) and exits.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # set on this project's machines, never on a user's


class WorkerError(RuntimeError):
    """The worker failed a request or died; the message carries its error or the tail of its stderr."""


# ---------------------------------------------------------------------------------------- parent side
def worker_env(threads: int, native_blas: bool) -> dict:
    """The environment of a worker: `threads` in every pool; without BLAS_ENV with `native_blas`."""
    from .machine import thread_env
    env = thread_env(threads)
    if native_blas:
        for k in BLAS_ENV:
            env.pop(k, None)
    return env


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, spec: str, *, model: str, threads: int, native_blas: bool, timeout: float = 3600):
        self.spec = spec
        self.timeout = timeout
        cmd = [sys.executable, "-m", "whisperkit.bench.worker", spec, "--model", model, "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=worker_env(threads, native_blas), text=True, bufsize=1)
        self._err_tail: list[str] = []
        import threading
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self.hello = self.call("hello")
        self.pid = self.hello["pid"]

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._err_tail = (self._err_tail + [line.rstrip()])[-20:]

    def call(self, cmd: str, **args) -> dict:
        if self.proc.poll() is not None:
            raise WorkerError(f"worker {self.spec} has exited ({self.proc.returncode}): {self._tail()}")
        try:
            self.proc.stdin.write(json.dumps(dict(args, cmd=cmd)) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"worker {self.spec}: {exc}: {self._tail()}") from None
        if not line:
            self.proc.wait(timeout=10)
            raise WorkerError(f"worker {self.spec} died ({self.proc.returncode}): {self._tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def _tail(self) -> str:
        time.sleep(0.05)
        lines = [ln for ln in self._err_tail if ln.strip()]
        return lines[-1] if lines else "(no output)"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------- worker side
def blas_info() -> list[dict]:
    """threadpoolctl's view of the BLAS libraries loaded in this process (kernel = `architecture`)."""
    import numpy  # noqa: F401  (load its BLAS before asking)
    try:
        import threadpoolctl
    except ImportError:
        return [{"error": "threadpoolctl is not installed"}]
    keep = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads", "threading_layer", "filepath")
    return [{k: v for k, v in lib.items() if k in keep} for lib in threadpoolctl.threadpool_info()
            if lib.get("user_api") == "blas"]


class Profile:
    """Where one transcription spends its time, measured inside the real run: the graph's encoder and
    decoder are wrapped, so every window and every token step is counted as the decode loop makes it."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.encoder_s = 0.0
        self.encoder_windows = 0
        self.cross_kv_s = 0.0
        self.step_s = 0.0
        self.steps = 0  # one-token decoder calls
        self.step_rows = 0
        self.head_s = 0.0  # speculative greedy's verifications (the contract's decoder_step `head`)
        self.rewritten = 0  # cache positions a later call wrote over: drafts a speculative round did not keep
        self._ends = weakref.WeakKeyDictionary()  # cache -> the position after its last one-token call
        self.prefill_s = 0.0
        self.prefill_calls = 0
        self.attention_s = 0.0  # word timestamps: the pass with cross-attention weights

    def as_dict(self, wall_s: float) -> dict:
        decoder_s = self.step_s + self.head_s + self.prefill_s + self.cross_kv_s + self.attention_s
        tokens = self.steps - self.rewritten  # the tokens the one-token steps decoded
        return {
            "encoder_windows": self.encoder_windows,
            "encoder_s": self.encoder_s,
            "encoder_ms_per_window": 1e3 * self.encoder_s / self.encoder_windows if self.encoder_windows else None,
            "encoder_share": self.encoder_s / wall_s if wall_s > 0 else None,
            "decoder_s": decoder_s,
            "decoder_share": decoder_s / wall_s if wall_s > 0 else None,
            # per decoded token: a speculative round's steps, its drafts that were not kept and its head count too
            "decoder_steps": tokens,
            "decoder_ms_per_step": 1e3 * (self.step_s + self.head_s) / tokens if tokens else None,
            "decoder_rows_per_step": self.step_rows / self.steps if self.steps else None,
            "decoder_drafted_steps": self.steps,
            "decoder_head_s": self.head_s,
            "decoder_prefill_calls": self.prefill_calls,
            "decoder_prefill_s": self.prefill_s,
            "cross_kv_s": self.cross_kv_s,
            "other_share": max(0.0, 1 - (self.encoder_s + decoder_s) / wall_s) if wall_s > 0 else None,
        }


class _Timed:
    """Wraps one graph part: calls go through, the time lands in the profile; attributes pass through."""

    def __init__(self, inner, on_call):
        self._inner = inner
        self._on_call = on_call

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self._inner(*args, **kwargs)
        self._on_call(time.perf_counter() - t, args)
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)


def instrument(graph, prof: Profile) -> None:
    """Route the graph's encoder, decoder steps and cross-K/V computation through `prof`."""
    def on_encoder(dt, args):
        prof.encoder_s += dt
        prof.encoder_windows += int(args[0].shape[0])

    def on_decoder(dt, args):
        tokens, cache, offset = args[:3]  # (rows, n_new), the KV cache, the first new position
        if tokens.shape[1] == 1:
            prof.step_s += dt
            prof.steps += 1
            prof.step_rows += int(tokens.shape[0])
            end = prof._ends.get(cache)
            if end is not None and offset < end:  # a speculative round wrote over drafts it did not keep
                prof.rewritten += end - offset
            prof._ends[cache] = offset + 1
        else:
            prof.prefill_s += dt
            prof.prefill_calls += 1

    def timed(fn, field: str):
        """fn, its time added to the profile's `field`."""
        def call(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            setattr(prof, field, getattr(prof, field) + time.perf_counter() - t)
            return out
        return call

    decoder = graph.decoder
    timed_decoder = _Timed(decoder, on_decoder)
    timed_decoder.set_audio = timed(decoder.set_audio, "cross_kv_s")
    timed_decoder.forward_with_cross_attention = timed(decoder.forward_with_cross_attention, "attention_s")
    # speculative greedy's verifications (None: the backend offers no head, and the decode loop then needs none)
    timed_decoder.head = timed(decoder.head, "head_s") if decoder.head is not None else None
    graph.encoder = _Timed(graph.encoder, on_encoder)
    graph.decoder = timed_decoder


class _Server:
    def __init__(self, spec: str, model: str, threads: int):
        self.spec, self.model, self.threads = spec, model, threads
        self.kind, _, self.name = spec.partition(":")
        self.engine = None
        self.profile: Profile | None = None
        self.audio: dict[str, object] = {}
        self.ops = None
        self.cases = None
        self.roof = None

    # -- setup
    def hello(self) -> dict:
        if self.kind == "backend":
            from whisperkit.bench.machine import apply_threads
            apply_threads(self.threads)
        elif self.kind in ("ops", "roofline"):
            from whisperkit.bench.machine import apply_threads
            if self.kind == "ops":
                apply_threads(self.threads)
            else:
                from whisperkit.bench.machine import set_blas_threads
                set_blas_threads(self.threads)
        return {"pid": os.getpid(), "env": {k: os.environ.get(k) for k in BLAS_ENV}}

    def load(self) -> dict:
        t = time.perf_counter()
        from whisperkit.bench.engines import BackendEngine, make_engine
        self.engine = make_engine(self.spec, self.threads, self.model)
        self.engine.load()
        out = {"load_s": time.perf_counter() - t, "version": self.engine.version, "blas": blas_info(), "pid": os.getpid()}
        if isinstance(self.engine, BackendEngine):
            self.profile = Profile()
            instrument(self.engine.model.graph, self.profile)
            out["fallbacks"] = self.engine.fallbacks
            out["model"] = self.engine.model_name
        return out

    def _audio(self, path: str):
        if path not in self.audio:
            from whisperkit.audio import load_audio
            self.audio[path] = load_audio(path)
        return self.audio[path]

    # -- end to end
    def transcribe(self, audio: str, beam: int) -> dict:
        a = self._audio(audio)
        if self.profile is not None:
            self.profile.reset()
        t = time.perf_counter()
        tokens = self.engine.transcribe(a, beam=beam)
        wall = time.perf_counter() - t
        out = {"seconds": wall, "tokens": tokens, "pid": os.getpid()}
        if self.profile is not None:
            out["profile"] = self.profile.as_dict(wall)
        return out

    def batch(self, files: list[str], batch_size: int, warmup: bool) -> dict:
        from whisperkit.bench.batch import run_batch
        from whisperkit.bench.engines import BackendEngine
        if not isinstance(self.engine, BackendEngine):
            raise ValueError("batch runs only on whisperkit backends")
        res = run_batch(self.engine, [(Path(p).name, self._audio(p)) for p in files], batch_size, warmup=warmup)
        return {"result": {k: getattr(res, k) for k in ("engine", "batch_size", "n_files", "audio_s", "sequential_s",
                                                          "batched_s", "tokens_equal", "error")}, "pid": os.getpid()}

    # -- per op
    def op_cases(self) -> dict:
        from whisperkit.bench import ops as opsmod
        from whisperkit.registry import get_registry
        from whisperkit.weights import resolve_model
        self.ops = get_registry().ops(self.name)
        self.cases = opsmod.op_cases(resolve_model(self.model).dims)
        return {"cases": [dict(key=c.key, op=c.op, label=c.label, flops=c.flops, bytes=c.bytes) for c in self.cases],
                "blas": blas_info(), "pid": os.getpid()}

    def op(self, index: int, min_time: float, min_reps: int, warmup: int) -> dict:
        from whisperkit.bench import ops as opsmod
        try:
            res = opsmod.run_op(self.ops, self.cases[index], min_time=min_time, min_reps=min_reps, warmup=warmup)
        except Exception as exc:
            res = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        return {"result": res, "pid": os.getpid()}

    # -- roofline
    def roofline(self, quick: bool = False, seconds: float | None = None) -> dict:
        from whisperkit.bench import ops as opsmod
        if self.roof is None:
            self.roof = opsmod.Roofline(quick=quick)
        self.roof.sample(seconds)
        return {"roofline": self.roof.as_dict(), "blas": blas_info(), "pid": os.getpid()}

    # -- registry and model facts (the parent does not import the backends' plugins)
    def registry(self) -> dict:
        from whisperkit.registry import get_registry
        reg = get_registry()
        reg.load_all()  # usable only when it loads here
        auto = reg.auto_name()
        return {"backends": [dict(name=n, usable=i.usable, version=i.version, reason=i.reason, ops=list(i.ops),
                                  auto_rank=i.auto_rank, auto=n == auto)
                             for n, i in sorted(reg.infos.items())], "auto": auto, "blas": blas_info(), "pid": os.getpid()}

    def model_info(self) -> dict:
        from whisperkit.bench.engines import EngineUnavailable, _ct2_dir
        from whisperkit.weights import resolve_model
        w = resolve_model(self.model)
        try:
            ct2 = str(_ct2_dir(w))
        except EngineUnavailable:
            ct2 = None
        return {"name": w.name, "source": str(w.source), "ct2_dir": ct2,
                "multilingual": bool(w.dims.is_multilingual), "pid": os.getpid()}


COMMANDS = ("hello", "load", "transcribe", "batch", "op_cases", "op", "roofline", "registry", "model_info")


def write_openai_checkpoint(model: str, out_dir: Path) -> Path:
    """An openai-whisper checkpoint (`dims` + `model_state_dict`) of our weights, for its `whisper` command."""
    import numpy as np
    import torch

    from whisperkit.bench.engines import openai_state_dict
    from whisperkit.weights import resolve_model
    w = resolve_model(model)
    d = w.dims
    dims = dict(n_mels=d.n_mels, n_audio_ctx=d.n_audio_ctx, n_audio_state=d.n_audio_state, n_audio_head=d.n_audio_head,
                n_audio_layer=d.n_audio_layer, n_vocab=d.n_vocab, n_text_ctx=d.n_text_ctx, n_text_state=d.n_text_state,
                n_text_head=d.n_text_head, n_text_layer=d.n_text_layer)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in openai_state_dict(w).items()}
    path = out_dir / f"{w.name}.pt"
    torch.save({"dims": dims, "model_state_dict": state}, path)
    return path


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m whisperkit.bench.worker")
    ap.add_argument("spec", nargs="?", default=None)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--openai-checkpoint", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.openai_checkpoint is not None:
        print(write_openai_checkpoint(args.model, args.openai_checkpoint))
        return 0

    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    server = _Server(args.spec, args.model, args.threads)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req.pop("cmd")
        if cmd == "quit":
            break
        try:
            if cmd not in COMMANDS:
                raise ValueError(f"unknown worker command {cmd!r}; known: {', '.join(COMMANDS)}")
            reply = getattr(server, cmd)(**req)
        except Exception as exc:  # the parent records it and goes on with the other engines
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
