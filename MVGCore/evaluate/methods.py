"""The methods that answer trials: the model (per ensemble mode and option variant) and the baselines.

All of them are called alike (``task(volume, [hole,] prompts, axis, cancel=..., **options)``), so
the harness treats the model and a classical baseline the same way. Beside the chosen baselines,
the quick peers a user would try first answer too (unless ``peers=False``), so the model is
measured against the cheapest thing that could replace it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..predict import ENSEMBLES
from ..types import TASKS, CancelToken
from .trials import Trial

log = logging.getLogger(__package__)  # one logger for the package, named as when it was one module

BASELINES = {
    "classical": ({}, TASKS),
    "classical-affine": ({"registration": "affine"}, TASKS),
    "classical-bm3d": ({"use_bm3d": True}, TASKS),
    "copy-nearest": ({"segmentation": "copy"}, ("segment",)),
    "fill-between": ({"segmentation": "fill"}, ("segment",)),
    "histogram-match": ({"synthesis_mapping": "match"}, ("synthesize",)),
    "noisy-input": (None, ("denoise",)),
}
"""Baseline names for ``--baselines`` -> (``ClassicalBaseline`` settings, the tasks it answers);
``None`` is :class:`InputAsItCame`."""
PEERS = ("copy-nearest", "fill-between", "histogram-match", "noisy-input")
"""Baselines a user tries first; they answer beside any model unless ``peers=False``."""
NEEDS_SLICES = ("copy-nearest", "fill-between")
"""Baselines whose prompts must be slices of the volume itself (they skip single images)."""


@dataclass(frozen=True)
class Method:
    """A named predictor (``Predictor`` or ``ClassicalBaseline``) and the options it is called with.

    ``model`` methods also get each case's voxel spacing and modality as options. A method
    answers only its ``tasks``; one that ``needs_slices`` (its prompts must be slices of the
    volume itself, e.g. copying or filling between them) does not answer single images.
    """

    name: str
    runner: Any
    options: dict[str, Any] = field(default_factory=dict)
    model: bool = False
    tasks: tuple[str, ...] = TASKS
    needs_slices: bool = False

    def answers(self, trial: Trial) -> bool:
        return trial.task in self.tasks and not (self.needs_slices and trial.single)


class InputAsItCame:
    """The noisy volume returned unchanged: the floor a denoiser has to clear (a denoiser that
    scores below it made the image worse than the noise did)."""

    def denoise(self, image: np.ndarray, prompts: Any = None, axis: int = 0, **_: Any) -> np.ndarray:
        return np.array(image, dtype=np.float32, copy=True)


def build_methods(
    predictor: Any,
    baselines: Sequence[str],
    k_prompts: int = 1,
    ensembles: Sequence[str] = ("average",),
    variants: Sequence[dict[str, Any]] = ({},),
    peers: bool = True,
) -> list[Method]:
    """The model once per ensemble mode and option variant, the baselines and, with ``peers``,
    the ``PEERS`` not listed (a peer whose package is missing is left out with a warning; a
    listed baseline raises).

    The model is "mvg" when there is one of each, else "mvg-<mode>" and/or "mvg[key=value,...]"
    (``variants`` are extra Predictor options, e.g. ``{"adapt_steps": 30}`` or ``{"zoom": "whole"}``,
    to compare in one run). A variant answers only the tasks that take all its options
    (``MVGCore.predict.task_options``): one that adapts, segment and denoise; one that zooms, segment.
    """
    from ..baselines import ClassicalBaseline

    for ensemble in ensembles:
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if len(ensembles) > 1 and k_prompts < 2:
        raise ValueError("comparing ensembles needs k_prompts >= 2 (with one prompt they are identical)")
    methods = []
    if predictor is not None:
        from ..predict import Options, task_options

        for variant in variants:
            Options.parse(variant)  # unknown or invalid options fail here, before any case runs
        for ensemble in ensembles:
            for variant in variants:
                name = "mvg" if len(ensembles) == 1 else f"mvg-{ensemble}"
                if len(variants) > 1 and variant:
                    name += "[" + ",".join(f"{k}={v}" for k, v in sorted(variant.items())) + "]"
                options = {"k_prompts": k_prompts, "ensemble": ensemble, **variant}
                tasks = tuple(t for t in TASKS if set(variant) <= set(task_options(t)))
                methods.append(Method(name, predictor, options, model=True, tasks=tasks))
    for name in baselines:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    for name in [*baselines, *(p for p in PEERS if peers and p not in baselines)]:
        settings, tasks = BASELINES[name]
        try:
            runner = InputAsItCame() if settings is None else ClassicalBaseline(**settings)
        except ValueError as error:
            if name in baselines:
                raise
            log.warning("peer %s left out: %s", name, error)
            continue
        methods.append(Method(name, runner, tasks=tasks, needs_slices=name in NEEDS_SLICES))
    return methods


def run_method(method: Method, trial: Trial, axis: int, cancel: CancelToken | None = None) -> np.ndarray:
    """``method``'s answer to ``trial`` (labels, or an image in the input's / target's units)."""
    options = dict(method.options)
    if method.model:
        options.update(spacing=trial.spacing_kji, modality=trial.modality)
        if trial.target_modality is not None:
            options["target_modality"] = trial.target_modality
    run = getattr(method.runner, trial.task)
    if trial.task == "inpaint":
        return run(trial.volume, trial.hole, trial.prompts, axis, cancel=cancel, **options)
    return run(trial.volume, trial.prompts, axis, cancel=cancel, **options)
