"""Which backends are under test, their declared expected failures, and where the shared data lives."""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
from pathlib import Path

from whisperkit.backend import Backend
from whisperkit.errors import BackendError
from whisperkit.registry import Registry, get_registry

ENV_BACKEND = "WHISPERKIT_CONFORMANCE_BACKEND"
ENV_BACKEND_MODULE = "WHISPERKIT_CONFORMANCE_BACKEND_MODULE"
ENV_SHARED = "WHISPERKIT_SHARED"


def _split(values) -> list[str]:
    out: list[str] = []
    for v in values or ():
        out += [s.strip() for s in str(v).split(",") if s.strip()]
    return out


def resolve(names, modules, registry: Registry | None = None) -> tuple[list[Backend], list[tuple[str, str]]]:
    """The backends to test, and (name, reason) for those asked for (or listed by 'all') that are not usable.

    `names`: backend names or 'all'; `modules`: importable modules holding a ``whisperkit_backends`` hook,
    every backend of which is tested.  Unknown names are an error; so is asking for nothing at all."""
    reg = registry or get_registry()
    names, modules = _split(names), _split(modules)
    chosen: list[str] = []
    unusable: list[tuple[str, str]] = []
    for mod in modules:
        provided = reg.register_module(mod)
        if not provided:
            raise BackendError(f"module {mod!r} provides no backend (no whisperkit_backends() hook returning backends)")
        chosen += provided
    for name in names:
        if name == "all":
            for n in reg.names():
                (chosen.append(n) if reg.infos[n].usable else unusable.append((n, reg.infos[n].reason)))
        else:
            if name not in reg.infos:
                raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(reg.names()) or 'none'}")
            chosen.append(name)
    if not chosen and not unusable:
        raise BackendError(f"no backend to test: pass --whisperkit-backend NAME (or 'all'), or set {ENV_BACKEND}")
    backends, seen = [], set()
    for n in chosen:
        if n in seen:
            continue
        seen.add(n)
        info = reg.infos[n]
        if not info.usable:
            if "all" in names and n not in names:
                unusable.append((n, info.reason))
                continue
            raise BackendError(f"backend {n!r} is not usable here: {info.reason}")
        backends.append(info.backend)
    return backends, unusable


# --- expected failures ---------------------------------------------------------------------------------
def declared_xfails(backend: Backend) -> dict[str, str]:
    """{case id or glob pattern: reason} a backend declares it does not meet.

    ``conformance_xfail`` on the backend is either a dict, a method returning one, or a file path (relative
    to the backend's module) whose lines read ``case_id  reason...`` (``#`` starts a comment)."""
    decl = getattr(backend, "conformance_xfail", None)
    if decl is None:
        return {}
    if callable(decl):
        decl = decl()
    if isinstance(decl, dict):
        return {str(k): str(v) for k, v in decl.items()}
    if isinstance(decl, (str, os.PathLike)):
        path = Path(decl)
        if not path.is_absolute():
            path = Path(inspect.getfile(type(backend))).resolve().parent / path
        if not path.is_file():
            raise BackendError(f"backend {backend.name}: conformance_xfail file {path} does not exist")
        out = {}
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) < 2:
                raise BackendError(f"{path}:{lineno}: expected 'case_id reason', got {line!r} (every expected failure needs its reason)")
            out[parts[0]] = parts[1].strip()
        return out
    raise BackendError(f"backend {backend.name}: conformance_xfail must be a dict, a method returning one, or a file "
                       f"path; got {type(decl).__name__}")


def match_xfail(xfails: dict[str, str], case_id: str) -> str | None:
    for pattern, reason in xfails.items():
        if pattern == case_id or fnmatch.fnmatchcase(case_id, pattern):
            return reason
    return None


def unmatched_xfails(xfails: dict[str, str], case_ids) -> list[str]:
    ids = list(case_ids)
    return [p for p in xfails if not any(p == c or fnmatch.fnmatchcase(c, p) for c in ids)]


# --- shared data -------------------------------------------------------------------------------------------
def find_shared() -> tuple[Path | None, str]:
    """(directory, '') for the shared test data (audio/, golden/), or (None, why not)."""
    env = os.environ.get(ENV_SHARED, "").strip()
    if env:
        p = Path(env)
        if (p / "golden").is_dir():
            return p, ""
        return None, f"{ENV_SHARED}={env} has no golden/ directory"
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for d in [start, *start.parents]:
            cand = d / "shared"
            if (cand / "golden").is_dir():
                return cand, ""
    return None, (f"shared data not found: set {ENV_SHARED} to the directory holding golden/ and audio/ "
                  f"(searched for a sibling shared/ above {', '.join(map(str, starts))})")


def import_module(name: str):
    return importlib.import_module(name)
