"""Headless check of the batch script path: ``Slicer --no-main-window --python-script`` this file.

Writes a small volume and a painted prompt segmentation to a temporary folder, runs
``batch_cli.main`` with the numpy engine, re-loads the output and exits non-zero on any mismatch.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import slicer
from MVGSlicerLib import batch, batch_cli, mrml_io


def run(folder: Path) -> None:
    scene = slicer.mrmlScene
    image = np.random.default_rng(0).normal(size=(5, 8, 9)).astype(np.float32)
    ijk_to_ras = np.array([[-0.9, 0, 0, 4.0], [0, -1.1, 0, 2.0], [0, 0, 2.0, -1.0], [0, 0, 0, 1]])
    volume = mrml_io.add_volume_from_array(scene, image, ijk_to_ras, "BatchInput")
    prompts = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "BatchPrompts")
    prompts.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    tumor = prompts.GetSegmentation().AddEmptySegment("tumor", "tumor", [1.0, 0.5, 0.0])
    painted = np.zeros(image.shape, np.uint8)
    painted[3, 2:5, 3:7] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, prompts, tumor, volume)
    input_path = batch.save_node(volume, folder / "input.nrrd")
    prompts_path = batch.save_node(prompts, folder / "prompts.seg.nrrd")
    output = folder / "output.seg.nrrd"
    argv = ["--task", "Segment", "--engine", "simple", "--input", str(input_path)]
    argv += ["--prompts", str(prompts_path), "--output", str(output)]
    status = batch_cli.main(argv, scene, slicer.modules.volumes.logic(), slicer.modules.segmentations.logic())
    if status != 0:
        raise RuntimeError(f"batch_cli.main returned {status}")
    result = slicer.util.loadSegmentation(str(output))
    mask = mrml_io.segment_mask(result, tumor, volume)
    expected = np.repeat(painted[3:4].astype(bool), image.shape[0], axis=0)
    if result.GetSegmentation().GetSegment(tumor).GetName() != "tumor" or not np.array_equal(mask, expected):
        raise RuntimeError("the batch output does not hold the expected 'tumor' segment")


if __name__ == "__main__":
    try:
        with tempfile.TemporaryDirectory() as folder:
            run(Path(folder))
    except Exception as error:
        print(f"MVGSlicerBatchTest failed: {error}", file=sys.stderr)
        slicer.util.exit(1)
    else:
        print("MVGSlicerBatchTest passed")
        slicer.util.exit(0)
