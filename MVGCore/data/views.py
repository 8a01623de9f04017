"""How the two halves of a training sample are viewed: crop and zoom boxes, shared flips and
intensity jitter, the small motion of a propagation prompt, and its alignment onto the query.

Shared by the training sampler (:mod:`MVGCore.data.samplers`) and test-time adaptation
(:mod:`MVGCore.adapt`), which augments a user's prompts the way training augmented its pairs.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..registration import Registration
from .sampler_config import AugmentConfig, PropagationConfig
from .store import StoredCase


def crop_box(rng, size, scale, ratio) -> tuple[int, int, int, int]:
    """A random resized crop (top, left, height, width) of a ``size`` square: area fraction drawn
    from ``scale``, aspect ratio log-uniform in ``ratio``, sides clipped to the square."""
    area = rng.uniform(*scale) * size * size
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    height = int(np.clip(round(np.sqrt(area / aspect)), 1, size))
    width = int(np.clip(round(np.sqrt(area * aspect)), 1, size))
    return int(rng.integers(size - height + 1)), int(rng.integers(size - width + 1)), height, width


def crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``array[top:top+height, left:left+width]``, zero where the box leaves the array."""
    top, left, height, width = box
    out = np.zeros((height, width), dtype=array.dtype)
    r0, r1 = max(top, 0), min(top + height, array.shape[0])
    c0, c1 = max(left, 0), min(left + width, array.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = array[r0:r1, c0:c1]
    return out


def native_scale(case: StoredCase) -> float:
    """Stored tile pixels per source pixel (along the finer in-plane axis): 1 for a 512 px CT
    slice in a 512 store, 2 for a 256 px MR slice there, 0.25 for a 512 px slice in a 128 store."""
    fit = case.source.get("fit") if case.source else None
    if not fit:
        return 1.0
    return max(c / s for c, s in zip(fit["content"], fit["shape"]))


def square_box(
    top: float, bottom: float, left: float, right: float, margin: float, floor: float
) -> tuple[int, int, int, int]:
    """The square (top, left, side, side) around rows [top, bottom) x cols [left, right) with
    ``margin`` x the longer side added on each side, and at least ``floor`` pixels wide."""
    side = max(bottom - top, right - left)
    side_px = int(np.ceil(max(side * (1.0 + 2.0 * margin), floor, 1.0)))
    centre_r, centre_c = (top + bottom) / 2.0, (left + right) / 2.0
    return (round(centre_r - side_px / 2.0), round(centre_c - side_px / 2.0), side_px, side_px)


def shared_augment(rng: np.random.Generator, aug: AugmentConfig) -> tuple[tuple[bool, bool], Any]:
    """Flips (vertical, horizontal) and an intensity jitter drawn once per sample, for prompt and
    query alike."""
    flips = (bool(rng.random() < aug.vflip_prob), bool(rng.random() < aug.hflip_prob))
    if rng.random() >= aug.jitter_prob:
        return flips, lambda image: image
    gamma = float(np.exp(rng.uniform(np.log(aug.gamma[0]), np.log(aug.gamma[1]))))
    contrast, brightness = float(rng.uniform(*aug.contrast)), float(rng.uniform(*aug.brightness))

    def jitter(image: np.ndarray) -> np.ndarray:
        out = (np.power(image, gamma) - 0.5) * contrast + 0.5 + brightness
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    return flips, jitter


def apply_flips(array: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """``array`` flipped (vertically, horizontally) as :func:`shared_augment` drew, contiguous."""
    array = array[::-1] if flips[0] else array
    return np.ascontiguousarray(array[:, ::-1] if flips[1] else array)


def move_half(
    rng: np.random.Generator, config: PropagationConfig, image: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A small random shift, rotation and scale of one half (the anatomy moving between slices)."""
    size = image.shape[-1]
    angle = np.deg2rad(rng.uniform(-config.rotate, config.rotate))
    scale = rng.uniform(*config.scale)
    shift = rng.uniform(-config.shift, config.shift, size=2) * 2.0 / size  # normalised coordinates
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape], align_corners=False)
    planes = torch.from_numpy(np.stack([image, label]).astype(np.float32))[:, None]
    moved_image = F.grid_sample(planes[:1], grid, mode="bilinear", align_corners=False)[0, 0]
    moved_label = F.grid_sample(planes[1:], grid, mode="nearest", align_corners=False)[0, 0]
    return moved_image.numpy(), moved_label.numpy().astype(label.dtype)


def align_prompt(
    method: str, query_image: np.ndarray, prompt_image: np.ndarray, prompt_label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The prompt half registered onto the query half (``SamplerConfig.align_prompts``), or as
    it lay when the warp leaves no label (:meth:`Registration.align`). Registration failures fall
    back to the centred transform silently here: a training stream would otherwise log one
    warning per empty slice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Registration(method).align(query_image, prompt_image, prompt_label)
