"""Connecting to Ray: joining a cluster by its address, or starting a private local one; and sizing the actor
pool against the cluster's CPUs."""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile

from ..errors import WhisperkitError

_TOKEN = secrets.token_hex(32)  # one per process: Ray's token loader caches the first token it reads


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise WhisperkitError(f"transcription on Ray needs Ray Data, which is not installed ({exc}); "
                              "install it with: pip install 'whisperkit[ray]'") from None
    return ray


@contextlib.contextmanager
def connected(address: str | None):
    """Ray, connected for the duration of the block.

    None (or "local"): a local Ray of our own on this machine's cores, in a temporary directory of its own,
    stopped and removed at the end; it is never a cluster found running here (Ray's own default would join
    one).  An address ("host:port", "auto", "ray://host:10001"): that cluster, left running.  A Ray already
    initialised in this process is used as it is."""
    ray = import_ray()
    with _quiet_ray_logs():
        with _connect(ray, address):
            yield ray


#: Ray's loggers that speak on the driver's stderr of what the job handles itself: Ray Data's execution notes and
#: its "progress bars disabled" (the job draws its own bar), the private cluster's token notice
_NOISY = ("ray.data", "ray._private.authentication")


@contextlib.contextmanager
def _quiet_ray_logs():
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _connect(ray, address):
    if ray.is_initialized():
        yield
        return
    if address not in (None, "local"):
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except Exception as exc:  # ConnectionError, AuthenticationError, a malformed address
            raise WhisperkitError(f"cannot join the Ray cluster at {address}: {type(exc).__name__}: "
                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
        try:
            yield
        finally:
            ray.shutdown()
        return
    with _private_auth():
        temp_dir = tempfile.mkdtemp(prefix="wkray-")  # short: Ray's unix sockets live under it
        try:
            ray.init(address="local", _temp_dir=temp_dir, include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False, configure_logging=True)
            try:
                yield
            finally:
                ray.shutdown()
        finally:
            shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def _private_auth():
    """The token of the local cluster (Ray turns token authentication on for a local cluster) held only in this
    process's environment and its children's, unless the user set up Ray's authentication: Ray would otherwise
    write a token to ~/.ray/auth_token."""
    if any(os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        yield
        return
    os.environ["RAY_AUTH_TOKEN"] = _TOKEN
    try:
        yield
    finally:
        os.environ.pop("RAY_AUTH_TOKEN", None)


def node_cpus(ray) -> list[int]:
    """CPUs of each live node of the cluster."""
    return [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def size_pool(cpus: list[int], actors: int | None, threads: int) -> int:
    """The number of actors of `threads` CPUs each: `actors`, checked to fit on the nodes (an actor's CPUs are on
    one node), or as many as fit.  Decoding asks for no CPU of its own (see transcribe_dataset), so the actors
    may take every core."""
    slots = sum(c // threads for c in cpus)
    where = f"the cluster's nodes have {', '.join(map(str, cpus)) or 'no'} CPUs"
    if slots == 0:
        raise WhisperkitError(f"threads_per_actor={threads}: no node has {threads} CPUs for one actor ({where})")
    if actors is None:
        return slots
    if actors > slots:
        raise WhisperkitError(f"actors={actors} with threads_per_actor={threads} need {actors} places of "
                              f"{threads} CPUs on one node; {where}, room for {slots}")
    return actors
