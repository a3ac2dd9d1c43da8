"""Running one case on one backend and comparing it with the reference: shape, then dtype, then values.

The op under test is reached through `whisperkit.backend.Ops(backend, reference)`, exactly as the model
reaches it: weighted ops are bound with ``ops.bind(op, **weights)``, which calls the backend's
``supports`` and ``prepare(op, weights, ops)`` (the load-time hook), and weightless ops are the
dispatcher's attributes.  If the dispatcher sends the op to the reference, the case is a *fallback*.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whisperkit.backend import Backend, Ops
from whisperkit.contract import OPS

from .cases import RECORDS, Case, Inputs

FALLBACK_REASON = "falls back to reference"
NO_FOLD_REASON = "offers no audio_fold for these weights (the contract's decoder_step `audio`): the model makes the cross K/V"
PADDED_REASON = "not given left-padded rows (no Backend.padded_steps): prompts of different lengths go in separate batches"


class ConformanceFailure(AssertionError):
    """A case whose output differs from the reference; the message says how, where, and how to reproduce."""


@dataclass
class Bound:
    fn: object
    on_backend: bool


def bind(ops: Ops, backend: Backend, case: Case, inp: Inputs) -> Bound:
    spec = OPS[case.op]
    if spec.weights:
        bound = ops.bind(case.op, **inp.weights)
        return Bound(bound, bound.backend_name == backend.name and getattr(bound.fn, "__self__", backend) is backend)
    fn = getattr(ops, case.op)
    return Bound(fn, getattr(fn, "__self__", None) is backend)


def _call(b: Bound, inp: Inputs):
    return b.fn(*inp.args, **inp.kwargs)


def _folded_call(b: Bound, inp: Inputs):
    """decoder_step called as the model calls it when the prepared step folds (the contract's `audio`): the layout of
    the features instead of the cross K/V, which the case's reference call takes; for more query rows per audio than
    the fold takes, the fold's `cross`, the K/V's layout made from the features, with no K/V.  Raises Fallback (not
    run) when the backend offers no fold for these weights, or its fold takes fewer rows and offers no `cross`."""
    features, cross_kv = inp.audio
    make = getattr(getattr(b.fn, "w", None), "audio_fold", None)
    fold = make(cross_kv) if make is not None else None
    if fold is None:
        raise Fallback(NO_FOLD_REASON)
    x, k_cache, v_cache, _, _, offset, positions = inp.args
    rows = x.shape[0] // features.shape[0] * x.shape[1]
    if rows > fold.rows:  # more rows read the K/V: laid out from the features where the fold offers it, as the model does
        if getattr(fold, "cross", None) is None:
            raise Fallback(f"folds at most {fold.rows} query rows per audio, the case has {rows}, and offers no `cross`")
        laid = fold.cross(features)
        return lambda b, inp: b.fn(x, k_cache, v_cache, None, None, offset, positions, cross=laid, **inp.kwargs)
    audio = fold.layout(features)
    return lambda b, inp: b.fn(x, k_cache, v_cache, None, None, offset, positions, audio=audio, **inp.kwargs)


def compare(name: str, out, ref: np.ndarray, scale: np.ndarray, rtol: float, atol: float) -> str | None:
    """None when `out` matches `ref`; else the first problem found: shape, dtype, then values."""
    if not isinstance(out, np.ndarray):
        return f"{name}: expected a numpy.ndarray, got {type(out).__name__}"
    if out.shape != ref.shape:
        return f"{name}: shape {out.shape}, expected {ref.shape}"
    if out.dtype != ref.dtype:
        return f"{name}: dtype {out.dtype}, expected {ref.dtype}"
    if out.size == 0:
        return None
    o, r = out.astype(np.float64), ref.astype(np.float64)
    same_special = (np.isnan(o) & np.isnan(r)) | (np.isinf(o) & (o == r))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same_special, 0.0, np.abs(o - r))
        diff = np.where(np.isnan(diff), np.inf, diff)
        allowed = atol + rtol * scale
        bad = diff > allowed
    if not bad.any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = np.where(bad, diff / np.maximum(allowed, 1e-300), 0.0)
        rel = np.where(np.abs(r) > 0, diff / np.abs(r), np.where(diff > 0, np.inf, 0.0))
    worst = np.unravel_index(int(np.argmax(excess)), diff.shape)
    imax = np.unravel_index(int(np.argmax(diff)), diff.shape)
    n_nan = int(np.isnan(o).sum() - (np.isnan(o) & np.isnan(r)).sum())
    return (f"{name}: {int(bad.sum())} of {bad.size} values out of tolerance (rtol {rtol:g} of scale, atol {atol:g})"
            + (f", {n_nan} NaN where the reference has none" if n_nan else "")
            + f"\n  max abs diff {float(diff.max()):.4g} at index {tuple(int(i) for i in imax)}"
            f"\n  max rel diff {float(rel.max()):.4g}"
            f"\n  worst vs tolerance at index {tuple(int(i) for i in worst)}: got {o[worst]!r}, expected {r[worst]!r}, "
            f"|diff| {diff[worst]:.4g} > allowed {allowed[worst]:.4g} (scale {scale[worst]:.4g})")


def worst_ratio(out: np.ndarray, ref: np.ndarray, scale: np.ndarray, rtol: float, atol: float) -> float:
    """max |out - ref| / (atol + rtol * scale): 1.0 is the edge of the tolerance (reported, to watch margins)."""
    if out.size == 0:
        return 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(out.astype(np.float64) - ref.astype(np.float64))
        d = np.where(np.isfinite(d), d, 0.0)
        return float((d / (atol + rtol * scale)).max())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same bits (NaN payloads and the sign of zero included): an input an op must not
    write.  One pass over unsigned views (array_equal with equal_nan made several, most of the suite's checks)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc" and a.dtype.itemsize in (2, 4, 8):
        a, b = a.view(f"u{a.dtype.itemsize}"), b.view(f"u{a.dtype.itemsize}")
    return bool(np.array_equal(a, b))


def _arrays(inp: Inputs):
    return [(i, a) for i, a in enumerate(inp.args) if isinstance(a, np.ndarray)]


def run_case(case: Case, backend: Backend, ops: Ops, ref_ops: Ops, reference_cache: dict | None = None) -> float:
    """Run `case` on `backend` (through `ops`) and on the reference (through `ref_ops`, of the same compute
    type); raise ConformanceFailure on any difference, else return the worst error as a fraction of the
    tolerance.  Raises `Fallback` when the dispatcher does not send the op to the backend."""
    record = RECORDS[case.op]
    if case.op not in backend.implemented_ops():  # no need to build the inputs: the dispatcher cannot choose it
        raise Fallback(FALLBACK_REASON)
    if case.params.get("pad") is not None and not backend.padded_steps:
        raise Fallback(PADDED_REASON)
    inp = case.make()
    bound = bind(ops, backend, case, inp)
    if not bound.on_backend:
        raise Fallback(FALLBACK_REASON)
    call = _call
    if inp.audio is not None:  # the cross-attention from the features, as the model calls a step that folds
        call = _folded_call(bound, inp)
    dtype = ops.compute_type if ops.compute_type != "float32" else str(next(a for _, a in _arrays(inp)).dtype)
    tol = record.tolerances.get(dtype)
    if tol is None:
        raise ConformanceFailure(f"no tolerance for {dtype} in the table of {case.op}")

    # the reference's answer, on its own fresh copy of the inputs (an op may write into its KV cache)
    key = (ops.compute_type, case.id)
    if reference_cache is not None and key in reference_cache:
        ref_out, ref_inp = reference_cache[key]
    else:
        ref_inp = case.make()
        ref_out = _call(bind(ref_ops, ref_ops.reference, case, ref_inp), ref_inp)
        if reference_cache is not None:
            reference_cache.clear()  # keep one: cases run backend after backend, then move on
            reference_cache[key] = (ref_out, ref_inp)

    before = {i: a.copy() for i, a in _arrays(inp)}
    weights_before = {k: v.copy() for k, v in (inp.weights or {}).items() if isinstance(v, np.ndarray)}
    out = call(bound, inp)

    problems = []
    scale = np.asarray(record.scale(ref_inp, ref_out), np.float64) if isinstance(out, np.ndarray) and \
        out.shape == ref_out.shape and out.dtype == ref_out.dtype else np.zeros(ref_out.shape)
    p = compare("output", out, ref_out, np.broadcast_to(scale, ref_out.shape), tol.rtol, tol.atol)
    if p:
        problems.append(p)
    margin = None if p else worst_ratio(out, ref_out, np.broadcast_to(scale, ref_out.shape), tol.rtol, tol.atol)
    # inputs untouched (bit for bit), except the KV cache slots the op is told to write
    for i, a in _arrays(inp):
        if i in inp.inplace:
            continue
        if not same_bits(a, before[i]):
            problems.append(f"input argument {i} was modified by the call (an op must not write its inputs)")
    for k, a in weights_before.items():
        if not same_bits(inp.weights[k], a):
            problems.append(f"weight {k!r} was modified by prepare() or the call")
    if isinstance(out, np.ndarray):
        for i, a in _arrays(inp):
            if np.shares_memory(out, a):
                problems.append(f"the output shares memory with input argument {i} (outputs must be new arrays)")
    # in-place outputs: the written slots match the reference, everything else is unchanged
    if inp.inplace:
        region = inp.written
        where = ", ".join(f"{r.start}:{r.stop}" if r.start is not None else ":" for r in region)
        for i in inp.inplace:
            got, exp, old = inp.args[i], ref_inp.args[i], before[i]
            p = compare(f"cache argument {i} [{where}]", got[region], exp[region], _rowwise(exp[region]), tol.rtol, tol.atol)
            if p:
                problems.append(p)
            outside = got.copy()
            outside[region] = old[region]
            if not same_bits(outside, old):
                changed = np.argwhere(outside != old)[:5].tolist()
                problems.append(f"cache argument {i}: elements outside [{where}] were changed, e.g. at {changed}")
    if problems:
        raise ConformanceFailure(f"{case.id} on backend {backend.name}: " + "\n".join(problems)
                                 + f"\n  case: seed {case.seed}; {case.describe()}"
                                 + "\n  reproduce:\n    " + case.snippet(backend.name).replace("\n", "\n    "))
    return margin


def _rowwise(a: np.ndarray) -> np.ndarray:
    r = np.abs(a.astype(np.float64))
    return np.broadcast_to(r.max(-1, keepdims=True), r.shape)


class Fallback(Exception):
    """The dispatcher runs this op (for this case) on the reference, not on the backend under test."""


# ---- the optional decoder_step `draft` and `head` (whisperkit.contract, decoder_step) ----------------------------------
#: why the draft case is not run on a backend without them
NO_DRAFT_REASON = ("offers no decoder_step `head` (optional: greedy decoding then steps one token at a time instead of "
                   "drafting a few and verifying them together)")
DRAFT_STEPS = 5  # one-token steps of the window checked as drafts


def draft_problem(model, audio) -> str | None:
    """The backend's decoder_step `draft` and `head` (the contract), as a greedy decoding of `model` takes them, on one
    window of `audio`: the window decoded with speculative rounds (`decoding.SPECULATE`) and without gives the same
    tokens and average log-probability, bit for bit; and over DRAFT_STEPS one-token steps after the prompt, each step
    run plain and as a draft on caches of its own: head(the draft's hidden row) is the plain step's logits bit for bit,
    the draft's columns hold them too (the others -inf or them), and head of the rows together gives each row's bits.
    None when all hold, else what differs first; raises LookupError when the model's decoder has no `head`."""
    from whisperkit import decoding
    from whisperkit.decoding import DecodingOptions, DecodingTask, _draft_columns
    dec = model.graph.decoder
    if dec.head is None:
        raise LookupError(NO_DRAFT_REASON)
    saved = decoding.SPECULATE
    try:
        decoding.SPECULATE = 0
        plain = model.decode(audio, temperature=0.0)
        decoding.SPECULATE = 3
        spec = model.decode(audio, temperature=0.0)
    finally:
        decoding.SPECULATE = saved
    where = "conformance.checks.draft_problem"
    if list(spec.tokens) != list(plain.tokens):
        return f"{where}: speculative greedy tokens {list(spec.tokens)} differ from the plain loop's {list(plain.tokens)}"
    if np.float64(spec.avg_logprob).tobytes() != np.float64(plain.avg_logprob).tobytes():
        return f"{where}: avg_logprob {spec.avg_logprob!r} speculative, {plain.avg_logprob!r} plain (bit for bit)"
    tok = model.tokenizer
    features = np.asarray(plain.audio_features, np.float32)[None]
    prompt = np.asarray([DecodingTask(model.graph, tok, DecodingOptions()).initial_tokens], np.int64)
    caches = [model.graph.new_cache(features) for _ in range(2)]
    for c in caches:
        dec(prompt, c, 0)
    seq = list(plain.tokens[:DRAFT_STEPS]) + [tok.eot] * max(0, DRAFT_STEPS - len(plain.tokens))
    columns = _draft_columns(model.dims.n_vocab, tok.eot, decoding.DRAFT_TEXT)
    outside = np.setdiff1d(np.arange(model.dims.n_vocab), columns)
    hidden = np.empty((DRAFT_STEPS, model.dims.n_text_state), np.float32)
    plain_rows = []
    for j, t in enumerate([int(prompt[0, -1])] + seq[:-1]):
        x = np.asarray([[t]], np.int64)
        want = dec(x, caches[0], prompt.shape[1] - 1 + j)[0, -1]
        drafted = dec(x, caches[1], prompt.shape[1] - 1 + j, None, draft=(columns, hidden[j:j + 1]))[0, -1]
        got = dec.head(hidden[j:j + 1])[0]
        at = f"{where}: step {j} after the prompt"
        if got.dtype != np.float32 or got.shape != want.shape:
            return f"{at}: head gave {got.dtype} {got.shape}, the step {want.dtype} {want.shape}"
        if got.tobytes() != want.tobytes():
            return f"{at}: head of the draft's hidden row differs from the plain step's logits in {int((got != want).sum())} columns"
        if drafted[columns].tobytes() != want[columns].tobytes():
            return f"{at}: the draft's logits differ from the plain step's in its own columns"
        rest = drafted[outside]
        if not np.all((rest == -np.inf) | (rest == want[outside])):
            return f"{at}: the draft's other columns are neither -inf nor the step's logits"
        plain_rows.append(want)
    together = dec.head(hidden)
    if together.tobytes() != np.stack(plain_rows).tobytes():
        return f"{where}: head of {DRAFT_STEPS} rows together differs from the rows one at a time"
    return None


# ---- the optional greedy_pick and beam_pick slots (whisperkit.contract.GREEDY_PICK, BEAM_PICK) -----------------------
#: why a pick case is not run on a backend without the slot
NO_PICK_REASON = {"greedy_pick": "offers no greedy_pick (an optional slot: the decode loop runs its filters and GreedyDecoder)",
                  "beam_pick": "offers no beam_pick (an optional slot: the decode loop runs its filters and "
                               "BeamSearchDecoder's log_softmax and top_k)"}
#: decoding options whose filters differ (the blank, the suppressed tokens, the timestamp rules and their first step)
PICK_OPTIONS = ({}, {"suppress_blank": False}, {"suppress_tokens": ""}, {"without_timestamps": True},
                {"max_initial_timestamp": None})
PICK_ROUNDS = 60  # random (3-row logits, token history) pairs per option set
PICK_BEAM = 5  # beam_pick's beam size: 6 candidates a row


def pick_problem(model, slot: str = "greedy_pick", rounds: int = PICK_ROUNDS, seed: int = 11) -> str | None:
    """The backend's greedy_pick or beam_pick (`slot`), as a decoding of `model` takes it, against decoding's logit
    filters and token decoder on the same backend's ops, bit for bit (the contract): for greedy_pick, GreedyDecoder's
    tokens and log-probabilities; for beam_pick, the top_k of the log_softmax BeamSearchDecoder takes (tokens, best
    first, and their log-probabilities); and the logits as the filters masked them.  Random logits with a shifted
    timestamp range, every third round on a coarse grid so that equal values (the ties the order must break) are
    many, and token histories that open and close timestamps, so the forced-timestamp rule fires too.  None when
    they agree, else what differs first and how to reproduce it; raises LookupError when the decode loop would not
    take the backend's pick."""
    from whisperkit.decoding import DecodingOptions, DecodingTask
    if slot not in NO_PICK_REASON:
        raise ValueError(f"pick_problem: slot must be one of {sorted(NO_PICK_REASON)}, got {slot!r}")
    beam = slot == "beam_pick"
    tok = model.tokenizer
    tb, eot = tok.timestamp_begin, tok.eot
    n_vocab = model.dims.n_vocab
    forced = 0
    for options in PICK_OPTIONS:
        task = DecodingTask(model.graph, tok, DecodingOptions(**options, **({"beam_size": PICK_BEAM} if beam else {})))
        pick = task._pick()
        if pick is None:
            raise LookupError(f"the decode loop does not take its {slot}: log_softmax and logsumexp"
                              f"{' and top_k' if beam else ''} must run on the backend (the values it reproduces)")
        rng = np.random.default_rng(seed)
        for r in range(rounds):
            n = int(rng.integers(0, 10))
            hist = np.where(rng.random((3, n)) < 0.3, rng.integers(tb, n_vocab, (3, n)), rng.integers(0, eot, (3, n)))
            tokens = np.concatenate([np.tile(task.initial_tokens, (3, 1)), hist], axis=1).astype(np.int64)
            logits = (rng.standard_normal((3, n_vocab)) * rng.uniform(1, 6)).astype(np.float32)
            logits[:, tb:] += np.float32(rng.uniform(-6, 4))
            if r % 3 == 2:
                logits = np.round(logits * 2) / np.float32(2)
            chain = logits.copy()
            for f in task.logit_filters:
                f.apply(chain, tokens)
            logprobs = task.logit_filters[-1].logprobs if task.logit_filters else None
            forced += logprobs is None and not options.get("without_timestamps")
            if beam:  # what BeamSearchDecoder.update hands to its select
                logprobs = task.decoder.log_softmax(chain) if logprobs is None else logprobs
                top = task.decoder.top_k(logprobs, PICK_BEAM + 1)
                expected = (top, np.take_along_axis(logprobs, top, axis=-1))
            else:
                sums = np.zeros(3, np.float32)
                chosen, _ = task.decoder.update(tokens, chain, sums, logprobs)
                expected = (chosen[:, -1], sums)
            got = pick(logits, tokens)
            where = f"options {options}, round {r} of seed {seed} (conformance.checks.pick_problem, {slot})"
            dtypes = tuple(np.asarray(g).dtype for g in got)
            if dtypes != (np.int64, np.float32):
                return f"{where}: dtypes {dtypes[0]}, {dtypes[1]}; expected int64, float32"
            if np.shape(got[0]) != np.shape(expected[0]) or np.shape(got[1]) != np.shape(expected[1]):
                return f"{where}: shapes {np.shape(got[0])}, {np.shape(got[1])}; expected {np.shape(expected[0])}"
            if not np.array_equal(got[0], expected[0]):
                return f"{where}: tokens {np.asarray(got[0]).tolist()}, expected {expected[0].tolist()}"
            if np.asarray(got[1]).tobytes() != np.asarray(expected[1]).tobytes():
                return (f"{where}: log-probabilities {np.asarray(got[1]).tolist()}, expected {expected[1].tolist()} "
                        f"(bit for bit)")
            if not np.array_equal(logits, chain):
                rows = sorted(set(np.argwhere(logits != chain)[:, 0].tolist()))
                return f"{where}: the logits masked in place differ from the filters' in rows {rows}"
    if not forced:
        return "no round forced a timestamp (the histories or the logits do not reach that rule): the check is too weak"
    return None
