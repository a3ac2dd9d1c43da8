"""The backend registry: a pluggy PluginManager fed from the ``whisperkit.backends`` entry points.

Built-in backends are found through the very same entry points as third-party ones.  A plugin that
fails to import, or whose backend reports itself unusable or speaks another API version, is listed as
unavailable with the reason and never breaks the others.

``get("auto")`` picks the usable backend of highest `Backend.auto_rank` (a third-party backend declares
its own).  A backend is loaded (`Backend.load`: its library, its compiled kernels) only when chosen; one
that fails to load is marked unusable with the reason, logged, and `auto` goes on to the next.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import logging

import pluggy

from . import hookspecs
from .backend import Backend, Ops
from .hookspecs import hookimpl  # noqa: F401  (re-exported)
from .contract import API_VERSION
from .errors import BackendError

log = logging.getLogger("whisperkit")

ENTRY_POINT_GROUP = "whisperkit.backends"
REFERENCE = "numpy"
AUTO = "auto"


@dataclass
class BackendInfo:
    name: str
    backend: Backend | None
    version: str = "?"
    ops: tuple[str, ...] = ()
    usable: bool = False
    reason: str = ""
    plugin: str = ""  # the entry point or module that provided it
    auto_rank: float | None = None
    loaded: bool = False  # Backend.load() has run (successfully, or usable is now False)


class Registry:
    """Backends by name.  Entry points are imported lazily: `get(name)` imports only that plugin (and
    the reference), so a process using one backend does not pay for importing the others; `infos`
    and `names()` import them all."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self._infos: dict[str, BackendInfo] = {}
        self._pending: dict[str, importlib.metadata.EntryPoint] = {}
        #: what the last `auto` choice passed over: (backend name, reason), in rank order
        self.auto_skipped: list[tuple[str, str]] = []

    @property
    def infos(self) -> dict[str, BackendInfo]:
        for name in list(self._pending):
            self._load(name)
        return self._infos

    def loaded(self) -> dict[str, BackendInfo]:
        """The backends imported so far (no import happens)."""
        return self._infos

    def _load(self, name: str) -> None:
        ep = self._pending.pop(name, None)
        if ep is None:
            return
        try:
            plugin = ep.load()
        except Exception as exc:
            self._infos[ep.name] = BackendInfo(ep.name, None, reason=f"import of {ep.value} failed: {type(exc).__name__}: {exc}", plugin=ep.value)
            return
        self._add_plugin(plugin, ep.value, ep.name)

    def _add_plugin(self, plugin: Any, label: str, key: str | None = None) -> None:
        """Register a plugin object; problems are recorded under `key` (the entry point's name)."""
        key = key or label
        try:
            self.pm.register(plugin, name=label)
        except ValueError:  # already registered under this name
            return
        impls = [i for i in self.pm.hook.whisperkit_backends.get_hookimpls() if i.plugin is plugin]
        if not impls:
            marked = "" if getattr(plugin, "whisperkit_backends", None) is None else " marked @whisperkit.hookimpl"
            self._infos.setdefault(key, BackendInfo(key, None, reason=f"plugin {label} has no whisperkit_backends() hook{marked}", plugin=label))
            return
        for impl in impls:
            # each implementation is called on its own, not all through pm.hook: one that raises must not break the others
            try:
                backends = list(impl.function())
            except Exception as exc:
                self._infos[key] = BackendInfo(key, None, reason=f"whisperkit_backends() of {label} raised {type(exc).__name__}: {exc}", plugin=label)
                continue
            for b in backends:
                self._add_backend(b, label)

    def _add_backend(self, b: Backend, label: str) -> None:
        info = BackendInfo(b.name or label, b, version=str(getattr(b, "version", "?")), plugin=label)
        try:
            rank = getattr(b, "auto_rank", None)
            info.auto_rank = None if rank is None else float(rank)
            info.ops = tuple(b.implemented_ops())
            if getattr(b, "api_version", None) != API_VERSION:
                info.reason = (f"backend {info.name} speaks op-contract API version {getattr(b, 'api_version', None)!r}, "
                               f"whisperkit needs {API_VERSION}")
            else:
                reason = b.unavailable_reason()
                info.reason = reason or ""
            info.usable = not info.reason
        except Exception as exc:
            info.reason = f"{type(exc).__name__}: {exc}"
        self._infos[info.name] = info

    def register_module(self, module: str | ModuleType) -> list[str]:
        """Register a backend module not installed as a plugin (``--backend-module``)."""
        label = module if isinstance(module, str) else module.__name__
        if isinstance(module, str):
            try:
                module = importlib.import_module(module)
            except Exception as exc:
                raise BackendError(f"cannot import backend module {label!r}: {type(exc).__name__}: {exc}") from exc
        before = set(self._infos)
        self._add_plugin(module, label)
        return sorted(set(self._infos) - before) or [n for n, i in self._infos.items() if i.plugin == label]

    def register_backend(self, backend: Backend) -> None:
        """Register one backend object directly (tests, notebooks)."""
        self._add_backend(backend, type(backend).__module__)

    def names(self) -> list[str]:
        return sorted(self.infos)

    def _ready(self, info: BackendInfo) -> bool:
        """Load a usable backend's kernels once; a failure makes it unusable, with the reason."""
        if info.usable and not info.loaded:
            info.loaded = True
            try:
                info.backend.load()
                info.version = str(getattr(info.backend, "version", info.version))  # some learn it at load
            except Exception as exc:
                info.usable = False
                info.reason = f"loading failed: {type(exc).__name__}: {exc}"
                log.warning("backend %s cannot be used: %s", info.name, info.reason)
        return info.usable

    def load_all(self) -> None:
        """Load every usable backend, so that `usable` says whether each really loads here (listings)."""
        for info in self.infos.values():
            self._ready(info)

    def get(self, name: str, compute_type: str = "float32") -> Backend:
        """The backend of this name, loaded; "auto": the fastest usable one that implements `compute_type`."""
        if name == AUTO:
            return self.auto(compute_type)
        self._load(name)
        info = self._infos.get(name)
        if info is None:
            raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(self.names()) or 'none'} "
                               f"(or {AUTO!r}: the fastest usable one)")
        if not self._ready(info):
            raise BackendError(f"backend {name!r} is not usable here: {info.reason}")
        return info.backend

    def auto_order(self) -> list[BackendInfo]:
        """Every backend `auto` considers (a rank declared), best first; usable or not."""
        ranked = [i for i in self.infos.values() if i.auto_rank is not None]
        return sorted(ranked, key=lambda i: (-i.auto_rank, i.name))

    def auto(self, compute_type: str = "float32") -> Backend:
        """The usable backend of highest rank that implements `compute_type`.  Those passed over are in
        `auto_skipped` with the reason and logged; the reference is the last resort."""
        self.auto_skipped = []
        for info in self.auto_order():
            if compute_type not in info.backend.compute_types:  # its int8 ops would all run on the reference
                self.auto_skipped.append((info.name, f"does not implement compute type {compute_type}"))
                continue
            if self._ready(info):
                broken = [(n, r) for n, r in self.auto_skipped if not r.startswith("does not implement")]
                if broken:  # a backend that should have been usable: say so
                    log.warning("backend auto: picked %s; passed over %s", info.name,
                                "; ".join(f"{n} ({r})" for n, r in self.auto_skipped))
                else:
                    log.info("backend auto: picked %s (rank %g)", info.name, info.auto_rank)
                return info.backend
            self.auto_skipped.append((info.name, info.reason))
        return self.reference()

    def auto_name(self, compute_type: str = "float32") -> str:
        return self.auto(compute_type).name

    def reference(self) -> Backend:
        return self.get(REFERENCE)

    def ops(self, name: str | Backend, compute_type: str = "float32") -> Ops:
        backend = name if isinstance(name, Backend) else self.get(name)
        return Ops(backend, self.reference(), compute_type)


def build_registry() -> Registry:
    pm = pluggy.PluginManager("whisperkit")
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        reg._pending.setdefault(ep.name, ep)
    if REFERENCE not in reg._pending:  # running from a source tree that was never pip-installed
        reg._add_plugin(importlib.import_module("whisperkit.backends.numpy_backend"), "whisperkit.backends.numpy_backend")
    return reg


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY

