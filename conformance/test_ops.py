"""Every case of the op table (`whisperkit.conformance.cases`) on every backend under test."""
from __future__ import annotations

import pytest

from whisperkit.conformance.cases import CASES, RECORDS
from whisperkit.conformance.checks import ConformanceFailure, Fallback, run_case
from whisperkit.conformance.plugin import ALL_CASE_IDS, split_case
from whisperkit.conformance.selection import unmatched_xfails


def test_op(op_case, conformance, request):
    backend_name, case_id = op_case
    backend = conformance.backend_for(request, backend_name, case_id)
    compute_type, plain = split_case(case_id)
    ops = conformance.ops[backend_name] if compute_type == "float32" else conformance.ops[backend_name, compute_type]
    try:
        margin = run_case(CASES[plain], backend, ops, conformance.ref_ops_by_type[compute_type], conformance.reference_cache)
    except Fallback as exc:
        pytest.skip(str(exc))
    except ConformanceFailure as exc:
        pytest.fail(str(exc), pytrace=False)
    request.node.user_properties.append(("tolerance_used", margin))


def test_xfail_list(xfail_backend, conformance):
    """A backend's expected failures must be readable and each must name an existing case."""
    assert xfail_backend not in conformance.xfail_errors, conformance.xfail_errors.get(xfail_backend)
    unknown = unmatched_xfails(conformance.xfails[xfail_backend], ALL_CASE_IDS)
    if unknown:
        pytest.fail(f"backend {xfail_backend} declares expected failures that match no case: {unknown}; "
                    f"case ids look like {list(CASES)[:3]} (see whisperkit.conformance.cases.CASES)", pytrace=False)


def test_table_covers_the_contract():
    from whisperkit.contract import OPS
    from whisperkit.contract import INT8_OPS
    assert set(RECORDS) == set(OPS)
    for op, rec in RECORDS.items():
        assert rec.cases, f"op {op} has no case"
        assert all(t.reason for t in rec.tolerances.values())
        assert ("int8" in rec.tolerances) == (op in INT8_OPS), op  # a tolerance for every op int8 changes
