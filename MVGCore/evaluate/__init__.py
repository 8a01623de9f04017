"""Measure the model against classical baselines on the same cases, prompts and seeds.

``python -m MVGCore.evaluate`` (:mod:`.cli`) is the command; :func:`evaluate` is the same run for a
program (``scripts/make_model_card.py``, training's volume validation and the benchmarks use its
parts). One module per job:

- :mod:`.trials`: a case posed as a trial (prompt slices, degraded input, reference), made once
- :mod:`.methods`: the model and the baselines as methods that answer a trial alike
- :mod:`.scoring`: the metrics of an answer, on the voxels that were not prompts
- :mod:`.harness`: the loop over cases, tasks and methods
- :mod:`.report`: the per-trial records, the summary table, the JSON files and the figures
- :mod:`.cli`: the command line
"""

from __future__ import annotations

from .cli import main
from .harness import evaluate
from .methods import BASELINES, NEEDS_SLICES, PEERS, InputAsItCame, Method, build_methods, run_method
from .report import summary_table
from .scoring import METRICS, score
from .trials import BLANK_CONTRAST, SINGLE_IMAGES, Settings, Trial, make_trial

__all__ = [
    "BASELINES",
    "BLANK_CONTRAST",
    "METRICS",
    "NEEDS_SLICES",
    "PEERS",
    "SINGLE_IMAGES",
    "InputAsItCame",
    "Method",
    "Settings",
    "Trial",
    "build_methods",
    "evaluate",
    "main",
    "make_trial",
    "run_method",
    "score",
    "summary_table",
]
