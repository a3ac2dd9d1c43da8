"""What is particular to the Numba backend.  Its ops' values at Whisper's shapes and layouts are the conformance
suite's (`whisperkit conformance --backend numba`, run by tests/test_conformance.py), and what every built-in
backend must do is in tests/test_backends.py; here: its version, the thread setting (numba's own, bounded by
NUMBA_NUM_THREADS, and a decode step run on one thread), and decoder_step's own choices: float16 storage only
for float16-exact weights, bits that do not depend on the thread count, the thread count of one-token steps."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import run_op_case, shared

numba = pytest.importorskip("numba")
from whisperkit.backends.numba_backend import _NO_FOLD as NB_FOLDLESS  # noqa: E402
from whisperkit.backends.numba_backend import NumbaBackend, _ThreadChoice  # noqa: E402
from whisperkit.conformance.cases import CASES  # noqa: E402

NB = NumbaBackend()


def test_version():
    assert NB.name == "numba" and NB.version == numba.__version__


def test_threads_follow_setting():
    before = numba.get_num_threads()
    try:
        NB.set_num_threads(1)
        assert numba.get_num_threads() == 1
        run_op_case("linear/tiny_fc1_1500", NB)  # one thread still conforms
        NB.set_num_threads(10 ** 6)  # bounded by NUMBA_NUM_THREADS
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
        # a decode step runs on one thread, then gives the setting back
        run_op_case("decoder_layer/tiny_1_off3", NB)
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("blas_threads", [1, 2])
def test_numpy_blas_threads_are_left_as_found(tiny_on, blas_threads):
    """The kernels run their GEMMs on one-thread OpenBLAS calls inside their parallel loops.  NumPy's OpenBLAS
    applies that setting to the whole process, so the kernels put back, after each loop, the value they found:
    a numba transcription left every later NumPy GEMM (the user's, the next log-mel's) on one thread."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def openblas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]

    model = tiny_on("numba")
    mel = np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)
    with threadpoolctl.threadpool_limits(limits=blas_threads, user_api="blas"):
        assert openblas_threads() and set(openblas_threads()) == {blas_threads}
        for _ in range(3):  # the race needs the two workers' pairs to interleave: a few encoders
            model.graph.embed_audio(mel)
        model.transcribe(shared("audio", "jfk.flac"), beam_size=2)
        assert set(openblas_threads()) == {blas_threads}


def test_load_makes_numpy_blas_workers_sleep_at_once():
    """With NumPy's BLAS left on its threads (above), a worker woken by the log-mel's GEMM would spin while the
    encoder's kernels run: numba's load restarts the workers with the shortest spin, as onnxruntime's does."""
    import os
    import subprocess
    import sys
    code = ("import ctypes; from whisperkit.registry import get_registry; "
            "from whisperkit.threads import numpy_openblas_paths; get_registry().get('numba'); "
            "print(ctypes.CDLL(numpy_openblas_paths()[0]).openblas_thread_timeout())")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4"]


def _step(case_id):
    inp = CASES[case_id].make()
    return NB.prepare_decoder_step(**inp.weights), inp.args


@pytest.mark.parametrize("case_id, half", [("decoder_step/tiny_1_off3_fp16_weights", True),
                                           ("decoder_step/tiny_1_off3", False)])
def test_decoder_step_stores_float16_only_when_exact(case_id, half):
    w, _ = _step(case_id)
    mats = [a for a in w.arrays if a.ndim >= 3]  # the layers' matrices, then the logits weight (packed by blocks)
    assert len(mats) == 7
    assert all(a.dtype == (np.uint16 if half else np.float32) for a in mats)


def _same_bits_at_one_thread_and_two(w, x, k, v, ck, cv, offset, cross):
    """decoder_step_kernel at nt = 1 and 2 (the one-row steps switch between them, `_ThreadChoice`): the same logits
    and cache rows, bit for bit.  cross: (cross_kp, cross_vp) then the fold's five arrays."""
    from whisperkit.backends.numba_backend import _step as kernels
    results = []
    for nt in (1, 2):
        kc, vc = k.copy(), v.copy()
        logits = np.empty((x.shape[0], w.n_vocab), np.float32)
        rows = np.arange(x.shape[0], dtype=np.int64) * x.shape[1] + x.shape[1] - 1
        kernels.decoder_step_kernel(np.ascontiguousarray(x.reshape(-1, x.shape[-1])), x.shape[1], w.n_head, kc, vc,
                                    ck, cv, offset, np.zeros(x.shape[0], np.int64), *w.arrays, rows, logits, nt, *cross,
                                    np.empty(0, np.int64), np.empty((0, x.shape[-1]), np.float32))
        results.append((logits, kc, vc))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_decoder_step_bits_do_not_depend_on_threads():
    w, (x, k, v, ck, cv, offset, positions) = _step("decoder_step/tiny_beam5_shared_cross_1_off20")
    _same_bits_at_one_thread_and_two(w, x, k, v, ck, cv, offset, w.cross_layout(ck, cv)[:2] + NB_FOLDLESS)


