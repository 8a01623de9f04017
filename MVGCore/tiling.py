"""Overlapping square tiles at 1:1 pixel scale, for the image tasks (denoise, inpaint, synthesize).

Local work (noise, holes, contrast) must see pixels as they are, so a slice is cut into
``size`` x ``size`` tiles that overlap by at least ``overlap`` pixels instead of being shrunk into
one tile. Planes smaller than a tile are zero-padded (centred, as :mod:`MVGCore.canvas` pads),
never enlarged. Tiles are pasted back by blending: along each axis, every tile after the first is
merged into what is already there with a raised-cosine ramp over their overlap,
``new + w * (old - new)``. That is a convex combination, so the weights of all tiles sum to 1 at
every pixel, and tiles that agree come back bit for bit (an identity model returns the plane).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import is_whole
from .slicewise import put_slice, take_slice
from .types import Prompt
from .zoom import Region, crop_volume


@dataclass(frozen=True)
class TilePlan:
    """Tiles covering a plane of ``shape``: the plane sits at ``offset`` in a zero canvas of
    ``padded`` shape, and tile ``n`` covers ``padded[rows[n // len(cols)] : + size,
    cols[n % len(cols)] : + size]`` (row-major order)."""

    shape: tuple[int, int]
    size: int
    overlap: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    offset: tuple[int, int]
    padded: tuple[int, int]

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def boxes(self) -> list[tuple[int, int]]:
        """Top-left corner of every tile in the padded canvas, row-major."""
        return [(r, c) for r in self.rows for c in self.cols]

    def centres(self) -> np.ndarray:
        """(N, 2) tile centres as fractions of the plane's extent (0 = first pixel row/column)."""
        extent = np.maximum(np.array(self.shape, dtype=np.float64), 1.0)
        corner = np.array(self.boxes, dtype=np.float64) - np.array(self.offset, dtype=np.float64)
        return (corner + self.size / 2.0) / extent


def _starts(length: int, size: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one axis: evenly spread, the last flush with the end, overlaps >= overlap."""
    if length <= size:
        return (0,)
    count = math.ceil((length - overlap) / (size - overlap))
    return tuple(np.rint(np.linspace(0, length - size, count)).astype(int).tolist())


def plan_tiles(shape: tuple[int, int], size: int, overlap: int = 32) -> TilePlan:
    """The tiles of ``size`` pixels overlapping by at least ``overlap`` that cover a plane of ``shape``."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"a plane must be a non-empty 2D shape, got {shape}")
    if not is_whole(size, 1):
        raise ValueError(f"tile size must be a positive integer, got {size!r}")
    if not is_whole(overlap) or overlap >= size:
        raise ValueError(f"tile overlap must be an integer in 0..{size - 1}, got {overlap!r}")
    shape = (int(shape[0]), int(shape[1]))
    padded = (max(shape[0], size), max(shape[1], size))
    offset = ((padded[0] - shape[0]) // 2, (padded[1] - shape[1]) // 2)
    return TilePlan(
        shape=shape,
        size=int(size),
        overlap=int(overlap),
        rows=_starts(padded[0], size, overlap),
        cols=_starts(padded[1], size, overlap),
        offset=offset,
        padded=padded,
    )


def extract(plane: np.ndarray, plan: TilePlan, fill: float = 0.0) -> np.ndarray:
    """(N, size, size) tiles of ``plane`` (its dtype; padding is ``fill``), row-major as ``plan.boxes``."""
    plane = np.asarray(plane)
    if plane.shape != plan.shape:
        raise ValueError(f"plane of shape {plane.shape} does not match the tile plan's {plan.shape}")
    canvas = np.full(plan.padded, fill, dtype=plane.dtype)
    r0, c0 = plan.offset
    canvas[r0 : r0 + plan.shape[0], c0 : c0 + plan.shape[1]] = plane
    s = plan.size
    return np.stack([canvas[r : r + s, c : c + s] for r, c in plan.boxes])


def _ramp(length: int) -> np.ndarray:
    """Weight of what is already there across an overlap of ``length``: raised cosine from ~1 to ~0."""
    x = (np.arange(length, dtype=np.float64) + 0.5) / length
    return 0.5 + 0.5 * np.cos(np.pi * x)


def _merge(pieces: list[np.ndarray], starts: tuple[int, ...], total: int, axis: int) -> np.ndarray:
    """Pieces of equal extent along ``axis`` placed at ``starts`` and ramp-blended into ``total``."""
    extent = pieces[0].shape[axis]
    shape = list(pieces[0].shape)
    shape[axis] = total
    out = np.zeros(shape, dtype=np.float64)
    end = 0
    for piece, start in zip(pieces, starts):
        piece = np.moveaxis(piece.astype(np.float64), axis, 0)
        view = np.moveaxis(out, axis, 0)
        shared = max(0, end - start)
        if shared:
            weight = _ramp(shared).reshape(-1, *([1] * (piece.ndim - 1)))
            new = piece[:shared]
            view[start : start + shared] = new + weight * (view[start : start + shared] - new)
        view[start + shared : start + extent] = piece[shared:]
        end = start + extent
    return out


def blend(tiles: np.ndarray, plan: TilePlan) -> np.ndarray:
    """The plane (float64, ``plan.shape``) from (N, size, size) tiles: rows of tiles are blended
    across their column overlaps, then the strips across their row overlaps; padding is cut off."""
    tiles = np.asarray(tiles)
    if tiles.shape != (len(plan), plan.size, plan.size):
        raise ValueError(f"expected {len(plan)} tiles of {plan.size}x{plan.size}, got {tiles.shape}")
    per_row = len(plan.cols)
    strips = [
        _merge(list(tiles[n * per_row : (n + 1) * per_row]), plan.cols, plan.padded[1], axis=1)
        for n in range(len(plan.rows))
    ]
    canvas = _merge(strips, plan.rows, plan.padded[0], axis=0)
    r0, c0 = plan.offset
    return canvas[r0 : r0 + plan.shape[0], c0 : c0 + plan.shape[1]]


def weights(plan: TilePlan) -> np.ndarray:
    """(N, *shape) weight of each tile in :func:`blend` (its answer with every other tile at 0)."""
    ones = np.ones((plan.size, plan.size))
    return np.stack(
        [blend(np.where(np.arange(len(plan))[:, None, None] == n, ones, 0.0), plan) for n in range(len(plan))]
    )


def match_tiles(query: TilePlan, prompt: TilePlan, count: int = 1) -> list[list[int]]:
    """For each query tile, the prompt tiles to pair it with.

    A prompt plane of the query's shape is tiled with the same plan, so each query tile gets the
    prompt tile at the same position. Otherwise each gets the ``count`` prompt tiles whose centres
    lie nearest to its own, positions taken as fractions of each plane's extent (nearest first).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if prompt == query:
        return [[n] for n in range(len(query))]
    distance = np.linalg.norm(query.centres()[:, None, :] - prompt.centres()[None, :, :], axis=-1)
    order = np.argsort(distance, axis=1, kind="stable")[:, : min(count, len(prompt))]
    return [row.tolist() for row in order]


def run_tiled(
    volume: np.ndarray,
    axis: int,
    prompts: Sequence[Prompt],
    hole: np.ndarray | None,
    plan: TilePlan,
    fill: float,
    run_part: Callable[[np.ndarray, list[Prompt], np.ndarray | None, int], Any],
) -> list[np.ndarray]:
    """Every tile position of ``plan`` as one run over a tile-sized view of all slices along
    ``axis``, blended back into whole volumes (one per output of ``run_part``).

    The volume is padded with ``fill`` (the hole with False); ``run_part(part, part_prompts,
    part_hole, n)`` answers tile ``n`` given the prompts cut at the same position (for another
    image's prompt, its tile nearest by relative position), and returns an output volume or a
    tuple of them. Tiles that agree return exactly their values (:func:`blend`).
    """
    size = plan.size
    padded = _pad_planes(volume, axis, plan, fill)
    padded_hole = None if hole is None else _pad_planes(hole, axis, plan, False)
    prompt_plans = [
        plan if p.index is not None else plan_tiles(p.image.shape, size, plan.overlap) for p in prompts
    ]
    matches = [match_tiles(plan, pp) for pp in prompt_plans]
    prompt_tiles = [_prompt_tiles(p, pp) for p, pp in zip(prompts, prompt_plans)]
    parts: list[list[np.ndarray]] = []
    for n, (row, col) in enumerate(plan.boxes):
        part_prompts = [
            Prompt(images[match[n][0]], targets[match[n][0]], p.index)
            for p, (images, targets), match in zip(prompts, prompt_tiles, matches)
        ]
        part_hole = None if padded_hole is None else _box_view(padded_hole, axis, row, col, size)
        answer = run_part(_box_view(padded, axis, row, col, size), part_prompts, part_hole, n)
        parts.append(list(answer) if isinstance(answer, tuple) else [answer])
    results = []
    for which in range(len(parts[0])):
        out = np.empty(volume.shape, dtype=parts[0][which].dtype)
        for index in range(volume.shape[axis]):
            tiles = np.stack([take_slice(part[which], axis, index) for part in parts])
            put_slice(out, axis, index, blend(tiles, plan).astype(out.dtype))
        results.append(out)
    return results


def _box_view(volume: np.ndarray, axis: int, row: int, col: int, size: int) -> np.ndarray:
    """The in-plane ``size`` x ``size`` box at (row, col) of every slice along ``axis`` (a view)."""
    return crop_volume(volume, axis, Region(row, row + size, col, col + size))


def _pad_planes(volume: np.ndarray, axis: int, plan: TilePlan, value: Any) -> np.ndarray:
    """``volume`` with every plane placed in ``plan``'s padded canvas (``value`` around it)."""
    if plan.padded == plan.shape:
        return volume
    widths = [(0, 0)] * 3
    other = [a for a in range(3) if a != axis]
    for a, offset, extent, total in zip(other, plan.offset, plan.shape, plan.padded):
        widths[a] = (offset, total - extent - offset)
    return np.pad(volume, widths, constant_values=value)


def _prompt_tiles(prompt: Prompt, plan: TilePlan) -> tuple[np.ndarray, np.ndarray]:
    """All tiles of a prompt's image and target under ``plan``, padded with each one's minimum
    (cut once per prompt, not once per query tile)."""
    image = extract(prompt.image, plan, fill=float(np.min(prompt.image)))
    target = extract(prompt.target, plan, fill=np.min(prompt.target))
    return image, target
