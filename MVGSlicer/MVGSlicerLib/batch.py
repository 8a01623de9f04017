"""Console and batch use: run a task on scene nodes or on files, without the module's UI.

In Slicer's Python console::

    from MVGSlicerLib.batch import SceneProcessor
    processor = SceneProcessor(slicer.mrmlScene, engine)
    seg = processor.segment(volumeNode, promptSegmentationNode, prompt_indices=[40, 80], axis=0)

Outputs are always NEW nodes (and new files); a file that exists already is never overwritten.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from MVGCore.cli import check_output_folder
from MVGCore.io import read_geometry
from MVGCore.publish import publish
from MVGCore.truncation import check_complete
from MVGCore.types import CancelToken, ProgressFn

from . import pipeline
from .engine import Engine

OUTPUT_SUFFIXES = {
    "segmentation": (".seg.nrrd", ".nrrd"),
    "volume": (".nrrd", ".nii.gz", ".nii", ".mha"),
}
"""Single-file formats Slicer writes for each kind of output node, so a write is one rename.

A name that does not fit its node is refused: Slicer would otherwise write, say, NRRD bytes into
a file called ``.png``, which no viewer then opens. A volume is not written under a ``.seg.nrrd``
name either: Slicer and readers would take the float image for a segmentation."""

TASK_ARGUMENTS: dict[str, dict[str, bool]] = {
    "prompts_path": {"Segment": True, "Inpaint": True},
    "prompt_indices": {"Segment": False, "Synthesize": True},
    "target_path": {"Synthesize": True},
    "hole_segment_id": {"Inpaint": False},
}
"""For each optional input of :func:`process_file`, the tasks that use it (True: the task needs it).

An input given to a task that does not use it is refused, not ignored: a user who gave Denoise
prompts expects them to count, and a silent run would hide the mistake."""


class SceneProcessor:
    """Synchronous runs on one scene with one engine; every method returns the new node."""

    def __init__(self, scene: Any, engine: Engine) -> None:
        self.scene = scene
        self.engine = engine

    def segment(
        self,
        volume_node: Any,
        segmentation_node: Any,
        prompt_indices: Sequence[int] | None = None,
        axis: int = 0,
        segment_ids: Sequence[str] | None = None,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        adapt_steps: int = 0,
    ) -> Any:
        """New segmentation of ``volume_node`` from labels painted on prompt slices.

        ``prompt_indices`` default to every slice along ``axis`` holding a painted label;
        ``segment_ids`` default to all segments of ``segmentation_node``, in order;
        ``adapt_steps`` > 0 tunes a copy of the model on the prompts first.
        """
        job = pipeline.segment_job(
            volume_node, segmentation_node, prompt_indices, axis, segment_ids, adapt_steps
        )
        return pipeline.run(self.scene, job, self.engine, progress, cancel)

    def denoise(self, volume_node: Any, axis: int = 0, progress=None, cancel=None) -> Any:
        return pipeline.run(
            self.scene, pipeline.denoise_job(volume_node, axis), self.engine, progress, cancel
        )

    def inpaint(
        self,
        volume_node: Any,
        segmentation_node: Any,
        hole_segment_id: str,
        axis: int = 0,
        progress=None,
        cancel=None,
    ) -> Any:
        job = pipeline.inpaint_job(volume_node, segmentation_node, hole_segment_id, axis)
        return pipeline.run(self.scene, job, self.engine, progress, cancel)

    def synthesize(
        self,
        source_node: Any,
        target_node: Any,
        prompt_indices: Sequence[int],
        axis: int = 0,
        progress=None,
        cancel=None,
    ) -> Any:
        job = pipeline.synthesize_job(source_node, target_node, prompt_indices, axis)
        return pipeline.run(self.scene, job, self.engine, progress, cancel)


def load_volume(volumes_logic: Any, path: str | Path) -> Any:
    """A new volume node from ``path``, refused as MVGCore's readers refuse it.

    Slicer reads through ITK, which fills a cut-short NIfTI with zeros, so the file is checked
    first; when Slicer cannot read a file its reason stays in Slicer's log, so MVGCore's header
    reader is asked for one (a 4D image, a damaged file) before the generic message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"volume file not found: {path}")
    check_complete(path)
    node = volumes_logic.AddArchetypeVolume(str(path), _stem(path), 0)
    if node is None:
        read_geometry(path)  # raises MVGCore's one-line reason where it has one
        raise ValueError(f"could not read a volume from {path}")
    return node


