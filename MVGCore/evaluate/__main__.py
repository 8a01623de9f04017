"""``python -m MVGCore.evaluate``: :func:`.cli.main` run as a command (a user's mistake is one line,
exit status 2)."""

from __future__ import annotations

import sys

from ..cli import run
from .cli import PROG, main

sys.exit(run(main, PROG))
