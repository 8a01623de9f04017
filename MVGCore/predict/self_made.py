"""Prompts an image task makes from the volume itself when the user gives none.

Denoising shows evenly spaced slices with extra noise of the level read off each; inpainting the
hole-free slices nearest to the holes, each with the nearest real hole cut into it.
"""

from __future__ import annotations

import numpy as np

from ..calibration import noise_level
from ..slicewise import evenly_spaced, take_slice
from .job import Example, Job


def noise_examples(job: Job, count: int, seed: int) -> list[Example]:
    """Self-made denoising prompts: noise of the level estimated on the tile's content is added to it."""
    from ..degrade import gaussian

    rng = np.random.default_rng(seed)
    volume, axis, fit = job.volume, job.axis, job.fit
    examples = []
    for position in evenly_spaced(list(range(volume.shape[axis])), count):
        clean = job.tile(job.in_range.normalize(take_slice(volume, axis, position)), False)
        r, c = fit.offset
        content = clean[r : r + fit.content[0], c : c + fit.content[1]]
        noisy = np.zeros_like(clean)
        noisy[r : r + fit.content[0], c : c + fit.content[1]] = gaussian(content, noise_level(content), rng)
        examples.append(Example(noisy, clean, position))
    return examples


def hole_examples(job: Job, hole: np.ndarray, count: int) -> list[Example]:
    """Self-made inpainting prompts: the hole-free slices nearest to the holes, each with the
    nearest real hole cut into it. Nearest, not evenly spaced: the model fills a hole much from
    what its prompt shows at the same place, and a structure that spans only the holed slices
    (the demo's tumour) is missing from far slices."""
    volume, axis = job.volume, job.axis
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
    nearest = sorted(sorted(candidates, key=lambda c: (distance[c], c))[:count])
    for position in nearest:
        donor = int(with_hole[np.argmin(np.abs(with_hole - position))])
        cut = job.tile(take_slice(hole, axis, donor).astype(np.uint8), True).astype(bool)
        clean = job.tile(job.in_range.normalize(take_slice(volume, axis, position)), False)
        examples.append(Example(np.where(cut, np.float32(0.0), clean), clean, position))
    return examples
