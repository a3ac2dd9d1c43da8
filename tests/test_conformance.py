"""The conformance suite itself: it passes the reference, fails deliberately wrong backends on exactly
the right cases, reports unimplemented ops as fallback, honours declared expected failures, and passes the
example plugin installed through its entry point.

Each run goes through the command (`python -m whisperkit.conformance.cli`) in a subprocess and reads its
JSON report, so the suite is exercised as a user runs it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import BUILTIN_BACKENDS, LEFT_TO_REFERENCE
from whisperkit.contract import OPS
from whisperkit.conformance.cases import CASES
from whisperkit.conformance.plugin import ALL_CASE_IDS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gelu_plugin"
ATTENTION_OPS = ("attention", "attention_weights")


def run_suite(tmp_path: Path, *args: str, pythonpath: list[Path] = ()) -> tuple[int, dict, str]:
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in pythonpath] + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
    env.pop("WHISPERKIT_CONFORMANCE_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "whisperkit.conformance.cli", *args, "--json-report", str(report)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    out = proc.stdout + proc.stderr
    assert report.is_file(), f"no JSON report; output:\n{out[-4000:]}"
    return proc.returncode, json.loads(report.read_text()), out


def statuses(report: dict, backend: str) -> dict[str, str]:
    """Status of every case (op and model) of `backend`; the check of its expected-failure list is left out."""
    return {cid: r["status"] for cid, r in report["backends"][backend]["cases"].items() if cid != "xfail-list"}


def with_status(st: dict[str, str], *wanted: str) -> set[str]:
    return {c for c, s in st.items() if s in wanted}


def op_cases(*ops: str) -> set[str]:
    return {c.id for c in CASES.values() if c.op in ops}


# --- the table ----------------------------------------------------------------------------------------------
def test_each_case_is_seeded_from_its_own_id():
    """Inserting a case re-seeds no other: each seed is the crc32 of the case's id, and no two cases share one."""
    import zlib
    assert all(c.seed == zlib.crc32(c.id.encode()) for c in CASES.values())
    assert len({c.seed for c in CASES.values()}) == len(CASES)


def test_a_case_made_again_has_the_same_bits_in_memory_of_its_own():
    """make() hands the reference a copy of what it built for the backend: same bits, no array shared (a backend
    writes its KV cache in place), and a third make() draws the same again."""
    import numpy as np
    from whisperkit.conformance.checks import same_bits
    case = CASES["decoder_step/tiny_1_off3"]

    def arrays(inp):
        found = []
        def walk(v):
            if isinstance(v, np.ndarray):
                found.append(v)
            elif isinstance(v, (tuple, list)):
                for x in v:
                    walk(x)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
        walk((inp.args, inp.kwargs, inp.weights, inp.audio))
        return found

    first = case.make()
    first.args[1][...] = 0.0  # what a step writing the whole cache would leave
    second, third = case.make(), case.make()
    a, b, c = arrays(first), arrays(second), arrays(third)
    assert len(a) == len(b) == len(c) > 5
    assert not any(np.shares_memory(x, y) for x, y in zip(a, b))
    assert all(same_bits(y, z) for y, z in zip(b, c))
    assert not same_bits(a[1], b[1])


# --- the reference passes ----------------------------------------------------------------------------------
def test_numpy_reference_conforms(tmp_path):
    code, report, out = run_suite(tmp_path, "--backend", "numpy")
    st = statuses(report, "numpy")
    assert code == 0, out[-4000:]
    assert with_status(st, "failed", "error") == set()
    # ... but the cross-attention from the audio features, a slot the reference does not offer (`audio_fold`)
    # and the optional greedy_pick and beam_pick slots, which the reference does not offer either
    not_run = with_status(st, "not run")  # float32 and int8 alike
    assert FOLD_CASES and {c.split(":")[-1] for c in not_run} == FOLD_CASES | PICK_CASES
    detail = {c: report["backends"]["numpy"]["cases"][c]["detail"] for c in not_run}
    assert all(OFFERS_NO.get(c, "offers no audio_fold") in d for c, d in detail.items())
    assert op_cases(*OPS) - FOLD_CASES <= with_status(st, "passed"), "every op case runs on the reference itself"
    model = {c for c in st if c.startswith("model/")}
    assert len(model) == 7
    # shared data is beside the repository: the whole-model checks must have run, not been skipped
    assert with_status({c: st[c] for c in model}, "passed") == model - PICK_CASES, \
        {c: report["backends"]["numpy"]["cases"][c] for c in model}
    assert "whisperkit conformance: machine" in out and "backend under test: numpy" in out


