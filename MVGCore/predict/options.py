"""The Predictor's keyword options: one checked record, and one table of which task takes which.

Every option a task does not use is refused with a one-line error naming the task it applies to,
rather than accepted and silently ignored (``segment(calibrate="off")`` would otherwise look as if
it did something).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..adapt import ADAPT_TASKS, AdaptSettings
from ..adapt import DEFAULT_LR as ADAPT_LR
from ..calibration import CALIBRATIONS
from ..checks import is_whole
from ..intensity import DEFAULT_CT_WINDOW, check_modality, ct_window
from ..registration import ALIGNMENTS
from ..types import TASKS
from ..zoom import DEFAULT_MARGIN as ZOOM_MARGIN

ENSEMBLES = ("average", "feature")
ZOOMS = ("prompts", "whole")
DEFAULT_ALIGNMENT = "demons"
"""Measured: the bundled model's Dice on the whole-volume validation cases rises with it
(docs/inference.md, "Prompt alignment")."""
ANSWERS = ("trim", "model")
TASK_CT_WINDOWS = {"segment": "wide"}
"""``ct_window`` of a task when the option is not given (the others use DEFAULT_CT_WINDOW, the
window the image tasks were trained in): measured, the bundled model segments CT better in the
wide window (docs/inference.md, "CT windows")."""
IMAGE_SCALES = ("native", "fit")
IMAGE_TASKS = tuple(t for t in TASKS if t != "segment")

COMMON_OPTIONS = (
    "modality",
    "window",
    "ct_window",
    "spacing",
    "k_prompts",
    "ensemble",
    "propagate",
    "return_disagreement",
    "seed",
    "tile_size",
)
"""Options every task takes."""
TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "zoom": ("segment",),
    "zoom_margin": ("segment",),
    "align_prompts": ("segment",),
    "answer": ("segment",),
    "adapt_steps": ADAPT_TASKS,
    "adapt_lr": ADAPT_TASKS,
    "auto_prompts": ("denoise", "inpaint"),
    "calibrate": ("denoise",),
    "image_scale": IMAGE_TASKS,
    "tile_overlap": IMAGE_TASKS,
    "target_modality": ("synthesize",),
    "target_window": ("synthesize",),
}
"""The tasks each further option applies to (the per-task facts live here, not in branches)."""
OPTION_LABELS = {"adapt_steps": "test-time adaptation", "adapt_lr": "test-time adaptation"}
"""What an option is, where its name does not say it, for the refusal message."""


@dataclass(frozen=True)
class Options:
    """Keyword options of the Predictor tasks (``TASK_OPTIONS`` says which task takes which).

    modality: "auto" (CT if the volume holds air-like values <= -500, else robust percentiles),
        or "CT" | "MR" | "XR" | "US" | "OTHER", as :mod:`MVGCore.intensity` normalises them.
    window: CT window preset name or (low, high), overriding the modality's normalisation.
    ct_window: the window of volumes and prompts whose modality is (or is detected as) CT when
        ``window`` is not given: a preset name or (low, high) HU; None = the task's default
        (``TASK_CT_WINDOWS``: "wide", [-1000, 400] HU, for segmentation, which keeps lung and air
        apart; "paper", the MVG reference's [-100, 200] HU, for the image tasks; docs/inference.md).
    spacing: (k, j, i) voxel spacing (``Geometry.spacing_kji``); slices are fitted to the tile by
        their physical extent. None = isotropic pixels.
    k_prompts: prompts shown per query slice (the nearest by index; prompts from other volumes
        come after the query volume's own slices, in the order given).
    ensemble: how K prompts are combined: "average" of the K outputs, or SegGPT's "feature"
        ensemble (attention outputs of the query half averaged in every block).
    propagate: process slices outward from the prompt slices; each slice is prompted with its
        already predicted neighbour towards the nearest prompt slice besides its ``k_prompts``
        prompts (needs indexed prompts; the neighbour alone drifts: answers shrink slice by slice).
        In segmentation a structure the neighbour's answer has lost stays lost further out (a
        connected structure spans one run of slices), so the model cannot find a look-alike
        beyond where it ended. None = on for segmentation with prompt slices of the volume itself
        (measured, docs/inference.md), off otherwise (:mod:`MVGCore.predict.propagation`).
    return_disagreement: also return a float32 volume: per voxel, for segmentation the share of
        the K single-prompt answers that differ from the final label, for images their standard
        deviation in output units (0 when K = 1). With ``ensemble="feature"`` the single-prompt
        answers cost one extra pass.
    seed: seed of the synthetic noise / holes in self-made prompts (denoise / inpaint) and of
        adaptation.
    auto_prompts: how many self-made prompts denoise / inpaint build when no prompts are given.
    target_modality, target_window: normalisation of synthesis targets (as modality / window).
    zoom: segmentation only: "prompts" runs the model on the in-plane region around the prompt
        labels (plus ``zoom_margin`` x the box's longer side on each side), grown with each wave's
        propagated labels when propagating (it never shrinks); "whole" on whole slices.
    align_prompts: segmentation only: each prompt is warped onto the query slice by 2D
        registration (its image and label, at tile resolution; :mod:`MVGCore.predict.alignment`)
        before the model sees it: "demons" (affine, then demons, as the registration baseline),
        "bspline", "affine", or "off" (the prompt as it lies).
    answer: segmentation with aligned prompts: "trim" returns the nearest prompt's aligned label
        where the model answers foreground and background elsewhere (the model decides where a
        structure is, as when one ends or shrinks; registration which structure it is, so the
        answer never extends past the registered label); "model" returns the model's own classes.
        Without alignment the answer is the model's.
    image_scale: image tasks: "native" cuts every slice into overlapping tiles at 1:1 pixels
        (``tile_overlap`` pixels of overlap, a quarter tile by default, blended; slices smaller
        than a tile are padded, not enlarged), prompts tiled the same way (:mod:`MVGCore.tiling`);
        "fit" shrinks or enlarges each whole slice into one tile.
    calibrate: denoising only: "blend" returns ``a * model + b * input + c`` with the weights
        fitted on the given prompt pairs, leave-one-out (one prompt is cut in two halves;
        :mod:`MVGCore.calibration`); without given prompts, on recorrupted pairs of the self-made
        prompt slices (:func:`MVGCore.calibration.recorrupted_pairs`). "off": the model's answer.
    tile_size: the tile in pixels the model runs at (a multiple of its patch size): its weights
        are resampled to it (:func:`MVGCore.resample_weights.at_tile_size`; a copy, the loaded
        model is unchanged). None = the model's own tile, for segmentation its config's
        ``segment_tile_size`` when set (the bundled model's: 192, twice its 128 px tile's area).
    adapt_steps: segment and denoise: tune a copy of the model for this many steps on pairs made
        of the prompts before predicting (:mod:`MVGCore.adapt`; seeded by ``seed``, learning rate
        ``adapt_lr``); 0 = off. The Predictor's own model is never changed. Denoising adapts on
        the given (noisy, clean) prompts at native scale (``image_scale="native"``), and the
        adapted model's answer is returned without the ``calibrate`` blend: both fit the prompts,
        and a leave-one-out blend would adapt once per prompt.
    """

    modality: str = "auto"
    window: str | tuple[float, float] | None = None
    ct_window: str | tuple[float, float] | None = None
    spacing: tuple[float, float, float] | None = None
    k_prompts: int = 1
    ensemble: str = "average"
    propagate: bool | None = None
    return_disagreement: bool = False
    seed: int = 0
    auto_prompts: int = 4
    target_modality: str = "auto"
    target_window: str | tuple[float, float] | None = None
    zoom: str = "prompts"
    zoom_margin: float = ZOOM_MARGIN
    align_prompts: str = DEFAULT_ALIGNMENT
    answer: str = "trim"
    tile_size: int | None = None
    adapt_steps: int = 0
    adapt_lr: float = ADAPT_LR
    image_scale: str = "native"
    tile_overlap: int | None = None
    calibrate: str = "blend"

    def __post_init__(self) -> None:
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"option calibrate must be one of {CALIBRATIONS}, got {self.calibrate!r}")
        AdaptSettings(self.adapt_steps, self.adapt_lr)  # checks both
        for name in ("window", "target_window"):  # checked now, not when the first slice is scaled
            if getattr(self, name) is not None:
                try:
                    ct_window(getattr(self, name))
                except (TypeError, ValueError) as error:
                    raise ValueError(f"option {name}: {error}") from None
        if not is_whole(self.seed, 0):  # numpy's generators refuse a negative seed only when drawing
            raise ValueError(f"option seed must be a whole number >= 0, got {self.seed!r}")
        if self.ct_window is not None:
            try:
                object.__setattr__(self, "ct_window", ct_window(self.ct_window))
            except (TypeError, ValueError) as error:
                raise ValueError(f"option ct_window: {error}") from None
        if self.image_scale not in IMAGE_SCALES:
            raise ValueError(f"option image_scale must be one of {IMAGE_SCALES}, got {self.image_scale!r}")
        if self.tile_overlap is not None and not is_whole(self.tile_overlap, 0):
            raise ValueError(
                f"option tile_overlap must be a whole number of pixels >= 0, got {self.tile_overlap!r}"
            )
        if self.tile_size is not None and not is_whole(self.tile_size, 1):
            raise ValueError(
                f"option tile_size must be a positive whole number of pixels, got {self.tile_size!r}"
            )
        if self.tile_size is not None:
            object.__setattr__(self, "tile_size", int(self.tile_size))
        if self.align_prompts not in ALIGNMENTS:
            raise ValueError(f"option align_prompts must be one of {ALIGNMENTS}, got {self.align_prompts!r}")
        if self.answer not in ANSWERS:
            raise ValueError(f"option answer must be one of {ANSWERS}, got {self.answer!r}")
        if self.zoom not in ZOOMS:
            raise ValueError(f"option zoom must be one of {ZOOMS}, got {self.zoom!r}")
        if self.propagate is not None:
            if not isinstance(self.propagate, (bool, np.bool_)):
                raise ValueError(f"option propagate must be true, false or None, got {self.propagate!r}")
            object.__setattr__(self, "propagate", bool(self.propagate))
        if (
            isinstance(self.zoom_margin, bool)
            or not isinstance(self.zoom_margin, (int, float))
            or not (0 <= self.zoom_margin < 10)
        ):
            raise ValueError(f"option zoom_margin must be a number in [0, 10), got {self.zoom_margin!r}")
        for name in ("modality", "target_modality"):
            value = getattr(self, name)
            if value != "auto":
                object.__setattr__(self, name, check_modality(value))
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(
                    f"option spacing must be three positive (k, j, i) numbers, got {self.spacing}"
                )
            object.__setattr__(self, "spacing", spacing)
        if not is_whole(self.k_prompts, 1):
            raise ValueError(f"option k_prompts must be a positive integer, got {self.k_prompts!r}")
        if not is_whole(self.auto_prompts, 1):
            raise ValueError(f"option auto_prompts must be a positive integer, got {self.auto_prompts!r}")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"option ensemble must be one of {ENSEMBLES}, got {self.ensemble!r}")

    @classmethod
    def parse(cls, options: dict[str, Any], task: str | None = None) -> Options:
        """Checked options; for a ``task``, an option it does not take is refused, and an unset
        ``ct_window`` becomes the task's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown Predictor option(s) {unknown}; known options are {sorted(known)}")
        if task is not None:
            check_applies(options, task)
        opts = cls(**options)
        if task == "denoise" and opts.adapt_steps and opts.image_scale != "native":
            # a pair of options, checked with the options, so a command line refuses it before loading
            raise ValueError('option adapt_steps adapts denoising at native scale; use image_scale="native"')
        if task is not None and opts.ct_window is None:
            opts = dataclasses.replace(opts, ct_window=TASK_CT_WINDOWS.get(task, DEFAULT_CT_WINDOW))
        if task is not None and task != "segment" and opts.propagate is None:
            opts = dataclasses.replace(opts, propagate=False)  # segment decides once it has the prompts
        return opts


def task_options(task: str) -> tuple[str, ...]:
    """The options ``task`` takes: the common ones and those ``TASK_OPTIONS`` gives it."""
    return COMMON_OPTIONS + tuple(name for name, tasks in TASK_OPTIONS.items() if task in tasks)


def check_applies(options: dict[str, Any], task: str) -> None:
    """A one-line error for the first of ``options`` that ``task`` does not take."""
    for name in options:
        tasks = TASK_OPTIONS.get(name)
        if tasks is not None and task not in tasks:
            label = f" ({OPTION_LABELS[name]})" if name in OPTION_LABELS else ""
            raise ValueError(f"option {name}{label} applies to {listed(tasks)}, not to {task}")


def listed(names: tuple[str, ...]) -> str:
    """``a``, ``a and b``, ``a, b and c``: names as a sentence reads them."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
