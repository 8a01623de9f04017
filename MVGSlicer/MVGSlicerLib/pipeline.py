"""One run in three steps: read the scene, compute (in-process engine or model process), write new nodes.

Splitting a run this way is what lets the computation leave Slicer's interpreter and makes cancel
safe: a job holds plain arrays only, and the scene is written once, after the engine has finished,
into new nodes, so a cancelled or failed run leaves the scene exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from MVGCore.checks import is_whole
from MVGCore.slicewise import put_slice
from MVGCore.types import CancelToken, ProgressFn, Prompt

from . import mrml_io, prompts
from .engine import Engine

TASKS = ("Segment", "Denoise", "Inpaint", "Synthesize")
ADAPT_STEPS = 20
"""Steps of test-time adaptation behind "Adapt to this scan" (and ``adapt=True`` in the console).

The option is off by default because adaptation did not pay for the bundled model: 20 steps
gave a mean Dice of 0.213 against 0.221 without on its validation volumes (Resources/Models/
MODEL_CARD.md, ``mvg[adapt_steps=20]``; 16.5 s on the sample on 2 CPU cores, benchmarks/RESULTS.md).
20 is the count that was measured; it may pay on other scans or a stronger model.
"""


@dataclass
class Job:
    """Everything the computation needs, captured from the scene on the main thread."""

    task: str
    volume_node: Any  # the reference grid of the output; only touched again on the main thread
    image: np.ndarray
    axis: int = 0
    prompts: list[Prompt] | None = None
    hole_mask: np.ndarray | None = None
    segmentation_node: Any = None  # where output segments take names, colors and terminology from
    segment_ids: list[str] = field(default_factory=list)
    spacing: tuple[float, float, float] | None = None  # (k, j, i) mm: slices are fitted by physical size
    adapt_steps: int = 0  # Segment only: tune a copy of the model on the prompts first (0 = off)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        steps = self.adapt_steps
        if not is_whole(steps):
            raise ValueError(f"adapt_steps must be 0 (off) or a positive whole number, got {steps!r}")
        if steps and self.task != "Segment":
            raise ValueError(f"adapting the model to the scan applies to Segment only, not to {self.task}")

    @property
    def total_slices(self) -> int:
        return self.image.shape[self.axis]

    @property
    def total_steps(self) -> int:
        """The model's progress count: the adaptation steps (they come first), then the slices."""
        return self.adapt_steps + self.total_slices

    def compute(
        self, engine: Engine, progress: ProgressFn | None = None, cancel: CancelToken | None = None
    ) -> np.ndarray:
        """Run an in-process engine (console and batch path); touches no MRML."""
        kwargs = {"progress": progress, "cancel": cancel}
        if self.spacing is not None:
            kwargs["spacing"] = self.spacing
        if self.adapt_steps:
            kwargs["adapt_steps"] = self.adapt_steps
        if self.task == "Segment":
            result = engine.segment(self.image, self.prompts, self.axis, **kwargs)
        elif self.task == "Denoise":
            result = engine.denoise(self.image, self.prompts, self.axis, **kwargs)
        elif self.task == "Inpaint":
            result = engine.inpaint(self.image, self.hole_mask, self.prompts, self.axis, **kwargs)
        else:
            result = engine.synthesize(self.image, self.prompts, self.axis, **kwargs)
        return self.finish(result)

    def finish(self, result: np.ndarray) -> np.ndarray:
        """Check the engine's (or the model process's) output and give the prompt labels back as painted."""
        result = np.asarray(result)
        if result.shape != self.image.shape:
            raise RuntimeError(
                f"the engine returned shape {result.shape} for an input of shape {self.image.shape}"
            )
        if self.task == "Segment":
            result = result.astype(np.uint16)
            for prompt in self.prompts:  # the user's painted labels are ground truth, kept as given
                if prompt.index is not None:
                    put_slice(result, self.axis, prompt.index, prompt.target)
        return result


def prompt_segment_ids(segmentation_node: Any) -> list[str]:
    """The segments used as prompt labels, in the segmentation's order (label n + 1 = n-th)."""
    if segmentation_node is None:
        raise ValueError("no prompt segmentation selected: paint the structures in a segmentation first")
    segmentation = segmentation_node.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    if not ids:
        raise ValueError(
            f"segmentation '{segmentation_node.GetName()}' has no segments to use as prompt labels"
        )
    return ids


