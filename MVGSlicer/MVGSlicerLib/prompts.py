"""Prompt slices: which slices the user picked, and the Prompt pairs cut from them.

A prompt is always an exact voxel slice of the input along one array axis, so its labels can be
given back unchanged in the output. All prompts of a run share one axis, because the engine
predicts the remaining slices along that axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from MVGCore.slicewise import check_axis, take_slice
from MVGCore.types import Prompt

AXIS_NAMES = ("k", "j", "i")


def check_indices(indices: Sequence[int], shape: tuple[int, ...], axis: int) -> list[int]:
    """Sorted, de-duplicated indices, each checked against the volume's extent along ``axis``."""
    axis = check_axis(axis)
    if len(indices) == 0:
        raise ValueError("no prompt slices: add at least one slice with 'Add current slice'")
    out = sorted({int(i) for i in indices})
    bad = [i for i in out if not 0 <= i < shape[axis]]
    if bad:
        raise ValueError(
            f"prompt slices {bad} are outside 0..{shape[axis] - 1} along axis {AXIS_NAMES[axis]}"
        )
    return out


def painted_indices(labels: np.ndarray, axis: int) -> list[int]:
    """The slices along ``axis`` that hold any label: the prompt slices of a painted segmentation."""
    other = tuple(a for a in range(3) if a != check_axis(axis))
    return [int(i) for i in np.flatnonzero(np.any(labels != 0, axis=other))]


def segmentation_prompts(
    image: np.ndarray, labels: np.ndarray, indices: Sequence[int], axis: int
) -> list[Prompt]:
    """(image slice, label slice) pairs; at least one prompt must hold a painted label."""
    indices = check_indices(indices, image.shape, axis)
    prompts = [Prompt.from_volume(image, i, take_slice(labels, axis, i).copy(), axis) for i in indices]
    if not any(p.target.any() for p in prompts):
        raise ValueError(
            f"none of the prompt slices {indices} holds a painted label; paint the structures "
            "on those slices in the segment editor"
        )
    return prompts


def paired_prompts(source: np.ndarray, target: np.ndarray, indices: Sequence[int], axis: int) -> list[Prompt]:
    """(source slice, target slice) pairs from two volumes on the same grid, for synthesis."""
    if source.shape != target.shape:
        raise ValueError(f"source shape {source.shape} and target shape {target.shape} differ")
    indices = check_indices(indices, source.shape, axis)
    return [
        Prompt.from_volume(source, i, take_slice(target, axis, i).astype(np.float32), axis) for i in indices
    ]
