"""Segmentation from labelled prompt slices: the zoom region, the color table, the answer.

The model runs on the in-plane region around the prompt labels (:mod:`MVGCore.zoom`), grown wave
by wave to take in the propagated labels (:mod:`MVGCore.predict.propagation`); prompts are warped
onto each query (:mod:`MVGCore.predict.alignment`); the prompts' classes are colored in order,
whatever their label values, and decoded back to those values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import zoom
from ..adapt import AdaptSettings
from ..canvas import build_canvases, plan_fit, unfit_from_tile
from ..coloring import check_labels, color_table, decode
from ..slicewise import check_axis, kept_targets, label_dtype, plane_shape, required_prompts, take_slice
from ..types import CancelToken, ProgressFn, Prompt
from . import engine, propagation
from .alignment import aligned, require_registration
from .inputs import (
    SPACING_ADVICE,
    check_finite,
    check_slices_fit,
    check_volume,
    options_range,
    plane_spacing,
    prompt_range,
    sample,
)
from .job import Example, Job
from .options import Options

if TYPE_CHECKING:
    from .predictor import Predictor


def segment(
    predictor: Predictor,
    image: np.ndarray,
    prompts: Sequence[Prompt],
    axis: int,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    options: dict[str, Any],
) -> engine.Result:
    """:meth:`MVGCore.predict.Predictor.segment`, whose docstring says what it returns."""
    opts = Options.parse(options, "segment")
    require_registration(opts.align_prompts)
    volume, axis = check_volume(image, "image"), check_axis(axis)
    prompts = required_prompts(prompts, "segment")
    in_range = options_range(sample(volume), opts)  # of the whole volume, whatever the zoom
    spacing = plane_spacing(opts.spacing, axis)
    kept = kept_targets(prompts, volume.shape, axis)
    if opts.propagate is None:
        opts = dataclasses.replace(opts, propagate=bool(kept))
    size = predictor.config.tile_size
    check_slices_fit(
        volume.shape, axis, opts.spacing, size, False, f"option spacing {opts.spacing}", SPACING_ADVICE
    )
    whole_fit = plan_fit(plane_shape(volume.shape, axis), size, spacing)
    kind = Labels(prompts=tuple(prompts))
    job = Job(volume, axis, opts, in_range, [], kept, whole_fit, spacing, "segment", kind, size)
    job.out_dtype = label_dtype(prompts)
    job = focused(job, zoom.prompt_box(prompts) if opts.zoom == "prompts" else None)
    if not any(e.classes for e in job.examples):
        raise ValueError("every segmentation prompt label is empty; label at least one structure")
    job.kind = dataclasses.replace(
        job.kind, table=color_table(sorted({c for e in job.examples for c in e.classes}), "ordered")
    )
    adaptation = AdaptSettings(opts.adapt_steps, opts.adapt_lr, seed=opts.seed) if opts.adapt_steps else None
    return engine.run(predictor, job, progress, cancel, adaptation)


def focused(job: Job, box: tuple[int, int, int, int] | None) -> Job:
    """``job`` on the zoom region around the labels' ``box`` (whole slices without one or when
    the region is the whole plane), its prompts cut to the region (other images' prompts to their
    own label's region) and its tile fit the region's."""
    shape = plane_shape(job.volume.shape, job.axis)
    opts, prompts = job.options, job.kind.prompts
    region = None if box is None else zoom.region_around(box, shape, job.spacing, opts.zoom_margin)
    if region is not None and region.covers(shape):
        region = None
    if region is not None:
        prompts = [zoom.crop_prompt(p, region, job.spacing, opts.zoom_margin) for p in prompts]
    examples = [_label_example(job, number, p) for number, p in enumerate(prompts)]
    fit = plan_fit(shape if region is None else region.shape, job.tile_size, job.spacing)
    kind = dataclasses.replace(job.kind, box=box)
    return dataclasses.replace(job, examples=examples, fit=fit, region=region, kind=kind)


def _label_example(job: Job, number: int, prompt: Prompt) -> Example:
    check_finite(prompt.image, f"prompt {number} image")
    target = np.asarray(prompt.target)
    target = target.astype(np.uint8) if target.dtype == np.bool_ else target
    check_labels(target, f"prompt {number} label")
    image = prompt_range(prompt, job.in_range, job.options).normalize(prompt.image)
    labels = job.tile(target.astype(np.int64), True)
    classes = tuple(int(c) for c in np.unique(labels) if c != 0)
    return Example(job.tile(image, False), labels, prompt.index, classes)


@dataclass(frozen=True)
class Labels:
    """The segmentation part of a job (:class:`MVGCore.predict.job.TaskKind`).

    ``prompts`` are the prompts as given, cropped anew when the zoom region grows; ``box`` the box
    of the labels the region is drawn around (the prompt slices', then also the propagated ones');
    ``table`` the colors of the prompts' classes.
    """

    prompts: tuple[Prompt, ...]
    box: tuple[int, int, int, int] | None = None
    table: np.ndarray | None = None

    def answered_by_input(self, job: Job, todo: list[int]) -> list[int]:
        return []

    def next_wave(self, job: Job, wave: list[int], out: np.ndarray) -> Job:
        """With propagation and a zoom region, the region grown to hold the labels predicted on
        the neighbours ``wave`` is prompted with (it never shrinks)."""
        if not job.options.propagate or job.region is None:
            return job
        positions = sorted({propagation.neighbour_position(job, q) for q in wave})
        box = zoom.union_box(self.box, zoom.label_box([take_slice(out, job.axis, p) for p in positions]))
        return job if box == self.box else focused(job, box)

    def has_ended(self, job: Job, chosen: list[Example]) -> bool:
        return propagation.lost_everything(job, chosen)

    def neighbour_target(self, job: Job, predicted: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        labels = job.tile(predicted.astype(np.int64), True)
        return labels, tuple(int(c) for c in np.unique(labels) if c != 0)

    def query_tile(self, job: Job, query: int, tile: np.ndarray) -> np.ndarray:
        return tile

    def shown(self, job: Job, query: int, tile: np.ndarray, chosen: list[Example]) -> list[Example]:
        return chosen if job.options.align_prompts == "off" else aligned(job, query, tile, chosen)

    def canvases(self, job: Job, images: np.ndarray, targets: np.ndarray, queries: np.ndarray) -> Any:
        return build_canvases(images, targets, queries, segmentation=True, tables=self.table)

    def decode(
        self, job: Job, query: int, chosen: list[Example], group: torch.Tensor, single: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        classes = sorted({c for e in chosen for c in e.classes})
        if propagation.leads_with_neighbour(job, chosen):
            classes = list(chosen[0].classes)  # a structure the neighbour lost has ended
        trim_to = None
        if job.options.align_prompts != "off" and job.options.answer == "trim":
            # the leading prompt's label (the propagated neighbour's or the nearest prompt's), aligned
            trim_to = chosen[0].target
        final = self._labels(job, group.mean(0, keepdim=True), classes, trim_to)[0]
        spread = None
        if job.options.return_disagreement:
            votes = self._labels(job, single, classes)
            spread = job.whole(np.mean([v != final for v in votes], axis=0).astype(np.float32))
        return job.whole(final.astype(job.out_dtype)), spread

    def _labels(
        self, job: Job, rgb: torch.Tensor, classes: list[int], trim_to: np.ndarray | None = None
    ) -> list[np.ndarray]:
        """Decoded label planes on the input grid; with ``trim_to`` (a label tile), its classes
        where the decoded answer is foreground (``Options.answer="trim"``)."""
        tiles = decode(rgb, self.table, classes).numpy()
        if trim_to is not None:
            tiles = np.where(tiles > 0, trim_to, 0).astype(tiles.dtype)
        return [unfit_from_tile(t, job.fit, True) for t in tiles]
