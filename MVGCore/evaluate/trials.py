"""A case posed as a trial: the prompts, the degraded input and the reference, made once.

Every method then answers that same trial, so their scores differ only by the method. Prompt
slices are chosen evenly among the slices that can serve (labelled ones for segmentation, ones with
contrast for the image tasks); noise and holes are drawn from ``(seed, case number)``, so a trial is
the same on every run. A single 2D image (one slice along the axis) takes its prompts from other
single images of its dataset, or from one half of itself and is scored on the other half.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.sources import Case
from ..degrade import HOLE_MODELS, NOISE_MODELS, add_noise, check_noise_level, make_hole
from ..intensity import IntensityRange, intensity_range
from ..slicewise import check_axis, evenly_spaced, plane_shape, put_slice, take_slice
from ..types import TASKS, Prompt

log = logging.getLogger(__package__)  # one logger for the package, named as when it was one module

BLANK_CONTRAST = 0.01
"""Slices whose normalised values span less than this cannot serve as image-task prompts."""
SINGLE_IMAGES = ("dataset", "tiles", "skip")
"""Where a single 2D image's prompts come from: other images of its dataset, half of itself, or
nowhere (the image is skipped)."""


@dataclass(frozen=True)
class Settings:
    """What every method is asked, identically: tasks, prompt count, slice axis, degradation, seed."""

    tasks: tuple[str, ...] = TASKS
    n_prompts: int = 3
    axis: int = 0
    seed: int = 0
    noise: str = "gaussian"
    noise_level: float = 0.05
    hole: str = "box"
    single_images: str = "dataset"

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.n_prompts < 1:
            raise ValueError(f"n_prompts must be at least 1, got {self.n_prompts}")
        check_axis(self.axis)
        check_noise_level(self.noise, self.noise_level)
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {sorted(NOISE_MODELS)}, got {self.noise!r}")
        if self.hole not in HOLE_MODELS:
            raise ValueError(f"hole must be one of {HOLE_MODELS}, got {self.hole!r}")
        if self.single_images not in SINGLE_IMAGES:
            raise ValueError(f"single_images must be one of {SINGLE_IMAGES}, got {self.single_images!r}")


@dataclass
class Trial:
    """One case and task, prepared once so every method answers exactly the same question.

    ``hole`` is the inpainting mask; ``scale`` maps outputs to [0, 1] for image metrics;
    ``truth`` is labels or the [0, 1] reference.
    ``scored`` (single images prompted by half of themselves) marks the voxels that are scored;
    otherwise every slice that is not a prompt is.
    """

    case: Case
    task: str
    volume: np.ndarray
    prompts: list[Prompt]
    truth: np.ndarray
    spacing_kji: tuple[float, float, float]
    modality: str
    scale: IntensityRange | None = None
    hole: np.ndarray | None = None
    target_modality: str | None = None
    single: bool = False
    scored: np.ndarray | None = None
    prompt_source: str = "slices"

    @property
    def name(self) -> str:
        return f"{self.case.dataset}__{self.case.case_id}__{self.task}"

    @property
    def prompt_slices(self) -> list[int]:
        return [p.index for p in self.prompts if p.index is not None]


@dataclass
class _Posed:
    """A case posing a task: the method input, the reference and how image outputs are scaled.

    ``targets`` holds what a prompt slice shows as its target (labels, clean or target image, in
    the units methods answer in); ``candidates`` the slices that can serve as prompts.
    """

    volume: np.ndarray
    truth: np.ndarray
    targets: np.ndarray
    candidates: list[int]
    spacing_kji: tuple[float, float, float]
    modality: str
    scale: IntensityRange | None = None
    hole: np.ndarray | None = None
    target_modality: str | None = None


def _pose(case: Case, task: str, settings: Settings, case_number: int) -> _Posed:
    from ..io import read_volume

    axis = settings.axis
    image = read_volume(case.images[0])
    spacing = image.geometry.spacing_kji
    volume, modality = image.array, case.modalities[0]
    rng = np.random.default_rng([settings.seed, case_number])
    if task == "segment":
        label = read_volume(case.label).array
        return _Posed(volume, label, label, _serving(label != 0, axis), spacing, modality)
    if task == "synthesize":
        if len(case.images) > 1:
            target, target_modality = read_volume(case.images[1]).array, case.modalities[1]
        else:
            target, target_modality = read_volume(case.target).array, case.modalities[0]
        scale = intensity_range(target, target_modality)
        truth = scale.normalize(target)
        candidates = _serving(_contrast(truth, axis), axis)
        targets = target.astype(np.float32)
        return _Posed(volume, truth, targets, candidates, spacing, modality, scale, None, target_modality)
    scale = intensity_range(volume, modality)
    clean = scale.normalize(volume)
    candidates = _serving(_contrast(clean, axis), axis)
    if task == "denoise":
        degraded = np.empty_like(clean)
        for index in range(volume.shape[axis]):
            noisy = add_noise(take_slice(clean, axis, index), settings.noise, settings.noise_level, rng)
            put_slice(degraded, axis, index, noisy)
        hole = None
    else:
        hole = np.zeros(volume.shape, dtype=bool)
        degraded = clean.copy()
        for index in range(volume.shape[axis]):
            plane_hole = make_hole(settings.hole, take_slice(clean, axis, index).shape, rng)
            put_slice(hole, axis, index, plane_hole)
        degraded[hole] = 0.0
    targets = scale.denormalize(clean)
    return _Posed(scale.denormalize(degraded), clean, targets, candidates, spacing, modality, scale, hole)


def make_trial(
    case: Case,
    task: str,
    settings: Settings,
    case_number: int,
    donors: Sequence[tuple[int, Case]] = (),
) -> Trial | None:
    """The trial of ``task`` on ``case``, or None when the case cannot pose it (logged).

    ``donors`` (case number, case) are the other images of the case's dataset that pose ``task``;
    a single image takes its prompts from those that are single images too, with
    ``single_images="dataset"``.
    """
    axis = settings.axis
    posed = _pose(case, task, settings, case_number)
    if posed.volume.shape[axis] == 1:
        return _single_trial(case, task, settings, posed, donors)
    if len(posed.candidates) < (2 if task == "segment" else 1):
        what = "2+ labelled slices" if task == "segment" else "a slice with contrast"
        log.warning("%s: %s needs %s along axis %d; skipped", case.case_id, task, what, axis)
        return None
    chosen = evenly_spaced(posed.candidates, settings.n_prompts)
    prompts = [Prompt.from_volume(posed.volume, i, take_slice(posed.targets, axis, i), axis) for i in chosen]
    return _trial(case, task, posed, prompts)


def _trial(case: Case, task: str, posed: _Posed, prompts: list[Prompt], **extra: Any) -> Trial:
    return Trial(
        case,
        task,
        posed.volume,
        prompts,
        posed.truth,
        posed.spacing_kji,
        posed.modality,
        posed.scale,
        posed.hole,
        posed.target_modality,
        **extra,
    )


def _single_trial(
    case: Case, task: str, settings: Settings, posed: _Posed, donors: Sequence[tuple[int, Case]]
) -> Trial | None:
    """A one-slice case: prompts from other single images of the dataset, or from half of itself."""
    axis, mode = settings.axis, settings.single_images
    if mode == "skip" or not posed.candidates:
        reason = "--single-images skip" if mode == "skip" else "it has no label or contrast to prompt with"
        log.warning("%s: single image skipped for %s (%s)", case.case_id, task, reason)
        return None
    if mode == "dataset":
        prompts = []
        for number, donor in donors:
            other = _pose(donor, task, settings, number)
            if other.volume.shape[axis] == 1 and other.candidates:
                prompts.append(Prompt(take_slice(other.volume, axis, 0), take_slice(other.targets, axis, 0)))
            if len(prompts) == settings.n_prompts:
                break
        if not prompts:
            log.warning(
                "%s: no other single image of dataset %s poses %s to prompt with; skipped "
                "(--single-images tiles prompts with half of the image)",
                case.case_id,
                case.dataset,
                task,
            )
            return None
        return _trial(case, task, posed, prompts, single=True, prompt_source="dataset")
    plane = plane_shape(posed.volume.shape, axis)
    along = int(np.argmax(plane))  # halve the longer side
    half = plane[along] // 2
    if half < 8:
        log.warning("%s: single image %s too small to halve for %s; skipped", case.case_id, plane, task)
        return None
    key: list = [slice(None), slice(None)]
    key[along] = slice(0, half)
    prompt_half = np.zeros(plane, dtype=bool)
    prompt_half[tuple(key)] = True
    image = take_slice(posed.volume, axis, 0)[tuple(key)]
    target = take_slice(posed.targets, axis, 0)[tuple(key)]
    if task == "segment" and not np.any(target):
        log.warning("%s: the prompt half of the single image has no label; skipped", case.case_id)
        return None
    scored = np.ones(posed.volume.shape, dtype=bool)
    put_slice(scored, axis, 0, ~prompt_half)
    prompts = [Prompt(image, target)]
    return _trial(case, task, posed, prompts, single=True, scored=scored, prompt_source="tiles")


def _contrast(normalised: np.ndarray, axis: int) -> np.ndarray:
    """Per-voxel mask that is True everywhere on slices with contrast (so ``_serving`` finds them)."""
    other = tuple(a for a in range(3) if a != axis)
    keep = np.ptp(normalised, axis=other) >= BLANK_CONTRAST
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.broadcast_to(keep.reshape(shape), normalised.shape)


def _serving(mask: np.ndarray, axis: int) -> list[int]:
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(np.any(mask, axis=other)).tolist()


def check_prompt_count(cases: Sequence[Case], settings: Settings) -> None:
    """Prompts are slices of each case itself, so as many prompts as slices leave nothing to score;
    refused (from the headers alone) before any report file is written."""
    from ..io import read_geometry

    for case in cases:
        slices = read_geometry(case.images[0])[0][settings.axis]
        if slices >= 2 and settings.n_prompts >= slices:  # single images are skipped with a reason
            raise ValueError(
                f"--prompts {settings.n_prompts} leaves no slice to score: case {case.case_id!r} "
                f"({case.images[0]}) has {slices} slices along axis {settings.axis}; use fewer prompts"
            )


def donors_of(cases: Sequence[Case], number: int, task: str) -> list[tuple[int, Case]]:
    """The other cases of case ``number``'s dataset that pose ``task``, nearest in order first
    (a single image takes its prompts from those that are single images too)."""
    case = cases[number]
    others = [
        (n, c) for n, c in enumerate(cases) if n != number and c.dataset == case.dataset and task in c.tasks
    ]
    return sorted(others, key=lambda item: abs(item[0] - number))
