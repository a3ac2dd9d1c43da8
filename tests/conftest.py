"""Shared test fixtures.  The real speech, golden outputs and fixtures live in ../shared beside the
repository (never copied in); without them the tests fail rather than skip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"missing shared test data {path}: ../shared must sit beside the repository")
    return path


@pytest.fixture(scope="session")
def golden_tiny() -> dict:
    return json.loads(shared("golden", "tiny.en.json").read_text())


@pytest.fixture(scope="session")
def golden_base() -> dict:
    return json.loads(shared("golden", "base.json").read_text())


@pytest.fixture(scope="session")
def tiny_numpy():
    from whisperkit import WhisperTiny
    return WhisperTiny(backend="numpy")
