"""The pytest plugin of the conformance suite: picks the backend(s) under test, prints the report header
(backend, version, ops, machine) and the op x outcome table, and writes a JSON report.

Load it with ``-p whisperkit.conformance.plugin`` (the ``whisperkit conformance`` command does)::

    pytest -p whisperkit.conformance.plugin --pyargs whisperkit.conformance --whisperkit-backend numba
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict

import numpy as np
import pytest

from whisperkit.backend import Backend, Ops
from whisperkit.contract import COMPUTE_TYPES, INT8_OPS, OPS
from whisperkit.errors import BackendError
from whisperkit.registry import get_registry

from . import selection
from .cases import CASES, RECORDS
from .checks import FALLBACK_REASON

def typed_case(compute_type: str, case_id: str) -> str:
    """The id of a case run in another compute type than float32: "int8:linear/..." (float32: the plain id)."""
    return case_id if compute_type == "float32" else f"{compute_type}:{case_id}"


def split_case(case_id: str) -> tuple[str, str]:
    """"int8:linear/x" -> ("int8", "linear/x"); a plain id is float32."""
    compute_type, _, plain = case_id.rpartition(":")
    return compute_type or "float32", plain


MODEL_CASES = ("model/encoder_jfk", "model/logits_after_sot_jfk", "model/greedy_tokens_jfk", "model/greedy_tokens_pv_en",
               "model/greedy_pick", "model/beam_pick", "model/greedy_draft")
NOT_RUN_PREFIX = "not run: "
ALL_CASE_IDS = tuple(CASES) + MODEL_CASES


class ConformanceSession:
    """What the tests share: the backends under test, their dispatchers, expected failures, results."""

    def __init__(self, backends: list[Backend], unusable: list[tuple[str, str]]):
        reg = get_registry()
        self.reference = reg.reference()
        self.backends = {b.name: b for b in backends}
        self.unusable = unusable
        # one dispatcher per backend and compute type it declares (the float32 one keyed by the name alone)
        self.ops = {b.name: Ops(b, self.reference) for b in backends}
        self.ops.update({(b.name, ct): Ops(b, self.reference, ct) for b in backends for ct in b.compute_types
                         if ct != "float32"})
        self.ref_ops = Ops(self.reference, self.reference)
        self.ref_ops_by_type = {ct: Ops(self.reference, self.reference, ct) for ct in COMPUTE_TYPES}
        self.reference_cache: dict = {}
        self.model_cache: dict = {}
        self.xfails: dict[str, dict[str, str]] = {}
        self.xfail_errors: dict[str, str] = {}
        for b in backends:
            try:
                self.xfails[b.name] = selection.declared_xfails(b)
            except BackendError as exc:
                self.xfails[b.name] = {}
                self.xfail_errors[b.name] = str(exc)
        self.results: dict[str, dict[str, dict]] = defaultdict(dict)  # backend -> case id -> result
        self.started = time.perf_counter()


    def backend_for(self, request, backend_name: str, case_id: str) -> Backend:
        """The backend a case runs on; a failure the backend declared for this case is marked expected (not strict:
        a declared failure that passes is reported as such)."""
        reason = selection.match_xfail(self.xfails[backend_name], case_id)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
        return self.backends[backend_name]


_SESSION_KEY = pytest.StashKey[ConformanceSession]()


def pytest_addoption(parser):
    g = parser.getgroup("whisperkit", "whisperkit backend conformance")
    g.addoption("--whisperkit-backend", action="append", default=[], metavar="NAME",
                help=f"backend(s) under test, comma-separated, or 'all' (default: ${selection.ENV_BACKEND})")
    g.addoption("--whisperkit-backend-module", action="append", default=[], metavar="MODULE",
                help="importable module with a whisperkit_backends() hook: test every backend it provides "
                     f"(default: ${selection.ENV_BACKEND_MODULE})")
    g.addoption("--whisperkit-json", default=None, metavar="PATH", help="write a machine-readable report to PATH")


def pytest_configure(config):
    names = config.getoption("--whisperkit-backend") or [os.environ.get(selection.ENV_BACKEND, "")]
    modules = config.getoption("--whisperkit-backend-module") or [os.environ.get(selection.ENV_BACKEND_MODULE, "")]
    try:
        backends, unusable = selection.resolve(names, modules)
    except BackendError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SESSION_KEY] = ConformanceSession(backends, unusable)


def _session(config) -> ConformanceSession:
    return config.stash[_SESSION_KEY]


# --- header --------------------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    blas = "unknown"
    try:
        deps = np.show_config(mode="dicts").get("Build Dependencies", {})
        b = deps.get("blas", {})
        blas = f"{b.get('name', '?')} {b.get('version', '')}".strip()
    except Exception:
        pass
    from whisperkit.threads import get_num_threads
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return dict(cpu=cpu, cores=os.cpu_count(), usable_cores=affinity, threads=get_num_threads(),
                python=platform.python_version(), numpy=np.__version__, blas=blas, platform=platform.platform())


def backend_info(b: Backend, ops: Ops) -> dict:
    implemented = tuple(b.implemented_ops())
    return dict(name=b.name, version=str(b.version), class_=f"{type(b).__module__}.{type(b).__qualname__}",
                description=b.description, implemented_ops=list(implemented),
                not_implemented=[op for op in OPS if op not in implemented])


def pytest_report_header(config):
    s = _session(config)
    m = machine_info()
    lines = [f"whisperkit conformance: machine {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
             f"{m['threads']} threads; python {m['python']}, numpy {m['numpy']}, BLAS {m['blas']}"]
    for name, b in s.backends.items():
        info = backend_info(b, s.ops[name])
        lines.append(f"backend under test: {name} {info['version']} ({info['class_']}) {info['description']}".rstrip())
        lines.append(f"  implements: {', '.join(info['implemented_ops']) or 'nothing'}")
        if info["not_implemented"]:
            lines.append(f"  falls back to the reference: {', '.join(info['not_implemented'])}")
        if s.xfails.get(name):
            lines.append(f"  declares {len(s.xfails[name])} expected failure(s)")
    for name, reason in s.unusable:
        lines.append(f"backend not usable here, not tested: {name}: {reason}")
    return lines


# --- parametrization -------------------------------------------------------------------------------------
def pytest_generate_tests(metafunc):
    s = _session(metafunc.config)
    if "op_case" in metafunc.fixturenames:
        params = [(b, c) for c in CASES for b in s.backends]  # case-major: the reference result is reused
        # each other compute type a backend declares: the cases of the ops it changes (int8: contract.INT8_OPS)
        params += [(b, typed_case(ct, c)) for ct in COMPUTE_TYPES if ct != "float32" for c in CASES
                   if CASES[c].op in INT8_OPS for b, backend in s.backends.items() if ct in backend.compute_types]
        metafunc.parametrize("op_case", params, ids=[f"{b}-{c}" for b, c in params])
    if "model_case" in metafunc.fixturenames:
        params = [(b, c) for b in s.backends for c in MODEL_CASES]  # backend-major: one backend's model in memory
        metafunc.parametrize("model_case", params, ids=[f"{b}-{c}" for b, c in params])
    if "xfail_backend" in metafunc.fixturenames:
        metafunc.parametrize("xfail_backend", list(s.backends))


@pytest.fixture(scope="session")
def conformance(request) -> ConformanceSession:
    return _session(request.config)


# --- results -------------------------------------------------------------------------------------------------
def _key(item):
    cs = getattr(item, "callspec", None)
    if cs is None:
        return None
    for name in ("op_case", "model_case"):
        if name in cs.params:
            return cs.params[name]
    if "xfail_backend" in cs.params:
        return cs.params["xfail_backend"], "xfail-list"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    key = _key(item)
    if key is None:
        return
    backend, case_id = key
    s = _session(item.config)
    res = s.results[backend].get(case_id)
    if rep.when == "call" or (rep.when == "setup" and (rep.failed or rep.skipped)):
        status, detail = "passed", ""
        if hasattr(rep, "wasxfail"):
            status, detail = ("xfail" if rep.skipped else "xpass"), rep.wasxfail
        elif rep.skipped:
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
            reason = reason.removeprefix("Skipped: ")
            if reason == FALLBACK_REASON:
                status, detail = "fallback", reason
            else:
                status, detail = "not run", reason.removeprefix(NOT_RUN_PREFIX)
        elif rep.failed:
            status = "failed" if rep.when == "call" else "error"
            detail = str(rep.longreprtext)
        used = dict(rep.user_properties).get("tolerance_used")
        compute_type, plain = split_case(case_id)
        s.results[backend][case_id] = dict(case=case_id, op=plain.split("/")[0], compute_type=compute_type,
                                           status=status, detail=detail,
                                           seconds=round(rep.duration, 4),
                                           tolerance_used=None if used is None else round(float(used), 4))
    elif rep.failed and res is not None:  # teardown error
        res["status"], res["detail"] = "error", str(rep.longreprtext)


STATUSES = ("passed", "failed", "error", "xfail", "xpass", "fallback", "not run")


def _verdict(counts: dict | None) -> str:
    """One op in one compute type, from its cases' outcomes."""
    if not counts:
        return "-"
    if counts["failed"] or counts["error"]:
        return "FAILS"
    if counts["fallback"] and not (counts["passed"] or counts["xfail"] or counts["xpass"]):
        return "falls back to reference"
    if counts["fallback"]:
        return "conforms (some fallback)"
    if counts["not run"] and not counts["passed"]:
        return "not run"
    if counts["xfail"]:
        return "conforms (expected failures)"
    return "conforms"


