"""The canonical layout: the model's dimensions and THE table of tensor names.

Every tensor name -- canonical (openai-whisper's state_dict names, with Q/K/V and the cross K/V fused),
Hugging Face, CTranslate2, and the keyword the contract's layer op takes it under -- is generated
from the tables below.  A row lists only what does not follow from the rule (nanoGPT style):

* a module's tensors are ``<name>.weight`` and ``<name>.bias`` (CTranslate2 calls a norm's
  ``gamma`` and ``beta``); a ``PARAM`` row is one tensor, its names given in full;
* its Hugging Face and CTranslate2 module names, and its layer keyword, default to the last
  component of its canonical name (``mlp.fc1`` -> ``fc1``);
* a tuple of Hugging Face names is one canonical tensor stored in parts, concatenated along axis 0;
  ``zero_bias`` is the part whose bias is not stored (a key bias: softmax ignores it, so the
  canonical layout keeps it zero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

LINEAR, NORM, PARAM = "linear", "norm", "param"
ENCODER, DECODER = "encoder", "decoder"
BOTH = (ENCODER, DECODER)


@dataclass(frozen=True)
class ModelDimensions:
    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.n_vocab - 51765 - int(self.is_multilingual)


@dataclass(frozen=True)
class Module:
    name: str  # canonical, under "<side>." or "<side>.blocks.<i>."
    kind: str  # LINEAR, NORM or PARAM
    shape: tuple  # of the weight: ints, or symbols "d" (the side's width), "a" (the audio width),
    #               "ctx" (the side's context), "m" (mel bins), "v" (vocabulary), or (k, symbol) for k * symbol
    hf: str | tuple[str, ...] = ""
    ct2: str = ""
    kwarg: str | None = ""  # keyword prefix in encoder_layer / decoder_layer; None: not a layer argument
    zero_bias: int | None = None
    sides: tuple[str, ...] = BOTH


#: Marks where a side's blocks come in its sequence of modules.
BLOCKS = "<blocks>"

# canonical name          kind    weight shape          Hugging Face                         CTranslate2
STEMS: dict[str, tuple] = {
    ENCODER: (
        Module("conv1", LINEAR, ("d", "m", 3)),
        Module("conv2", LINEAR, ("d", "d", 3)),
        Module("positional_embedding", PARAM, ("ctx", "d"), "embed_positions.weight", "position_encodings/encodings"),
        BLOCKS,
        Module("ln_post", NORM, ("d",), "layer_norm", "layer_norm"),
    ),
    DECODER: (
        Module("token_embedding.weight", PARAM, ("v", "d"), "embed_tokens.weight", "embeddings/weight"),
        Module("positional_embedding", PARAM, ("ctx", "d"), "embed_positions.weight", "position_encodings/encodings"),
        BLOCKS,
        Module("ln", NORM, ("d",), "layer_norm", "layer_norm"),
    ),
}

BLOCK: tuple[Module, ...] = (
    Module("attn_ln", NORM, ("d",), "self_attn_layer_norm", "self_attention/layer_norm"),
    Module("attn.qkv", LINEAR, ((3, "d"), "d"), ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "self_attention/linear_0", zero_bias=1),
    Module("attn.out", LINEAR, ("d", "d"), "self_attn.out_proj", "self_attention/linear_1"),
    Module("cross_attn_ln", NORM, ("d",), "encoder_attn_layer_norm", "attention/layer_norm", kwarg="cross_ln",
           sides=(DECODER,)),
    Module("cross_attn.query", LINEAR, ("d", "d"), "encoder_attn.q_proj", "attention/linear_0", kwarg="cross_q",
           sides=(DECODER,)),
    Module("cross_attn.kv", LINEAR, ((2, "d"), "a"), ("encoder_attn.k_proj", "encoder_attn.v_proj"), "attention/linear_1",
           kwarg=None, zero_bias=0, sides=(DECODER,)),  # bound on its own: computed once per audio window
    Module("cross_attn.out", LINEAR, ("d", "d"), "encoder_attn.out_proj", "attention/linear_2", kwarg="cross_out",
           sides=(DECODER,)),
    Module("mlp_ln", NORM, ("d",), "final_layer_norm", "ffn/layer_norm"),
    Module("mlp.fc1", LINEAR, ((4, "d"), "d"), ct2="ffn/linear_0"),
    Module("mlp.fc2", LINEAR, ("d", (4, "d")), ct2="ffn/linear_1"),
)

#: How each format names a side's block i.
CANONICAL_BLOCK, HF_BLOCK, CT2_BLOCK = "{side}.blocks.{i}", "{side}.layers.{i}", "{side}/layer_{i}"


@dataclass(frozen=True)
class Tensor:
    """One canonical tensor and where every format keeps it."""

    canonical: str
    shape: tuple[int, ...]
    hf: tuple[str | None, ...]  # one name, or the parts concatenated along axis 0 (None: not stored, zero)
    ct2: str
    zero_part: int | None  # CTranslate2 may store this part (zero in the canonical layout) or leave it out
    kwarg: str | None  # the layer op's keyword, or None
    side: str
    block: int | None


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _module_tensors(m: Module, side: str, block: int | None, dims: ModelDimensions | None) -> Iterator[Tensor]:
    if block is None:
        canon, hf, ct2 = side, side, side
    else:
        canon, hf, ct2 = (f.format(side=side, i=block) for f in (CANONICAL_BLOCK, HF_BLOCK, CT2_BLOCK))
    hf_names = m.hf if isinstance(m.hf, tuple) else (m.hf or _last(m.name),)
    ct2_name = m.ct2 or _last(m.name)
    kwarg = None if block is None or m.kwarg is None else (m.kwarg or _last(m.name))
    shape = _shape(m.shape, side, dims) if dims is not None else ()
    if m.kind == PARAM:
        yield Tensor(f"{canon}.{m.name}", shape, tuple(f"{hf}.{n}" for n in hf_names), f"{ct2}/{ct2_name}", None,
                     kwarg, side, block)
        return
    for part, ct2_part in (("weight", "weight"), ("bias", "bias")) if m.kind == LINEAR else (("weight", "gamma"), ("bias", "beta")):
        if part == "weight":
            parts: tuple = tuple(f"{hf}.{n}.weight" for n in hf_names)
            zero = None
        else:
            parts = tuple(None if k == m.zero_bias else f"{hf}.{n}.bias" for k, n in enumerate(hf_names))
            zero = m.zero_bias
        yield Tensor(f"{canon}.{m.name}.{part}", shape if part == "weight" else shape[:1], parts,
                     f"{ct2}/{ct2_name}/{ct2_part}", zero, None if kwarg is None else f"{kwarg}_{part}", side, block)


def _shape(spec: tuple, side: str, d: ModelDimensions) -> tuple[int, ...]:
    enc = side == ENCODER
    sym = {"d": d.n_audio_state if enc else d.n_text_state, "a": d.n_audio_state, "m": d.n_mels, "v": d.n_vocab,
           "ctx": d.n_audio_ctx if enc else d.n_text_ctx}
    return tuple(s if isinstance(s, int) else s[0] * sym[s[1]] if isinstance(s, tuple) else sym[s] for s in spec)


def _side_modules(side: str, block: int | None) -> Iterator[Module]:
    if block is not None:
        yield from (m for m in BLOCK if side in m.sides)
    else:
        yield from (m for m in STEMS[side] if m is not BLOCKS)


def tensors(dims: ModelDimensions) -> list[Tensor]:
    """Every canonical tensor of a model of these dimensions, in the canonical order."""
    out: list[Tensor] = []
    for side, n_layer in ((ENCODER, dims.n_audio_layer), (DECODER, dims.n_text_layer)):
        for m in STEMS[side]:
            if m is BLOCKS:
                for i in range(n_layer):
                    for bm in _side_modules(side, i):
                        out.extend(_module_tensors(bm, side, i, dims))
            else:
                out.extend(_module_tensors(m, side, None, dims))
    return out


def canonical_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor name with its expected shape for ``dims``."""
    return {t.canonical: t.shape for t in tensors(dims)}


