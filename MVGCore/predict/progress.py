"""How ``python -m MVGCore.predict`` reports progress: a log for people, JSON lines for programs.

The JSON protocol is what the Slicer module's child-process runner reads
(:mod:`MVGSlicerLib.runner`): one object per stdout line, flushed at once, with ``event`` one of
``started`` (``device``), ``progress`` (``done``, ``total``) and ``done`` (``output``).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ..types import ProgressFn

log = logging.getLogger("MVGCore.predict")

FORMATS = ("log", "json")


def emit_event(event: str, **fields: Any) -> None:
    """One line of the ``--progress json`` protocol on stdout, flushed at once for a reading parent."""
    print(json.dumps({"event": event, **fields}), flush=True)


def json_progress() -> ProgressFn:
    return lambda done, total: emit_event("progress", done=done, total=total)


def log_progress() -> ProgressFn:
    """Log each further tenth of the work, and the end."""
    last = [0]

    def report(done: int, total: int) -> None:
        if done == total or 10 * done // max(total, 1) > 10 * last[0] // max(total, 1):
            last[0] = done
            log.info("%d/%d slices", done, total)

    return report
