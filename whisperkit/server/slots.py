"""The decoding slots: a fixed number of threads that run transcriptions, and a bounded number of requests
let in at once.  A request beyond the bound is answered 429 at once, with a Retry-After, before its body is
read: waiting requests cost a temporary file each, never an unbounded queue in memory."""
from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .errors import ApiError


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Slots:
    """`slots` decoding threads; at most `slots + max_queue` requests admitted (uploading, waiting for a slot,
    or decoding).  `admit` and the counters run on the event loop's thread only; `run` hands the work to a
    slot and awaits it."""

    def __init__(self, slots: int, max_queue: int):
        self.slots, self.max_queue = slots, max_queue
        self.admitted = 0
        self._decoding = 0
        self._count_lock = threading.Lock()  # `_decoding` is changed by the slot threads
        self._mean_seconds: float | None = None  # moving average of a decode's time, for Retry-After
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="whisperkit-slot")

    @property
    def decoding(self) -> int:
        return self._decoding

    @property
    def waiting(self) -> int:
        return self.admitted - self._decoding

    @contextlib.contextmanager
    def admit(self):
        """Hold one of the `slots + max_queue` places for the request's whole life, or raise 429."""
        if self.admitted >= self.slots + self.max_queue:
            raise ApiError(429, f"the server is busy: {self.slots} decoding slots and {self.max_queue} queued requests "
                                "are taken; retry after the time in the Retry-After header",
                           type="server_busy", code="queue_full", headers={"Retry-After": str(self.retry_after())})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free: the requests ahead, shared by the slots, times a
        decode's mean time; at least 1."""
        if self._mean_seconds is None:
            return 1
        ahead = max(1, self.admitted - self.slots + 1)
        return max(1, math.ceil(self._mean_seconds * ahead / self.slots))

    async def run(self, fn, *args):
        """`fn(*args)` on a decoding slot, awaited without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed, fn, args)

    def _timed(self, fn, args):
        with self._count_lock:
            self._decoding += 1
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            seconds = time.monotonic() - start
            with self._count_lock:
                self._decoding -= 1
                self._mean_seconds = seconds if self._mean_seconds is None else 0.8 * self._mean_seconds + 0.2 * seconds

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
