"""Per-op microbenchmarks at the shapes Whisper runs, against a roofline measured in the same run.

Roofline: peak compute is NumPy's float32 GEMM (sgemm) on a large square product, peak memory
bandwidth a large `np.copyto` (bytes read + written, 128 MiB arrays: DRAM), each the best of samples
taken between the op cases of the same run.  An op's roofline time is
max(flops / peak_flops, bytes / bandwidth) with `bytes` the minimum traffic (inputs, weights and
outputs touched once); the reported ratio is roofline time / measured time (1.0 = at the roofline).
Above 1.0 happens for memory-bound ops whose working set fits in the caches (the decoder step,
small weights): the DRAM roofline does not bind them.
Flop counts: a multiply-add is 2; softmax 5 per score; layer_norm 8 and gelu 10 per element
(nominal: these two are bandwidth-bound, their GFLOP/s is only indicative).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

F32 = 4  # bytes


def time_fn(fn: Callable[[], object], *, min_time: float, min_reps: int, warmup: int = 2, max_reps: int = 10_000) -> list[float]:
    """Run `fn` `warmup` times, then at least `min_reps` times and until `min_time` seconds have passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


class Roofline:
    """Peak sgemm GFLOP/s and DRAM copy bandwidth of this machine with the current thread setting.

    On a shared machine one measurement may land in a busy moment and understate the peak, which
    would make ops look better than they are; so it is sampled between the op cases of the run and
    the best sample is the roofline."""

    def __init__(self, quick: bool = False):
        self.quick = quick
        rng = np.random.default_rng(0)
        self.n = 512 if quick else 1024
        self.a = rng.standard_normal((self.n, self.n), dtype=np.float32)
        self.b = rng.standard_normal((self.n, self.n), dtype=np.float32)
        self.c = np.empty((self.n, self.n), np.float32)
        m = (32 if quick else 128) * 1024 * 1024 // F32  # floats: 32 or 128 MiB per array, far beyond the caches
        self.src = np.ones(m, np.float32)
        self.dst = np.empty_like(self.src)
        self.gflops: list[float] = []
        self.gbs: list[float] = []

    def sample(self, seconds: float | None = None) -> None:
        seconds = (0.05 if self.quick else 0.3) if seconds is None else seconds
        t = min(time_fn(lambda: np.matmul(self.a, self.b, out=self.c), min_time=seconds, min_reps=3, warmup=1))
        self.gflops.append(2 * self.n ** 3 / t / 1e9)
        t = min(time_fn(lambda: np.copyto(self.dst, self.src), min_time=seconds, min_reps=3, warmup=1))
        self.gbs.append(2 * self.src.nbytes / t / 1e9)

    def as_dict(self) -> dict:
        return {"sgemm_gflops": max(self.gflops), "sgemm_n": self.n, "copy_gbs": max(self.gbs),
                "copy_mib": self.src.nbytes // (1024 * 1024), "samples": len(self.gflops),
                "sgemm_gflops_samples": self.gflops, "copy_gbs_samples": self.gbs}


@dataclass
class OpCase:
    op: str
    label: str  # the shape, as the table shows it
    weights: dict  # load-time keyword arguments of ops.bind (empty for weightless ops)
    args: tuple  # run-time positional arguments
    kwargs: dict
    flops: float
    bytes: float

    @property
    def key(self) -> str:
        return f"{self.op} {self.label}"


@dataclass
class CaseInfo:
    """What the parent knows of a case run in a worker: its name and its roofline counts, no arrays."""
    key: str
    op: str
    label: str
    flops: float
    bytes: float


def _nbytes(*arrays) -> int:
    return sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


