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
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_series import check_series, is_dicom_file
from .publish import out_of_space, publish
from .termination import sigterm_raises
from .truncation import check_complete
from .types import Geometry, Volume

log = logging.getLogger(__name__)

WRITE_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".mha")
"""Single-file formats only, so that a write can be made atomic with one rename."""

_IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as DICOM YBR_FULL uses


def read_volume(path: str | Path) -> Volume:
    """The image at ``path`` (file or DICOM series folder) as a Volume with its geometry."""
    path = check_path_encoding(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir():
        return _from_sitk(_read_dicom_series(path), path)
    if is_dicom_file(path):
        return _read_dicom_file(path)
    return _from_sitk(_read_image(path), path)


def read_channels(path: str | Path) -> list[Volume]:
    """The channels of a 4D image (e.g. multi-modal MSD files) as 3D volumes; a 3D image is one channel."""
    path = check_path_encoding(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    image = _read_image(path)
    if image.GetDimension() != 4:
        return [_from_sitk(image, path)]
    direction = np.array(image.GetDirection()).reshape(4, 4)[:3, :3].reshape(-1)
    geometry = _geometry(image.GetSpacing()[:3], image.GetOrigin()[:3], tuple(direction), path)
    return [Volume(channel, geometry) for channel in sitk.GetArrayFromImage(image)]


def read_geometry(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Shape (k, j, i) and geometry of an image, reading only its header when possible.

    Lets dataset validation compare grids of large volumes without loading their voxels.
    """
    path = check_path_encoding(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if path.is_dir() or is_dicom_file(path) or path.name.lower().endswith(_IMAGE_2D_SUFFIXES):
        volume = read_volume(path)
        return volume.array.shape, volume.geometry
    check_complete(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(f"cannot read image {path}: {_reason(error)}") from error
    size = tuple(reader.GetSize())
    if len(size) not in (2, 3):
        raise ValueError(_not_2d_or_3d(path, size))
    shape = (size[2] if len(size) == 3 else 1, size[1], size[0])
    return shape, _geometry(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), path)


def read_labels(path: str | Path) -> Volume:
    """A label file as integer class ids, by the one rule every reader of label files follows.

    Integer and bool labels are kept as they are. Many tools save labels as floats; whole-number
    floats are accepted and converted to the smallest unsigned integer type that holds them.
    Fractions, NaN/inf and negative values are refused, naming the file.
    """
    volume = read_volume(path)
    return Volume(class_ids(volume.array, f"label {path}"), volume.geometry)


def class_ids(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as non-negative integer class ids (see :func:`read_labels`); ``name`` is for errors."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} has dtype {array.dtype}; labels must be integer class ids")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} holds negative values ({array.min()}); class ids must be >= 0")
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.isfinite(array).all() or np.any(array != np.round(array)):
        raise ValueError(f"{name} holds non-integer values; labels must be integer class ids")
    top = int(array.max()) if array.size else 0
    return array.astype(np.result_type(np.uint8, np.min_scalar_type(top)))


def check_path_encoding(path: str | Path, what: str = "") -> Path:
    """``path`` as a Path, refused if SimpleITK cannot be handed its name.

    Under an ASCII file-name encoding (e.g. ``LC_ALL=C`` without Python's UTF-8 mode) a name with
    other characters reaches Python as undecodable bytes, and SimpleITK aborts the whole process
    on it (a C++ ``std::logic_error``, after any work already done). So it is refused up front.
    """
    text = str(path)
    encoding = sys.getfilesystemencoding()
    for codec in dict.fromkeys((encoding, "utf-8")):
        try:
            text.encode(codec)
        except UnicodeEncodeError:
            label = f"{what} " if what else ""
            raise ValueError(
                f"{label}{text!a}: the name holds characters this system's file-name encoding "
                f"({encoding}) cannot represent, and SimpleITK cannot open such a name; rename it "
                "with ASCII characters or run under a UTF-8 locale (e.g. LC_ALL=C.UTF-8)"
            ) from None
    return Path(path)


def write_volume(path: str | Path, volume: Volume, overwrite: bool = False) -> Path:
    """Write ``volume`` to ``path`` atomically; an existing file is kept unless ``overwrite``."""
    return write_volumes([(path, volume)], overwrite)[0]


def write_volumes(items: Sequence[tuple[str | Path, Volume]], overwrite: bool = False) -> list[Path]:
    """Write every ``(path, volume)`` or none of them.

    All paths are checked first; each volume is then written to a hidden temporary file beside
    its target, and only when all are complete are they moved into place. Without ``overwrite`` a
    file is published only if its name is still free (:func:`MVGCore.publish.publish`), so of two
    runs writing the same new file one gets a FileExistsError instead of silently replacing the
    other's. On any error, and on SIGTERM, the temporary files and the files already published are
    removed, and nothing the user (or another program) had is changed.
    """
    paths = [_writable(Path(path), overwrite) for path, _ in items]
    unique = {os.path.abspath(p) for p in paths}
    if len(unique) != len(paths):
        raise ValueError(f"the same output file is named twice: {[str(p) for p in paths]}")
    temporaries: list[Path] = []
    undo: list[Callable[[], None]] = []
    with sigterm_raises():
        try:
            for path, (_, volume) in zip(paths, items):
                suffix = next(s for s in WRITE_SUFFIXES if path.name.lower().endswith(s))
                stem, token = path.name[: -len(suffix)], f"{os.getpid()}-{secrets.token_hex(4)}"
                temporaries.append(path.with_name(f".{stem}.{token}.tmp{suffix}"))  # unique per writer
                _write_complete(volume, temporaries[-1], path)
            for temporary, path in zip(temporaries, paths):
                undo.append(publish(temporary, path, overwrite))
        except BaseException:
            for withdraw in reversed(undo):
                withdraw()
            raise
        finally:
            for temporary in temporaries:
                temporary.unlink(missing_ok=True)
    return paths


def _write_complete(volume: Volume, temporary: Path, path: Path) -> None:
    """Write ``volume`` to ``temporary`` and make sure all of it got there; a full disk is named.

    ITK's NIfTI writer reports a full disk only on stderr, so the written file is checked
    (:mod:`MVGCore.truncation`); the NRRD and MetaImage writers raise, in their own words.
    """
    try:
        sitk.WriteImage(_to_sitk(volume), str(temporary), True)
        try:
            check_complete(temporary, "the written file", written=True)
        except ValueError as short:
            raise OSError(f"could not write {path} completely: {short}") from None
    except (OSError, RuntimeError) as error:
        full = out_of_space(error, path, volume.array.nbytes)
        if full is None:
            raise
        raise full from error


def _writable(path: Path, overwrite: bool) -> Path:
    check_path_encoding(path)
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise ValueError(f"cannot write {path}: the name must end with one of {WRITE_SUFFIXES}")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def _read_image(path: Path) -> sitk.Image:
    """The image in the file ``path``, once it is known to hold every voxel its header promises
    (ITK reads a cut-short NIfTI as zeros without a word; see :mod:`MVGCore.truncation`)."""
    check_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ValueError(f"cannot read image {path}: {_reason(error)}") from error


def _not_2d_or_3d(path: Path, size: Sequence[int]) -> str:
    """Why an image of ``size`` (ITK order) is refused, and what the user can do about it."""
    return (
        f"{path} is a {len(size)}D image of size {tuple(size)}; MVG reads 2D or 3D volumes: split it into "
        "3D volumes first (one per channel or time point; MVGCore.io.read_channels does so)"
    )


def _to_sitk(volume: Volume) -> sitk.Image:
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(volume.geometry.spacing)
    image.SetOrigin(volume.geometry.origin)
    image.SetDirection(volume.geometry.direction)
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    """The largest DICOM series in ``folder``, sorted by slice position (GDCM's ordering), once
    :func:`MVGCore.dicom_series.check_series` finds no missing, doubled or odd slice in it."""
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"no DICOM series found in folder {folder}")
    listed = [reader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series]
    files = max(listed, key=len)
    if len(series) > 1:
        log.warning("%s holds %d DICOM series; reading the largest", folder, len(series))
    check_series(folder, files, [name for names in listed for name in names])
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
        import pydicom.errors
    except ImportError as error:
        raise ValueError(
            f"SimpleITK cannot decode {path} and pydicom is not installed (pip install pydicom, plus "
            "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg for compressed transfer syntaxes)"
        ) from error
    try:
        dataset = pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError as error:
        raise ValueError(f"cannot read {path}: it is not a DICOM file (it has no DICOM header)") from error
    except Exception as error:  # pydicom raises many types for damaged files
        raise ValueError(f"cannot read {path}: it is not a readable DICOM file ({error})") from error
    try:
        pixels = dataset.pixel_array  # pydicom >= 3 converts YBR colour to RGB here
    except Exception as error:  # pydicom raises many types for undecodable pixel data
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        hint = (
            ". Compressed transfer syntaxes need pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
            if getattr(syntax, "is_compressed", False)
            else ""
        )
        raise ValueError(f"cannot decode the pixels of DICOM {path}: {error}{hint}") from error
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
        raise ValueError(_not_2d_or_3d(path, image.GetSize()))
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


def _reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
