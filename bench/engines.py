"""What the bench races: whisperkit's backends and the peers, behind one small interface.

An engine loads once (`load`) and then transcribes a float32 16 kHz mono array the way a user calls
it (`transcribe(audio, beam)` -> every segment's tokens, flattened): the library's transcribe() with
its default temperature fallback and timestamps, greedy (beam 1) or beam search with beam_size 5 and
best_of 5 (beam 5), the language given for English-only models.  Each engine runs in a worker process
of its own (bench/worker.py).  Peers run on the very same
weights as ours: faster-whisper loads the CTranslate2 directory our loader reads, openai-whisper gets
a state dict built from our canonical tensors (no hub is reachable here).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

PEERS = ("faster-whisper-fp32", "faster-whisper-int8", "openai-whisper")


class EngineUnavailable(Exception):
    """The engine cannot run here; the message says why (missing package, no weights in its format...)."""


class Engine:
    name: str = ""
    kind: str = ""  # "backend" or "peer"
    version: str = "?"

    def load(self) -> None:
        raise NotImplementedError

    def transcribe(self, audio: np.ndarray, beam: int = 1) -> list[int]:
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.name}"


def beam_options(beam: int) -> dict:
    """openai-whisper's transcribe() options of one decoding mode: its defaults for greedy (beam 1), else
    beam_size=beam with best_of=5, as its command line does."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    return {} if beam == 1 else {"beam_size": beam, "best_of": 5}


# ---------------------------------------------------------------------------------------- ours
def split_engine(name: str) -> tuple[str, str]:
    """"onnxruntime@int8" -> ("onnxruntime", "int8"); a plain backend name is float32."""
    backend, _, compute_type = name.partition("@")
    return backend, compute_type or "float32"


def engine_name(backend: str, compute_type: str) -> str:
    return backend if compute_type == "float32" else f"{backend}@{compute_type}"


class BackendEngine(Engine):
    kind = "backend"

    def __init__(self, backend: str, model: str = "tiny.en", weights=None):
        self.name = backend  # "numba", or "numba@int8" for another compute type
        self.backend, self.compute_type = split_engine(backend)
        self.model_name = model
        self.weights = weights
        self.model = None
        self.fallbacks: list[str] = []

    def load(self) -> None:
        from whisperkit import Whisper
        from whisperkit.registry import get_registry
        self.version = get_registry().infos[self.backend].version
        self.model = Whisper(self.model_name, backend=self.backend, compute_type=self.compute_type, weights=self.weights)
        self.fallbacks = sorted(self.model.fallback_ops)

    def transcribe(self, audio: np.ndarray, beam: int = 1) -> list[int]:
        result = self.model.transcribe(audio, **beam_options(beam))
        return [int(t) for s in result.segments for t in s.tokens]


# ---------------------------------------------------------------------------------------- peers
def _ct2_dir(weights) -> Path:
    src = Path(weights.source)
    d = src if src.is_dir() else src.parent
    if (d / "model.bin").is_file():
        return d
    parts = _split_parts(d)
    if parts:
        return _joined_ct2_dir(d, parts)
    raise EngineUnavailable(f"no CTranslate2 model.bin for {weights.name} in {d} (faster-whisper loads only that format)")


def _split_parts(d: Path) -> list[Path]:
    """The parts of a model.bin split over packages (the bundled base model ships in two), in order."""
    from whisperkit.weights.resolve import _base_parts
    bundled = _base_parts()
    if bundled is not None and bundled[0].parent == d:
        return list(bundled)
    return sorted(d.glob("model.bin.part*"), key=lambda p: p.name)


