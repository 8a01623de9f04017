"""Slice-by-slice iteration shared by the model Predictor and the classical baselines.

Every task runs on 2D slices along one axis of a (k, j, i) volume. Keeping the slicing, the
progress reports and the cancellation checks here means both predictors report progress and stop
on cancel in exactly the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from .checks import is_whole
from .types import CancelToken, ProgressFn, Prompt


def check_axis(axis: int, ndim: int = 3) -> int:
    """``axis`` if it indexes an array of ``ndim`` dimensions, else a ValueError naming it."""
    if not is_whole(axis) or axis >= ndim:
        raise ValueError(f"axis must be an integer in 0..{ndim - 1}, got {axis!r}")
    return int(axis)


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` along ``axis`` (a view, not a copy)."""
    return volume[_slicer(volume.ndim, axis, index)]


def put_slice(volume: np.ndarray, axis: int, index: int, values: np.ndarray) -> None:
    """Write a 2D slice into ``volume`` in place; the shape must match exactly."""
    key = _slicer(volume.ndim, axis, index)
    expected = volume[key].shape
    if np.shape(values) != expected:
        raise ValueError(
            f"slice {index} along axis {axis} must have shape {expected}, got {np.shape(values)}"
        )
    volume[key] = values


def _slicer(ndim: int, axis: int, index: int) -> tuple:
    if ndim != 3:
        raise ValueError(f"volume must be 3D (k, j, i), got {ndim} dimensions")
    key: list = [slice(None)] * 3
    key[check_axis(axis)] = index
    return tuple(key)


class SliceLoop:
    """Counts finished steps, reports them to ``progress`` and checks ``cancel`` before each step.

    Steps may be single slices (iterate the loop) or batches (call :meth:`check` and
    :meth:`advance` yourself). ``progress(total, total)`` is reported exactly once, when the last
    step finishes; an empty loop reports ``(0, 0)`` once.
    """

    def __init__(self, total: int, progress: ProgressFn | None = None, cancel: CancelToken | None = None):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.total = int(total)
        self.done = 0
        self._progress = progress
        self._cancel = cancel

    def check(self) -> None:
        """Raise :class:`~MVGCore.types.Cancelled` if the user cancelled."""
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()

    def advance(self, steps: int = 1) -> None:
        if steps < 1 or self.done + steps > self.total:
            raise ValueError(f"cannot advance {steps} step(s) from {self.done} of {self.total}")
        self.done += steps
        if self._progress is not None:
            self._progress(self.done, self.total)

    def __iter__(self) -> Iterator[int]:
        if self.total == 0 and self._progress is not None:
            self._progress(0, 0)
        for index in range(self.done, self.total):
            self.check()
            yield index
            self.advance()


def map_slices(
    fn: Callable[[int, np.ndarray], np.ndarray],
    volume: np.ndarray,
    axis: int = 0,
    *,
    dtype: npt.DTypeLike = np.float32,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """A new volume whose slice ``n`` along ``axis`` is ``fn(n, slice_n)``.

    The input is never modified; on cancel :class:`~MVGCore.types.Cancelled` propagates and no
    partial result is returned.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (k, j, i), got shape {volume.shape}")
    axis = check_axis(axis)
    out = np.empty(volume.shape, dtype=dtype)
    for index in SliceLoop(volume.shape[axis], progress, cancel):
        put_slice(out, axis, index, fn(index, take_slice(volume, axis, index)))
    return out


def required_prompts(prompts: Sequence[Prompt] | None, task: str) -> list[Prompt]:
    """The prompts as a list, or an error when there are none or one is not a Prompt."""
    prompts = list(prompts or ())
    if not prompts:
        raise ValueError(f"{task} needs at least one prompt (image slice, target slice)")
    for number, prompt in enumerate(prompts):
        if not isinstance(prompt, Prompt):
            raise TypeError(f"prompt {number} must be an MVGCore.types.Prompt, got {type(prompt).__name__}")
    return prompts


def label_dtype(prompts: Sequence[Prompt]) -> np.dtype:
    """The integer dtype of the prompt labels (bool -> uint8), so outputs keep the user's type."""
    dtypes = [np.asarray(p.target).dtype for p in prompts]
    for number, dtype in enumerate(dtypes):
        if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
            raise ValueError(f"segmentation prompt {number} has a {dtype} target; expected integer labels")
    dtype = np.result_type(*dtypes)
    return np.dtype(np.uint8) if dtype == np.bool_ else dtype


def plane_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    return tuple(n for a, n in enumerate(shape) if a != axis)


def kept_targets(prompts: Sequence[Prompt], shape: tuple[int, ...], axis: int) -> dict[int, np.ndarray]:
    """Targets of the prompts that are slices of the query volume, by index, checked against its grid."""
    plane = plane_shape(shape, axis)
    kept: dict[int, np.ndarray] = {}
    for number, prompt in enumerate(prompts):
        if prompt.index is None:
            continue
        if isinstance(prompt.index, bool) or not 0 <= prompt.index < shape[axis]:
            raise ValueError(
                f"prompt {number} index {prompt.index} is out of range: the volume has "
                f"{shape[axis]} slices along axis {axis}"
            )
        if prompt.target.shape != plane or prompt.image.shape != plane:
            raise ValueError(
                f"prompt {number} is slice {prompt.index} along axis {axis} of a volume of shape {shape}, "
                f"so its image and target must have shape {plane}, got {prompt.image.shape} and "
                f"{prompt.target.shape} (wrong axis?)"
            )
        if prompt.index in kept:
            raise ValueError(f"prompt {number} repeats slice {prompt.index}; give each slice once")
        kept[int(prompt.index)] = prompt.target
    return kept


def evenly_spaced(candidates: list[int], count: int) -> list[int]:
    """Up to ``count`` entries of ``candidates`` spread evenly, avoiding the two ends when possible."""
    if len(candidates) <= count:
        return list(candidates)
    picks = np.linspace(0, len(candidates) - 1, count + 2)[1:-1]
    return sorted({candidates[round(float(p))] for p in picks})
