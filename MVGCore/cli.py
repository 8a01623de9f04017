"""What every MVGCore command line does with a user's mistake: one line, exit status 2.

A wrong path, a missing flag or a file on the wrong grid is the user's to fix, and a traceback
hides the one line that says how. :func:`run` turns the errors a user can cause (``ValueError``,
``OSError``, ``RuntimeError``; every message names the file or argument) into
``<prog>: error: <message>`` on stderr and exit status 2, the status argparse uses for usage
errors. Ctrl-C prints one line and exits with 130. ``--debug`` (or ``MVG_DEBUG=1``) shows the full
traceback instead. Any other exception is a bug and keeps its traceback.

While a command runs, SIGTERM raises ``SystemExit(143)`` (:mod:`MVGCore.termination`), so the
temporary files of atomic writes are removed when it is killed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .termination import sigterm_raises

USER_ERRORS = (ValueError, OSError, RuntimeError)
"""What bad input raises; anything else is a bug and is shown with its traceback."""
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MVG_DEBUG"
ERROR_STATUS = 2
INTERRUPTED_STATUS = 130


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)"
    )


def debugging(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def run(main: Callable[[list[str]], int], prog: str, argv: Sequence[str] | None = None) -> int:
    """``main(argv)``'s exit status; a user error is reported as one line with status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with sigterm_raises():
        try:
            return main(argv)
        except USER_ERRORS as error:
            if debugging(argv):
                raise
            print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
            return ERROR_STATUS
        except KeyboardInterrupt:
            if debugging(argv):
                raise
            print(f"{prog}: interrupted", file=sys.stderr)
            return INTERRUPTED_STATUS


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a multi-line message is joined with ' | ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " | ".join(lines) or type(error).__name__


def attach_dash_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """``--window -100,200`` as ``--window=-100,200``.

    argparse reads a value that starts with '-' (and is not a plain negative number) as the next
    option, so a window with a negative low end would need the ``=`` form otherwise.
    """
    argv = list(argv)
    joined: list[str] = []
    index = 0
    while index < len(argv):
        item = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if item in options and following[:1] == "-" and following[1:2] in tuple("0123456789."):
            joined.append(f"{item}={following}")
            index += 2
        else:
            joined.append(item)
            index += 1
    return joined


def check_output_folder(path: Path, what: str) -> None:
    """Refuse, before any work, an output whose folder is missing or not writable (``what``
    names the output in the message, e.g. ``--output out.nrrd``)."""
    folder = Path(os.path.abspath(path)).parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{what}: folder {folder} is not writable")
