"""``python -m MVGCore.predict``: the command line of :mod:`MVGCore.predict.cli`."""

import sys

from ..cli import run
from .cli import main

sys.exit(run(main, "python -m MVGCore.predict"))
