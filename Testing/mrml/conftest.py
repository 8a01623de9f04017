"""A real MRML scene from slicer-core, set up as the Slicer application would (SLICER.md recipe)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "MVGSlicer"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
# This folder is deliberately not called "slicer": slicer-core's 'slicer' is a namespace package
# that would adopt any '<sys.path entry>/slicer' folder (pytest puts Testing/ on sys.path).
import slicer  # noqa: E402  (slicer-core: the test extra installs it; its absence must fail loudly)

_RULES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)


def _register_converter_rules() -> None:
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {type(rule).__name__ for rule in factory.GetConverterRules()}
    for name in _RULES:
        if name not in registered:
            factory.RegisterConverterRule(getattr(slicer, name)())


def paint(seg_node, segment_id, mask, volume_node) -> None:
    """Set a segment to ``mask`` ((k, j, i) on the volume's grid), as painting in Slicer would."""
    from MVGSlicerLib import mrml_io

    image = mrml_io.image_data_from_array(mask.astype(np.uint8), mrml_io.reference_image(volume_node))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    assert logic.SetBinaryLabelmapToSegment(image, seg_node, segment_id, logic.MODE_REPLACE)


@pytest.fixture
def mrml():
    """scene + logics; the app logic stays referenced for the whole test (a collected one segfaults)."""
    _register_converter_rules()
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {}
    for name, cls in (
        ("Colors", slicer.vtkSlicerColorLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
    ):
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        logics[name] = logic
    yield SimpleNamespace(
        scene=scene,
        app_logic=app_logic,
        volumes=logics["Volumes"],
        segmentations=logics["Segmentations"],
        colors=logics["Colors"],
        paint=paint,
    )
    scene.Clear(True)


# IJK-to-RAS matrices the geometry must survive: plain, flipped + anisotropic, permuted, oblique.
def _oblique() -> np.ndarray:
    angle = np.radians(30)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.array(
        [[1, 0, 0], [0, np.cos(angle / 2), -np.sin(angle / 2)], [0, np.sin(angle / 2), np.cos(angle / 2)]]
    )
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.7, 1.1, 2.5])
    matrix[:3, 3] = (12.0, -30.0, 5.5)
    return matrix


GRIDS = {
    "identity": np.eye(4),
    "flipped_anisotropic": np.array(
        [[-0.8, 0, 0, 40.0], [0, -1.25, 0, 60.0], [0, 0, 3.0, -20.0], [0, 0, 0, 1]]
    ),
    "permuted": np.array([[0, 0, 2.0, 1.0], [-1.5, 0, 0, 2.0], [0, -0.9, 0, 3.0], [0, 0, 0, 1]]),
    "oblique": _oblique(),
}


@pytest.fixture(params=sorted(GRIDS))
def grid(request) -> np.ndarray:
    return GRIDS[request.param]