FOLD_CASES = [c for c in CASES if c.startswith("decoder_step/") and CASES[c].params.get("fold")]


@pytest.mark.parametrize("case_id", FOLD_CASES)
def test_decoder_step_folds_the_cross_projection(case_id):
    """The prepared step offers `audio_fold` (the contract) for every float32 fold case of the conformance table: the
    suite then checks the folded step against the reference's K/V step (a backend without it is "not run" there,
    so here it must not be)."""
    run_op_case(case_id, NB)


def _folded(case_id):
    """A fold case of the conformance table: (prepared step, args, the features' layout for `audio=`)."""
    inp = CASES[case_id].make()
    w = NB.prepare_decoder_step(**inp.weights)
    features, cross_kv = inp.audio
    return w, inp.args, w.audio_fold(cross_kv).layout(features), cross_kv


def test_folded_step_bits_do_not_depend_on_threads():
    """The folded cross-attention splits its keys in FOLD_PARTS parts whatever the thread count."""
    w, (x, k, v, ck, cv, offset, positions), audio, _ = _folded("decoder_step/tiny_audio_fold_1_off3")
    from whisperkit.backends.numba_backend import _NO_CROSS
    shapes = np.empty(ck.shape[:3] + (0,), np.float32)
    _same_bits_at_one_thread_and_two(w, x, k, v, shapes, shapes, offset, (_NO_CROSS, _NO_CROSS) + audio)


def test_decoder_step_folds_only_float16_projections():
    w, _, _, kv = _folded("decoder_step/tiny_audio_fold_1_off3")
    assert w.audio_fold([(wt + np.float32(1e-4), b) for wt, b in kv]) is None  # not float16 values: no fold


def test_one_token_steps_keep_the_faster_thread_count():
    c = _ThreadChoice(2)
    first = [c.pick(2) for _ in range(2 * c.WARM)]  # each choice timed a few times first
    assert sorted(set(first)) == [1, 2] and first.count(1) == c.WARM
    c.record(2, 0.001)
    c.record(1, 0.004)
    picks = []
    for _ in range(32 * c.PROBE):
        nt = c.pick(2)
        picks.append(nt)
        c.record(nt, 0.001 if nt == 2 else 0.004)
    assert picks.count(2) > picks.count(1) > 0  # the faster one, with the other re-timed now and then
    c.record(2, 0.02)  # one step the machine stole does not switch
    assert c.pick(2) == 2 or c.steps % c.PROBE == 0
    assert c.time[2] < c.time[1]
    for _ in range(16 * c.PROBE):  # the machine gets busy: every thread is now the slow choice
        nt = c.pick(2)
        c.record(nt, 0.05 if nt == 2 else 0.004)
    assert c.pick(2) == 1


def _no_denormals(a):
    a = np.abs(a[a != 0])
    return not np.any(a < np.finfo(np.float32).tiny)


def test_vector_softmax_tails_and_flush():
    """The 16-lane softmax: rows whose length is not a multiple of 16, scores spanning past the flush
    threshold (tiny probabilities become 0, never denormal), against float64 numpy."""
    rng = np.random.default_rng(3)
    for n_kv in (1, 15, 16, 37, 1500):
        q = (rng.standard_normal((1, 21, 128)) * 4).astype(np.float32)
        k = (rng.standard_normal((1, n_kv, 128)) * 4).astype(np.float32)
        p = NB.attention_weights(q, k, 2)
        s = np.einsum("bqhd,bkhd->bhqk", q.reshape(1, 21, 2, 64).astype(np.float64),
                      k.reshape(1, n_kv, 2, 64).astype(np.float64)) / 8.0
        ref = np.exp(s - s.max(-1, keepdims=True))
        ref /= ref.sum(-1, keepdims=True)
        assert np.all(np.isfinite(p)) and _no_denormals(p)
        assert n_kv < 1500 or np.ptp(s, axis=-1).min() > 60  # the scores do reach past the flush
        assert np.abs(p - ref).max() < 2e-5  # float32 scores of this size carry ~1e-5 of rounding


