"""Shared test fixtures.  The real speech, golden outputs and fixtures live in ../shared beside the
repository (never copied in); without them the tests fail rather than skip."""
from __future__ import annotations

import json

import pytest

from helpers import shared


@pytest.fixture(scope="session")
def golden_tiny() -> dict:
    return json.loads(shared("golden", "tiny.en.json").read_text())


@pytest.fixture(scope="session")
def golden_base() -> dict:
    return json.loads(shared("golden", "base.json").read_text())


@pytest.fixture(scope="session")
def tiny_weights():
    """tiny.en read once, for the tests that build several models (a model keeps no tensors of its own)."""
    from whisperkit.weights import resolve_model
    return resolve_model("tiny.en")


@pytest.fixture(scope="session")
def tiny_numpy(tiny_weights):
    from whisperkit import WhisperTiny
    return WhisperTiny(backend="numpy", weights=tiny_weights)


@pytest.fixture(scope="module")
def tiny_on(tiny_numpy, tiny_weights):
    """tiny.en on a backend by name, one model per backend for the module."""
    from whisperkit import Whisper
    cache = {"numpy": tiny_numpy}

    def get(backend):
        if backend not in cache:
            cache[backend] = Whisper("tiny.en", backend=backend, weights=tiny_weights)
        return cache[backend]
    return get