def _op_key(result: dict) -> str:
    """The op of a case's result, with its compute type when not float32: "linear", "linear[int8]"."""
    ct = result.get("compute_type", "float32")
    return result["op"] if ct == "float32" else f"{result['op']}[{ct}]"


def _summary(s: ConformanceSession) -> dict:
    out = {"machine": machine_info(), "seconds": round(time.perf_counter() - s.started, 2), "backends": {}}
    for name, b in s.backends.items():
        results = s.results.get(name, {})
        ops = defaultdict(lambda: dict.fromkeys(STATUSES, 0))  # by op (float32) or "op[int8]"
        worst: dict[str, float] = {}
        for r in results.values():
            key = _op_key(r)
            ops[key][r["status"]] += 1
            if r.get("tolerance_used") is not None:
                worst[key] = max(worst.get(key, 0.0), r["tolerance_used"])
        failed = sorted(c for c, r in results.items() if r["status"] in ("failed", "error"))
        out["backends"][name] = dict(
            backend_info(b, s.ops[name]), compute_types=list(b.compute_types), ops=dict(ops), cases=results,
            failed=failed, worst_tolerance_used=worst,
            fallback_ops=sorted({_op_key(r) for r in results.values() if r["status"] == "fallback"}),
            conforms=not failed and bool(results),
        )
    out["unusable"] = dict(s.unusable)
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    s = _session(config)
    summary = _summary(s)
    tr = terminalreporter
    for name, b in summary["backends"].items():
        if not b["cases"]:
            continue
        tr.section(f"whisperkit conformance: backend {name} {b['version']}", sep="=")
        types = b["compute_types"]
        header = f"{'op':<20} " + " ".join(f"{ct:<28}" for ct in types) + " " + " ".join(f"{st:>8}" for st in STATUSES) \
            + "  worst/tol"
        tr.write_line(header)
        tr.write_line("-" * len(header))
        for op in list(OPS) + ["model"]:
            keys = [op if ct == "float32" else f"{op}[{ct}]" for ct in types]
            if not any(b["ops"].get(k) for k in keys):
                continue
            total = {st: sum(b["ops"].get(k, {}).get(st, 0) for k in keys) for st in STATUSES}
            worst = [b["worst_tolerance_used"].get(k) for k in keys]
            worst = max((w for w in worst if w is not None), default=None)
            tr.write_line(f"{op:<20} " + " ".join(f"{_verdict(b['ops'].get(k)):<28}" for k in keys) + " "
                          + " ".join(f"{total[st]:>8}" for st in STATUSES) + (f"  {worst:9.3f}" if worst is not None else ""))
        for st in ("failed", "error", "xfail", "xpass", "not run"):
            rows = [(c, r) for c, r in b["cases"].items() if r["status"] == st]
            for c, r in rows:
                first = r["detail"].strip().splitlines()[0] if r["detail"].strip() else ""
                tr.write_line(f"  {st.upper():8} {c}: {first[:160]}")
        verdict = ("CONFORMS" if b["conforms"] else "DOES NOT CONFORM")
        n_run = sum(c["passed"] for op, c in b["ops"].items() if op != "xfail-list")
        tr.write_line(f"backend {name}: {verdict} ({n_run} cases passed, {len(b['failed'])} failed, "
                      f"{sum(c['fallback'] for c in b['ops'].values())} fall back to reference)")
    for name, reason in s.unusable:
        tr.write_line(f"not tested (not usable here): {name}: {reason}")
    path = config.getoption("--whisperkit-json")
    if path:
        summary["exitstatus"] = int(exitstatus)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, default=str)
        tr.write_line(f"JSON report written to {path}")


__all__ = ["ConformanceSession", "ALL_CASE_IDS", "MODEL_CASES", "RECORDS"]
