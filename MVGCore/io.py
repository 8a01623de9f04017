"""Reading and writing volumes with their geometry; the only MVGCore module that imports SimpleITK.

Everything becomes a :class:`~MVGCore.types.Volume`: a (k, j, i) array plus ITK/LPS geometry, so 2D
images (PNG, X-ray, single ultrasound frames) are one-slice volumes and multi-frame DICOM is a
stack of frames. Colour images become luminance because every MVG task works on grayscale.
MONOCHROME1 DICOM (X-ray film convention, high value = dark) is inverted so that bright = dense
for every modality. SimpleITK's GDCM decodes uncompressed and most JPEG/JPEG 2000 DICOM; pydicom
is a fallback for single files only (its compressed transfer syntaxes need the pylibjpeg plugins).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .types import Geometry, Volume

log = logging.getLogger(__name__)

WRITE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
"""Single-file formats only, so that a write can be made atomic with one rename."""

_IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as DICOM YBR_FULL uses


def read_volume(path: str | Path) -> Volume:
    """The image at ``path`` (file or DICOM series folder) as a Volume with its geometry."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        return _from_sitk(_read_dicom_series(path), path)
    if _is_dicom_file(path):
        return _read_dicom_file(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read image {path}: {_reason(error)}") from error
    return _from_sitk(image, path)


def read_channels(path: str | Path) -> list[Volume]:
    """The channels of a 4D image (e.g. multi-modal MSD files) as 3D volumes; a 3D image is one channel."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read image {path}: {_reason(error)}") from error
    if image.GetDimension() != 4:
        return [_from_sitk(image, path)]
    direction = np.array(image.GetDirection()).reshape(4, 4)[:3, :3].reshape(-1)
    geometry = _geometry(image.GetSpacing()[:3], image.GetOrigin()[:3], tuple(direction), path)
    return [Volume(channel, geometry) for channel in sitk.GetArrayFromImage(image)]


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Shape (k, j, i) and geometry of an image, reading only its header when possible.

    Lets dataset validation compare grids of large volumes without loading their voxels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir() or _is_dicom_file(path) or path.name.lower().endswith(_IMAGE_2D_SUFFIXES):
        volume = read_volume(path)
        return volume.array.shape, volume.geometry
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"cannot read image {path}: {_reason(error)}") from error
    size = tuple(reader.GetSize())
    if len(size) not in (2, 3):
        raise ValueError(f"{path}: expected a 2D or 3D image, got {len(size)}D of size {size}")
    shape = (size[2] if len(size) == 3 else 1, size[1], size[0])
    return shape, _geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path)


def write_volume(path: str | Path, volume: Volume, overwrite: bool = False) -> Path:
    """Write ``volume`` to ``path`` atomically; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    suffix = next((s for s in WRITE_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(f"cannot write {path}: the name must end with one of {WRITE_SUFFIXES}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    temporary = path.with_name(f".{path.name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")
    try:
        sitk.WriteImage(image, str(temporary), True)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _read_dicom_series(folder: Path) -> sitk.Image:
    """The largest DICOM series in ``folder``, sorted by slice position (GDCM's ordering)."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"no DICOM series found in folder {folder}")
    files = max((reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series), key=len)
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the largest", folder, len(series))
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise ValueError(f"cannot read the DICOM series in {folder}: {_reason(error)}") from error


def _read_dicom_file(path: Path) -> Volume:
    """One DICOM file: a 2D image or a multi-frame stack (ultrasound cine, tomosynthesis).

    ITK (>= 5.3) already maps MONOCHROME1 to MONOCHROME2 (stored maximum minus value) and YBR to
    RGB; only the pydicom fallback has to do so itself.
    """
    try:
        return _from_sitk(sitk.ReadImage(str(path)), path)
    except RuntimeError as error:
        log.info("SimpleITK cannot read %s (%s); trying pydicom", path, _reason(error))
        return _read_dicom_with_pydicom(path)


def _read_dicom_with_pydicom(path: Path) -> Volume:
    try:
        import pydicom
    except ImportError as error:
        raise ValueError(
            f"SimpleITK cannot decode {path} and pydicom is not installed (pip install pydicom, plus "
            "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg for compressed transfer syntaxes)"
        ) from error
    try:
        dataset = pydicom.dcmread(str(path))
        pixels = dataset.pixel_array  # pydicom >= 3 converts YBR colour to RGB here
    except Exception as error:  # pydicom raises many types for unreadable/undecodable data
        raise ValueError(
            f"cannot decode DICOM {path}: {error}. Compressed transfer syntaxes need "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        ) from error
    if str(dataset.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = _invert_monochrome1(pixels, int(dataset.get("BitsStored", 16)))
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        pixels = _luminance(pixels)
    elif "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        slope, intercept = (
            float(dataset.get("RescaleSlope", 1.0)),
            float(dataset.get("RescaleIntercept", 0.0)),
        )
        pixels = pixels.astype(np.float32) * slope + intercept
    array = pixels if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]
    spacing = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing") or (1.0, 1.0)
    row_spacing, column_spacing = (float(v) for v in spacing)
    return Volume(np.asarray(array), Geometry(spacing=(column_spacing, row_spacing, 1.0)))


def _from_sitk(image: sitk.Image, path: Path) -> Volume:
    """Convert to a Volume; 2D images gain a one-slice axis with an identity third direction."""
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise ValueError(f"{path}: expected a 2D or 3D image, got {dimension}D of size {image.GetSize()}")
    array = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components in (3, 4):
        array = _luminance(array)
    elif components != 1:
        raise ValueError(f"{path}: expected a grayscale or RGB image, got {components} components per voxel")
    if dimension == 2:
        array = array[np.newaxis]
    return Volume(array, _geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), path))


def _geometry(spacing, origin, direction, path: Path) -> Geometry:
    """ITK geometry of a 2D or 3D image; a 2D plane is embedded with an identity third axis."""
    if len(spacing) == 2:
        spacing, origin = (*spacing, 1.0), (*origin, 0.0)
        direction = (direction[0], direction[1], 0.0, direction[2], direction[3], 0.0, 0.0, 0.0, 1.0)
    try:
        return Geometry(tuple(spacing), tuple(origin), tuple(direction))
    except ValueError as error:
        raise ValueError(f"{path}: invalid geometry: {error}") from error


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Gray value of RGB(A) pixels in the last axis; alpha is dropped."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _invert_monochrome1(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    """Stored maximum minus value, the mapping ITK applies, so both readers agree."""
    if np.issubdtype(pixels.dtype, np.unsignedinteger):
        return ((1 << bits_stored) - 1 - pixels.astype(np.int64)).astype(pixels.dtype)
    return pixels.max() + pixels.min() - pixels


def _is_dicom_file(path: Path) -> bool:
    """DICOM files carry 'DICM' after a 128-byte preamble, whatever their name."""
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