def op_cases(dims, seed: int = 0) -> list[OpCase]:
    """The op calls one Whisper forward pass makes, at this model's shapes (tiny: n_state 384, 6 heads)."""
    rng = np.random.default_rng(seed)

    def r(*shape, scale=0.05):
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    d, h, n_ctx, n_mels = dims.n_audio_state, dims.n_audio_head, dims.n_audio_ctx, dims.n_mels
    td, th, vocab = dims.n_text_state, dims.n_text_head, dims.n_vocab
    frames = 2 * n_ctx
    kv_len = 224  # decoder self-attention over a cache of 224 positions: half of n_text_ctx
    cases: list[OpCase] = []

    x = r(1, n_ctx, d, scale=1.0)
    w, b = r(4 * d, d), r(4 * d)
    cases.append(OpCase("linear", f"{n_ctx}x{d}->{4 * d}", dict(weight=w, bias=b), (x,), {},
                        2 * n_ctx * d * 4 * d, _nbytes(x, w, b) + n_ctx * 4 * d * F32))
    xq, emb = r(1, 1, td, scale=1.0), r(vocab, td)
    cases.append(OpCase("linear", f"1x{td}->{vocab} logits", dict(weight=emb, bias=None), (xq,), {},
                        2 * td * vocab, _nbytes(xq, emb) + vocab * F32))
    mel, w1, b1 = r(1, n_mels, frames, scale=1.0), r(d, n_mels, 3), r(d)
    cases.append(OpCase("conv1d", f"{n_mels}->{d} k3 over {frames}", dict(weight=w1, bias=b1, stride=1, padding=1), (mel,), {},
                        2 * d * n_mels * 3 * frames, _nbytes(mel, w1, b1) + d * frames * F32))
    xc, w2, b2 = r(1, d, frames, scale=1.0), r(d, d, 3), r(d)
    cases.append(OpCase("conv1d", f"{d}->{d} k3 stride 2 over {frames}", dict(weight=w2, bias=b2, stride=2, padding=1), (xc,), {},
                        2 * d * d * 3 * n_ctx, _nbytes(xc, w2, b2) + d * n_ctx * F32))
    pos = r(n_ctx, d, scale=1.0)
    cases.append(OpCase("encoder_stem", f"{n_mels}x{frames} -> {n_ctx}x{d}",
                        dict(conv1_weight=w1, conv1_bias=b1, conv2_weight=w2, conv2_bias=b2, positional_embedding=pos), (mel,),
                        {}, 2 * d * n_mels * 3 * frames + 2 * d * d * 3 * n_ctx, _nbytes(mel, w1, b1, w2, b2, pos) + d * n_ctx * F32))
    g, bb = 1 + r(d), r(d)
    cases.append(OpCase("layer_norm", f"{n_ctx}x{d}", dict(weight=g, bias=bb), (x,), {},
                        8 * x.size, 2 * x.nbytes + _nbytes(g, bb)))
    xg = r(1, n_ctx, 4 * d, scale=2.0)
    cases.append(OpCase("gelu", f"{n_ctx}x{4 * d}", {}, (xg,), {}, 10 * xg.size, 2 * xg.nbytes))
    q, k, v = r(1, n_ctx, d, scale=1.0), r(1, n_ctx, d, scale=1.0), r(1, n_ctx, d, scale=1.0)
    cases.append(OpCase("attention", f"encoder {n_ctx}x{n_ctx}, {h} heads", {}, (q, k, v, h), {},
                        4 * n_ctx * n_ctx * d + 5 * h * n_ctx * n_ctx, 4 * q.nbytes))
    q1, kc, vc = r(1, 1, td, scale=1.0), r(1, kv_len, td, scale=1.0), r(1, kv_len, td, scale=1.0)
    cases.append(OpCase("attention", f"decoder 1 query over {kv_len} keys, {th} heads, causal", {},
                        (q1, kc, vc, th), dict(causal=True, offset=kv_len - 1),
                        4 * kv_len * td + 5 * th * kv_len, _nbytes(q1, kc, vc) + q1.nbytes))

    def mlp(n):
        return dict(ln_weight=1 + r(n), ln_bias=r(n), fc1_weight=r(4 * n, n), fc1_bias=r(4 * n),
                    fc2_weight=r(n, 4 * n), fc2_bias=r(n))

    def self_attn(n, heads):
        return dict(n_head=heads, attn_ln_weight=1 + r(n), attn_ln_bias=r(n), qkv_weight=r(3 * n, n), qkv_bias=r(3 * n),
                    out_weight=r(n, n), out_bias=r(n),
                    mlp_ln_weight=1 + r(n), mlp_ln_bias=r(n), fc1_weight=r(4 * n, n), fc1_bias=r(4 * n),
                    fc2_weight=r(n, 4 * n), fc2_bias=r(n))

    wm = mlp(d)
    cases.append(OpCase("mlp_block", f"{n_ctx}x{d}", wm, (x,), {},
                        16 * n_ctx * d * d + 18 * n_ctx * d, _nbytes(*wm.values()) + 2 * x.nbytes))
    we = self_attn(d, h)
    enc_flops = 2 * n_ctx * d * 3 * d + 4 * n_ctx * n_ctx * d + 5 * h * n_ctx * n_ctx + 2 * n_ctx * d * d + 16 * n_ctx * d * d
    cases.append(OpCase("encoder_layer", f"{n_ctx}x{d}, {h} heads", we, (x,), {},
                        enc_flops, _nbytes(*we.values()) + 2 * x.nbytes))
    wd = self_attn(td, th)
    wd.update(cross_ln_weight=1 + r(td), cross_ln_bias=r(td), cross_q_weight=r(td, td), cross_q_bias=r(td),
              cross_out_weight=r(td, td), cross_out_bias=r(td))
    k_cache, v_cache = r(1, dims.n_text_ctx, td, scale=1.0), r(1, dims.n_text_ctx, td, scale=1.0)
    cross_k, cross_v = r(1, n_ctx, td, scale=1.0), r(1, n_ctx, td, scale=1.0)
    xd = r(1, 1, td, scale=1.0)
    dec_flops = 2 * td * td * (3 + 1 + 1 + 1 + 8) + 4 * kv_len * td + 4 * n_ctx * td + 5 * th * (kv_len + n_ctx)
    dec_bytes = _nbytes(*[a for a in wd.values()], cross_k, cross_v) + 2 * kv_len * td * F32 + 2 * xd.nbytes
    cases.append(OpCase("decoder_layer", f"1 token at position {kv_len - 1}, {th} heads, {n_ctx} audio ctx", wd,
                        (xd, k_cache, v_cache, cross_k, cross_v, kv_len - 1), {}, dec_flops, dec_bytes))
    return cases