def load_segmentation(segmentations_logic: Any, path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation file not found: {path}")
    check_complete(path)  # a label map in a cut-short NIfTI would load with empty slices
    node = segmentations_logic.LoadSegmentationFromFile(str(path), False)
    if node is None:
        raise ValueError(f"could not read a segmentation from {path}")
    return node


def save_node(node: Any, path: str | Path) -> Path:
    """Write a volume or segmentation node atomically to a file that must not exist yet.

    The finished file is published with an exclusive create (:func:`MVGCore.publish.publish`), so
    a file another run made there meanwhile is kept and this one gets a FileExistsError.
    """
    path = check_output(path, "segmentation" if node.IsA("vtkMRMLSegmentationNode") else "volume")
    storage = node.CreateDefaultStorageNode()  # kept out of the scene: saving adds nothing to it
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".seg.nrrd", ".nii.gz")) else path.suffix
    # Unique per writer: two runs writing the same output must not write into one temporary file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{suffix}")
    storage.SetFileName(str(temporary))
    try:
        if not storage.WriteData(node):
            raise OSError(f"could not write {path}")
        publish(temporary, path, overwrite=False)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def output_kind(task: str) -> str:
    """The kind of node ``task`` makes: "segmentation" for Segment, else "volume"."""
    return "segmentation" if task == "Segment" else "volume"


def check_task_arguments(task: str, given: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Refuse an input ``task`` does not use, or the lack of one it needs (``TASK_ARGUMENTS``).

    ``given`` maps :func:`process_file`'s argument names to their values (None: not given);
    ``names`` maps them to what the user typed (the batch command line's flags), for the message.
    """
    names = names or {}
    for argument, tasks in TASK_ARGUMENTS.items():
        if given.get(argument) is not None and task not in tasks:
            raise ValueError(
                f"{names.get(argument, argument)} is not used by task {task} "
                f"(only by {' and '.join(tasks)}); leave it out"
            )
    for argument, tasks in TASK_ARGUMENTS.items():
        if given.get(argument) is None and tasks.get(task, False):
            raise ValueError(f"task {task} needs {names.get(argument, argument)}")


def check_output(path: str | Path, kind: str) -> Path:
    """``path`` if a ``kind`` node ("segmentation" or "volume") can be written there as a new file."""
    path = Path(path)
    suffixes = OUTPUT_SUFFIXES[kind]
    name = path.name.lower()
    segmentation_name = kind == "volume" and name.endswith(".seg.nrrd")
    if segmentation_name or not name.endswith(suffixes):
        why = ".seg.nrrd is a segmentation name; " if segmentation_name else ""
        raise ValueError(
            f"output {path}: {why}a {kind} is written as {' or '.join(suffixes)}; rename it to one of those"
        )
    if path.exists():
        raise FileExistsError(f"output file exists already, not overwriting it: {path}")
    check_output_folder(path, f"output {path}")
    return path


def process_file(
    scene: Any,
    volumes_logic: Any,
    segmentations_logic: Any,
    engine: Engine,
    task: str,
    input_path: str | Path,
    output_path: str | Path,
    prompts_path: str | Path | None = None,
    target_path: str | Path | None = None,
    prompt_indices: Sequence[int] | None = None,
    axis: int = 0,
    hole_segment_id: str | None = None,
) -> Path:
    """Run ``task`` on a volume file and save the new node to ``output_path``.

    Segment and Inpaint read their labels from ``prompts_path`` (a .seg.nrrd); Synthesize reads the
    co-registered target volume from ``target_path``.
    """
    if task not in pipeline.TASKS:
        raise ValueError(f"task must be one of {pipeline.TASKS}, got {task!r}")
    inputs = {
        "prompts_path": prompts_path,
        "prompt_indices": prompt_indices,
        "target_path": target_path,
        "hole_segment_id": hole_segment_id,
    }
    check_task_arguments(task, inputs)  # before any work
    check_output(output_path, output_kind(task))
    for name, given in (("input", input_path), ("prompts", prompts_path), ("target", target_path)):
        if given is not None and os.path.abspath(given) == os.path.abspath(output_path):
            raise ValueError(f"output {output_path} is the {name} file; choose a new file")
    processor = SceneProcessor(scene, engine)
    volume = load_volume(volumes_logic, input_path)
    if task == "Segment":
        prompts = load_segmentation(segmentations_logic, prompts_path)
        result = processor.segment(volume, prompts, prompt_indices, axis)
    elif task == "Denoise":
        result = processor.denoise(volume, axis)
    elif task == "Inpaint":
        holes = load_segmentation(segmentations_logic, prompts_path)
        hole_id = hole_segment_id or holes.GetSegmentation().GetNthSegmentID(0)
        result = processor.inpaint(volume, holes, hole_id, axis)
    else:  # Synthesize, the last of pipeline.TASKS (checked above)
        target = load_volume(volumes_logic, target_path)
        result = processor.synthesize(volume, target, prompt_indices, axis)
    return save_node(result, output_path)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