def test_vector_exp_gives_the_same_bits_with_or_without_vscalefps(monkeypatch):
    """The 16-lane exp scales by 2^n with vscalefps where the CPU has AVX-512F, else by a 2^n built from exponent bits
    (the flag is read when a kernel is compiled): both give the same bits, and 0 below the flush and for -inf."""
    from numba import njit
    from whisperkit.backends.numba_backend import _kern
    K = _kern()
    x = np.concatenate([np.random.default_rng(8).uniform(-90, 0, 4093), [-np.inf, -50.5, -49.5]]).astype(np.float32)
    outs = []
    for scalef in (True, False):
        if scalef and not K._SCALEF:
            continue  # no AVX-512F on this CPU: only the integer path can run
        monkeypatch.setattr(K, "_SCALEF", scalef)
        exp16 = njit(lambda a, n16, m: K.vexp_sum16(a, n16, m), cache=False)  # compiled now, with this flag
        a = x.copy()
        total = exp16(a, len(a) // 16, np.float32(0.0))
        outs.append((a, total))
    a, total = outs[-1]
    assert a[4093] == 0 and a[4094] == 0 and a[4095] > 0  # -inf and below the flush give 0, just above it does not
    ref = np.exp(x.astype(np.float64))
    ref[x < K.SOFTMAX_FLUSH] = 0
    assert np.allclose(a, ref, rtol=3e-7, atol=0)
    assert abs(total - ref.sum()) < 1e-5 * ref.sum()
    if len(outs) == 2:
        assert outs[0][0].tobytes() == outs[1][0].tobytes() and outs[0][1] == outs[1][1]


def test_vector_gelu_tails_and_extremes():
    """The 16-lane bias + GELU of the MLP blocks: a width with a scalar tail, inputs far in both tails
    (outputs that would be denormal are 0), within gelu's conformance tolerance of the exact erf form."""
    import math

    from whisperkit.backends.numba_backend import _kernels as K
    rng = np.random.default_rng(4)
    f = (rng.standard_normal((3, 1539)) * 8).astype(np.float32)
    f[0, :200] = np.linspace(-40, 40, 200, dtype=np.float32)
    bias = rng.standard_normal(1539).astype(np.float32)
    xs = (f + bias).astype(np.float64)
    ref = 0.5 * xs * (1.0 + np.vectorize(math.erf)(xs / math.sqrt(2.0)))
    K.bias_gelu_rows(f, 0, f.shape[0], bias)
    assert np.all(np.isfinite(f)) and _no_denormals(f)
    assert np.max(np.abs(f - ref) / (np.abs(ref) + 0.01 * np.abs(xs) + 1e-30)) < 1e-5


@pytest.mark.parametrize("n", [1, 15, 16, 4095, 4096, 4097, 70001])
def test_gelu_op_chunks_and_tails(n):
    """The gelu op (the convolutions'): 16-lane chunks of GELU_CHUNK values and a scalar tail, any length, the
    extremes of the contract (|x| up to 3e38) finite, within gelu's conformance tolerance of the exact erf form."""
    import math
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 6).astype(np.float32)
    x[:min(n, 6)] = np.array([3e38, -3e38, -40.0, 40.0, 0.0, -1e-30], np.float32)[:min(n, 6)]
    y = NB.gelu(x.reshape(1, -1)).reshape(-1)
    xs = x.astype(np.float64)
    ref = 0.5 * xs * (1.0 + np.vectorize(math.erf)(xs / math.sqrt(2.0)))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.all(np.isfinite(y)) and _no_denormals(y)
    assert np.max(np.abs(y - ref) / (np.abs(ref) + 0.01 * np.abs(xs) + 1e-30)) < 1e-5