# --- the built-in backends conform: every case passes on the backend itself ------------------------------------
#: the cases of decoder_step's `audio` (the contract), and the built-in backends whose float32 step offers it
FOLD_CASES = {c.id for c in CASES.values() if c.params.get("fold")}
FOLDING_BACKENDS = {"numba"}
#: the checks of the optional greedy_pick and beam_pick slots and decoder_step's draft and head, and the built-in
#: backends that offer them
PICK_CASES = {"model/greedy_pick", "model/beam_pick", "model/greedy_draft"}
PICKING_BACKENDS = {"numba"}
DRAFTING_BACKENDS = {"numba", "pythran"}  # (pythran's float16 step: no picks, but draft and head)
#: what a backend without them is told
OFFERS_NO = {"model/greedy_pick": "offers no greedy_pick", "model/beam_pick": "offers no beam_pick",
             "model/greedy_draft": "offers no decoder_step `head`"}


@pytest.mark.parametrize("name", BUILTIN_BACKENDS)
def test_builtin_backend_conforms(tmp_path, name):
    from whisperkit.registry import get_registry
    info = get_registry().infos.get(name)
    assert info is not None, f"built-in backend {name} is not registered (entry point missing from the install?)"
    if not info.usable:  # the `all` extra installs its library: unusable here is a broken install, not a skip
        pytest.fail(f"backend {name} is not usable here: {info.reason}")
    code, report, out = run_suite(tmp_path, "--backend", name)
    b = report["backends"][name]
    st = statuses(report, name)
    float32 = {c: s for c, s in st.items() if ":" not in c}
    left = LEFT_TO_REFERENCE.get(name, frozenset())
    assert b["failed"] == [] and all(op.endswith("]") or op in left for op in b["fallback_ops"]), out[-4000:]
    assert code == 0 and b["conforms"], out[-4000:]
    # every op and model case ran and passed on the backend in float32: none fell back (but the cases of the ops its
    # module doc leaves to the reference), was skipped or was an expected failure
    assert set(float32) == set(ALL_CASE_IDS)
    assert with_status(float32, "fallback") == op_cases(*left)
    # the cross-attention from the audio features runs where the backend offers it (`audio_fold`), else is not run
    unfolded = set() if name in FOLDING_BACKENDS else FOLD_CASES
    if name not in PICKING_BACKENDS:  # nor the picks
        unfolded = unfolded | (PICK_CASES - {"model/greedy_draft"})
    if name not in DRAFTING_BACKENDS:  # nor the draft and head
        unfolded = unfolded | {"model/greedy_draft"}
    assert with_status(float32, "not run") == unfolded
    assert with_status(float32, "passed") == set(ALL_CASE_IDS) - op_cases(*left) - unfolded, \
        {c: s for c, s in float32.items() if s != "passed"}
    # another compute type the backend declares: its cases pass, or fall back where the backend says it cannot
    # run them (onnxruntime's int8: widths that are not multiples of 16, the 'odd' cases)
    from whisperkit.registry import get_registry
    typed = {c: s for c, s in st.items() if ":" in c}
    assert bool(typed) == (len(get_registry().get(name).compute_types) > 1)
    assert all(s == "passed" or (s == "fallback" and "/odd" in c) or (s == "not run" and c.split(":")[1] in FOLD_CASES)
               for c, s in typed.items()), \
        {c: s for c, s in typed.items() if s != "passed"}


