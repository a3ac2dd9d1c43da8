"""The base class every kernel backend derives from, and the dispatcher that binds ops to backends."""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, Callable

import pluggy

from .contract import API_VERSION, OPS

log = logging.getLogger("whisperkit")

#: Marks a plugin's ``whisperkit_backends()`` implementation.
hookimpl = pluggy.HookimplMarker("whisperkit")


class Backend:
    """A kernel backend: implements any subset of the ops in `whisperkit.contract.OPS`.

    An op is implemented by a method of the op's name taking the arguments of the contract, e.g.
    ``def gelu(self, x)`` or ``def linear(self, x, w)``.  Weighted ops may define
    ``prepare_<op>(self, **weights)``, called once at load time; its result is the ``w`` handed to
    the op at run time.  Without it, ``w`` is a namespace holding the weights as given.
    """

    name: str = ""
    version: str = "0"
    api_version: int = API_VERSION
    description: str = ""
    #: True when the ops may run from several threads at once (no shared scratch state).  When
    #: False, whisperkit serialises the models that use this backend instance with one lock.
    thread_safe: bool = False

    def unavailable_reason(self) -> str | None:
        """None when usable on this machine, else a sentence saying why not (missing library...)."""
        return None

    def implemented_ops(self) -> tuple[str, ...]:
        return tuple(op for op in OPS if callable(getattr(self, op, None)))

    def supports(self, op: str, **args: Any) -> bool:
        """Whether this backend runs `op` for these load-time arguments (weights, n_head...).

        Called at bind time; False sends that op (for this weight set) to the reference."""
        return op in self.implemented_ops()

    def prepare(self, op: str, weights: dict[str, Any], ops: "Ops") -> Any:
        """Turn load-time weights into what `op` receives as ``w``.  `ops` is the dispatcher,
        for backends whose coarse ops are compositions of other ops."""
        fn = getattr(self, "prepare_" + op, None)
        return fn(**weights) if fn is not None else SimpleNamespace(**weights)

    def set_num_threads(self, n: int) -> None:
        """Limit the backend's own thread pools to `n` threads (BLAS, OpenMP, Numba, ORT...)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.version}>"


class BoundOp:
    """An op with its prepared weights: ``bound(x, *rest)`` runs ``impl(x, w, *rest)``."""

    __slots__ = ("op", "fn", "w", "backend_name")

    def __init__(self, op: str, fn: Callable, w: Any, backend_name: str):
        self.op, self.fn, self.w, self.backend_name = op, fn, w, backend_name

    def __call__(self, x, *args, **kwargs):
        return self.fn(x, self.w, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.op} on {self.backend_name}>"


class Ops:
    """Dispatches each op to the backend under use, or to the reference where it does not support it.

    Weighted ops are bound once (`bind`); weightless ops (`gelu`, `attention`, `attention_weights`)
    are plain methods chosen at construction.  Every fallback is logged once and kept in `fallbacks`.
    """

    def __init__(self, backend: Backend, reference: Backend):
        self.backend = backend
        self.reference = reference
        self.fallbacks: set[str] = set()
        for op, spec in OPS.items():
            if not spec.weights:
                impl = self._choose(op)
                setattr(self, op, getattr(impl, op))

    def _choose(self, op: str, **args: Any) -> Backend:
        if self.backend is not self.reference and self.backend.supports(op, **args):
            return self.backend
        if self.backend is not self.reference and op not in self.fallbacks:
            self.fallbacks.add(op)
            log.info("backend %s: op %s falls back to the reference", self.backend.name, op)
        return self.reference

    def bind(self, op: str, **weights: Any) -> BoundOp:
        if op not in OPS:
            raise KeyError(f"unknown op {op!r}; the contract has {sorted(OPS)}")
        impl = self._choose(op, **weights)
        return BoundOp(op, getattr(impl, op), impl.prepare(op, weights, self), impl.name)
