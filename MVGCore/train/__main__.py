"""``python -m MVGCore.train`` (and ``torchrun -m MVGCore.train``): the training command line,
with a user's mistake reported in one line (:func:`MVGCore.cli.run`)."""

from __future__ import annotations

import sys

from MVGCore.cli import run
from MVGCore.train.cli import PROG, main

if __name__ == "__main__":
    sys.exit(run(main, PROG))
