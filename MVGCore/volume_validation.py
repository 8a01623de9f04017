"""Validation the way users run the model: whole held-out volumes, a few prompt slices, Dice on the rest.

The training-style validation samples (two random slices, random crops) say little about what a
user gets; this runs :class:`MVGCore.predict.Predictor` on whole labelled volumes exactly as
``python -m MVGCore.evaluate`` does (same prompt choice and scoring), so its numbers are the
ones a model card reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .model import MVGModel

if TYPE_CHECKING:  # training imports this module on machines without SimpleITK (a GPU image)
    from .data.sources import Case

log = logging.getLogger(__name__)


def validate_volumes(
    model: MVGModel, cases: Sequence[str | Case], n_prompts: int = 2, **options: object
) -> dict[str, float]:
    """``dice_volume/<case>`` for each case and their mean ``dice_volume``.

    ``cases`` are open-sample ids (``source/name``, as a training config names them) or
    :class:`~MVGCore.data.sources.Case` records. ``options`` go to ``Predictor.segment``. The
    model's train/eval mode is left as it was.
    """
    from .data import open_samples
    from .evaluate import Method, Settings, make_trial, run_method, score
    from .predict import Predictor

    settings = Settings(tasks=("segment",), n_prompts=n_prompts)
    predictor = Predictor(model, device=str(next(model.parameters()).device))
    method = Method("mvg", predictor, dict(options), model=True)
    results: dict[str, float] = {}
    ids = [c for c in cases if isinstance(c, str)]
    named = iter(open_samples.select(ids) if ids else [])
    for number, case in enumerate([next(named) if isinstance(c, str) else c for c in cases]):
        trial = make_trial(case, "segment", settings, number)
        if trial is None:
            log.warning("validation volume %s/%s cannot be segmented; skipped", case.dataset, case.case_id)
            continue
        dice = score(trial, run_method(method, trial, settings.axis), settings.axis)["dice"]
        results[f"dice_volume/{case.case_id}"] = dice
    finite = [v for v in results.values() if math.isfinite(v)]
    results["dice_volume"] = float(np.mean(finite)) if finite else float("nan")
    return results
