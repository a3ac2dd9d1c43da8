"""Whole-model checks: Whisper tiny.en with the backend under test against the same model on the reference.

The backend's model is built by ``Whisper("tiny.en", backend=...)`` from the very weights the reference
model uses, so every weighted op goes through the backend's ``prepare`` (the load-time hook).
Needs the shared data (golden mel, clips): without it the checks are reported as not run, with the reason.
"""
from __future__ import annotations

import numpy as np
import pytest

from whisperkit.conformance.cases import MODEL_TOL
from whisperkit.conformance.checks import (FALLBACK_REASON, NO_DRAFT_REASON, NO_PICK_REASON, compare, draft_problem,
                                           pick_problem, worst_ratio)
from whisperkit.conformance.plugin import NOT_RUN_PREFIX
from whisperkit.conformance.selection import find_shared

SOT = 50257  # <|startoftranscript|> of tiny.en
CLIPS = {"model/greedy_tokens_jfk": "jfk_16k.wav", "model/greedy_tokens_pv_en": "pv_en.wav"}

def _not_run(why: str):
    pytest.skip(NOT_RUN_PREFIX + why)


def _load_api():
    try:
        from whisperkit.api import Whisper
    except Exception as exc:  # the model API is optional for op conformance
        _not_run(f"whisperkit.api is not importable ({type(exc).__name__}: {exc})")
    return Whisper


def _reference(conformance, Whisper, shared):
    ref = conformance.model_cache.get("reference")
    if ref is None:
        try:
            from whisperkit.weights import resolve_model
            weights = resolve_model("tiny.en")
            model = Whisper("tiny.en", backend=conformance.reference, weights=weights)
        except Exception as exc:
            _not_run(f"tiny.en could not be loaded ({type(exc).__name__}: {exc})")
        mel = np.load(shared / "golden" / "jfk_mel.npy")
        features = model.embed_audio(mel[None])
        ref = dict(model=model, weights=weights, mel=mel, features=features, logits=model.logits(np.array([[SOT]]), features), tokens={})
        conformance.model_cache["reference"] = ref
    return ref


def _model_for(conformance, name, Whisper, ref):
    backend = conformance.backends[name]
    if backend is conformance.reference:
        return ref["model"]
    cached = conformance.model_cache.get("backend")
    if cached is not None and cached[0] == name:
        return cached[1]
    conformance.model_cache.pop("backend", None)  # one backend's prepared model at a time
    model = Whisper("tiny.en", backend=backend, weights=ref["weights"])  # the very tensors the reference read
    conformance.model_cache["backend"] = (name, model)
    return model


def _rowwise(a):
    r = np.abs(a.astype(np.float64))
    return np.broadcast_to(r.max(-1, keepdims=True), r.shape)


def test_model(model_case, conformance, request):
    backend_name, case_id = model_case
    backend = conformance.backend_for(request, backend_name, case_id)
    if backend is not conformance.reference and not backend.implemented_ops():
        pytest.skip(FALLBACK_REASON)
    shared, why = find_shared()
    if shared is None:
        _not_run(why)
    Whisper = _load_api()
    ref = _reference(conformance, Whisper, shared)
    model = _model_for(conformance, backend_name, Whisper, ref)

    slot = case_id.removeprefix("model/")
    if slot in NO_PICK_REASON:  # an optional slot: the filters' and token decoder's values, bit for bit
        if getattr(backend, slot, None) is None:
            _not_run(NO_PICK_REASON[slot])
        try:
            problem = pick_problem(model, slot)
        except LookupError as exc:
            _not_run(str(exc))
        if problem:
            pytest.fail(f"{case_id} on backend {backend_name}: {problem}\n  reproduce:\n"
                        f"    from whisperkit.conformance.checks import pick_problem\n"
                        f"    pick_problem(Whisper('tiny.en', backend={backend_name!r}), {slot!r})", pytrace=False)
        return

    if slot == "greedy_draft":  # the optional decoder_step draft and head: a speculative window is the plain one
        clip = shared / "audio" / "jfk_16k.wav"
        if not clip.is_file():
            _not_run(f"missing clip {clip}")
        if model.graph.decoder.head is None:
            _not_run(NO_DRAFT_REASON)
        problem = draft_problem(model, str(clip))
        if problem:
            pytest.fail(f"{case_id} on backend {backend_name}: {problem}\n  reproduce:\n"
                        f"    from whisperkit.conformance.checks import draft_problem\n"
                        f"    draft_problem(Whisper('tiny.en', backend={backend_name!r}), {str(clip)!r})", pytrace=False)
        return

    if case_id in CLIPS:
        clip = shared / "audio" / CLIPS[case_id]
        if not clip.is_file():
            _not_run(f"missing clip {clip}")
        if clip.name not in ref["tokens"]:
            ref["tokens"][clip.name] = list(ref["model"].decode(str(clip), temperature=0.0).tokens)
        expected = ref["tokens"][clip.name]
        got = list(model.decode(str(clip), temperature=0.0).tokens)
        if got != expected:
            i = next((j for j, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            tok = ref["model"].tokenizer
            pytest.fail(f"{case_id} on backend {backend_name}: greedy tokens differ from the reference's at position {i} "
                        f"(of {len(expected)} expected, {len(got)} got)\n  expected: {expected}\n  got:      {got}\n"
                        f"  expected text: {tok.decode(expected)!r}\n  got text:      {tok.decode(got)!r}\n"
                        f"  reproduce: Whisper('tiny.en', backend={backend_name!r}).decode({str(clip)!r}, temperature=0.0).tokens",
                        pytrace=False)
        return

    tol = MODEL_TOL[case_id]
    features = model.embed_audio(ref["mel"][None])
    if case_id == "model/encoder_jfk":
        out, expected, call = features, ref["features"], "m.embed_audio(mel[None])"
    else:
        out, expected = model.logits(np.array([[SOT]]), features), ref["logits"]
        call = f"m.logits(np.array([[{SOT}]]), m.embed_audio(mel[None]))"
    problem = compare("output", out, expected, _rowwise(expected), tol.rtol, tol.atol)
    if problem:
        pytest.fail(f"{case_id} on backend {backend_name}: {problem}\n  reproduce:\n"
                    f"    mel = np.load({str(shared / 'golden' / 'jfk_mel.npy')!r})\n"
                    f"    m = Whisper('tiny.en', backend={backend_name!r}); out = {call}\n"
                    f"    (compare with the same on backend 'numpy')", pytrace=False)
    request.node.user_properties.append(("tolerance_used", worst_ratio(out, expected, _rowwise(expected), tol.rtol, tol.atol)))
