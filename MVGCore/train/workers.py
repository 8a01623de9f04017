"""The data loader's worker processes: how they start, when they end, how their errors read.

Workers leave SIGINT and SIGTERM to the main process's :class:`~MVGCore.train.run_folder.StopFlag`:
a stop sent to the whole process group (Ctrl-C, ``kill -- -PGID``, a scheduler) reaches them too,
and a worker that died of it would fail the step the main process is finishing. Ignoring SIGTERM
also makes them deaf to the loader's own ``terminate()``, so when the loader could not shut them
down (a caller kept the error, and its traceback kept the loader) the interpreter's exit waited on
them forever. Each worker therefore also watches a flag that the main process raises when the run
ends (:meth:`WorkerLifetime.end`), and exits as soon as it sees it. The flag is a byte of shared
memory, polled: a ``multiprocessing.Event`` would make the main process wait for every waiter to
wake, and one whose worker has already exited never does.

A worker's error reaches the main process as torch's ``Caught ValueError in DataLoader worker
process 0`` with the worker's whole traceback as its text; :func:`next_batch` reduces it to the
worker's own reason, one line, and says at which step the data failed.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

USER_ERRORS = (ValueError, OSError, RuntimeError)
"""A worker's errors that are about the data (the user's to fix); anything else is a bug and keeps
its traceback text."""
_TORCH_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")


POLL_SECONDS = 0.2
"""How often a worker looks at the flag: how long it may outlive the end of its run."""


class WorkerLifetime:
    """The flag that ends this run's loader workers; :meth:`worker_init` is their ``worker_init_fn``."""

    def __init__(self) -> None:
        # The default context is the one the DataLoader starts its workers with, so the flag
        # reaches them by inheritance (fork) or is pickled while they are spawned (spawn).
        self.ended = multiprocessing.get_context().RawValue("b", 0)

    def worker_init(self) -> Callable[[int], None]:
        return functools.partial(start_worker, self.ended)

    def end(self) -> None:
        """The run is over (finished or failed): every worker exits now, whatever holds the loader."""
        self.ended.value = 1


def start_worker(ended: Any, _worker_id: int) -> None:
    """In a worker: leave stop signals to the main process and exit when the run has ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_when_set, args=(ended,), name="exit-when-run-ends", daemon=True).start()


def _exit_when_set(ended: Any) -> None:
    while not ended.value:
        time.sleep(POLL_SECONDS)
    os._exit(0)  # status 0: the main process's check of its workers must not take it for a crash


class LoaderFailed(Exception):
    """The loader could not make a step's batch: ``error`` is what it raised, ``reason`` that
    error's own message on one line, ``in_worker`` whether a worker process raised it."""

    def __init__(self, error: BaseException, reason: str, in_worker: bool) -> None:
        super().__init__(reason)
        self.error, self.reason, self.in_worker = error, reason, in_worker

    def rebuilt(self, message: str) -> BaseException:
        """An error of the original type with ``message`` (RuntimeError if that type needs more)."""
        try:
            return type(self.error)(message)
        except Exception:  # a type whose constructor takes other arguments
            return RuntimeError(message)


def next_batch(batches: Iterator[Any]) -> Any:
    """The next batch; a data error (see :data:`USER_ERRORS`) raises :class:`LoaderFailed`."""
    try:
        return next(batches)
    except USER_ERRORS as error:
        reason, in_worker = worker_reason(str(error))
        raise LoaderFailed(error, reason, in_worker) from error


def worker_reason(text: str) -> tuple[str, bool]:
    """(the error's own message on one line, whether ``text`` is torch's wrapper of a worker error).

    The wrapper is ``Caught <Type> in DataLoader worker process N.`` then ``Original Traceback``
    and the traceback's lines; its last unindented line that looks like ``Name: message`` starts
    the worker's error, whose message may continue on the following lines.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not _TORCH_WRAPPER.match(lines[0]):
        return " | ".join(line.strip() for line in lines), False
    starts = [i for i, line in enumerate(lines[2:], 2) if _EXCEPTION_LINE.match(line)]
    if not starts:
        return lines[0], True
    reason = " | ".join(line.strip() for line in lines[starts[-1] :])
    name, _, message = reason.partition(": ")
    return (message or name), True