def module(side: str, name: str, block: int | None = None) -> list[Tensor]:
    """The tensors (weight, bias; or the one tensor of a PARAM) of one module of the table."""
    for m in _side_modules(side, block):
        if m.name == name:
            return list(_module_tensors(m, side, block, None))
    raise KeyError(f"no module {name!r} in the {side} {'block' if block is not None else 'stem'} table")


def module_weights(t: dict[str, np.ndarray], side: str, name: str, block: int | None = None) -> dict[str, np.ndarray]:
    """{"weight": ..., "bias": ...} of one module (the keyword arguments of linear, conv1d, layer_norm)."""
    return {x.canonical.rsplit(".", 1)[-1]: t[x.canonical] for x in module(side, name, block)}


def param(t: dict[str, np.ndarray], side: str, name: str) -> np.ndarray:
    """The one tensor of a PARAM module."""
    (x,) = module(side, name)
    return t[x.canonical]


def layer_kwargs(t: dict[str, np.ndarray], side: str, block: int, n_head: int) -> dict:
    """The keyword arguments of encoder_layer (side "encoder") or decoder_layer for one block."""
    w: dict = {"n_head": n_head}
    for m in _side_modules(side, block):
        for x in _module_tensors(m, side, block, None):
            if x.kwarg is not None:
                w[x.kwarg] = t[x.canonical]
    return w
