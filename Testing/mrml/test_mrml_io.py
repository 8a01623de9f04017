"""Volume and segmentation nodes <-> (k, j, i) arrays, exact on flipped, anisotropic and oblique grids."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from MVGSlicerLib import mrml_io

from MVGCore.types import Geometry

SHAPE = (5, 6, 7)  # (k, j, i), all different so any axis mix-up changes the shape


def _ramp() -> np.ndarray:
    return np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)


def test_volume_array_round_trip_keeps_voxels_and_matrix(mrml, grid):
    array = _ramp()
    node = mrml_io.add_volume_from_array(mrml.scene, array, grid, "input")
    assert np.array_equal(mrml_io.array_from_volume(node), array)
    assert np.allclose(mrml_io.ijk_to_ras(node), grid)
    # voxel (k, j, i) sits where the matrix puts (i, j, k): the array is not transposed
    image = node.GetImageData()
    assert image.GetDimensions() == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert image.GetScalarComponentAsDouble(6, 2, 1, 0) == array[1, 2, 6]


def test_geometry_is_lps_itk_order_and_inverts(grid):
    geometry = mrml_io.geometry_from_ijk_to_ras(grid)
    assert isinstance(geometry, Geometry)
    direction = np.reshape(geometry.direction, (3, 3))
    lps_of_voxel = direction @ (np.array(geometry.spacing) * [3, 2, 1]) + geometry.origin
    ras_of_voxel = (grid @ [3, 2, 1, 1])[:3]
    assert np.allclose(lps_of_voxel, ras_of_voxel * [-1, -1, 1])
    assert np.allclose(mrml_io.ijk_to_ras_from_geometry(geometry), grid)


def test_segment_mask_and_labels_are_exact(mrml, grid):
    volume = mrml_io.add_volume_from_array(mrml.scene, _ramp(), grid, "input")
    seg = slicer.vtkMRMLSegmentationNode()
    mrml.scene.AddNode(seg)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    first = seg.GetSegmentation().AddEmptySegment("liver", "liver", [0.8, 0.3, 0.2])
    second = seg.GetSegmentation().AddEmptySegment("spleen", "spleen", [0.1, 0.5, 0.9])
    rng = np.random.default_rng(0)
    a, b = rng.random(SHAPE) < 0.3, rng.random(SHAPE) < 0.2
    mrml.paint(seg, first, a, volume)
    mrml.paint(seg, second, b, volume)
    assert np.array_equal(mrml_io.segment_mask(seg, first, volume), a)
    assert np.array_equal(mrml_io.segment_mask(seg, second, volume), b)
    labels = mrml_io.segment_labels(seg, [first, second], volume)
    expected = np.where(b, 2, np.where(a, 1, 0))
    assert np.array_equal(labels, expected)
    with pytest.raises(ValueError, match="no segment with id 'nope'"):
        mrml_io.segment_mask(seg, "nope", volume)


def test_new_volume_like_clones_geometry_and_sits_beside_input(mrml, grid):
    volume = mrml_io.add_volume_from_array(mrml.scene, _ramp(), grid, "input")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "patient")
    hierarchy.CreateItem(folder, volume)  # what Slicer's subject hierarchy plugins do on load
    result = np.full(SHAPE, 2.5, np.float32)
    out = mrml_io.new_volume_like(mrml.scene, result, volume, "result")
    assert out is not volume and out.GetName() == "result"
    assert np.allclose(mrml_io.ijk_to_ras(out), grid)
    assert np.array_equal(mrml_io.array_from_volume(out), result)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(out)) == folder
    with pytest.raises(ValueError, match="differs from the input volume"):
        mrml_io.new_volume_like(mrml.scene, result[1:], volume, "bad")


def _slice_to_ras(normal_ijk_axis: int, ijk_to_ras: np.ndarray, index: float) -> np.ndarray:
    """A SliceToRAS whose normal is the given IJK axis, centred on slice ``index``."""
    axes = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    others = [a for a in range(3) if a != normal_ijk_axis]
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2] = (
        axes[:, others[0]],
        axes[:, others[1]],
        -axes[:, normal_ijk_axis],
    )
    center = np.array([1.0, 2.0, 1.0, 1.0])
    center[normal_ijk_axis] = index
    matrix[:3, 3] = (ijk_to_ras @ center)[:3]
    return matrix


@pytest.mark.parametrize("ijk_axis", [0, 1, 2])
def test_view_normal_maps_to_array_axis_and_index(mrml, grid, ijk_axis):
    volume = mrml_io.add_volume_from_array(mrml.scene, _ramp(), grid, "input")
    slice_to_ras = _slice_to_ras(ijk_axis, grid, 3.0)
    assert mrml_io.view_axis_and_index(volume, slice_to_ras) == (2 - ijk_axis, 3)


def test_view_under_parent_transform_uses_world_frame(mrml):
    volume = mrml_io.add_volume_from_array(mrml.scene, _ramp(), np.eye(4), "input")
    transform = slicer.vtkMRMLLinearTransformNode()
    mrml.scene.AddNode(transform)
    shifted = np.eye(4)
    shifted[:3, 3] = (0, 0, 2.0)
    transform.SetMatrixTransformToParent(mrml_io.numpy_to_matrix(shifted))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    # an axial view at world z = 3 shows voxel slice k = 1 once the volume is shifted up by 2 mm
    assert mrml_io.view_axis_and_index(volume, _slice_to_ras(2, shifted, 1.0)) == (0, 1)


def test_oblique_and_outside_views_are_refused(mrml):
    volume = mrml_io.add_volume_from_array(mrml.scene, _ramp(), np.eye(4), "input")
    tilted = _slice_to_ras(2, np.eye(4), 2.0)
    tilted[:3, :3] = tilted[:3, :3] @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
    )
    with pytest.raises(ValueError, match="Red view is oblique"):
        mrml_io.view_axis_and_index(volume, tilted, "Red view")
    with pytest.raises(ValueError, match="outside 'input'"):
        mrml_io.view_axis_and_index(volume, _slice_to_ras(2, np.eye(4), 40.0), "Red view")


def _segmentation_on(mrml, volume):
    seg = slicer.vtkMRMLSegmentationNode()
    mrml.scene.AddNode(seg)
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return seg, seg.GetSegmentation().AddEmptySegment("lesion", "lesion", [1, 0, 0])


def test_prompts_under_a_shared_parent_transform_land_on_the_painted_voxels(mrml):
    volume = mrml_io.add_volume_from_array(mrml.scene, _ramp(), np.diag([0.8, 1.2, 3.0, 1.0]), "input")
    seg, lesion = _segmentation_on(mrml, volume)
    transform = slicer.vtkMRMLLinearTransformNode()
    mrml.scene.AddNode(transform)
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 0.0, 3.0)  # one slice along k: a reading in world space lands one slice off
    transform.SetMatrixTransformToParent(mrml_io.numpy_to_matrix(shift))
    for node in (volume, seg):
        node.SetAndObserveTransformNodeID(transform.GetID())
    painted = np.zeros(SHAPE, bool)
    painted[2, 1:4, 2:6] = True
    mrml.paint(seg, lesion, painted, volume)
    assert np.array_equal(mrml_io.segment_mask(seg, lesion, volume), painted)


def test_a_segment_reaching_outside_a_cropped_volume_is_clipped_to_its_grid(mrml):
    big = np.zeros((9, 10, 11), np.int16)
    whole = mrml_io.add_volume_from_array(mrml.scene, big, np.eye(4), "whole")
    seg, lesion = _segmentation_on(mrml, whole)
    painted = np.zeros(big.shape, bool)
    painted[1:8, 2:9, 1:10] = True  # larger than the crop on every side
    mrml.paint(seg, lesion, painted, whole)
    crop = np.eye(4)
    crop[:3, 3] = (3.0, 4.0, 2.0)  # voxel (i, j, k) = (3, 4, 2) of the whole volume
    cropped = mrml_io.add_volume_from_array(mrml.scene, np.zeros(SHAPE, np.int16), crop, "cropped")
    mask = mrml_io.segment_mask(seg, lesion, cropped)
    assert mask.shape == SHAPE
    assert np.array_equal(mask, painted[2 : 2 + SHAPE[0], 4 : 4 + SHAPE[1], 3 : 3 + SHAPE[2]])
    assert mrml_io.segment_labels(seg, [lesion], cropped).shape == SHAPE


def test_first_scalar_volume_skips_labelmaps(mrml):
    assert mrml_io.first_scalar_volume(mrml.scene) is None
    mrml_io.add_volume_from_array(mrml.scene, _ramp(), np.eye(4), "labels", label=True)
    assert mrml_io.first_scalar_volume(mrml.scene) is None
    scan = mrml_io.add_volume_from_array(mrml.scene, _ramp(), np.eye(4), "scan")
    assert mrml_io.first_scalar_volume(mrml.scene) is scan
