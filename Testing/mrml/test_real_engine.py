"""The module's path with the REAL engine: import weights -> load_engine -> run -> new nodes.

The model is a tiny randomly initialised MVG, so only the plumbing is checked (its labels are
not meaningful); the prompt slices must still come back exactly as painted.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from MVGSlicerLib import engine, models, mrml_io, pipeline

from MVGCore.types import Cancelled, CancelToken

torch = pytest.importorskip("torch")


def test_imported_checkpoint_segments_and_cancels_through_the_real_predictor(mrml, checkpoint, tmp_path):
    stored = models.import_weights(checkpoint, [], tmp_path / "models")
    runner = engine.load_engine(models.resolve_model(str(stored), []), "cpu")
    assert type(runner).__name__ == "Predictor" and runner.device == "cpu"

    ijk_to_ras = np.array([[-0.7, 0, 0, 5.0], [0, -0.7, 0, 3.0], [0, 0, 2.5, 0.0], [0, 0, 0, 1]])
    image = np.random.default_rng(0).normal(100, 20, size=(4, 24, 20)).astype(np.float32)
    volume = mrml_io.add_volume_from_array(mrml.scene, image, ijk_to_ras, "mr")
    prompts = slicer.vtkMRMLSegmentationNode()
    mrml.scene.AddNode(prompts)
    lesion = prompts.GetSegmentation().AddEmptySegment("lesion", "lesion", [1, 0, 0])
    painted = np.zeros(image.shape, bool)
    painted[1, 5:15, 4:12] = True
    mrml.paint(prompts, lesion, painted, volume)

    job = pipeline.segment_job(volume, prompts, [1])
    nodes_before = mrml.scene.GetNumberOfNodes()
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        pipeline.run(mrml.scene, job, runner, cancel=cancel)
    assert mrml.scene.GetNumberOfNodes() == nodes_before

    seen = []
    out = pipeline.run(mrml.scene, job, runner, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4)
    result = mrml_io.segment_mask(out, lesion, volume)
    assert np.array_equal(result[1], painted[1])  # the painted prompt slice is kept exactly
    assert out.GetSegmentation().GetSegment(lesion).GetName() == "lesion"

    denoised = pipeline.run(mrml.scene, pipeline.denoise_job(volume), runner)
    assert mrml_io.array_from_volume(denoised).dtype == np.float32
    assert np.allclose(mrml_io.ijk_to_ras(denoised), ijk_to_ras)
