"""The one table of tensor names (whisperkit.weights.layout): everything that names a tensor reads it."""
import ast
from pathlib import Path

import numpy as np
import pytest

import whisperkit.weights
from whisperkit.backend import weight_group
from whisperkit.contract import OPS
from whisperkit.weights import LoadedWeights, canonical_shapes, layout, read_hf, write_hf
from whisperkit.weights.layout import DECODER, ENCODER, NORM, Module, ModelDimensions

SMALL = ModelDimensions(n_mels=4, n_audio_ctx=6, n_audio_state=8, n_audio_head=2, n_audio_layer=2,
                        n_vocab=51864, n_text_ctx=5, n_text_state=8, n_text_head=2, n_text_layer=2)


def _random_weights(dims: ModelDimensions) -> LoadedWeights:
    rng = np.random.default_rng(0)
    tensors = {}
    for t in layout.tensors(dims):
        a = rng.standard_normal(t.shape).astype(np.float32)
        if t.zero_part is not None:  # the canonical layout keeps the key bias zero
            width = t.shape[0] // len(t.hf)
            a[t.zero_part * width:(t.zero_part + 1) * width] = 0.0
        tensors[t.canonical] = a
    return LoadedWeights(dims=dims, tensors=tensors, alignment_heads=None, tokenizer_json=None, name="small",
                         source=Path("."))


def test_layer_kwargs_are_the_contract_arguments():
    w = _random_weights(SMALL).tensors
    for side, op in ((ENCODER, "encoder_layer"), (DECODER, "decoder_layer")):
        kw = layout.layer_kwargs(w, side, 1, 2)
        assert list(kw) == list(OPS[op].weights)
        assert kw["qkv_weight"] is w[f"{side}.blocks.1.attn.qkv.weight"]
        group = weight_group(op, kw)
        assert group.mlp.fc2.bias is w[f"{side}.blocks.1.mlp.fc2.bias"]


def test_hf_round_trip(tmp_path):
    src = _random_weights(SMALL)
    back = read_hf(write_hf(src, tmp_path / "hf"))
    assert back.dims == SMALL and set(back.tensors) == set(src.tensors)
    for k, v in src.tensors.items():
        np.testing.assert_array_equal(back.tensors[k], v, err_msg=k)


def test_a_new_tensor_in_the_table_reaches_every_format(tmp_path, monkeypatch):
    fake = Module("attn.fake_ln", NORM, ("d",), "self_attn.fake_layer_norm", "self_attention/fake_norm")
    monkeypatch.setattr(layout, "BLOCK", layout.BLOCK + (fake,))
    shapes = canonical_shapes(SMALL)
    for side in (ENCODER, DECODER):
        for i in range(2):
            assert shapes[f"{side}.blocks.{i}.attn.fake_ln.weight"] == (8,)
            assert shapes[f"{side}.blocks.{i}.attn.fake_ln.bias"] == (8,)
    src = _random_weights(SMALL)
    out = write_hf(src, tmp_path / "hf")

    from safetensors.numpy import load_file

    stored = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(stored["model.decoder.layers.1.self_attn.fake_layer_norm.weight"],
                                  src.tensors["decoder.blocks.1.attn.fake_ln.weight"])
    back = read_hf(out)
    for side in (ENCODER, DECODER):
        name = f"{side}.blocks.0.attn.fake_ln.bias"
        np.testing.assert_array_equal(back.tensors[name], src.tensors[name])
    kw = layout.layer_kwargs(src.tensors, DECODER, 1, 2)
    assert kw["fake_ln_weight"] is src.tensors["decoder.blocks.1.attn.fake_ln.weight"]
    ct2 = {t.canonical: t.ct2 for t in layout.tensors(SMALL)}
    assert ct2["encoder.blocks.1.attn.fake_ln.weight"] == "encoder/layer_1/self_attention/fake_norm/gamma"


def test_unknown_module_names_the_table():
    with pytest.raises(KeyError, match="no module 'conv3' in the encoder stem table"):
        layout.module(ENCODER, "conv3")


def test_weights_package_runs_no_code_from_files():
    """Every module of the weights package: no pickle, eval, exec or np.load (as test_fuzz checks for one file)."""
    for path in Path(whisperkit.weights.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not [n for n in names if n.split(".")[0] in ("pickle", "marshal", "dill", "joblib", "torch")], path
            if isinstance(node, ast.Call):
                f = node.func
                assert not (isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__")), path
                assert not (isinstance(f, ast.Attribute) and f.attr in ("Unpickler", "literal_eval")), path
                if isinstance(f, ast.Attribute) and f.attr in ("load", "loads"):
                    assert isinstance(f.value, ast.Name) and f.value.id == "json", (path, ast.unparse(node))
