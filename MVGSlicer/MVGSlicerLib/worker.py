"""One persistent worker thread for runs, polled from the UI's main thread.

The engine runs off the main thread so the UI stays responsive; it is always the SAME thread
because cuDNN/cuBLAS keep per-thread caches. The UI never gets callbacks from this thread: it
polls :class:`RunHandle` from a timer, so MRML and Qt are only ever touched on the main thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from MVGCore.types import CancelToken, ProgressFn


class RunHandle:
    """A submitted run: its progress in slices, a cancel switch and, once done, its result."""

    def __init__(self) -> None:
        self.cancel_token = CancelToken()
        self.future: Future | None = None
        self._lock = threading.Lock()
        self._done, self._total = 0, 0

    def report(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = done, total

    @property
    def progress(self) -> tuple[int, int]:
        with self._lock:
            return self._done, self._total

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def result(self) -> Any:
        """The work's return value; re-raises its exception (Cancelled after a cancel)."""
        return self.future.result()


class Worker:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="MVGSlicerWorker")
        self._current: RunHandle | None = None

    @property
    def busy(self) -> bool:
        return self._current is not None and not self._current.done()

    def submit(self, work: Callable[[ProgressFn, CancelToken], Any]) -> RunHandle:
        """Start ``work(progress, cancel)`` on the worker thread; one run at a time."""
        if self.busy:
            raise RuntimeError("a run is already in progress; cancel it or wait for it to finish")
        handle = RunHandle()
        handle.future = self._executor.submit(work, handle.report, handle.cancel_token)
        self._current = handle
        return handle

    def shutdown(self) -> None:
        if self._current is not None:
            self._current.cancel()
        self._executor.shutdown(wait=True)
