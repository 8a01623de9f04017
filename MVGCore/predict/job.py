"""What one task run hands the slice loop: the prompts ready for the canvas, and the task's part.

The loop (:mod:`MVGCore.predict.engine`) is the same for every task. What differs (how a query
tile is made, which prompts a slice is shown, how the answer is decoded) is asked of the job's
``kind``: :class:`MVGCore.predict.segmentation.Labels` or :class:`MVGCore.predict.images.Images`,
so the loop holds no branch on the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .. import zoom
from ..canvas import TileFit, fit_to_tile
from ..intensity import IntensityRange
from ..model import MVGModel
from ..slicewise import plane_shape
from .options import Options

FLOAT32 = np.dtype(np.float32)


@dataclass
class Example:
    """A prompt ready for the canvas: [0, 1] image tile, target tile, and where it sits in the volume."""

    image: np.ndarray
    target: np.ndarray
    position: int | None
    classes: tuple[int, ...] = ()


class TaskKind(Protocol):
    """The task-specific steps of the shared slice loop."""

    def answered_by_input(self, job: Job, todo: list[int]) -> list[int]:
        """The slices of ``todo`` whose answer is the input itself (inpainting: those without hole)."""

    def next_wave(self, job: Job, wave: list[int], out: np.ndarray) -> Job:
        """``job`` as the slices of ``wave`` should see it, given the answers so far."""

    def has_ended(self, job: Job, chosen: list[Example]) -> bool:
        """Whether the answer is known to be empty without running the model."""

    def neighbour_target(self, job: Job, predicted: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """A predicted plane (in the job's view) as a prompt target tile and its classes."""

    def query_tile(self, job: Job, query: int, tile: np.ndarray) -> np.ndarray:
        """The [0, 1] query tile the model sees."""

    def shown(self, job: Job, query: int, tile: np.ndarray, chosen: list[Example]) -> list[Example]:
        """The prompts as the model is shown them next to the query tile."""

    def canvases(self, job: Job, images: np.ndarray, targets: np.ndarray, queries: np.ndarray) -> Any:
        """The model's input canvases (:func:`MVGCore.canvas.build_canvases`)."""

    def decode(
        self, job: Job, query: int, chosen: list[Example], group: torch.Tensor, single: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The answer plane on the slice grid, and its disagreement plane when asked for."""


@dataclass
class Job:
    """Everything one task run needs besides the model; built and checked before any slice runs."""

    volume: np.ndarray
    axis: int
    options: Options
    in_range: IntensityRange
    examples: list[Example]
    kept: dict[int, np.ndarray]
    fit: TileFit
    spacing: tuple[float, float]
    task: str
    """The task the model is told per canvas (a refiner corrects only its ``refine_tasks``)."""
    kind: TaskKind
    tile_size: int
    out_dtype: np.dtype = FLOAT32
    model: MVGModel | None = None
    """The model that answers (an adapted copy); None = the Predictor's."""
    region: zoom.Region | None = None
    """The in-plane region of ``volume`` the model sees (segmentation's zoom); None = whole slices."""

    def tile(self, plane: np.ndarray, is_label: bool) -> np.ndarray:
        """A plane of this job's volume fitted into the model's tile."""
        return fit_to_tile(plane, self.tile_size, is_label, self.spacing)[0]

    def view(self, plane: np.ndarray) -> np.ndarray:
        """The part of a whole-grid plane the model sees."""
        return plane if self.region is None else self.region.crop(plane)

    def whole(self, part: np.ndarray) -> np.ndarray:
        """A plane the model answered, on the whole grid (zero outside the region)."""
        if self.region is None:
            return part
        return self.region.paste(part, plane_shape(self.volume.shape, self.axis))


def nearest_first(examples: Sequence[Example], query: int) -> list[Example]:
    """``examples`` nearest to ``query`` by index first, other volumes' prompts after (in order)."""
    return sorted(
        examples,
        key=lambda e: (e.position is None, abs(e.position - query) if e.position is not None else 0),
    )