def run_op(ops, case: OpCase, *, min_time: float, min_reps: int, warmup: int = 2) -> dict:
    """Time one op case on one dispatcher.  Ops the backend does not run itself are reported as fallback."""
    backend = ops.backend
    if case.weights:
        bound = ops.bind(case.op, **case.weights)
        native = bound.backend_name == backend.name
        fn = bound
    else:
        fn = getattr(ops, case.op)
        native = backend is ops.reference or getattr(fn, "__self__", None) is backend
    if not native:
        return {"status": "fallback"}
    times = time_fn(lambda: fn(*case.args, **case.kwargs), min_time=min_time, min_reps=min_reps, warmup=warmup)
    return {"status": "native", "min_s": min(times), "median_s": statistics.median(times), "reps": len(times)}


def add_roofline(result: dict, case: OpCase, roof: dict) -> dict:
    if result.get("status") != "native":
        return result
    t = result["min_s"]
    bound_t = max(case.flops / (roof["sgemm_gflops"] * 1e9), case.bytes / (roof["copy_gbs"] * 1e9))
    result.update(gflops=case.flops / t / 1e9, roofline_ratio=bound_t / t,
                  bound="compute" if case.flops / (roof["sgemm_gflops"] * 1e9) >= case.bytes / (roof["copy_gbs"] * 1e9) else "memory")
    return result