@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_load_opens_every_kernel_overload_a_transcription_uses(compute_type):
    """`NumbaBackend.load` opens the hot kernels every compute type calls up front (on Whisper's loading thread), the
    float32 prepare the float32 layers' kernels (`_open_float32_overload`), and the
    int8 prepare the int8 kernels a transcription calls (`_open_int8_overload`): a tiny.en transcription afterwards
    must not need any overload they left out.  In a fresh process, so that no other test has opened them already."""
    import subprocess
    import sys
    if compute_type == "int8" and "int8" not in NB.compute_types:
        pytest.skip("numba's int8 kernels need AVX-512 VNNI")  # the CPU's, not a failure
    code = f"""
import numba
from whisperkit import Whisper
from whisperkit.backends.numba_backend import _encoder_kernels, _int8_kernels, _kern, _step_kernels
model = Whisper("tiny.en", backend="numba", compute_type="{compute_type}")
def signatures():
    return {{name: set(map(str, d.signatures)) for mod in (_kern(), _step_kernels(), _encoder_kernels(), _int8_kernels())
            for name, d in vars(mod).items() if isinstance(d, numba.core.registry.CPUDispatcher)}}
before = signatures()
assert sum(map(len, before.values())) >= 6, before
if "{compute_type}" == "int8":  # an int8 model never calls the float32 layers' kernels: not opened (memory)
    assert not before["encoder_layer_kernel"] and not before["decoder_step_kernel"], before
model.transcribe({str(shared("audio", "jfk.flac"))!r}, beam_size=5, best_of=5)
print({{k: sorted(v - before[k]) for k, v in signatures().items() if v - before[k]}})
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "{}", out.stdout


def test_load_releases_llvm_pages_and_numba_still_compiles():
    """`load` drops LLVM's resident code pages (see release_code_pages): after it, under 16 MiB of libllvmlite's
    read-only mappings are resident, where LLVM's start-up touches ~68 MiB.  A compile afterwards faults back what it
    needs and computes right, and the loaded kernels still run."""
    import subprocess
    import sys
    # resident KiB of libllvmlite's read-only mappings, from smaps: LLVM's start-up leaves ~68 MiB there
    resident = ("def resident():\n"
                "    kb, cur = 0, False\n"
                "    for line in open('/proc/self/smaps'):\n"
                "        p = line.split()\n"
                "        if p and '-' in p[0] and not p[0].endswith(':'):\n"
                "            cur = len(p) > 5 and 'libllvmlite' in p[5] and p[1] in ('r-xp', 'r--p')\n"
                "        elif cur and p[0] == 'Rss:':\n"
                "            kb += int(p[1])\n"
                "    return kb\n")
    code = (resident + "import numpy as np; from whisperkit.backends.numba_backend import NumbaBackend, release_code_pages\n"
            "NumbaBackend().load(); print(resident() < 16 * 1024)\n"
            "import numba; f = numba.njit(lambda a: (a * 2.0 + 1.0).sum()); print(f(np.arange(4.0)))\n"
            "print(resident() > 16 * 1024, release_code_pages('libllvmlite') > 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # load released the pages; the compile faulted some back (so the measure sees them), and they release again
    assert out.stdout.split() == ["True", "16.0", "True", "True"]
    run_op_case("linear/tiny_fc1_1500", NB)



@pytest.mark.parametrize("case_id", ["decoder_step/tiny_1_off3_fp16_weights", "decoder_step/tiny_1_off3"])
def test_decoder_step_gives_the_embedding_rows_back(case_id):
    """The step keeps the token embedding only packed for its logits (the contract's `embedding_rows`): the
    model reads its rows there, widened exactly, and a token outside the vocabulary is an IndexError."""
    inp = CASES[case_id].make()
    w = NB.prepare_decoder_step(**inp.weights)
    emb = np.asarray(inp.weights["logits_weight"])
    n = emb.shape[0]
    tokens = np.array([[0, n - 1, n // 2], [1, 2, n - 2]])
    rows = w.embedding_rows(tokens)
    assert rows.shape == tokens.shape + (emb.shape[1],) and rows.dtype == np.float32
    assert np.array_equal(rows, emb.astype(np.float32)[tokens])
    pos = np.random.default_rng(5).standard_normal((6, emb.shape[1])).astype(np.float32)
    for plus in (pos[:3], pos.reshape(2, 3, -1)):  # the positions' rows, repeated over the batch or one per token
        assert np.array_equal(w.embedding_rows(tokens, plus), emb.astype(np.float32)[tokens] + plus)
    with pytest.raises(ValueError, match="do not divide"):
        w.embedding_rows(tokens, pos[:4])
    with pytest.raises(IndexError, match="outside the vocabulary"):
        w.embedding_rows(np.array([n]))


@pytest.mark.parametrize("case_id", ["decoder_step/tiny_beam5_shared_cross_1_off20", "decoder_step/tiny_1_off3"])
def test_decoder_step_reads_the_keys_it_packed(case_id):
    """The prepared step offers `cross_layout` (the contract): the window's keys and values by block of 64 keys, then
    head, each block of keys transposed (d_head, 64), of values as they are (64, d_head), zeros past the last key.
    Given as `cross=`, the step gives the same bits as laying them out itself (cross=None)."""
    w, args = _step(case_id)
    x, k, v, ck, cv, offset, positions = args
    kp, vp, n_keys = w.cross_layout(ck, cv)
    n_layer, b_c, n_audio, n = ck.shape
    assert n_keys == n_audio
    nb = -(-n_audio // 64)
    dh = n // w.n_head
    assert kp.shape == (n_layer, b_c, nb, w.n_head, dh, 64) and kp.flags.c_contiguous
    assert vp.shape == (n_layer, b_c, nb, w.n_head, 64, dh) and vp.flags.c_contiguous
    h, blk = w.n_head - 1, nb - 1
    cols = slice(h * dh, (h + 1) * dh)
    keys = ck[n_layer - 1, b_c - 1, blk * 64:, cols]  # the last block: n_audio % 64 keys, then zeros
    values = cv[n_layer - 1, b_c - 1, blk * 64:, cols]
    np.testing.assert_array_equal(kp[n_layer - 1, b_c - 1, blk, h, :, :len(keys)], keys.T)
    np.testing.assert_array_equal(vp[n_layer - 1, b_c - 1, blk, h, :len(values)], values)
    assert not kp[n_layer - 1, b_c - 1, blk, h, :, len(keys):].any() and not vp[n_layer - 1, b_c - 1, blk, h, len(values):].any()
    np.testing.assert_array_equal(vp[0, 0, 0, 0], cv[0, 0, :64, :dh])
    kp = w.cross_layout(ck, cv)
    outs = []
    for cross in (None, kp):
        kc, vc = k.copy(), v.copy()
        outs.append((NB.decoder_step(x, w, kc, vc, ck, cv, offset, positions, cross=cross), kc, vc))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_greedy_pick_conforms_and_its_check_catches_a_one_ulp_or_masking_slip(tiny_on, monkeypatch):
    """numba's greedy_pick (`whisperkit.contract.GREEDY_PICK`) passes the conformance suite's check (decoding's filters
    and GreedyDecoder on numba's own ops, bit for bit: tokens, log-probabilities, masked logits, five option sets), and
    that check fails a pick one ulp off in its log-probability, or one that forgets the timestamp rules."""
    from whisperkit.conformance.checks import pick_problem
    model = tiny_on("numba")
    assert pick_problem(model, "greedy_pick") is None
    real = type(model.graph.ops.backend).greedy_pick

    def one_ulp(self, logits, tokens, rules):
        tok, lp = real(self, logits, tokens, rules)
        return tok, np.nextafter(lp, np.float32(0))

    def no_timestamp_rules(self, logits, tokens, rules):
        return real(self, logits, tokens, rules._replace(timestamps=False))

    monkeypatch.setattr(type(model.graph.ops.backend), "greedy_pick", one_ulp)
    problem = pick_problem(model, "greedy_pick", rounds=20)
    assert problem is not None and "log-probabilities" in problem
    monkeypatch.setattr(type(model.graph.ops.backend), "greedy_pick", no_timestamp_rules)
    assert pick_problem(model, "greedy_pick", rounds=20) is not None  # tokens or masked logits, whichever differs first


def test_beam_pick_conforms_and_its_check_catches_a_tie_order_or_masking_slip(tiny_on, monkeypatch):
    """numba's beam_pick (`whisperkit.contract.BEAM_PICK`) passes the conformance suite's check (decoding's filters,
    then BeamSearchDecoder's log_softmax and top_k on numba's own ops, bit for bit: the top tokens in order, their
    log-probabilities, masked logits), and that check fails a pick that breaks ties by the higher column, whose
    log-probabilities are one ulp off, or that forgets the timestamp rules."""
    from whisperkit.conformance.checks import pick_problem
    model = tiny_on("numba")
    assert pick_problem(model, "beam_pick") is None
    real = type(model.graph.ops.backend).beam_pick

    def higher_column_first(self, logits, tokens, rules, k):
        top, lp = real(self, logits, tokens, rules, k)
        for r in range(len(top)):  # among equal log-probabilities, the higher column first
            order = np.lexsort((-top[r], -lp[r]))
            top[r], lp[r] = top[r][order], lp[r][order]
        return top, lp

    def one_ulp(self, logits, tokens, rules, k):
        top, lp = real(self, logits, tokens, rules, k)
        return top, np.nextafter(lp, np.float32(0))

    def no_timestamp_rules(self, logits, tokens, rules, k):
        return real(self, logits, tokens, rules._replace(timestamps=False), k)

    for mutant, says in ((higher_column_first, "tokens"), (one_ulp, "log-probabilities"), (no_timestamp_rules, "")):
        monkeypatch.setattr(type(model.graph.ops.backend), "beam_pick", mutant)
        problem = pick_problem(model, "beam_pick", rounds=30)
        assert problem is not None and says in problem, (mutant.__name__, problem)
