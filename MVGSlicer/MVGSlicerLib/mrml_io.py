"""The one place where MRML nodes become (k, j, i) arrays and back, with their geometry.

Users complain most about misaligned results (flipped axes, LPS vs RAS, oblique volumes), so every
geometric decision of the Slicer layer lives here and is tested on flipped, anisotropic and
oblique IJK-to-RAS matrices. Arrays are always (k, j, i), Slicer's ``arrayFromVolume`` order.
Nothing here adds temporary nodes to the scene: reading prompts must leave the scene untouched
so that a cancelled run changes nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MVGCore.types import Geometry

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
VIEW_ALIGNMENT_TOLERANCE = 1e-4
"""How far (1 - |cos|) a view normal may be from an IJK axis and still count as aligned."""

_VTK_TYPES = {
    np.dtype(np.uint8): vtk.VTK_UNSIGNED_CHAR,
    np.dtype(np.int8): vtk.VTK_SIGNED_CHAR,
    np.dtype(np.uint16): vtk.VTK_UNSIGNED_SHORT,
    np.dtype(np.int16): vtk.VTK_SHORT,
    np.dtype(np.uint32): vtk.VTK_UNSIGNED_INT,
    np.dtype(np.int32): vtk.VTK_INT,
    np.dtype(np.float32): vtk.VTK_FLOAT,
    np.dtype(np.float64): vtk.VTK_DOUBLE,
}


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(volume_node: Any) -> np.ndarray:
    """The node's own IJK-to-RAS matrix (parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


def world_ijk_to_ras(node: Any) -> np.ndarray:
    """IJK-to-world for a volume under linear parent transforms, the frame slice views live in."""
    matrix = ijk_to_ras(node)
    parent = node.GetParentTransformNode()
    if parent is None:
        return matrix
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"volume '{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; "
            "harden the transform first (Data module: right-click the volume, 'Harden transform')"
        )
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return matrix_to_numpy(to_world) @ matrix


def geometry_from_ijk_to_ras(matrix: np.ndarray) -> Geometry:
    """ITK/LPS geometry (spacing/origin/direction in (i, j, k) order) of an IJK-to-RAS matrix."""
    lps = RAS_TO_LPS @ np.asarray(matrix, dtype=float)
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"IJK-to-RAS matrix has a zero-length axis: spacing {spacing}")
    direction = axes / spacing
    return Geometry(spacing=tuple(spacing), origin=tuple(lps[:3, 3]), direction=tuple(direction.ravel()))


def ijk_to_ras_from_geometry(geometry: Geometry) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(geometry.direction, (3, 3)) * np.asarray(geometry.spacing)
    lps[:3, 3] = geometry.origin
    return RAS_TO_LPS @ lps


def array_from_image_data(image_data: Any) -> np.ndarray:
    """A (k, j, i) copy of single-component vtkImageData scalars."""
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise ValueError("the node holds no image data")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"expected a single-component image, got {image_data.GetNumberOfScalarComponents()} components"
        )
    dims = image_data.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    return flat.reshape(dims[2], dims[1], dims[0]).copy()


def image_data_from_array(array: np.ndarray, image_data: Any = None) -> Any:
    """Fill (or create) vtkImageData from a (k, j, i) array; origin/spacing stay identity."""
    array = np.ascontiguousarray(array)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D (k, j, i) array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype not in _VTK_TYPES:
        array = array.astype(np.float32)
    image_data = image_data if image_data is not None else vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=_VTK_TYPES[array.dtype])
    image_data.GetPointData().SetScalars(scalars)
    return image_data


def array_from_volume(volume_node: Any) -> np.ndarray:
    """The voxels of a scalar volume node as a (k, j, i) copy."""
    if volume_node is None:
        raise ValueError("no input volume selected")
    return array_from_image_data(volume_node.GetImageData())


def first_scalar_volume(scene: Any) -> Any:
    """The first scalar volume that is not a labelmap (labelmaps are scalar volume subclasses), or None."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for n in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(n)
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            return node
    return None


def geometry_from_volume(volume_node: Any) -> Geometry:
    return geometry_from_ijk_to_ras(ijk_to_ras(volume_node))


def add_volume_from_array(
    scene: Any, array: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str, label: bool = False
) -> Any:
    """A NEW scalar (or labelmap) volume node holding ``array`` on the given grid."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if label else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(numpy_to_matrix(ijk_to_ras_matrix))
    node.SetAndObserveImageData(image_data_from_array(array))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def place_beside(scene: Any, node: Any, sibling: Any) -> None:
    """Same subject-hierarchy folder and parent transform as ``sibling``, so results sit by the input."""
    node.SetAndObserveTransformNodeID(sibling.GetTransformNodeID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return
    sibling_item = hierarchy.GetItemByDataNode(sibling)
    parent = hierarchy.GetItemParent(sibling_item) if sibling_item else hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:  # without Slicer's subject hierarchy plugins (bare MRML) new nodes get no item by themselves
        hierarchy.CreateItem(parent, node)


def new_volume_like(scene: Any, array: np.ndarray, reference_node: Any, name: str) -> Any:
    """A NEW scalar volume on the reference's exact grid, placed beside it."""
    reference_shape = array_from_volume(reference_node).shape
    if array.shape != reference_shape:
        raise ValueError(
            f"result shape {array.shape} differs from the input volume '{reference_node.GetName()}' "
            f"shape {reference_shape}"
        )
    node = add_volume_from_array(scene, array, ijk_to_ras(reference_node), name)
    place_beside(scene, node, reference_node)
    return node


def reference_image(volume_node: Any) -> Any:
    """An empty vtkOrientedImageData with the volume's grid, the target of segment resampling."""
    reference = slicer.vtkOrientedImageData()
    reference.SetDimensions(volume_node.GetImageData().GetDimensions())
    reference.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras(volume_node)))
    return reference