# --- deliberately wrong backends fail on exactly the right cases ----------------------------------------------
WRONG = '''
import math
import numpy as np
import whisperkit
from whisperkit.backends.numpy_backend import NumpyBackend


def _heads(x, n_head):
    b, n, d = x.shape
    return x.reshape(b, n, n_head, d // n_head).transpose(0, 2, 1, 3)


def _softmax_attention(q, k, n_head, causal, offset, subtract_max, mask):
    d_head = q.shape[-1] // n_head
    s = _heads(q, n_head) @ _heads(k, n_head).transpose(0, 1, 3, 2) * np.float32(d_head ** -0.5)
    if causal and mask:
        n_q, n_kv = s.shape[-2:]
        s[..., np.triu(np.ones((n_q, n_kv), bool), k=offset + 1)] = -np.inf
    if subtract_max:
        s -= s.max(-1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.exp(s)
        return p / p.sum(-1, keepdims=True)


class _Attention(whisperkit.Backend):
    subtract_max, mask = True, True

    def attention_weights(self, q, k, n_head, causal=False, offset=0):
        return _softmax_attention(q, k, n_head, causal, offset, self.subtract_max, self.mask)

    def attention(self, q, k, v, n_head, causal=False, offset=0):
        b, n_q, d = q.shape
        with np.errstate(invalid="ignore"):
            out = self.attention_weights(q, k, n_head, causal, offset) @ _heads(v, n_head)
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(b, n_q, d)


class SoftmaxNoMax(_Attention):
    name = "wrong_softmax_nomax"
    subtract_max = False


class NoCausalMask(_Attention):
    name = "wrong_no_causal"
    mask = False


class GeluTanh(whisperkit.Backend):
    name = "wrong_gelu_tanh"

    def gelu(self, x):
        x = np.asarray(x, np.float32)
        with np.errstate(over="ignore"):
            return (0.5 * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x ** 3)))).astype(np.float32)


class GeluTanhDeclared(GeluTanh):
    """The same wrong GELU, declaring its failures in a file next to this module."""
    name = "wrong_gelu_tanh_declared"
    conformance_xfail = "gelu_tanh_xfail.txt"


class BadXfailList(GeluTanh):
    name = "wrong_xfail_list"
    conformance_xfail = {"gelu/odd_7": "tanh approximation", "gelu/no_such_case": "a typo"}


@whisperkit.hookimpl
def whisperkit_backends():
    return [SoftmaxNoMax(), NoCausalMask(), GeluTanh(), GeluTanhDeclared(), BadXfailList()]
'''

#: gelu cases whose inputs are all so small (x ~ 0: both forms are x/2 + x^2/sqrt(2 pi)) or so large (x*1 or 0)
#: that the tanh approximation agrees with erf to float32 precision: a tanh GELU passes these and fails the others.
GELU_TANH_AGREES = {"gelu/huge_1e30", "gelu/huge_3e38", "gelu/large_1e4", "gelu/tiny_1e-30_and_subnormals", "gelu/empty"}


@pytest.fixture(scope="module")
def wrong_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("wrong")
    (d / "wrong_backends.py").write_text(WRONG)
    (d / "gelu_tanh_xfail.txt").write_text(textwrap.dedent("""\
        # case id (or glob)     reason
        gelu/*                  tanh approximation of GELU, not the erf form (errors up to 2e-4)
        """))
    return run_suite(d, "--backend-module", "wrong_backends", "--ops-only", pythonpath=[d])


