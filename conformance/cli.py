"""``whisperkit conformance``: run the conformance suite on one backend, several, or all, through pytest.

    whisperkit conformance --backend numba
    whisperkit conformance --backend all
    whisperkit conformance --backend-module my_pkg.my_backend -- -k gelu -x

Exit status 0 iff every backend under test conforms (fallback ops are reported, not counted as passes;
expected failures a backend declares are reported as such).  Arguments the command does not know are
passed on to pytest.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TEST_MODULES = ("test_ops.py", "test_model.py")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisperkit conformance",
        description="Hold kernel backends to the NumPy reference: every op of the contract on Whisper's shapes and "
                    "edge cases, then the whole model on the shared clips.  Unknown options go to pytest (-k, -x, -v...).")
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help="backend to test (repeatable, comma-separated), or 'all' for every usable registered backend")
    p.add_argument("--backend-module", action="append", default=[], metavar="MODULE",
                   help="importable module providing backends through a whisperkit_backends() hook, not installed as "
                        "a plugin yet: every backend it provides is tested")
    p.add_argument("--json-report", metavar="PATH", help="write a machine-readable report (per backend, per case) to PATH")
    p.add_argument("--ops-only", action="store_true", help="skip the whole-model checks (no model weights needed)")
    p.add_argument("--list", action="store_true", help="list the op table (cases per op, tolerances and their reasons) and exit")
    return p


def list_table(out=sys.stdout) -> None:
    from .cases import MODEL_TOL, RECORDS
    from .plugin import MODEL_CASES
    total = 0
    for op, rec in RECORDS.items():
        total += len(rec.cases)
        print(f"{op}: {len(rec.cases)} cases; reference {rec.reference}; error scale {rec.scale_doc}", file=out)
        for dtype, tol in rec.tolerances.items():
            print(f"  {dtype}: rtol {tol.rtol:g}, atol {tol.atol:g} -- {tol.reason}", file=out)
        for c in rec.cases:
            print(f"    {c.id}  [{c.describe()}]", file=out)
    print(f"model: {len(MODEL_CASES)} cases", file=out)
    for cid in MODEL_CASES:
        tol = MODEL_TOL.get(cid)
        what = {"model/greedy_pick": "the filters' and GreedyDecoder's tokens and log-probabilities on the backend's "
                                     "ops, bit for bit",
                "model/beam_pick": "the filters' and BeamSearchDecoder's top tokens and log-probabilities on the "
                                   "backend's ops, bit for bit",
                "model/greedy_draft": "speculative greedy's tokens and log-probability those of the plain loop, and "
                                      "decoder_step's draft and head the plain step's logits, bit for bit"}.get(cid, "tokens equal to the reference's")
        print(f"    {cid}" + (f"  rtol {tol.rtol:g} -- {tol.reason}" if tol else f"  {what}"), file=out)
    print(f"{total + len(MODEL_CASES)} cases per backend", file=out)


def main(argv: list[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.list:
        list_table()
        return 0
    if not args.backend and not args.backend_module and not os.environ.get("WHISPERKIT_CONFORMANCE_BACKEND") \
            and not os.environ.get("WHISPERKIT_CONFORMANCE_BACKEND_MODULE"):
        print("whisperkit conformance: say which backend to test: --backend NAME, --backend all, or --backend-module MODULE",
              file=sys.stderr)
        return 2
    import pytest

    here = Path(__file__).resolve().parent
    modules = [str(here / m) for m in TEST_MODULES if not (args.ops_only and m == "test_model.py")]
    pytest_args = ["-p", "whisperkit.conformance.plugin", "--import-mode=importlib", "--rootdir", str(here),
                   "-c", os.devnull, "-p", "no:cacheprovider", "-rfEX"]
    for b in args.backend:
        pytest_args += ["--whisperkit-backend", b]
    for m in args.backend_module:
        pytest_args += ["--whisperkit-backend-module", m]
    if args.json_report:
        pytest_args += ["--whisperkit-json", args.json_report]
    code = pytest.main(pytest_args + extra + modules)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
