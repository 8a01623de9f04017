"""Apply an MVG model to whole volumes: the ``Predictor`` and ``python -m MVGCore.predict``.

Every task runs slice by slice along one axis. For each query slice the nearest prompt slices (by
index) are put above it on a canvas, the query half of the target canvas is hidden, and the
model's answer is decoded (colors -> classes for segmentation, gray -> input units for images)
and resized back onto the slice's own grid. Slices are streamed in batches into one preallocated
output, so memory beyond the input and the output stays at a few batches of tiles, whatever the
volume size. Prompt slices that belong to the query volume return the user's target unchanged.

Example::

    python -m MVGCore.predict --checkpoint mvg.safetensors --task segment \\
        --input ct.nii.gz --prompts sparse_labels.nii.gz --output ct_seg.nii.gz
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cli, tiling, zoom
from .adapt import ADAPT_TASKS, IMAGE_MODULES, AdaptSettings, adapt
from .adapt import DEFAULT_LR as ADAPT_LR
from .calibration import CALIBRATIONS, MIN_HALF, calibration_pairs, leave_one_out_blend
from .canvas import (
    TileFit,
    build_canvases,
    fit_to_tile,
    imagenet_denormalize,
    plan_fit,
    unfit_from_tile,
)
from .checkpoint import PICKLE_SUFFIXES, load_model, load_state_dict_file, sidecar_path
from .checks import is_whole
from .cli import attach_dash_values
from .coloring import check_labels, color_table, decode
from .config import MVGConfig
from .intensity import (
    DEFAULT_CT_WINDOW,
    IntensityRange,
    check_modality,
    ct_window,
    intensity_range,
    parse_window,
)
from .masking import ar_mask
from .model import MVGModel
from .registration import ALIGNMENTS, Registration, require_simpleitk
from .resample_weights import at_tile_size, check_tile_size
from .slicewise import (
    SliceLoop,
    check_axis,
    evenly_spaced,
    kept_targets,
    label_dtype,
    plane_shape,
    put_slice,
    required_prompts,
    take_slice,
)
from .types import TASKS, CancelToken, ProgressFn, Prompt
from .zoom import DEFAULT_MARGIN as ZOOM_MARGIN

log = logging.getLogger(__name__)

FLOAT32 = np.dtype(np.float32)

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
PROGRESS_FORMATS = ("log", "json")
CT_AIR_THRESHOLD = -500.0
"""``modality="auto"`` calls a volume CT when it holds values at or below this (air in HU)."""
SAMPLE_VOXELS = 1_000_000
"""Intensity ranges of larger volumes are estimated on a strided sample of this many voxels."""
MIN_AUTO_NOISE = 0.01
"""Floor of the noise level (in [0, 1] units) of self-made denoising prompts."""


@dataclass(frozen=True)
class Options:
    """Keyword options of every Predictor task.

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
        (measured, docs/inference.md), off otherwise.
    return_disagreement: also return a float32 volume: per voxel, for segmentation the share of
        the K single-prompt answers that differ from the final label, for images their standard
        deviation in output units (0 when K = 1). With ``ensemble="feature"`` the single-prompt
        answers cost one extra pass.
    seed: seed of the synthetic noise / holes in self-made prompts (denoise / inpaint).
    auto_prompts: how many self-made prompts denoise / inpaint build when no prompts are given.
    target_modality, target_window: normalisation of synthesis targets (as modality / window).
    zoom: segmentation only: "prompts" runs the model on the in-plane region around the prompt
        labels (plus ``zoom_margin`` x the box's longer side on each side), grown with each wave's
        propagated labels when propagating (it never shrinks); "whole" on whole slices.
    align_prompts: segmentation only: each prompt is warped onto the query slice by 2D
        registration (its image and label, at tile resolution; :mod:`MVGCore.registration`)
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
        prompt slices (:meth:`Predictor._recorrupted_pairs`). "off": the model's answer.
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
        """Checked options; for a ``task``, an unset ``ct_window`` becomes the task's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown Predictor option(s) {unknown}; known options are {sorted(known)}")
        opts = cls(**options)
        if task is not None and opts.ct_window is None:
            opts = dataclasses.replace(opts, ct_window=TASK_CT_WINDOWS.get(task, DEFAULT_CT_WINDOW))
        if task is not None and task != "segment" and opts.propagate is None:
            opts = dataclasses.replace(opts, propagate=False)  # segment decides once it has the prompts
        return opts


@dataclass
class _Example:
    """A prompt ready for the canvas: [0, 1] image tile, target tile, and where it sits in the volume."""

    image: np.ndarray
    target: np.ndarray
    position: int | None
    classes: tuple[int, ...] = ()


@dataclass
class _Job:
    """Everything one task run needs besides the model; built and checked before any slice runs.

    Segmentation jobs carry the color ``table``; image jobs the ``out_range`` their outputs are
    mapped back through, and inpainting the ``hole``.
    """

    volume: np.ndarray
    axis: int
    options: Options
    in_range: IntensityRange
    examples: list[_Example]
    kept: dict[int, np.ndarray]
    fit: TileFit
    spacing: tuple[float, float]
    task: str
    """The task the model is told per canvas (a refiner corrects only its ``refine_tasks``)."""
    out_dtype: np.dtype = FLOAT32
    out_range: IntensityRange | None = None
    table: np.ndarray | None = None
    hole: np.ndarray | None = None
    model: MVGModel | None = None
    """The model that answers (an adapted copy); None = the Predictor's."""
    region: zoom.Region | None = None
    """The in-plane region of ``volume`` the model sees (segmentation's zoom); None = whole slices."""
    prompts: Sequence[Prompt] = ()
    """Segmentation's prompts as given, cropped anew when the region grows."""
    box: tuple[int, int, int, int] | None = None
    """The box of the labels the region is drawn around: the prompt slices', then also the
    propagated ones'."""

    @property
    def segmentation(self) -> bool:
        return self.task == "segment"

    @property
    def follows_labels(self) -> bool:
        """Whether the region grows to take in each wave's propagated labels."""
        return self.segmentation and bool(self.options.propagate) and self.region is not None

    def view(self, plane: np.ndarray) -> np.ndarray:
        """The part of a whole-grid plane the model sees."""
        return plane if self.region is None else self.region.crop(plane)

    def whole(self, part: np.ndarray) -> np.ndarray:
        """A plane the model answered, on the whole grid (zero outside the region)."""
        if self.region is None:
            return part
        return self.region.paste(part, plane_shape(self.volume.shape, self.axis))


def _at_task_tile(task: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of the public tasks: when the task's tile size (:meth:`Predictor.task_tile_size`)
    is not the model's own, the task runs on a Predictor of a
    copy of the model resampled to that tile; the loaded model is never changed."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def run(self: Predictor, *args: Any, **kwargs: Any) -> Any:
            size = self.task_tile_size(task, kwargs.get("tile_size"))
            if size == self.config.tile_size:
                return method(self, *args, **kwargs)
            other = Predictor(at_tile_size(self.model, size), self.device, self.batch_size)
            try:
                return method(other, *args, **{**kwargs, "tile_size": size})
            finally:
                self.batch_size = min(self.batch_size, other.batch_size)  # an out-of-memory retry

        return run

    return decorate


class Predictor:
    """The one inference entry point: a model on a device, and the four tasks on 3D arrays.

    Arrays are (k, j, i); a 2D image is a one-slice volume (``image[None]``, axis 0). All outputs
    lie on the exact input grid. ``batch_size`` is the number of canvases per forward pass
    (query slices x prompts each); on GPU out-of-memory it is halved, the batch retried, and the
    smaller size kept for later calls. With ``return_disagreement=True`` a task returns
    ``(output, disagreement)``; otherwise the output alone. See :class:`Options` for the options.
    """

    def __init__(self, model: MVGModel, device: str = "auto", batch_size: int = 8) -> None:
        if not isinstance(model, MVGModel):
            raise TypeError(f"model must be an MVGModel, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = _resolve_device(device)
        self.model = model.to(self.device)  # its train/eval mode is the caller's (see _forward)
        self.batch_size = batch_size
        self.config: MVGConfig = model.config

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        allow_pickle: bool = False,
        config: MVGConfig | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load an MVGCore checkpoint (.safetensors + .json sidecar).

        Pickle files (.pt, .pth, ...) can run code when loaded, so they are refused unless
        ``allow_pickle=True``; they then need ``config`` or a sidecar JSON holding one.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ValueError(
                    f"refusing to load pickle checkpoint {path}: pickle files can run code. Use the "
                    ".safetensors checkpoint, or pass allow_pickle=True if you trust its source."
                )
            model = MVGModel(config or _sidecar_config(path))
            state = load_state_dict_file(path, allow_pickle=True)
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        else:
            model, _ = load_model(path)
        return cls(model.eval(), device=device, **kwargs)

    def task_tile_size(self, task: str, tile_size: int | None = None) -> int:
        """The tile in pixels ``task`` runs at: ``tile_size`` (checked as the option), else for
        segmentation the config's ``segment_tile_size`` when set, else the model's own tile."""
        if tile_size is None:
            if task == "segment" and self.config.segment_tile_size is not None:
                return self.config.segment_tile_size
            return self.config.tile_size
        return check_tile_size(Options(tile_size=tile_size).tile_size, self.config.patch_size)

    # ---------------------------------------------------------------- tasks

    @_at_task_tile("segment")
    def segment(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label volume (the prompt targets' integer dtype; bool -> uint8) on the grid of ``image``.

        Prompts are label slices of ``image`` itself (``Prompt.index`` set; returned unchanged)
        and/or (image, label) pairs from other volumes. The prompts' classes are colored in
        order, whatever their label values, and decoded back to those values. With
        ``zoom="prompts"`` (the default) the model runs on the in-plane region around the prompt
        labels (:mod:`MVGCore.zoom`), grown wave by wave to take in the propagated labels when
        propagating; everything outside it is background.
        """
        opts = Options.parse(options, "segment")
        if opts.align_prompts != "off":
            require_simpleitk(
                f"option align_prompts={opts.align_prompts!r} (pass 'off' to segment without it)"
            )
        volume, axis = _check_volume(image, "image"), check_axis(axis)
        prompts = required_prompts(prompts, "segment")
        in_range = self._input_range(volume, opts)  # of the whole volume, whatever the zoom
        spacing = _plane_spacing(opts.spacing, axis)
        dtype = label_dtype(prompts)
        kept = kept_targets(prompts, volume.shape, axis)
        if opts.propagate is None:
            opts = dataclasses.replace(opts, propagate=bool(kept))
        whole_fit = plan_fit(plane_shape(volume.shape, axis), self.config.tile_size, spacing)
        job = _Job(
            volume,
            axis,
            opts,
            in_range,
            [],
            kept,
            whole_fit,
            spacing,
            "segment",
            dtype,
            prompts=tuple(prompts),
        )
        job = self._focused(job, zoom.prompt_box(prompts) if opts.zoom == "prompts" else None)
        if not any(e.classes for e in job.examples):
            raise ValueError("every segmentation prompt label is empty; label at least one structure")
        job.table = color_table(sorted({c for e in job.examples for c in e.classes}), "ordered")
        return self._run(job, progress, cancel)

    def _focused(self, job: _Job, box: tuple[int, int, int, int] | None) -> _Job:
        """Segmentation ``job`` on the zoom region around the labels' ``box`` (whole slices
        without one or when the region is the whole plane), its prompts cut to the region (other
        images' prompts to their own label's region) and its tile fit the region's."""
        shape = plane_shape(job.volume.shape, job.axis)
        opts, prompts = job.options, job.prompts
        region = None if box is None else zoom.region_around(box, shape, job.spacing, opts.zoom_margin)
        if region is not None and region.covers(shape):
            region = None
        if region is not None:
            prompts = [zoom.crop_prompt(p, region, job.spacing, opts.zoom_margin) for p in prompts]
        examples = [
            self._label_example(number, p, job.in_range, opts, job.spacing)
            for number, p in enumerate(prompts)
        ]
        fit = plan_fit(shape if region is None else region.shape, self.config.tile_size, job.spacing)
        return dataclasses.replace(job, examples=examples, fit=fit, region=region, box=box)

    def _followed(self, job: _Job, wave: list[int], out: np.ndarray) -> _Job:
        """``job`` with its region grown to hold the labels predicted on the neighbours ``wave``
        is prompted with (``Options.zoom`` with propagation: the region follows the labels)."""
        planes = [take_slice(out, job.axis, p) for p in sorted({_neighbour_position(job, q) for q in wave})]
        box = zoom.union_box(job.box, zoom.label_box(planes))
        return job if box == job.box else self._focused(job, box)

    @_at_task_tile("denoise")
    def denoise(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Denoised float32 volume in input units.

        Prompts are (noisy, clean) pairs. Without prompts, ``auto_prompts`` evenly spaced slices of
        the volume itself become prompts: the slice with extra Gaussian noise of the level
        estimated on that slice (skimage ``estimate_sigma``) -> the slice. Those slices are
        denoised like any other.
        """
        opts = Options.parse(options, "denoise")
        volume, axis = _check_volume(image, "image"), check_axis(axis)
        if opts.adapt_steps and not prompts:
            raise ValueError(
                "option adapt_steps (test-time adaptation) needs (noisy, clean) prompt pairs to denoise"
            )
        if opts.adapt_steps and opts.image_scale != "native":
            raise ValueError('option adapt_steps adapts denoising at native scale; use image_scale="native"')
        in_range = self._input_range(volume, opts)
        spacing = _plane_spacing(opts.spacing, axis)
        ranges = [self._prompt_range(p, in_range, opts) for p in prompts or ()]

        def job(part: np.ndarray, part_prompts: Sequence[Prompt], _: np.ndarray | None) -> _Job:
            return self._image_job(
                "denoise",
                part,
                part_prompts,
                axis,
                opts,
                in_range,
                ranges,
                spacing,
                self_made=lambda fit: self._noise_examples(part, axis, in_range, fit, spacing, opts),
            )

        adaptation = None
        if opts.adapt_steps:
            settings = AdaptSettings(
                opts.adapt_steps, opts.adapt_lr, seed=opts.seed, task="denoise", modules=IMAGE_MODULES
            )
            adaptation = (
                settings,
                [(r.normalize(p.image), r.normalize(p.target)) for p, r in zip(prompts, ranges)],
            )
        result = self._image_run(
            volume, axis, prompts or [], None, in_range, opts, job, progress, cancel, adaptation
        )
        if opts.calibrate != "blend" or opts.adapt_steps:
            return result
        if prompts:
            given = [Prompt(in_range.normalize(p.image), in_range.normalize(p.target)) for p in prompts]
        else:
            given = self._recorrupted_pairs(volume, axis, in_range, opts)
        pairs = calibration_pairs(given)
        if pairs is None:
            log.info(
                "denoise: too little image to calibrate on (one prompt or slice under %d px per "
                "half); the model's answer is returned",
                MIN_HALF,
            )
            return result
        return self._calibrated(
            result, volume, axis, prompts or [], pairs, in_range, spacing, options, cancel
        )

    def _recorrupted_pairs(
        self, volume: np.ndarray, axis: int, in_range: IntensityRange, opts: Options
    ) -> list[Prompt]:
        """Calibration pairs when no prompt is given, in normalised units: ``(y + n, y - n)`` for the
        self-made prompt slices ``y``, with Gaussian ``n`` of the level estimated on each. A target
        ``y`` itself would carry the input's own noise and pull the fit onto the input; with
        ``y - n`` the two noises are uncorrelated, so the least-squares fit aims at the clean image
        (recorrupted-to-recorrupted, Pang et al., CVPR 2021)."""
        rng = np.random.default_rng([opts.seed, 1])  # not the self-made prompts' own noise
        pairs = []
        for position in evenly_spaced(list(range(volume.shape[axis])), opts.auto_prompts):
            plane = in_range.normalize(take_slice(volume, axis, position))
            noise = rng.normal(0.0, _noise_level(plane), plane.shape).astype(np.float32)
            pairs.append(Prompt(np.clip(plane + noise, 0.0, 1.0), np.clip(plane - noise, 0.0, 1.0)))
        return pairs

    def _calibrated(
        self,
        result: np.ndarray | tuple[np.ndarray, np.ndarray],
        volume: np.ndarray,
        axis: int,
        prompts: Sequence[Prompt],
        pairs: list[Prompt],
        in_range: IntensityRange,
        plane: tuple[float, float],
        options: dict[str, Any],
        cancel: CancelToken | None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """``result`` of :meth:`denoise` blended with the noisy ``volume`` by weights fitted on
        ``pairs`` (:mod:`MVGCore.calibration`); the prompt slices of the volume keep their targets.

        ``pairs`` are in the model's units, the volume's normalisation (values outside its window
        clipped), and so are the fit and the blend, as the model's answer is: raw targets outside
        the window (air at -1000 HU under a soft-tissue window) would otherwise drive the fit
        towards the input, as the model cannot answer there. Each pair is denoised as a one-slice
        volume in those units, with in-plane ``plane`` spacing."""
        single = {
            **options,
            "calibrate": "off",
            "return_disagreement": False,
            "window": (0.0, 1.0),  # the pairs come normalised by the volume's range
            "spacing": (1.0, *plane),
        }

        def denoise_one(image: np.ndarray, others: list[Prompt]) -> np.ndarray:
            return self.denoise(image[None], others, 0, cancel=cancel, **single)[0]

        blend = leave_one_out_blend(denoise_one, pairs)
        log.info(
            "denoise calibration (normalised units): %.3f x model + %.3f x input + %.4g",
            blend.model_weight,
            blend.input_weight,
            blend.offset,
        )
        out, disagreement = result if isinstance(result, tuple) else (result, None)
        kept = {p.index for p in prompts if p.index is not None}
        for index in range(volume.shape[axis]):
            if index not in kept:
                blended = blend.apply(
                    in_range.normalize(take_slice(out, axis, index)),
                    in_range.normalize(take_slice(volume, axis, index)),
                )
                put_slice(out, axis, index, in_range.denormalize(np.clip(blended, 0.0, 1.0)))
        if disagreement is None:
            return out
        return out, (disagreement * abs(blend.model_weight)).astype(disagreement.dtype)

    @_at_task_tile("inpaint")
    def inpaint(
        self,
        image: np.ndarray,
        hole_mask: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Float32 volume in input units with the voxels of ``hole_mask`` filled in; all other voxels
        are the input's. Slices without hole are copied.

        Prompts are (image with a hole, complete image) pairs; the hole of an indexed prompt slice
        is read from ``hole_mask``. Without prompts, the ``auto_prompts`` slices without hole that
        lie nearest to the holes become prompts: the slice with the hole of the nearest holed slice
        cut into it -> the slice.
        """
        opts = Options.parse(options, "inpaint")
        _check_no_adaptation(opts, "inpaint")
        volume, axis = _check_volume(image, "image"), check_axis(axis)
        hole = np.asarray(hole_mask)
        if hole.shape != volume.shape:
            raise ValueError(f"hole_mask shape {hole.shape} must equal the image shape {volume.shape}")
        hole = hole.astype(bool, copy=False)
        in_range = self._input_range(volume, opts)
        spacing = _plane_spacing(opts.spacing, axis)
        ranges = [self._prompt_range(p, in_range, opts) for p in prompts or ()]

        def job(part: np.ndarray, part_prompts: Sequence[Prompt], part_hole: np.ndarray | None) -> _Job:
            return self._image_job(
                "inpaint",
                part,
                part_prompts,
                axis,
                opts,
                in_range,
                ranges,
                spacing,
                hole=part_hole,
                self_made=lambda _: self._hole_examples(part, part_hole, axis, in_range, spacing, opts),
            )

        return self._image_run(volume, axis, prompts or [], hole, in_range, opts, job, progress, cancel)

    @_at_task_tile("synthesize")
    def synthesize(
        self,
        source: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Float32 volume in the units of the prompt targets (e.g. T2 from T1 given T1->T2 pairs).

        Targets are normalised with one range taken over all prompt targets together
        (``target_modality`` / ``target_window``), and the output is mapped back through it.
        """
        opts = Options.parse(options, "synthesize")
        _check_no_adaptation(opts, "synthesize")
        volume, axis = _check_volume(source, "source"), check_axis(axis)
        prompts = required_prompts(prompts, "synthesize")
        in_range = self._input_range(volume, opts)
        for number, p in enumerate(prompts):
            _check_finite(p.target, f"prompt {number} target")
        pooled = np.concatenate([np.ravel(p.target) for p in prompts])
        out_range = intensity_range(
            _sample(pooled), _auto_modality(pooled, opts.target_modality), opts.target_window
        )
        spacing = _plane_spacing(opts.spacing, axis)
        ranges = [self._prompt_range(p, in_range, opts) for p in prompts]

        def job(part: np.ndarray, part_prompts: Sequence[Prompt], _: np.ndarray | None) -> _Job:
            return self._image_job(
                "synthesize", part, part_prompts, axis, opts, in_range, ranges, spacing, out_range
            )

        return self._image_run(volume, axis, prompts, None, in_range, opts, job, progress, cancel)

    def _image_run(
        self,
        volume: np.ndarray,
        axis: int,
        prompts: Sequence[Prompt],
        hole: np.ndarray | None,
        in_range: IntensityRange,
        opts: Options,
        make_job: Callable[[np.ndarray, Sequence[Prompt], np.ndarray | None], _Job],
        progress: ProgressFn | None,
        cancel: CancelToken | None,
        adaptation: tuple[AdaptSettings, list[tuple[np.ndarray, np.ndarray]]] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """An image task on whole slices fitted to the tile ("fit"), or on 1:1 tiles ("native").

        Natively, every tile position is one run over a tile-sized view of all slices (padded
        with the normalisation's low end, which becomes 0), prompts cut at the same position (or,
        for another image's prompt, its tile nearest by relative position); the answers are
        blended back (:mod:`MVGCore.tiling`), so tiles that agree return exactly their values.
        With ``adaptation`` (settings, (input, output) [0, 1] prompt images), a copy of the model
        is first tuned on them (:func:`MVGCore.adapt.adapt`) and answers every tile; its steps
        come first in the progress count.
        """
        if opts.image_scale == "fit":
            return self._run(make_job(volume, prompts, hole), progress, cancel)
        size = self.config.tile_size
        overlap = size // 4 if opts.tile_overlap is None else min(opts.tile_overlap, size - 1)
        plan = tiling.plan_tiles(plane_shape(volume.shape, axis), size, overlap)
        tuned = None
        if adaptation is not None and adaptation[0].steps:
            settings, examples = adaptation
            loop = SliceLoop(settings.steps + len(plan) * volume.shape[axis], progress, cancel)
            tuned = self._adapted(examples, settings, loop)
            progress = _offset_progress(progress, settings.steps)
        padded = _pad_planes(volume, axis, plan, in_range.low)
        padded_hole = None if hole is None else _pad_planes(hole, axis, plan, False)
        prompt_plans = [
            plan if p.index is not None else tiling.plan_tiles(p.image.shape, size, plan.overlap)
            for p in prompts
        ]
        matches = [tiling.match_tiles(plan, pp) for pp in prompt_plans]
        prompt_tiles = [_prompt_tiles(p, pp) for p, pp in zip(prompts, prompt_plans)]
        parts: list[list[np.ndarray]] = []
        for n, (row, col) in enumerate(plan.boxes):
            part_prompts = [
                Prompt(images[match[n][0]], targets[match[n][0]], p.index)
                for p, (images, targets), match in zip(prompts, prompt_tiles, matches)
            ]
            part_hole = None if padded_hole is None else _box_view(padded_hole, axis, row, col, size)
            tile_progress = None
            if progress is not None:
                tile_progress = lambda done, total, n=n: progress(n * total + done, len(plan) * total)  # noqa: E731
            job = make_job(_box_view(padded, axis, row, col, size), part_prompts, part_hole)
            job.model = tuned
            answer = self._run(job, tile_progress, cancel)
            parts.append(list(answer) if isinstance(answer, tuple) else [answer])
        results = []
        for which in range(len(parts[0])):
            out = np.empty(volume.shape, dtype=parts[0][which].dtype)
            for index in range(volume.shape[axis]):
                tiles = np.stack([take_slice(part[which], axis, index) for part in parts])
                put_slice(out, axis, index, tiling.blend(tiles, plan).astype(out.dtype))
            results.append(out)
        return tuple(results) if len(results) > 1 else results[0]

    # ---------------------------------------------------------------- prompts

    def _input_range(self, volume: np.ndarray, opts: Options) -> IntensityRange:
        return _intensity_range(_sample(volume), opts)

    def _tile(self, plane: np.ndarray, is_label: bool, spacing: tuple[float, float]) -> np.ndarray:
        return fit_to_tile(plane, self.config.tile_size, is_label, spacing)[0]

    def _prompt_range(self, prompt: Prompt, in_range: IntensityRange, opts: Options) -> IntensityRange:
        """A slice of the query volume shares its range; another volume's slice is scaled by its own."""
        if prompt.index is not None:
            return in_range
        return _intensity_range(prompt.image, opts)

    def _label_example(
        self,
        number: int,
        prompt: Prompt,
        in_range: IntensityRange,
        opts: Options,
        spacing: tuple[float, float],
    ) -> _Example:
        _check_finite(prompt.image, f"prompt {number} image")
        target = np.asarray(prompt.target)
        target = target.astype(np.uint8) if target.dtype == np.bool_ else target
        check_labels(target, f"prompt {number} label")
        image = self._prompt_range(prompt, in_range, opts).normalize(prompt.image)
        labels = self._tile(target.astype(np.int64), True, spacing)
        classes = tuple(int(c) for c in np.unique(labels) if c != 0)
        return _Example(self._tile(image, False, spacing), labels, prompt.index, classes)

    def _image_job(
        self,
        task: str,
        part: np.ndarray,
        part_prompts: Sequence[Prompt],
        axis: int,
        opts: Options,
        in_range: IntensityRange,
        ranges: Sequence[IntensityRange],
        spacing: tuple[float, float],
        out_range: IntensityRange | None = None,
        hole: np.ndarray | None = None,
        self_made: Callable[[TileFit], list[_Example]] | None = None,
    ) -> _Job:
        """The job of an image task on ``part``: the given prompts as examples (``ranges`` scale
        their images; ``out_range``, default the input's, their targets and the output), or, when
        none are given, the examples ``self_made`` builds for the part's tile fit."""
        fit = plan_fit(plane_shape(part.shape, axis), self.config.tile_size, spacing)
        if not part_prompts and self_made is not None:
            kept, examples = {}, self_made(fit)
        else:
            kept = kept_targets(part_prompts, part.shape, axis)
            examples = [
                self._image_example(n, p, ranges[n], out_range, spacing, hole, axis)
                for n, p in enumerate(part_prompts)
            ]
        out = in_range if out_range is None else out_range
        return _Job(part, axis, opts, in_range, examples, kept, fit, spacing, task, out_range=out, hole=hole)

    def _image_example(
        self,
        number: int,
        prompt: Prompt,
        image_range: IntensityRange,
        target_range: IntensityRange | None,
        spacing: tuple[float, float],
        hole: np.ndarray | None = None,
        axis: int = 0,
    ) -> _Example:
        """An (input, output) image pair, the input scaled by ``image_range`` (the prompt's own, from
        :meth:`_prompt_range`, so a tile of it is scaled as the whole); an indexed inpainting
        prompt gets its slice's hole zeroed."""
        _check_finite(prompt.image, f"prompt {number} image")
        _check_finite(prompt.target, f"prompt {number} target")
        image = image_range.normalize(prompt.image)
        if hole is not None and prompt.index is not None:
            image[take_slice(hole, axis, prompt.index)] = 0.0
        target = (target_range or image_range).normalize(prompt.target)
        return _Example(self._tile(image, False, spacing), self._tile(target, False, spacing), prompt.index)

    def _noise_examples(
        self,
        volume: np.ndarray,
        axis: int,
        in_range: IntensityRange,
        fit: TileFit,
        spacing: tuple[float, float],
        opts: Options,
    ) -> list[_Example]:
        """Self-made denoising prompts: noise of the level estimated on the tile's content is added to it."""
        from .degrade import gaussian

        rng = np.random.default_rng(opts.seed)
        examples = []
        for position in evenly_spaced(list(range(volume.shape[axis])), opts.auto_prompts):
            clean = self._tile(in_range.normalize(take_slice(volume, axis, position)), False, spacing)
            r, c = fit.offset
            content = clean[r : r + fit.content[0], c : c + fit.content[1]]
            noisy = np.zeros_like(clean)
            noisy[r : r + fit.content[0], c : c + fit.content[1]] = gaussian(
                content, _noise_level(content), rng
            )
            examples.append(_Example(noisy, clean, position))
        return examples

    def _hole_examples(
        self,
        volume: np.ndarray,
        hole: np.ndarray,
        axis: int,
        in_range: IntensityRange,
        spacing: tuple[float, float],
        opts: Options,
    ) -> list[_Example]:
        """Self-made inpainting prompts: the hole-free slices nearest to the holes, each with the
        nearest real hole cut into it. Nearest, not evenly spaced: the model fills a hole much from
        what its prompt shows at the same place, and a structure that spans only the holed slices
        (the demo's tumour) is missing from far slices."""
        other = tuple(a for a in range(3) if a != axis)
        holed = hole.any(axis=other)
        candidates = np.flatnonzero(~holed).tolist()
        with_hole = np.flatnonzero(holed)
        if not with_hole.size:
            return []  # nothing to fill: every slice is copied
        if not candidates:
            raise ValueError(
                "inpaint without prompts needs at least one slice without hole along axis "
                f"{axis} to make prompts from; give prompts instead"
            )
        examples = []
        distance = {c: int(np.min(np.abs(with_hole - c))) for c in candidates}
        nearest = sorted(sorted(candidates, key=lambda c: (distance[c], c))[: opts.auto_prompts])
        for position in nearest:
            donor = int(with_hole[np.argmin(np.abs(with_hole - position))])
            cut = self._tile(take_slice(hole, axis, donor).astype(np.uint8), True, spacing).astype(bool)
            clean = self._tile(in_range.normalize(take_slice(volume, axis, position)), False, spacing)
            examples.append(_Example(np.where(cut, np.float32(0.0), clean), clean, position))
        return examples

    # ---------------------------------------------------------------- the loop

    def _run(
        self, job: _Job, progress: ProgressFn | None, cancel: CancelToken | None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Every slice of ``job``: the output volume (and the disagreement volume when asked for)."""
        volume, axis, opts = job.volume, job.axis, job.options
        n_slices = volume.shape[axis]
        if opts.propagate and not job.kept:
            raise ValueError(
                "propagate needs prompts that are slices of the volume itself (Prompt.index set)"
            )
        out = np.empty(volume.shape, dtype=job.out_dtype)
        disagreement = np.zeros(volume.shape, dtype=np.float32) if opts.return_disagreement else None
        # Segmentation adapts here (image tasks in _image_run, once for all tiles). Adaptation
        # steps and slices make one progress count, so a caller sees one bar.
        adapt_steps = opts.adapt_steps if job.segmentation else 0
        loop = SliceLoop(n_slices + adapt_steps, progress, cancel)
        if adapt_steps:
            settings = AdaptSettings(opts.adapt_steps, opts.adapt_lr, seed=opts.seed)
            job.model = self._adapted([(e.image, e.target) for e in job.examples], settings, loop)
        done = 0
        for index, target in job.kept.items():
            put_slice(out, axis, index, np.asarray(target).astype(job.out_dtype, copy=False))
            done += 1
        todo = [q for q in range(n_slices) if q not in job.kept]
        if job.hole is not None:
            holed = {q for q in todo if take_slice(job.hole, axis, q).any()}
            for q in todo:
                if q not in holed:
                    put_slice(out, axis, q, take_slice(volume, axis, q))
            done += len(todo) - len(holed)
            todo = sorted(holed)
        if done:
            loop.advance(done)
        if todo and not job.examples:
            raise ValueError("no prompts to run the model with")
        for wave in _waves(todo, sorted(job.kept), opts.propagate):
            if job.follows_labels:
                job = self._followed(job, wave, out)
            plans = [(q, self._choose(job, q, out)) for q in wave]
            ended = [q for q, chosen in plans if job.segmentation and _lost_everything(job, chosen)]
            for q in ended:  # every structure ended before this slice: nothing to run
                put_slice(out, axis, q, np.zeros(plane_shape(volume.shape, axis), dtype=job.out_dtype))
            if ended:
                loop.advance(len(ended))
                plans = [(q, chosen) for q, chosen in plans if q not in ended]
            if not plans:
                continue
            k = len(plans[0][1])
            start = 0
            while start < len(plans):
                loop.check()
                per_batch = max(1, self.batch_size // k)
                chunk = plans[start : start + per_batch]
                try:
                    results = self._infer(job, chunk)
                except torch.OutOfMemoryError:
                    if per_batch == 1:
                        raise
                    self.batch_size = max(1, self.batch_size // 2)
                    log.warning("out of memory; retrying with batch_size %d", self.batch_size)
                    if self.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                    continue
                for (q, _), (plane, spread) in zip(chunk, results):
                    put_slice(out, axis, q, plane)
                    if disagreement is not None:
                        put_slice(disagreement, axis, q, spread)
                loop.advance(len(chunk))
                start += len(chunk)
        return out if disagreement is None else (out, disagreement)

    def _adapted(
        self, examples: list[tuple[np.ndarray, np.ndarray]], settings: AdaptSettings, loop: SliceLoop
    ) -> MVGModel:
        """A copy of the model adapted on ``examples``, each step counted in ``loop`` (whose
        ``cancel`` is checked before the first step and after every one)."""
        loop.check()

        def step_done() -> None:
            loop.advance()
            loop.check()

        return adapt(self.model, examples, settings, self.device, on_step=step_done)

    def _choose(self, job: _Job, query: int, out: np.ndarray) -> list[_Example]:
        """The K prompts for ``query``: nearest by index first, other volumes' prompts after; when
        propagating, its predicted neighbour first and then those K."""
        k = min(job.options.k_prompts, len(job.examples))
        ranked = sorted(
            job.examples,
            key=lambda e: (e.position is None, abs(e.position - query) if e.position is not None else 0),
        )
        if job.options.propagate:
            neighbour = self._neighbour(job, query, out)
            if neighbour is not None:
                return [neighbour, *ranked[:k]]
        return ranked[:k]

    def _neighbour(self, job: _Job, query: int, out: np.ndarray) -> _Example | None:
        """The already predicted slice one step towards the nearest prompt slice, as a prompt."""
        position = _neighbour_position(job, query)
        if position in job.kept:
            return None  # the real prompt slice is the nearest prompt already
        plane = job.view(take_slice(job.volume, job.axis, position))
        image = self._tile(job.in_range.normalize(plane), False, job.spacing)
        predicted = job.view(take_slice(out, job.axis, position))
        if job.segmentation:
            labels = self._tile(predicted.astype(np.int64), True, job.spacing)
            classes = tuple(int(c) for c in np.unique(labels) if c != 0)
            return _Example(image, labels, position, classes)
        target = self._tile(job.out_range.normalize(predicted), False, job.spacing)
        return _Example(image, target, position)

    def _query_tile(self, job: _Job, query: int) -> np.ndarray:
        plane = job.view(take_slice(job.volume, job.axis, query))
        _check_finite(plane, f"image slice {query} along axis {job.axis}")
        tile = self._tile(job.in_range.normalize(plane), False, job.spacing)
        if job.hole is not None:
            tile[
                self._tile(take_slice(job.hole, job.axis, query).astype(np.uint8), True, job.spacing) > 0
            ] = 0.0
        return tile

    def _infer(
        self, job: _Job, chunk: list[tuple[int, list[_Example]]]
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Run one batch of query slices; return each slice's output plane and disagreement plane."""
        k = len(chunk[0][1])
        query_tiles = [self._query_tile(job, q) for q, _ in chunk]
        if job.segmentation and job.options.align_prompts != "off":
            chunk = [
                (q, self._aligned(job, q, tile, chosen)) for (q, chosen), tile in zip(chunk, query_tiles)
            ]
        prompts = [e for _, chosen in chunk for e in chosen]
        queries = np.repeat(np.stack(query_tiles), k, axis=0)
        canvases = build_canvases(
            np.stack([e.image for e in prompts]),
            np.stack([e.target for e in prompts]),
            queries,
            segmentation=job.segmentation,
            tables=job.table,
        )
        feature = job.options.ensemble == "feature" and k > 1
        answers = self._forward(canvases, k if feature else 1, job.task, job.model)
        singles = answers
        if feature and job.options.return_disagreement:
            singles = self._forward(canvases, 1, job.task, job.model)
        results = []
        for number, (query, chosen) in enumerate(chunk):
            group = answers[number * k : (number + 1) * k]
            single = singles[number * k : (number + 1) * k]
            results.append(self._decode(job, query, chosen, group, single))
        return results

    def _aligned(
        self, job: _Job, query: int, query_tile: np.ndarray, chosen: list[_Example]
    ) -> list[_Example]:
        """``chosen`` warped onto the query tile (``Options.align_prompts``); a prompt whose
        label the warp pushes out of the tile stays as it lies. The classes decoded stay the
        prompts' own."""
        registration = Registration(job.options.align_prompts)
        aligned = []
        for example in chosen:
            image, target = registration.align(
                query_tile, example.image, example.target, f"image slice {query} along axis {job.axis}"
            )
            aligned.append(dataclasses.replace(example, image=image, target=target))
        return aligned

    def _forward(self, canvases, ensemble_k: int, task: str, model: MVGModel | None = None) -> torch.Tensor:
        """Query halves of the predicted target canvases as [0, 1] RGB on the CPU, (B, 3, S, S)."""
        batch = canvases.images.shape[0]
        mask = torch.from_numpy(ar_mask(self.config.grid)).expand(batch, -1)
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.startswith("cuda")
            else contextlib.nullcontext()
        )
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast:
                pred = model(
                    canvases.images.to(self.device),
                    canvases.targets.to(self.device),
                    mask.to(self.device),
                    ensemble_k=ensemble_k,
                    query_only=True,
                    tasks=[task] * batch,
                )
        finally:
            model.train(was_training)
        return imagenet_denormalize(pred.float()).clamp(0.0, 1.0).cpu()

    def _decode(
        self, job: _Job, query: int, chosen: list[_Example], group: torch.Tensor, single: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        want_spread = job.options.return_disagreement
        if job.segmentation:
            classes = sorted({c for e in chosen for c in e.classes})
            if _propagated(job, chosen):
                classes = list(chosen[0].classes)  # a structure the neighbour lost has ended
            trim_to = None
            if job.options.align_prompts != "off" and job.options.answer == "trim":
                # the leading prompt's label (the propagated neighbour's or the nearest prompt's), aligned
                trim_to = chosen[0].target
            final = self._labels(job, group.mean(0, keepdim=True), classes, trim_to)[0]
            spread = None
            if want_spread:
                votes = self._labels(job, single, classes)
                spread = job.whole(np.mean([v != final for v in votes], axis=0).astype(np.float32))
            return job.whole(final.astype(job.out_dtype)), spread
        gray = group.mean(1).mean(0).numpy()
        plane = job.out_range.denormalize(unfit_from_tile(gray, job.fit, False))
        if job.hole is not None:
            original = take_slice(job.volume, job.axis, query)
            plane = np.where(take_slice(job.hole, job.axis, query), plane, original).astype(np.float32)
        spread = None
        if want_spread:
            each = [unfit_from_tile(t, job.fit, False) for t in single.mean(1).numpy()]
            spread = (np.std(each, axis=0) * (job.out_range.high - job.out_range.low)).astype(np.float32)
        return plane, spread

    def _labels(
        self, job: _Job, rgb: torch.Tensor, classes: list[int], trim_to: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """Decoded label planes on the input grid; with ``trim_to`` (a label tile), its classes
        where the decoded answer is foreground (``Options.answer="trim"``)."""
        tiles = decode(rgb, job.table, classes).numpy()
        if trim_to is not None:
            tiles = np.where(tiles > 0, trim_to, 0).astype(tiles.dtype)
        return [unfit_from_tile(t, job.fit, True) for t in tiles]


# -------------------------------------------------------------------- helpers


def _check_no_adaptation(opts: Options, task: str) -> None:
    if opts.adapt_steps:
        raise ValueError(
            f"option adapt_steps (test-time adaptation) applies to {' and '.join(ADAPT_TASKS)}, not to {task}"
        )


def _offset_progress(progress: ProgressFn | None, before: int) -> ProgressFn | None:
    """``progress`` of the work that comes after ``before`` finished steps (adaptation's)."""
    if progress is None or not before:
        return progress
    return lambda done, total: progress(before + done, before + total)


def _box_view(volume: np.ndarray, axis: int, row: int, col: int, size: int) -> np.ndarray:
    """The in-plane ``size`` x ``size`` box at (row, col) of every slice along ``axis`` (a view)."""
    return zoom.crop_volume(volume, axis, zoom.Region(row, row + size, col, col + size))


def _pad_planes(volume: np.ndarray, axis: int, plan: tiling.TilePlan, value: Any) -> np.ndarray:
    """``volume`` with every plane placed in ``plan``'s padded canvas (``value`` around it)."""
    if plan.padded == plan.shape:
        return volume
    widths = [(0, 0)] * 3
    other = [a for a in range(3) if a != axis]
    for a, offset, extent, total in zip(other, plan.offset, plan.shape, plan.padded):
        widths[a] = (offset, total - extent - offset)
    return np.pad(volume, widths, constant_values=value)


def _prompt_tiles(prompt: Prompt, plan: tiling.TilePlan) -> tuple[np.ndarray, np.ndarray]:
    """All tiles of a prompt's image and target under ``plan``, padded with each one's minimum
    (cut once per prompt, not once per query tile)."""
    image = tiling.extract(prompt.image, plan, fill=float(np.min(prompt.image)))
    target = tiling.extract(prompt.target, plan, fill=np.min(prompt.target))
    return image, target


def _noise_level(plane: np.ndarray) -> float:
    """The Gaussian noise level of a [0, 1] plane (skimage ``estimate_sigma``), at least
    ``MIN_AUTO_NOISE``; a constant plane has none to estimate (NaN), nor has a 1-pixel side: the
    floor is used."""
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(plane)) if min(plane.shape) > 1 else MIN_AUTO_NOISE
    return max(sigma, MIN_AUTO_NOISE) if np.isfinite(sigma) else MIN_AUTO_NOISE


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'"
            )
        index = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
        return f"cuda:{int(index)}"
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _sidecar_config(path: Path) -> MVGConfig:
    import json

    side = sidecar_path(path.with_suffix(".safetensors"))
    if not side.is_file():
        raise ValueError(
            f"pickle checkpoint {path} has no config: pass config=MVGConfig(...) or add {side.name}"
        )
    meta = json.loads(side.read_text())
    if "config" not in meta:
        raise ValueError(f"{side} has no 'config'; pass config=MVGConfig(...)")
    return MVGConfig.from_dict(meta["config"])


def _check_volume(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        hint = " (a 2D image is a one-slice volume: pass image[None])" if array.ndim == 2 else ""
        raise ValueError(f"{name} must be a 3D (k, j, i) array, got {array.ndim}D shape {array.shape}{hint}")
    if min(array.shape) < 1:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if np.iscomplexobj(array):
        raise ValueError(
            f"{name} holds complex values (dtype {array.dtype}); MVG works on real images: pass the "
            "magnitude (np.abs) or the real part, as you mean it"
        )
    if array.dtype == np.bool_:
        return array.view(np.uint8)  # a mask as 0/1 intensities, without a copy
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    for k in range(array.shape[0]):  # slice by slice: no whole-volume boolean copy
        _check_finite(array[k], f"{name} slice {k} (axis 0)")
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; replace them before predicting")


def _sample(array: np.ndarray) -> np.ndarray:
    """A strided view of at most SAMPLE_VOXELS voxels: robust percentiles of it are accurate, and
    taking them never copies a whole large volume."""
    array = np.asarray(array)
    if array.size <= SAMPLE_VOXELS:
        return array
    step = math.ceil((array.size / SAMPLE_VOXELS) ** (1 / array.ndim))
    return array[(slice(None, None, step),) * array.ndim]


def _intensity_range(array: np.ndarray, opts: Options) -> IntensityRange:
    """``array``'s normalisation: ``window`` when given, else ``ct_window`` for CT, else its modality's."""
    modality = _auto_modality(array, opts.modality)
    window = opts.window
    if window is None and modality == "CT":
        window = opts.ct_window
    return intensity_range(array, modality, window)


def _auto_modality(array: np.ndarray, modality: str) -> str:
    if modality != "auto":
        return modality
    return "CT" if float(np.min(_sample(array))) <= CT_AIR_THRESHOLD else "OTHER"


def _plane_spacing(spacing: tuple[float, float, float] | None, axis: int) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    return tuple(s for a, s in enumerate(spacing) if a != axis)


def _neighbour_position(job: _Job, query: int) -> int:
    """The slice one step from ``query`` towards its nearest prompt slice (``Options.propagate``)."""
    source = min(job.kept, key=lambda p: (abs(p - query), p))
    return query - (1 if query > source else -1)


def _propagated(job: _Job, chosen: list[_Example]) -> bool:
    """Whether ``chosen`` leads with an already predicted neighbour (``Options.propagate``)."""
    position = chosen[0].position
    return job.options.propagate and position is not None and position not in job.kept


def _lost_everything(job: _Job, chosen: list[_Example]) -> bool:
    """Whether the propagated neighbour of a segmentation query shows no structure any more."""
    return _propagated(job, chosen) and not chosen[0].classes


def _waves(todo: list[int], sources: list[int], propagate: bool) -> list[list[int]]:
    """Groups of query slices that can run together: all at once, or by distance from the prompts."""
    if not todo:
        return []
    if not propagate:
        return [todo]
    distance = {q: min(abs(q - s) for s in sources) for q in todo}
    return [[q for q in todo if distance[q] == d] for d in sorted(set(distance.values()))]


# -------------------------------------------------------------------- CLI


def _parse_slices(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"slice lists are comma-separated integers, got {text!r}") from None


def _same_grid(path: Path, volume, reference, reference_name: str) -> None:
    """Files that describe the input's own slices must lie on its grid."""
    if volume.array.shape != reference.array.shape:
        shapes = f"shape {volume.array.shape} (k, j, i) but {reference_name} has {reference.array.shape}"
        raise ValueError(f"{path} has {shapes}")
    ours, theirs = volume.geometry, reference.geometry
    for name in ("spacing", "origin", "direction"):
        mine, expected = getattr(ours, name), getattr(theirs, name)
        if not np.allclose(mine, expected, atol=1e-3):
            raise ValueError(f"{path} {name} {mine} differs from {reference_name}'s {expected}")


def _prompt_slices(
    path: Path, target: np.ndarray, axis: int, chosen: list[int] | None, flag: str
) -> list[int]:
    """Explicit slice indices, or every slice of the sparse target file with a non-zero voxel."""
    n = target.shape[axis]
    if chosen is None:
        other = tuple(a for a in range(3) if a != axis)
        chosen = np.flatnonzero(np.any(target != 0, axis=other)).tolist()
        if not chosen:
            raise ValueError(
                f"{path} has no non-zero slice along axis {axis}; label some slices or pass {flag}"
            )
    for index in chosen:
        if not 0 <= index < n:
            raise ValueError(
                f"{flag}: slice {index} is out of range; {path} has {n} slices along axis {axis}"
            )
    return sorted(set(chosen))


INPUT_FLAGS = ("checkpoint", "input", "prompts", "prompt_image", "prompt_target", "hole")
OUTPUT_FLAGS = ("output", "disagreement")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_paths(args: argparse.Namespace) -> None:
    """What can be known about the paths before anything is read: every output has a volume
    suffix, lies in an existing writable folder, is new (or --overwrite), and is neither an input
    nor another output; no name is one SimpleITK would abort on."""
    from .io import WRITE_SUFFIXES, check_path_encoding

    inputs = {_flag(n): getattr(args, n) for n in INPUT_FLAGS if getattr(args, n) is not None}
    outputs = {_flag(n): getattr(args, n) for n in OUTPUT_FLAGS if getattr(args, n) is not None}
    for flag, path in {**inputs, **outputs}.items():
        check_path_encoding(path, flag)
    if args.hole is not None and args.task != "inpaint":
        raise ValueError(f"--hole is only used by --task inpaint, not by --task {args.task}; leave it out")
    if args.adapt_steps and args.task not in ADAPT_TASKS:
        raise ValueError(
            f"--adapt-steps is only used by --task {' and '.join(ADAPT_TASKS)}, not by --task {args.task}"
        )
    if args.adapt_steps < 0:
        raise ValueError(
            f"--adapt-steps must be 0 (off) or a positive number of steps, got {args.adapt_steps}"
        )
    checked: dict[str, Path] = {}
    for flag, path in outputs.items():
        for other_flag, other in {**inputs, **checked}.items():
            if _same_file(path, other):
                what = other_flag.lstrip("-").replace("-", " ")
                raise ValueError(f"{flag} {path} is the {what} file ({other_flag}); choose a new file")
        if not path.name.lower().endswith(WRITE_SUFFIXES):
            raise ValueError(f"{flag} {path}: the name must end with one of {', '.join(WRITE_SUFFIXES)}")
        cli.check_output_folder(path, f"{flag} {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{flag} {path} is a folder; give a file name")
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{flag} {path} exists; choose a new file or pass --overwrite")
        checked[flag] = path


def _same_file(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _read_target(path: Path, task: str, flag: str):
    """A prompt target file: label class ids for segmentation (whole-number floats accepted, by
    :func:`MVGCore.io.read_labels`), else a finite real image; errors name the flag and file."""
    from .io import read_labels, read_volume

    if task != "segment":
        volume = read_volume(path)
        _check_volume(volume.array, f"{flag} {path}")
        return volume
    volume = read_labels(path)
    if volume.array.dtype != np.bool_:
        check_labels(volume.array, f"{flag} {path}")
    return volume


def _read_hole(args: argparse.Namespace, image) -> np.ndarray:
    from .io import read_volume

    if args.hole is None:
        raise ValueError("--task inpaint needs --hole MASK (non-zero = voxels to fill)")
    hole = read_volume(args.hole)
    _same_grid(args.hole, hole, image, f"--input {args.input}")
    mask = hole.array != 0
    if not mask.any():
        raise ValueError(f"--hole {args.hole} marks no voxel (it is all zero); mark the voxels to fill")
    return mask


def _collect_prompts(args: argparse.Namespace, image) -> list[Prompt]:
    from .io import read_volume

    prompts: list[Prompt] = []
    if args.prompts is not None:
        sparse = _read_target(args.prompts, args.task, "--prompts")
        _same_grid(args.prompts, sparse, image, f"--input {args.input}")
        for index in _prompt_slices(args.prompts, sparse.array, args.axis, args.slices, "--slices"):
            prompts.append(
                Prompt.from_volume(image.array, index, take_slice(sparse.array, args.axis, index), args.axis)
            )
    if (args.prompt_image is None) != (args.prompt_target is None):
        raise ValueError("--prompt-image and --prompt-target go together (another volume and its target)")
    if args.prompt_image is not None:
        other = read_volume(args.prompt_image)
        _check_volume(other.array, f"--prompt-image {args.prompt_image}")
        target = _read_target(args.prompt_target, args.task, "--prompt-target")
        _same_grid(args.prompt_target, target, other, f"--prompt-image {args.prompt_image}")
        slices = _prompt_slices(
            args.prompt_target, target.array, args.axis, args.prompt_slices, "--prompt-slices"
        )
        for index in slices:
            prompts.append(
                Prompt(take_slice(other.array, args.axis, index), take_slice(target.array, args.axis, index))
            )
    return prompts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m MVGCore.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="model .safetensors (with its .json)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument(
        "--input", required=True, type=Path, help="volume to process (NIfTI, NRRD, MHA, DICOM)"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="new file (.nii.gz, .nii, .nrrd, .seg.nrrd, .mha)"
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help="targets on the input's grid (sparse labels / clean or target images); its non-zero slices "
        "are the prompts unless --slices names them",
    )
    parser.add_argument(
        "--slices", type=_parse_slices, help="prompt slice indices of --prompts, e.g. 10,40,70"
    )
    parser.add_argument("--prompt-image", type=Path, help="another volume to take prompt slices from")
    parser.add_argument("--prompt-target", type=Path, help="the target of --prompt-image, on its grid")
    parser.add_argument("--prompt-slices", type=_parse_slices, help="slices of --prompt-image to use")
    parser.add_argument("--hole", type=Path, help="inpaint: mask of the voxels to fill, on the input's grid")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slice axis in (k, j, i)")
    parser.add_argument("--modality", default="auto", help="auto, CT, MR, XR, US or OTHER")
    parser.add_argument("--window", type=parse_window, help="CT window: preset name or LOW,HIGH")
    parser.add_argument(
        "--ct-window",
        type=parse_window,
        help="window of CT inputs when --window is not given: preset name or LOW,HIGH (default: "
        f"{TASK_CT_WINDOWS['segment']} to segment, {DEFAULT_CT_WINDOW} for the image tasks)",
    )
    parser.add_argument("--k-prompts", type=int, default=1, help="prompts per query slice (default 1)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="average", help="how K prompts combine")
    parser.add_argument(
        "--propagate",
        action=argparse.BooleanOptionalAction,
        help="propagate outward from the prompt slices (default: on to segment from the input's own slices)",
    )
    parser.add_argument(
        "--zoom",
        choices=ZOOMS,
        default="prompts",
        help="segment: run on the region around the prompt labels (default) or on whole slices",
    )
    parser.add_argument(
        "--zoom-margin",
        type=float,
        default=ZOOM_MARGIN,
        help=f"segment: margin of that region ({ZOOM_MARGIN})",
    )
    parser.add_argument(
        "--align-prompts",
        choices=ALIGNMENTS,
        default=DEFAULT_ALIGNMENT,
        help=f"segment: warp each prompt onto its query slice by 2D registration first ({DEFAULT_ALIGNMENT})",
    )
    parser.add_argument(
        "--answer",
        choices=ANSWERS,
        default="trim",
        help="segment with aligned prompts: the aligned prompt label where the model answers foreground "
        "(trim, the default), or the model's own classes",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        help="tile in pixels the model runs at, its weights resampled (default: the model's tile; "
        "to segment, its config's segment_tile_size when set)",
    )
    parser.add_argument(
        "--image-scale",
        choices=IMAGE_SCALES,
        default="native",
        help="denoise/inpaint/synthesize: 1:1 overlapping tiles (default) or each slice fitted into one tile",
    )
    parser.add_argument(
        "--calibrate",
        choices=CALIBRATIONS,
        default="blend",
        help="denoise: blend the answer with the input by weights fitted on the prompts (default; "
        "needs 2+ prompts) or return the model's answer",
    )
    parser.add_argument(
        "--adapt-steps",
        type=int,
        default=0,
        help="segment, denoise: tune a copy of the model on the prompts for this many steps first "
        "(0 = off; denoise: needs prompt pairs and replaces --calibrate blend)",
    )
    parser.add_argument("--disagreement", type=Path, help="also write the per-voxel disagreement map here")
    parser.add_argument("--seed", type=int, default=0, help="seed of self-made prompts (denoise/inpaint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="canvases per forward pass")
    parser.add_argument("--allow-pickle", action="store_true", help="allow a trusted pickle checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.add_argument(
        "--progress",
        choices=PROGRESS_FORMATS,
        default="log",
        help="log: progress in the log; json: one JSON event per stdout line for programs driving this one",
    )
    cli.add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input raises (naming the file or flag) before the model is loaded.

    ``python -m MVGCore.predict`` reports those errors as one line (:mod:`MVGCore.cli`).
    """
    from .io import read_volume, write_volumes
    from .types import Volume

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(attach_dash_values(argv, ("--window",)))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    _check_paths(args)
    image = read_volume(args.input)
    _check_volume(image.array, f"--input {args.input}")
    prompts = _collect_prompts(args, image)
    if args.task in ("segment", "synthesize") and not prompts:
        raise ValueError(
            f"--task {args.task} needs prompts: --prompts FILE and/or --prompt-image/--prompt-target"
        )
    hole = _read_hole(args, image) if args.task == "inpaint" else None
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, allow_pickle=args.allow_pickle, batch_size=args.batch_size
    )
    options = {
        "modality": args.modality,
        "window": args.window,
        "ct_window": args.ct_window,
        "spacing": image.geometry.spacing_kji,
        "k_prompts": args.k_prompts,
        "ensemble": args.ensemble,
        "propagate": args.propagate,
        "return_disagreement": args.disagreement is not None,
        "seed": args.seed,
        "tile_size": args.tile_size,
    }
    if args.task == "segment":
        options.update(
            zoom=args.zoom,
            zoom_margin=args.zoom_margin,
            align_prompts=args.align_prompts,
            answer=args.answer,
            adapt_steps=args.adapt_steps,
        )
    else:
        options.update(image_scale=args.image_scale)
    if args.task == "denoise":
        options.update(calibrate=args.calibrate, adapt_steps=args.adapt_steps)
    run: Callable[..., Any]
    if args.task == "inpaint":
        run = lambda **kw: predictor.inpaint(image.array, hole, prompts, args.axis, **kw)  # noqa: E731
    else:
        task = getattr(predictor, args.task)
        run = lambda **kw: task(image.array, prompts, args.axis, **kw)  # noqa: E731
    log.info("%s on %s (%s), %d prompt slice(s)", args.task, args.input, predictor.device, len(prompts))
    json_events = args.progress == "json"
    if json_events:
        emit_event("started", device=predictor.device)
    result = run(progress=_json_progress() if json_events else _log_progress(), **options)
    result, spread = result if isinstance(result, tuple) else (result, None)
    items = [(args.output, Volume(result, image.geometry))]
    if spread is not None:
        items.append((args.disagreement, Volume(spread, image.geometry)))
    for path in write_volumes(items, overwrite=args.overwrite):  # all outputs or none
        log.info("wrote %s", path)
    if json_events:
        emit_event("done", output=str(args.output))
    return 0


def emit_event(event: str, **fields: Any) -> None:
    """One line of the ``--progress json`` protocol on stdout, flushed at once for a reading parent."""
    print(json.dumps({"event": event, **fields}), flush=True)


def _json_progress() -> ProgressFn:
    return lambda done, total: emit_event("progress", done=done, total=total)


def _log_progress() -> ProgressFn:
    """Log each further tenth of the work, and the end."""
    last = [0]

    def report(done: int, total: int) -> None:
        if done == total or 10 * done // max(total, 1) > 10 * last[0] // max(total, 1):
            last[0] = done
            log.info("%d/%d slices", done, total)

    return report


if __name__ == "__main__":
    sys.exit(cli.run(main, "python -m MVGCore.predict"))
