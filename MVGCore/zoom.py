"""Zoom segmentation onto the prompts: run the model on the region the prompt labels occupy.

A whole 512 x 512 CT slice fitted into a 128 px tile is shrunk 4x, so a small structure covers a
few tokens. Users prompt the structures they want, so the in-plane region worth looking at is the
union of the prompt labels' boxes plus a margin: that region is cropped from every slice, fitted to
the tile and the answer pasted back onto the input grid (zero outside it). When segmentation
propagates, the Predictor grows the box with the labels propagated so far before each wave of
slices (:func:`union_box`), so the region follows a structure that moves. Training draws the same
views (``SamplerConfig.zoom_prob``), with the same margin and minimum size, so the model sees at
inference the scale it learnt.

Everything is in index space of the slice plane (rows, cols) of a (k, j, i) volume, so flipped,
oblique or anisotropic grids need nothing special: the region is square in physical units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .types import Prompt

DEFAULT_MARGIN = 0.25
"""Margin added on each side of the prompts' box, as a fraction of its longer side."""
MIN_SIZE = 48
"""Smallest region side in pixels of the finer in-plane axis (a lesion of a few pixels still gets
context); the training sampler's ``zoom_min_size`` is the same number."""


@dataclass(frozen=True)
class Region:
    """Rows ``top:bottom`` and columns ``left:right`` of a slice plane."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.bottom - self.top, self.right - self.left)

    def covers(self, shape: tuple[int, int]) -> bool:
        """Whether the region is the whole of a plane of ``shape``."""
        return (self.top, self.left, self.bottom, self.right) == (0, 0, *shape)

    def crop(self, plane: np.ndarray) -> np.ndarray:
        return plane[self.top : self.bottom, self.left : self.right]

    def paste(self, part: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A plane of ``shape``, ``part`` (of the region's shape) inside the region, zero elsewhere."""
        plane = np.zeros(shape, dtype=part.dtype)
        plane[self.top : self.bottom, self.left : self.right] = part
        return plane


def label_box(planes: Sequence[np.ndarray]) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the union of the nonzero pixels of same-shaped planes."""
    union = np.any(np.stack([np.asarray(p) != 0 for p in planes]), axis=0)
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    if not rows.size:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def union_box(*boxes: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """The smallest box holding every given box (None entries hold nothing)."""
    given = [b for b in boxes if b is not None]
    if not given:
        return None
    return (
        min(b[0] for b in given),
        max(b[1] for b in given),
        min(b[2] for b in given),
        max(b[3] for b in given),
    )


def region_around(
    box: tuple[int, int, int, int],
    shape: tuple[int, int],
    spacing: tuple[float, float] = (1.0, 1.0),
    margin: float = DEFAULT_MARGIN,
    min_size: int = MIN_SIZE,
) -> Region:
    """The square (in physical units) region around ``box`` with ``margin``, inside a plane of ``shape``.

    A region larger than the plane along an axis is the whole axis; otherwise it is shifted, not
    shrunk, to fit.
    """
    if margin < 0 or not math.isfinite(margin):
        raise ValueError(f"zoom margin must be a number >= 0, got {margin!r}")
    top, bottom, left, right = box
    extent = max((bottom - top) * spacing[0], (right - left) * spacing[1]) * (1.0 + 2.0 * margin)
    extent = max(extent, min_size * min(spacing))
    sides = (extent / spacing[0], extent / spacing[1])
    centres = ((top + bottom) / 2.0, (left + right) / 2.0)
    bounds = []
    for side, centre, size in zip(sides, centres, shape):
        side = min(size, max(1, math.ceil(side)))
        start = min(max(0, round(centre - side / 2.0)), size - side)
        bounds.append((start, start + side))
    (top, bottom), (left, right) = bounds
    return Region(top, bottom, left, right)


def prompt_box(prompts: Sequence[Prompt]) -> tuple[int, int, int, int] | None:
    """The box of the union of the labels of the prompts that are slices of the query volume
    (``Prompt.index`` set); None when there are none or their labels are empty."""
    planes = [p.target for p in prompts if p.index is not None]
    return label_box(planes) if planes else None


def crop_prompt(prompt: Prompt, region: Region | None, spacing: tuple[float, float], margin: float) -> Prompt:
    """A prompt cut to ``region`` (a slice of the query volume) or, for a prompt from another
    image, to the region around its own label."""
    if prompt.index is None:
        box = label_box([prompt.target])
        if box is None:
            return prompt
        region = region_around(box, prompt.target.shape, spacing, margin)
    return Prompt(region.crop(prompt.image), region.crop(prompt.target), prompt.index)


def crop_volume(volume: np.ndarray, axis: int, region: Region) -> np.ndarray:
    """The in-plane ``region`` of every slice along ``axis`` (a view)."""
    key = [slice(None)] * 3
    other = [a for a in range(3) if a != axis]
    key[other[0]] = slice(region.top, region.bottom)
    key[other[1]] = slice(region.left, region.right)
    return volume[tuple(key)]