def _check_same_frame(segmentation_node: Any, volume_node: Any) -> None:
    if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
        raise ValueError(
            f"segmentation '{segmentation_node.GetName()}' and volume '{volume_node.GetName()}' are under "
            "different parent transforms; put both under the same transform (or harden them)"
        )


def segment_mask(segmentation_node: Any, segment_id: str, volume_node: Any) -> np.ndarray:
    """Boolean (k, j, i) mask of one segment on the volume's grid (nearest-neighbour resampling)."""
    _check_same_frame(segmentation_node, volume_node)
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise ValueError(
            f"segmentation '{segmentation_node.GetName()}' has no segment with id '{segment_id}'"
        )
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    shape = array_from_volume(volume_node).shape
    layer = slicer.vtkOrientedImageData()
    # Both nodes share one parent transform (checked above), so the segment is read in its own local
    # frame, the frame of the volume's IJK-to-RAS: applying the transform would shift it off the grid.
    if (
        not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, layer, False)
        or layer.IsEmpty()
    ):
        return np.zeros(shape, dtype=bool)
    resampled = slicer.vtkOrientedImageData()
    resample = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage
    # No padding: the mask is exactly the volume's extent, even where the segment reaches beyond it.
    if not resample(layer, reference_image(volume_node), resampled, False, False):
        raise ValueError(f"could not resample segment '{segment.GetName()}' onto '{volume_node.GetName()}'")
    # Segments may share one labelmap layer; this segment is the voxels holding its label value.
    return array_from_image_data(resampled) == segment.GetLabelValue()


def segment_labels(segmentation_node: Any, segment_ids: list[str], volume_node: Any) -> np.ndarray:
    """uint16 label volume: segment ``segment_ids[n]`` is label n + 1; later segments win overlaps."""
    labels = np.zeros(array_from_volume(volume_node).shape, dtype=np.uint16)
    for value, segment_id in enumerate(segment_ids, start=1):
        labels[segment_mask(segmentation_node, segment_id, volume_node)] = value
    return labels


def new_segmentation_like(
    scene: Any,
    labels: np.ndarray,
    reference_node: Any,
    source_segmentation: Any,
    source_segment_ids: list[str],
    name: str,
) -> Any:
    """A NEW segmentation node: label n + 1 becomes a copy (name, color, terminology) of source segment n."""
    shape = array_from_volume(reference_node).shape
    if labels.shape != shape:
        raise ValueError(f"label volume shape {labels.shape} differs from the input volume shape {shape}")
    highest = int(labels.max(initial=0))
    if highest > len(source_segment_ids) or int(labels.min(initial=0)) < 0:
        raise ValueError(f"labels must be in 0..{len(source_segment_ids)}, got values up to {highest}")
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    mask_image = slicer.vtkOrientedImageData()
    mask_image.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras(reference_node)))
    for value, source_id in enumerate(source_segment_ids, start=1):
        segment = slicer.vtkSegment()
        segment.DeepCopyMetadata(source_segmentation.GetSegmentation().GetSegment(source_id))
        segment.SetLabelValue(1)  # its own layer holds 0/1; the copied value belonged to the source layer
        image_data_from_array((labels == value).astype(np.uint8), mask_image)
        segment.AddRepresentation(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), _copy_oriented(mask_image)
        )
        node.GetSegmentation().AddSegment(segment, source_id)
    place_beside(scene, node, reference_node)
    return node


def _copy_oriented(image: Any) -> Any:
    copy = slicer.vtkOrientedImageData()
    copy.DeepCopy(image)
    return copy


def view_axis_and_index(
    volume_node: Any, slice_to_ras: np.ndarray, view_name: str = "view"
) -> tuple[int, int]:
    """The array axis (0=k, 1=j, 2=i) a slice view cuts and the slice index it shows.

    The view normal (third column of SliceToRAS) is expressed in the volume's IJK directions; a
    view not aligned with one of them is oblique to the voxel grid and is refused, because a
    prompt must be an exact voxel slice.
    """
    slice_to_ras = np.asarray(slice_to_ras, dtype=float)
    matrix = world_ijk_to_ras(volume_node)
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    axes = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    cosines = np.abs(axes.T @ normal)
    ijk_axis = int(np.argmax(cosines))
    if cosines[ijk_axis] < 1.0 - VIEW_ALIGNMENT_TOLERANCE:
        raise ValueError(
            f"the {view_name} is oblique to the voxel grid of '{volume_node.GetName()}' "
            f"(best alignment {np.degrees(np.arccos(min(1.0, cosines[ijk_axis]))):.1f} degrees off); "
            "use 'Rotate to volume plane' in the view's menu first"
        )
    ijk = np.linalg.solve(matrix, np.append(slice_to_ras[:3, 3], 1.0))
    index = round(float(ijk[ijk_axis]))
    size = volume_node.GetImageData().GetDimensions()[ijk_axis]
    if not 0 <= index < size:
        raise ValueError(
            f"the {view_name} shows slice {index}, outside '{volume_node.GetName()}' (0..{size - 1})"
        )
    return 2 - ijk_axis, index
