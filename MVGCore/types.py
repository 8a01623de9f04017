"""Plain records shared by every layer: volumes with geometry, prompts, progress and cancellation.

Arrays are always indexed (k, j, i) — slice, row, column — the order SimpleITK's
``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` both use. Geometry follows ITK's
conventions (LPS physical space, spacing/origin/direction listed in (i, j, k) order) so that
it can be handed to SimpleITK unchanged; the Slicer layer converts to RAS in one place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

TASKS = ("segment", "denoise", "inpaint", "synthesize")
"""The four in-context tasks, named the same everywhere (configs, CLIs, samplers, reports)."""

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)``; ``done == total`` is reported exactly once."""


@dataclass(frozen=True)
class Geometry:
    """Where voxels sit in physical (LPS, millimetre) space.

    ``spacing`` and ``origin`` are in (i, j, k) order; ``direction`` is the 3x3 matrix whose
    columns are the unit i, j, k axes, stored row-major as ITK does.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise ValueError(f"Geometry.spacing must be three positive numbers, got {self.spacing}")
        if len(self.origin) != 3 or not all(np.isfinite(self.origin)):
            raise ValueError(f"Geometry.origin must be three finite numbers, got {self.origin}")
        if len(self.direction) != 9:
            raise ValueError(f"Geometry.direction must hold 9 numbers (3x3), got {len(self.direction)}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in self.direction))

    @property
    def spacing_kji(self) -> tuple[float, float, float]:
        """Spacing in array order (k, j, i), the order metrics and resampling of arrays need."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])


@dataclass
class Volume:
    """A (k, j, i) array and its geometry. 2D images are volumes with one slice."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D (k, j, i), got shape {self.array.shape}")

    def crop(self, start_kji: tuple[int, int, int], stop_kji: tuple[int, int, int]) -> Volume:
        """The sub-volume [start, stop) with its origin moved so every voxel keeps its position."""
        shape = self.array.shape
        if any(not 0 <= a < b <= n for a, b, n in zip(start_kji, stop_kji, shape)):
            raise ValueError(f"crop [{start_kji}, {stop_kji}) does not fit a volume of shape {shape}")
        g = self.geometry
        offset_ijk = np.array(start_kji[::-1], dtype=float) * np.array(g.spacing)
        origin = np.array(g.origin) + np.array(g.direction).reshape(3, 3) @ offset_ijk
        box = tuple(slice(a, b) for a, b in zip(start_kji, stop_kji))
        return Volume(self.array[box].copy(), Geometry(g.spacing, tuple(origin), g.direction))


@dataclass
class Prompt:
    """One in-context example: a 2D image and the output expected for it.

    ``target`` is an integer label slice for segmentation, an image slice for the image tasks.
    ``index`` is set when the prompt is a slice of the query volume itself (along the axis the
    prediction runs on); the predictor then returns that slice's target unchanged.
    """

    image: np.ndarray
    target: np.ndarray
    index: int | None = None

    def __post_init__(self) -> None:
        for name in ("image", "target"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                # A list or tensor would fail later on a missing ``.ndim`` (an AttributeError
                # that names neither the field nor the fix); converting silently would hide a
                # nested list of unequal rows until deep in the model.
                raise TypeError(
                    f"Prompt.{name} must be a 2D numpy array, got {type(value).__name__}; "
                    "convert it with np.asarray(...) first"
                )
        if self.index is not None:
            if isinstance(self.index, (bool, np.bool_)) or not isinstance(self.index, (int, np.integer)):
                raise ValueError(
                    f"Prompt.index must be a whole slice number or None, got {self.index!r} "
                    f"({type(self.index).__name__})"
                )
            self.index = int(self.index)
        if self.image.ndim != 2 or self.target.ndim != 2:
            raise ValueError(
                f"Prompt image and target must be 2D slices, got {self.image.shape} and {self.target.shape}"
            )
        if self.image.shape != self.target.shape:
            raise ValueError(
                f"Prompt image {self.image.shape} and target {self.target.shape} must have the same shape"
            )

    @classmethod
    def from_volume(cls, volume: np.ndarray, index: int, target: np.ndarray, axis: int = 0) -> Prompt:
        """The slice ``index`` of ``volume`` along ``axis`` with its target slice."""
        if volume.ndim != 3:
            raise ValueError(f"volume must be 3D (k, j, i), got shape {volume.shape}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
        if not 0 <= index < volume.shape[axis]:
            raise ValueError(
                f"prompt index {index} is out of range for axis {axis} of a volume of shape {volume.shape}"
            )
        return cls(image=np.take(volume, index, axis=axis), target=np.asarray(target), index=index)


class Cancelled(Exception):
    """Raised inside long work when its CancelToken was cancelled; nothing partial is returned."""


class CancelToken:
    """Thread-safe flag a UI sets and long-running work checks between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")