def segment_job(
    volume_node: Any,
    segmentation_node: Any,
    prompt_indices: Sequence[int] | None = None,
    axis: int = 0,
    segment_ids: Sequence[str] | None = None,
    adapt_steps: int = 0,
) -> Job:
    """Segment the volume from labels painted on prompt slices (default: every painted slice).

    ``adapt_steps`` > 0 first tunes a copy of the model on the prompts (:data:`ADAPT_STEPS` is
    the module's "Adapt to this scan"); the model file is never changed.
    """
    image = mrml_io.array_from_volume(volume_node)
    ids = list(segment_ids) if segment_ids is not None else prompt_segment_ids(segmentation_node)
    labels = mrml_io.segment_labels(segmentation_node, ids, volume_node)
    if prompt_indices is None:
        prompt_indices = prompts.painted_indices(labels, axis)
    pairs = prompts.segmentation_prompts(image, labels, prompt_indices, axis)
    return Job(
        "Segment",
        volume_node,
        image,
        axis,
        pairs,
        segmentation_node=segmentation_node,
        segment_ids=ids,
        spacing=_spacing(volume_node),
        adapt_steps=adapt_steps,
    )


def denoise_job(volume_node: Any, axis: int = 0) -> Job:
    return Job(
        "Denoise", volume_node, mrml_io.array_from_volume(volume_node), axis, spacing=_spacing(volume_node)
    )


def inpaint_job(volume_node: Any, segmentation_node: Any, hole_segment_id: str, axis: int = 0) -> Job:
    """Fill the voxels of ``hole_segment_id`` from their surroundings."""
    if segmentation_node is None or not hole_segment_id:
        raise ValueError("inpainting needs a hole segment: paint the region to fill and select it as 'Hole'")
    hole = mrml_io.segment_mask(segmentation_node, hole_segment_id, volume_node)
    if not hole.any():
        raise ValueError(
            f"the hole segment '{hole_segment_id}' is empty on the grid of '{volume_node.GetName()}'"
        )
    image = mrml_io.array_from_volume(volume_node)
    return Job("Inpaint", volume_node, image, axis, hole_mask=hole, spacing=_spacing(volume_node))


def synthesize_job(source_node: Any, target_node: Any, prompt_indices: Sequence[int], axis: int = 0) -> Job:
    """Predict the target modality for the whole source from target slices at the prompt positions.

    The two volumes must be co-registered on the same voxel grid, so that a prompt pair is the
    same anatomy; resampling (e.g. with 'Resample Scalar/Vector/DWI Volume') is left to the user.
    """
    if target_node is None:
        raise ValueError("synthesis needs a target volume: a co-registered scan of the output modality")
    source, target = mrml_io.array_from_volume(source_node), mrml_io.array_from_volume(target_node)
    if source.shape != target.shape or not np.allclose(
        mrml_io.ijk_to_ras(source_node), mrml_io.ijk_to_ras(target_node), atol=1e-4
    ):
        raise ValueError(
            f"target volume '{target_node.GetName()}' is not on the voxel grid of '{source_node.GetName()}'; "
            "resample it onto the input first (module 'Resample Scalar/Vector/DWI Volume')"
        )
    pairs = prompts.paired_prompts(source, target, prompt_indices, axis)
    return Job("Synthesize", source_node, source, axis, pairs, spacing=_spacing(source_node))


def _spacing(volume_node: Any) -> tuple[float, float, float]:
    return mrml_io.geometry_from_volume(volume_node).spacing_kji


def write_result(scene: Any, job: Job, result: np.ndarray, name: str | None = None) -> Any:
    """Write the result into a NEW node beside the input; saves the undo state first.

    The run may have taken a while: if its input (or prompt segmentation) left the scene meanwhile,
    or the scene was closed, nothing is written.
    """
    for node in (job.volume_node, job.segmentation_node):
        if node is not None and not scene.IsNodePresent(node):
            raise ValueError(
                f"'{node.GetName()}' was removed from the scene while the model ran; nothing was written"
            )
    scene.SaveStateForUndo()
    name = name or f"{job.volume_node.GetName()} MVG {job.task.lower()}"
    if job.task == "Segment":
        return mrml_io.new_segmentation_like(
            scene, result, job.volume_node, job.segmentation_node, job.segment_ids, name
        )
    return mrml_io.new_volume_like(scene, result.astype(np.float32), job.volume_node, name)


def run(
    scene: Any,
    job: Job,
    engine: Engine,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
    name: str | None = None,
) -> Any:
    """Compute and write on the calling thread: the console and batch path."""
    return write_result(scene, job, job.compute(engine, progress, cancel), name)
