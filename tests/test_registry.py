"""The plugin registry: entry points, unusable and broken plugins, API versions, fallbacks."""
import logging
import sys
import types

import numpy as np
import pytest

from whisperkit import Backend, BackendError, hookimpl
from whisperkit.contract import API_VERSION, OPS
from whisperkit.registry import build_registry


def make_plugin(name, *backends):
    mod = types.ModuleType(name)

    @hookimpl
    def whisperkit_backends():
        return list(backends)
    mod.whisperkit_backends = whisperkit_backends
    return mod


class OnlyGelu(Backend):
    name = "onlygelu"
    version = "1"

    def __init__(self):
        self.calls = 0

    def gelu(self, x):
        self.calls += 1
        from whisperkit.backends.numpy_backend import NumpyBackend
        return NumpyBackend().gelu(x)


def test_builtin_numpy_backend_comes_through_its_entry_point():
    import importlib.metadata
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="whisperkit.backends")}
    assert eps["numpy"] == "whisperkit.backends.numpy_backend"
    reg = build_registry()
    info = reg.infos["numpy"]
    assert info.usable and info.plugin == "whisperkit.backends.numpy_backend"
    assert set(info.ops) == set(OPS)


def test_unknown_backend_names_the_known_ones():
    reg = build_registry()
    with pytest.raises(BackendError, match=r"unknown backend 'nope'; known backends: .*numpy"):
        reg.get("nope")


def test_unusable_and_broken_plugins_do_not_break_the_others():
    class Missing(Backend):
        name = "missing"

        def unavailable_reason(self):
            return "libfoo is not installed"

    def broken():
        raise RuntimeError("boom")
    bad = types.ModuleType("bad_plugin")
    bad.whisperkit_backends = hookimpl(broken)

    reg = build_registry()
    reg.register_module(make_plugin("missing_plugin", Missing()))
    reg.register_module(bad)
    assert not reg.infos["missing"].usable and reg.infos["missing"].reason == "libfoo is not installed"
    assert "raised RuntimeError: boom" in reg.infos["bad_plugin"].reason
    with pytest.raises(BackendError, match="libfoo is not installed"):
        reg.get("missing")
    assert reg.get("numpy").name == "numpy"


def test_module_that_fails_to_import_gives_a_clear_error():
    reg = build_registry()
    with pytest.raises(BackendError, match="cannot import backend module 'no_such_mod_xyz'"):
        reg.register_module("no_such_mod_xyz")


def test_incompatible_api_version_is_refused():
    class Old(Backend):
        name = "old"
        api_version = API_VERSION + 1
    reg = build_registry()
    reg.register_backend(Old())
    assert not reg.infos["old"].usable
    assert f"API version {API_VERSION + 1}" in reg.infos["old"].reason
    with pytest.raises(BackendError, match="API version"):
        reg.get("old")


def test_partial_backend_runs_the_model_with_fallback_logged_once(caplog, tiny_numpy, tiny_weights):
    from whisperkit import Whisper
    backend = OnlyGelu()
    reg = build_registry()
    reg.register_backend(backend)
    with caplog.at_level(logging.INFO, logger="whisperkit"):
        model = Whisper("tiny.en", backend=backend, weights=tiny_weights)
    assert model.fallback_ops == set(OPS) - {"gelu"}
    messages = [r.getMessage() for r in caplog.records if "falls back" in r.getMessage()]
    assert len(messages) == len(set(messages)) == len(set(OPS) - {"gelu"})  # once per op, not per layer
    mel = np.zeros((1, 80, 3000), np.float32)
    np.testing.assert_array_equal(model.embed_audio(mel), tiny_numpy.embed_audio(mel))
    # the reference encoder_layer is a composition through the dispatcher, so the backend's GELU
    # runs there too: after each conv, and in every layer's MLP
    assert backend.calls == 2 + model.dims.n_audio_layer


# ----------------------------------------------------------------------------- backend="auto"


def _ranked(name, rank, *, reason=None, load_error=None):
    """A numpy-reference clone that declares an auto rank; unusable by `reason`, or failing to load."""
    from whisperkit.backends.numpy_backend import NumpyBackend

    class Ranked(NumpyBackend):
        def unavailable_reason(self):
            return reason

        def load(self):
            self.loads = getattr(self, "loads", 0) + 1
            if load_error:
                raise ImportError(load_error)

    b = Ranked()
    b.name, b.auto_rank = name, rank
    return b


def test_auto_resolves_to_the_usable_backend_of_highest_rank():
    reg = build_registry()
    picked = reg.get("auto")
    usable = [i for i in reg.infos.values() if i.usable and i.auto_rank is not None]
    assert reg.infos[picked.name].usable
    assert reg.infos[picked.name].auto_rank == max(i.auto_rank for i in usable)
    assert reg.auto_skipped == []
    import inspect
    from whisperkit import Whisper, WhisperTiny, load_model
    for fn in (Whisper.__init__, WhisperTiny.__init__, load_model):  # the default everywhere: the API...
        assert inspect.signature(fn).parameters["backend"].default == "auto"
    from whisperkit.cli import build_parser
    assert build_parser().parse_args(["transcribe", "x.wav"]).backend == "auto"  # ... and the CLI


def test_auto_passes_over_an_unusable_or_failing_backend_and_says_why(caplog):
    reg = build_registry()
    usual = reg.auto_name()
    reg.register_backend(_ranked("needs-libfoo", 1e6, reason="libfoo is not installed"))
    failing = _ranked("fails-to-load", 1e5, load_error="kernel compile failed: no AVX")
    reg.register_backend(failing)
    with caplog.at_level(logging.WARNING, logger="whisperkit"):
        assert reg.get("auto").name == usual
    assert reg.auto_skipped == [("needs-libfoo", "libfoo is not installed"),
                                ("fails-to-load", "loading failed: ImportError: kernel compile failed: no AVX")]
    assert not reg.infos["fails-to-load"].usable and "no AVX" in reg.infos["fails-to-load"].reason
    assert "passed over needs-libfoo (libfoo is not installed); fails-to-load" in caplog.text
    with pytest.raises(BackendError, match="fails-to-load' is not usable here: loading failed"):
        reg.get("fails-to-load")
    assert failing.loads == 1  # a failed load is not retried on every call
    assert reg.get("numpy").name == "numpy"  # naming the reference still gives the reference


def test_a_third_party_backend_declares_its_own_rank():
    reg = build_registry()
    plugin = make_plugin("thirdparty", _ranked("fastest-here", 1e6))
    reg.register_module(plugin)
    assert reg.auto_name() == "fastest-here" and reg.infos["fastest-here"].auto_rank == 1e6
    unranked = _ranked("never-auto", None)
    reg.register_backend(unranked)
    assert "never-auto" not in [i.name for i in reg.auto_order()]


def test_listing_the_registry_loads_no_backend_library():
    import subprocess
    code = ("import sys; from whisperkit.registry import build_registry; r = build_registry(); r.infos; "
            "print(sorted(m for m in ('numba', 'onnxruntime', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
