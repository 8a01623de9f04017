"""The image tasks: denoise, inpaint and synthesize, on whole slices or on 1:1 tiles.

Natively (``image_scale="native"``, the default) every tile position is one run of the slice loop
over a tile-sized view of all slices (:func:`MVGCore.tiling.run_tiled`); "fit" fits each whole
slice into one tile. Denoising blends the answer with the input by weights fitted on the prompts
(:mod:`MVGCore.calibration`); without prompts, denoise and inpaint make their own
(:mod:`MVGCore.predict.self_made`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import tiling
from ..adapt import IMAGE_MODULES, AdaptSettings
from ..calibration import (
    MIN_HALF,
    blend_volume,
    calibration_pairs,
    leave_one_out_blend,
    recorrupted_pairs,
)
from ..canvas import build_canvases, plan_fit, unfit_from_tile
from ..intensity import IntensityRange, intensity_range
from ..slicewise import (
    SliceLoop,
    check_axis,
    evenly_spaced,
    kept_targets,
    plane_shape,
    required_prompts,
    take_slice,
)
from ..types import CancelToken, ProgressFn, Prompt
from . import engine, self_made
from .inputs import (
    SPACING_ADVICE,
    auto_modality,
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Images:
    """The image part of a job (:class:`MVGCore.predict.job.TaskKind`): the range outputs are
    mapped back through, and inpainting's hole."""

    out_range: IntensityRange
    hole: np.ndarray | None = None

    def answered_by_input(self, job: Job, todo: list[int]) -> list[int]:
        if self.hole is None:
            return []
        return [q for q in todo if not take_slice(self.hole, job.axis, q).any()]

    def next_wave(self, job: Job, wave: list[int], out: np.ndarray) -> Job:
        return job

    def has_ended(self, job: Job, chosen: list[Example]) -> bool:
        return False

    def neighbour_target(self, job: Job, predicted: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        return job.tile(self.out_range.normalize(predicted), False), ()

    def query_tile(self, job: Job, query: int, tile: np.ndarray) -> np.ndarray:
        if self.hole is not None:
            tile[job.tile(take_slice(self.hole, job.axis, query).astype(np.uint8), True) > 0] = 0.0
        return tile

    def shown(self, job: Job, query: int, tile: np.ndarray, chosen: list[Example]) -> list[Example]:
        return chosen

    def canvases(self, job: Job, images: np.ndarray, targets: np.ndarray, queries: np.ndarray) -> Any:
        return build_canvases(images, targets, queries, segmentation=False, tables=None)

    def decode(
        self, job: Job, query: int, chosen: list[Example], group: torch.Tensor, single: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        gray = group.mean(1).mean(0).numpy()
        plane = self.out_range.denormalize(unfit_from_tile(gray, job.fit, False))
        if self.hole is not None:
            original = take_slice(job.volume, job.axis, query)
            plane = np.where(take_slice(self.hole, job.axis, query), plane, original).astype(np.float32)
        spread = None
        if job.options.return_disagreement:
            each = [unfit_from_tile(t, job.fit, False) for t in single.mean(1).numpy()]
            spread = (np.std(each, axis=0) * (self.out_range.high - self.out_range.low)).astype(np.float32)
        return plane, spread


def denoise(
    predictor: Predictor,
    image: np.ndarray,
    prompts: Sequence[Prompt] | None,
    axis: int,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    options: dict[str, Any],
) -> engine.Result:
    """:meth:`MVGCore.predict.Predictor.denoise`, whose docstring says what it returns."""
    opts = Options.parse(options, "denoise")
    volume, axis = check_volume(image, "image"), check_axis(axis)
    if opts.adapt_steps and not prompts:
        raise ValueError(
            "option adapt_steps (test-time adaptation) needs (noisy, clean) prompt pairs to denoise"
        )
    in_range = options_range(sample(volume), opts)
    ranges = [prompt_range(p, in_range, opts) for p in prompts or ()]

    jobs = ImageJobs(
        predictor,
        "denoise",
        axis,
        opts,
        in_range,
        ranges,
        own_prompts=lambda job: self_made.noise_examples(job, opts.auto_prompts, opts.seed),
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
    result = _run(jobs, volume, prompts or [], None, progress, cancel, adaptation)
    if opts.calibrate != "blend" or opts.adapt_steps:
        return result
    if prompts:
        given = [Prompt(in_range.normalize(p.image), in_range.normalize(p.target)) for p in prompts]
    else:
        positions = evenly_spaced(list(range(volume.shape[axis])), opts.auto_prompts)
        planes = [in_range.normalize(take_slice(volume, axis, p)) for p in positions]
        given = recorrupted_pairs(planes, opts.seed)
    pairs = calibration_pairs(given)
    if pairs is None:
        log.info(
            "denoise: too little image to calibrate on (one prompt or slice under %d px per "
            "half); the model's answer is returned",
            MIN_HALF,
        )
        return result
    return _calibrated(predictor, result, volume, axis, prompts or [], pairs, in_range, opts, options, cancel)


def _calibrated(
    predictor: Predictor,
    result: engine.Result,
    volume: np.ndarray,
    axis: int,
    prompts: Sequence[Prompt],
    pairs: list[Prompt],
    in_range: IntensityRange,
    opts: Options,
    options: dict[str, Any],
    cancel: CancelToken | None,
) -> engine.Result:
    """``result`` of :func:`denoise` blended with the noisy ``volume`` by weights fitted on
    ``pairs`` (:func:`MVGCore.calibration.blend_volume`). Each pair is denoised as a one-slice
    volume in the model's units (the volume's normalisation), with the volume's in-plane spacing."""
    single = {
        **options,
        "calibrate": "off",
        "return_disagreement": False,
        "window": (0.0, 1.0),  # the pairs come normalised by the volume's range
        "spacing": (1.0, *plane_spacing(opts.spacing, axis)),
    }

    def denoise_one(image: np.ndarray, others: list[Prompt]) -> np.ndarray:
        return predictor.denoise(image[None], others, 0, cancel=cancel, **single)[0]

    blend = leave_one_out_blend(denoise_one, pairs)
    log.info(
        "denoise calibration (normalised units): %.3f x model + %.3f x input + %.4g",
        blend.model_weight,
        blend.input_weight,
        blend.offset,
    )
    kept = {p.index for p in prompts if p.index is not None}
    return blend_volume(blend, result, volume, axis, kept, in_range)


def inpaint(
    predictor: Predictor,
    image: np.ndarray,
    hole_mask: np.ndarray,
    prompts: Sequence[Prompt] | None,
    axis: int,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    options: dict[str, Any],
) -> engine.Result:
    """:meth:`MVGCore.predict.Predictor.inpaint`, whose docstring says what it returns."""
    opts = Options.parse(options, "inpaint")
    volume, axis = check_volume(image, "image"), check_axis(axis)
    hole = np.asarray(hole_mask)
    if hole.shape != volume.shape:
        raise ValueError(f"hole_mask shape {hole.shape} must equal the image shape {volume.shape}")
    hole = hole.astype(bool, copy=False)
    in_range = options_range(sample(volume), opts)
    ranges = [prompt_range(p, in_range, opts) for p in prompts or ()]

    jobs = ImageJobs(
        predictor,
        "inpaint",
        axis,
        opts,
        in_range,
        ranges,
        own_prompts=lambda job: self_made.hole_examples(job, job.kind.hole, opts.auto_prompts),
    )
    return _run(jobs, volume, prompts or [], hole, progress, cancel)


def synthesize(
    predictor: Predictor,
    source: np.ndarray,
    prompts: Sequence[Prompt],
    axis: int,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    options: dict[str, Any],
) -> engine.Result:
    """:meth:`MVGCore.predict.Predictor.synthesize`, whose docstring says what it returns."""
    opts = Options.parse(options, "synthesize")
    volume, axis = check_volume(source, "source"), check_axis(axis)
    prompts = required_prompts(prompts, "synthesize")
    in_range = options_range(sample(volume), opts)
    for number, p in enumerate(prompts):
        check_finite(p.target, f"prompt {number} target")
    pooled = np.concatenate([np.ravel(p.target) for p in prompts])
    out_range = intensity_range(
        sample(pooled), auto_modality(pooled, opts.target_modality), opts.target_window
    )
    ranges = [prompt_range(p, in_range, opts) for p in prompts]

    jobs = ImageJobs(predictor, "synthesize", axis, opts, in_range, ranges, out_range)
    return _run(jobs, volume, prompts, None, progress, cancel)


def _run(
    jobs: ImageJobs,
    volume: np.ndarray,
    prompts: Sequence[Prompt],
    hole: np.ndarray | None,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    adaptation: tuple[AdaptSettings, list[tuple[np.ndarray, np.ndarray]]] | None = None,
) -> engine.Result:
    """An image task on whole slices fitted to the tile ("fit"), or on 1:1 tiles ("native").

    Natively, tiles are padded with the normalisation's low end (which becomes 0). With
    ``adaptation`` (settings, (input, output) [0, 1] prompt images), a copy of the model is first
    tuned on them (:func:`MVGCore.predict.engine.adapted`) and answers every tile; its steps come
    first in the progress count.
    """
    predictor, axis, opts = jobs.predictor, jobs.axis, jobs.opts
    native, size = opts.image_scale == "native", predictor.config.tile_size
    check_slices_fit(
        volume.shape, axis, opts.spacing, size, native, f"option spacing {opts.spacing}", SPACING_ADVICE
    )
    if not native:
        return engine.run(predictor, jobs.job(volume, prompts, hole), progress, cancel)
    overlap = size // 4 if opts.tile_overlap is None else min(opts.tile_overlap, size - 1)
    plan = tiling.plan_tiles(plane_shape(volume.shape, axis), size, overlap)
    tuned = None
    if adaptation is not None and adaptation[0].steps:
        settings, examples = adaptation
        loop = SliceLoop(settings.steps + len(plan) * volume.shape[axis], progress, cancel)
        tuned = engine.adapted(predictor, examples, settings, loop)
        progress = _offset_progress(progress, settings.steps)

    def run_part(part: np.ndarray, part_prompts: list[Prompt], part_hole: np.ndarray | None, n: int) -> Any:
        tile_progress = None
        if progress is not None:
            tile_progress = lambda done, total: progress(n * total + done, len(plan) * total)  # noqa: E731
        job = jobs.job(part, part_prompts, part_hole)
        job.model = tuned
        return engine.run(predictor, job, tile_progress, cancel)

    results = tiling.run_tiled(volume, axis, prompts, hole, plan, jobs.in_range.low, run_part)
    return tuple(results) if len(results) > 1 else results[0]


def _offset_progress(progress: ProgressFn | None, before: int) -> ProgressFn | None:
    """``progress`` of the work that comes after ``before`` finished steps (adaptation's)."""
    if progress is None or not before:
        return progress
    return lambda done, total: progress(before + done, before + total)


@dataclass(frozen=True)
class ImageJobs:
    """How an image task makes the job of each part it runs on (the volume, or one tile position
    of it): the given prompts as examples (``ranges`` scale their images; ``out_range``, default
    the input's, their targets and the output), or, when none are given, the examples
    ``own_prompts`` makes for the part's job."""

    predictor: Predictor
    task: str
    axis: int
    opts: Options
    in_range: IntensityRange
    ranges: Sequence[IntensityRange]
    out_range: IntensityRange | None = None
    own_prompts: Callable[[Job], list[Example]] | None = None

    def job(self, part: np.ndarray, part_prompts: Sequence[Prompt], hole: np.ndarray | None) -> Job:
        spacing = plane_spacing(self.opts.spacing, self.axis)
        size = self.predictor.config.tile_size
        fit = plan_fit(plane_shape(part.shape, self.axis), size, spacing)
        kind = Images(self.in_range if self.out_range is None else self.out_range, hole)
        job = Job(part, self.axis, self.opts, self.in_range, [], {}, fit, spacing, self.task, kind, size)
        if not part_prompts and self.own_prompts is not None:
            job.examples = self.own_prompts(job)
        else:
            job.kept = kept_targets(part_prompts, part.shape, self.axis)
            job.examples = [
                _image_example(job, n, p, self.ranges[n], self.out_range) for n, p in enumerate(part_prompts)
            ]
        return job


def _image_example(
    job: Job, number: int, prompt: Prompt, image_range: IntensityRange, target_range: IntensityRange | None
) -> Example:
    """An (input, output) image pair, the input scaled by ``image_range`` (the prompt's own, from
    :func:`MVGCore.predict.segmentation.prompt_range`, so a tile of it is scaled as the whole); an
    indexed inpainting prompt gets its slice's hole zeroed."""
    check_finite(prompt.image, f"prompt {number} image")
    check_finite(prompt.target, f"prompt {number} target")
    image = image_range.normalize(prompt.image)
    hole = job.kind.hole
    if hole is not None and prompt.index is not None:
        image[take_slice(hole, job.axis, prompt.index)] = 0.0
    target = (target_range or image_range).normalize(prompt.target)
    return Example(job.tile(image, False), job.tile(target, False), prompt.index)