def _joined_ct2_dir(d: Path, parts: list[Path]) -> Path:
    """A temporary CTranslate2 directory whose model.bin is the parts joined in order (removed at exit):
    faster-whisper reads only a whole model.bin."""
    import atexit
    import shutil
    import tempfile
    out = Path(tempfile.mkdtemp(prefix="whisperkit-bench-ct2-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    with open(out / "model.bin", "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    for f in d.iterdir():
        if not f.name.startswith("model.bin"):
            (out / f.name).symlink_to(f)
    return out


class FasterWhisperEngine(Engine):
    kind = "peer"

    def __init__(self, compute_type: str, threads: int, weights, model_dir: str | Path | None = None):
        self.compute_type = compute_type
        self.name = "faster-whisper-" + ("fp32" if compute_type == "float32" else compute_type)
        self.threads = threads
        self.weights = weights
        try:
            import faster_whisper
        except ImportError as exc:
            raise EngineUnavailable(f"faster-whisper is not installed ({exc.__class__.__name__}: {exc})") from None
        import ctranslate2
        self.version = f"{faster_whisper.__version__} (ctranslate2 {ctranslate2.__version__})"
        self.model_dir = Path(model_dir) if model_dir is not None else _ct2_dir(weights)

    def load(self) -> None:
        from faster_whisper import WhisperModel
        self.model = WhisperModel(str(self.model_dir), device="cpu", compute_type=self.compute_type,
                                  cpu_threads=self.threads, num_workers=1)

    def transcribe(self, audio: np.ndarray, beam: int = 1) -> list[int]:
        # faster-whisper's defaults are beam_size 5, best_of 5 and openai's temperature fallback
        segments, _info = self.model.transcribe(np.asarray(audio, np.float32), beam_size=beam, best_of=5,
                                                language=None if self.weights is None or self.weights.dims.is_multilingual else "en")
        return [int(t) for s in segments for t in s.tokens]


def openai_state_dict(weights) -> dict:
    """openai-whisper's state dict (names and split Q/K/V) from our canonical float32 tensors."""
    t = weights.tensors
    d = weights.dims
    sd: dict[str, np.ndarray] = {}

    def lin(dst: str, w: np.ndarray, b: np.ndarray | None) -> None:
        sd[dst + ".weight"] = w
        if b is not None:
            sd[dst + ".bias"] = b

    def copy(dst: str, src: str) -> None:
        sd[dst] = t[src]

    def self_attn(p: str, n: int) -> None:
        qkv_w, qkv_b = t[f"{p}.attn.qkv.weight"], t[f"{p}.attn.qkv.bias"]
        lin(f"{p}.attn.query", qkv_w[:n], qkv_b[:n])
        lin(f"{p}.attn.key", qkv_w[n:2 * n], None)  # openai's key projection has no bias
        lin(f"{p}.attn.value", qkv_w[2 * n:], qkv_b[2 * n:])
        lin(f"{p}.attn.out", t[f"{p}.attn.out.weight"], t[f"{p}.attn.out.bias"])
        for ln in ("attn_ln", "mlp_ln"):
            lin(f"{p}.{ln}", t[f"{p}.{ln}.weight"], t[f"{p}.{ln}.bias"])
        lin(f"{p}.mlp.0", t[f"{p}.mlp.fc1.weight"], t[f"{p}.mlp.fc1.bias"])
        lin(f"{p}.mlp.2", t[f"{p}.mlp.fc2.weight"], t[f"{p}.mlp.fc2.bias"])

    for name in ("encoder.conv1.weight", "encoder.conv1.bias", "encoder.conv2.weight", "encoder.conv2.bias",
                 "encoder.positional_embedding", "encoder.ln_post.weight", "encoder.ln_post.bias",
                 "decoder.token_embedding.weight", "decoder.positional_embedding", "decoder.ln.weight", "decoder.ln.bias"):
        copy(name, name)
    for i in range(d.n_audio_layer):
        self_attn(f"encoder.blocks.{i}", d.n_audio_state)
    n = d.n_text_state
    for i in range(d.n_text_layer):
        p = f"decoder.blocks.{i}"
        self_attn(p, n)
        lin(f"{p}.cross_attn_ln", t[f"{p}.cross_attn_ln.weight"], t[f"{p}.cross_attn_ln.bias"])
        lin(f"{p}.cross_attn.query", t[f"{p}.cross_attn.query.weight"], t[f"{p}.cross_attn.query.bias"])
        kv_w, kv_b = t[f"{p}.cross_attn.kv.weight"], t[f"{p}.cross_attn.kv.bias"]
        lin(f"{p}.cross_attn.key", kv_w[:n], None)
        lin(f"{p}.cross_attn.value", kv_w[n:], kv_b[n:])
        lin(f"{p}.cross_attn.out", t[f"{p}.cross_attn.out.weight"], t[f"{p}.cross_attn.out.bias"])
    return sd


class OpenAIWhisperEngine(Engine):
    kind = "peer"
    name = "openai-whisper"

    def __init__(self, threads: int, weights):
        self.threads = threads
        self.weights = weights
        try:
            import torch  # noqa: F401
            import whisper  # noqa: F401
            import whisper.model  # noqa: F401
        except ImportError as exc:
            raise EngineUnavailable(f"openai-whisper is not installed ({exc.__class__.__name__}: {exc})") from None
        self.version = f"{whisper.__version__} (torch {torch.__version__})"

    def load(self) -> None:
        import torch
        import whisper.model as wm
        torch.set_num_threads(self.threads)
        d = self.weights.dims
        dims = wm.ModelDimensions(n_mels=d.n_mels, n_audio_ctx=d.n_audio_ctx, n_audio_state=d.n_audio_state,
                                  n_audio_head=d.n_audio_head, n_audio_layer=d.n_audio_layer, n_vocab=d.n_vocab,
                                  n_text_ctx=d.n_text_ctx, n_text_state=d.n_text_state, n_text_head=d.n_text_head,
                                  n_text_layer=d.n_text_layer)
        model = wm.Whisper(dims)
        state = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in openai_state_dict(self.weights).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in ("alignment_heads", "decoder.mask")]
        if missing or unexpected:
            raise EngineUnavailable(f"openai-whisper state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        heads = self.weights.alignment_heads
        if heads is not None and len(heads):
            mask = torch.zeros(d.n_text_layer, d.n_text_head, dtype=torch.bool)
            for layer, head in np.asarray(heads).reshape(-1, 2):
                mask[int(layer), int(head)] = True
            model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
        self.model = model.eval()

    def transcribe(self, audio: np.ndarray, beam: int = 1) -> list[int]:
        import whisper
        result = whisper.transcribe(self.model, np.asarray(audio, np.float32), fp16=False, verbose=None,
                                    language=None if self.weights.dims.is_multilingual else "en", **beam_options(beam))
        return [int(t) for s in result["segments"] for t in s["tokens"]]


# ---------------------------------------------------------------------------------------- lookup
def make_peer(name: str, threads: int, weights) -> Engine:
    if name == "faster-whisper-fp32":
        return FasterWhisperEngine("float32", threads, weights)
    if name == "faster-whisper-int8":
        return FasterWhisperEngine("int8", threads, weights)
    if name == "openai-whisper":
        return OpenAIWhisperEngine(threads, weights)
    raise ValueError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")


def make_engine(spec: str, threads: int, model: str = "tiny.en", weights=None) -> Engine:
    """`backend:<name>` or `peer:<name>` -> an engine (not loaded yet)."""
    kind, _, name = spec.partition(":")
    if kind == "backend":
        return BackendEngine(name, model, weights)
    if kind == "peer":
        if weights is None:
            from whisperkit.weights import resolve_model
            weights = resolve_model(model)
        return make_peer(name, threads, weights)
    raise ValueError(f"engine spec must be backend:<name> or peer:<name>, got {spec!r}")


def peer_available(name: str) -> str | None:
    """None when the peer's packages import, else why not (cheap: no model is built)."""
    mods = {"faster-whisper-fp32": ("faster_whisper", "ctranslate2"), "faster-whisper-int8": ("faster_whisper", "ctranslate2"),
            "openai-whisper": ("torch", "whisper")}[name]
    for m in mods:
        if importlib.util.find_spec(m) is None:
            return f"{m} is not installed (pip install {'openai-whisper' if m == 'whisper' else m.replace('_', '-')})"
    return None
