"""A numpy stand-in with the Predictor's interface, for the self-test and for trying the workflow.

It needs no torch and no weights, so the console API, the batch script and their tests can run
without a model. Its outputs are deliberately trivial and are NOT what
MVG produces: segmentation copies the nearest prompt slice's labels, denoising averages each slice
with its neighbours, inpainting fills holes with the slice mean, synthesis fits one linear
intensity map to the prompt pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from MVGCore.slicewise import map_slices, take_slice
from MVGCore.types import CancelToken, ProgressFn, Prompt


class SimpleEngine:
    """Accepts the Predictor's keyword ``options`` (e.g. spacing) and ignores them: it works per voxel."""

    device = "cpu"

    def segment(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray:
        located = _located(prompts)

        def nearest_target(index: int, _slice: np.ndarray) -> np.ndarray:
            return min(located, key=lambda p: abs(p.index - index)).target

        return map_slices(nearest_target, image, axis, dtype=np.uint16, progress=progress, cancel=cancel)

    def denoise(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray:
        last = image.shape[axis] - 1

        def neighbour_mean(index: int, _slice: np.ndarray) -> np.ndarray:
            around = [take_slice(image, axis, min(max(n, 0), last)) for n in (index - 1, index, index + 1)]
            return np.mean(np.stack(around).astype(np.float32), axis=0)

        return map_slices(neighbour_mean, image, axis, progress=progress, cancel=cancel)

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
    ) -> np.ndarray:
        if hole_mask.shape != image.shape:
            raise ValueError(f"hole_mask shape {hole_mask.shape} differs from image shape {image.shape}")

        def fill(index: int, slice_: np.ndarray) -> np.ndarray:
            hole = take_slice(hole_mask, axis, index).astype(bool)
            out = slice_.astype(np.float32)
            if hole.any() and not hole.all():
                out[hole] = out[~hole].mean()
            return out

        return map_slices(fill, image, axis, progress=progress, cancel=cancel)

    def synthesize(
        self,
        source: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray:
        if not prompts:
            raise ValueError("synthesis needs at least one prompt pair")
        x = np.concatenate([p.image.ravel() for p in prompts]).astype(np.float64)
        y = np.concatenate([p.target.ravel() for p in prompts]).astype(np.float64)
        slope, intercept = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (0.0, float(y.mean()))
        known = {p.index: p.target for p in prompts if p.index is not None}

        def linear_map(index: int, slice_: np.ndarray) -> np.ndarray:
            return known[index] if index in known else slice_ * slope + intercept

        return map_slices(linear_map, source, axis, progress=progress, cancel=cancel)


def _located(prompts: Sequence[Prompt]) -> list[Prompt]:
    located = [p for p in prompts if p.index is not None]
    if not located:
        raise ValueError("SimpleEngine.segment needs prompts that are slices of the query volume")
    return located
