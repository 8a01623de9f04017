"""``python -m MVGCore.evaluate``: runs :func:`main` as a command (one-line errors, exit status 2)."""

from __future__ import annotations

import sys

from .. import cli
from . import main

sys.exit(cli.run(main, "python -m MVGCore.evaluate"))
