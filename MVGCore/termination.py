"""SIGTERM as an exception while files are being written, so that no temporary file stays behind.

The default action of SIGTERM (what ``kill``, a batch scheduler or a closing terminal sends) ends
the process at once: no ``finally`` or ``except`` block runs, and a half-written hidden temporary
file or store folder is left on the user's disk. Inside :func:`sigterm_raises` a SIGTERM raises
``SystemExit(143)`` instead (128 + 15, the status a shell reports for SIGTERM), so every cleanup on
the way out runs and the process still ends with the status its sender expects.

It takes over only where SIGTERM still has its default action and only in the main thread (the
only one that may set signal handlers); a program's own handler, such as training's clean stop,
is left alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGTERM_STATUS = 128 + signal.SIGTERM


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(SIGTERM_STATUS)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the block runs, SIGTERM raises ``SystemExit(143)`` (see the module docstring)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