def test_wrong_backends_fail_exactly_the_right_cases(wrong_report):
    code, report, out = wrong_report
    assert code == 1, out[-3000:]

    st = statuses(report, "wrong_gelu_tanh")
    assert with_status(st, "failed") == op_cases("gelu") - GELU_TANH_AGREES
    assert with_status(st, "passed") == GELU_TANH_AGREES

    st = statuses(report, "wrong_softmax_nomax")
    overflowing = {c.id for c in CASES.values() if c.op in ATTENTION_OPS and c.params.get("qmag", 1.0) >= 100}
    assert len(overflowing) == 4
    assert with_status(st, "failed") == overflowing
    assert with_status(st, "passed") == op_cases(*ATTENTION_OPS) - overflowing

    st = statuses(report, "wrong_no_causal")
    # the mask matters when a query can see fewer keys than the cache holds: causal with more than one query
    masked = {c.id for c in CASES.values() if c.op in ATTENTION_OPS and c.params.get("causal") and c.params["q"][1] > 1}
    assert masked and with_status(st, "failed") == masked
    assert with_status(st, "passed") == op_cases(*ATTENTION_OPS) - masked


def test_failure_message_locates_and_reproduces(wrong_report):
    _, report, _ = wrong_report
    detail = report["backends"]["wrong_softmax_nomax"]["cases"]["attention/scores_1e4"]["detail"]
    for needle in ("max abs diff", "max rel diff", "at index", "NaN", "reproduce", "CASES['attention/scores_1e4']",
                   "seed"):
        assert needle in detail, (needle, detail)


def test_unimplemented_ops_are_fallback_never_passed(wrong_report):
    _, report, _ = wrong_report
    b = report["backends"]["wrong_gelu_tanh"]
    st = statuses(report, "wrong_gelu_tanh")
    others = op_cases(*OPS) - op_cases("gelu")
    assert with_status(st, "fallback") == others
    assert b["fallback_ops"] == sorted(set(OPS) - {"gelu"})
    assert b["ops"]["linear"]["passed"] == 0 and b["ops"]["linear"]["fallback"] == len(op_cases("linear"))
    assert not b["conforms"]


def test_declared_expected_failures_are_reported_as_such(wrong_report):
    _, report, _ = wrong_report
    st = statuses(report, "wrong_gelu_tanh_declared")
    assert with_status(st, "xfail") == op_cases("gelu") - GELU_TANH_AGREES
    assert with_status(st, "failed", "error") == set()
    cases = report["backends"]["wrong_gelu_tanh_declared"]["cases"]
    assert "tanh approximation" in cases["gelu/odd_7"]["detail"]
    assert report["backends"]["wrong_gelu_tanh_declared"]["conforms"]


def test_an_expected_failure_matching_no_case_is_an_error(wrong_report):
    _, report, _ = wrong_report
    b = report["backends"]["wrong_xfail_list"]
    assert "xfail-list" in b["failed"], b["failed"]
    assert "gelu/no_such_case" in b["cases"]["xfail-list"]["detail"]
    assert b["cases"]["gelu/odd_7"]["status"] == "xfail"
    assert not b["conforms"]


# --- the example plugin, installed through its entry point -------------------------------------------------------
def install_example(target: Path) -> None:
    """What `pip install examples/gelu_plugin` leaves on sys.path, without a build or network: the module and a
    dist-info whose entry_points.txt comes from the example's own pyproject.toml."""
    import shutil
    import tomllib
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    target.mkdir()
    for module in tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["setuptools"]["py-modules"]:
        shutil.copy(EXAMPLE / f"{module}.py", target)
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
                  for group, entries in project["entry-points"].items())
    (info / "entry_points.txt").write_text(eps)


def test_example_plugin_conforms_and_runs_the_model(tmp_path):
    target = tmp_path / "site"
    install_example(target)
    code, report, out = run_suite(tmp_path, "--backend", "gelu_example", pythonpath=[target])
    assert code == 0, out[-4000:]
    st = statuses(report, "gelu_example")
    model = {c for c in st if c.startswith("model/")}
    assert len(model) == 7
    assert with_status(st, "passed") == op_cases("gelu") | model - PICK_CASES
    assert with_status(st, "not run") >= PICK_CASES
    assert with_status(st, "fallback") == op_cases(*OPS) - op_cases("gelu")


def test_unknown_backend_is_one_clear_error(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "whisperkit.conformance.cli", "--backend", "no_such_backend"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert "unknown backend 'no_such_backend'" in proc.stdout + proc.stderr
