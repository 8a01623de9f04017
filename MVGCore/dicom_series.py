"""A DICOM series is checked before its slices are stacked, so a missing, doubled or odd slice is
named instead of becoming a volume with the wrong slice count and spacing.

GDCM leaves a file it cannot parse (a slice cut short by a copy) out of the series without a word,
and ITK stacks whatever it is given at the mean spacing, saying only "Non uniform sampling or
missing slices detected" on stderr: 21 slices 5 mm apart with one damaged file read as 20 slices
at 5.263 mm. A slice of another size surfaces as ITK's "Size: [128, 128, 1]". Each file's header
(read by GDCM, without its pixels) gives its size and its position along the slice normal, which
show all three before any pixel is read.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

_POSITION = "0020|0032"  # Image Position (Patient)
_GAP = 1.5
"""A step this many times the usual one holds at least one missing slice (two is one missing)."""


def check_series(folder: Path, files: Sequence[str], every_series_file: Sequence[str]) -> None:
    """Refuse (ValueError naming the files) the series ``files`` in ``folder`` if a file's header
    cannot be read, a slice differs in size, two slices share a position or slices are missing.

    ``every_series_file``: the files of all series GDCM found in ``folder``; a DICOM file that is
    in none of them could not be parsed, and is named as the likely missing slice.
    """
    if len(files) < 2:
        return
    headers = [_header(folder, name) for name in files]
    sizes = collections.Counter(size for size, _, _ in headers)
    if len(sizes) > 1:
        usual = sizes.most_common(1)[0][0]
        odd = next((name, size) for name, (size, _, _) in zip(files, headers) if size != usual)
        raise ValueError(
            f"DICOM series in {folder}: {Path(odd[0]).name} is {odd[1][0]} x {odd[1][1]} pixels, the "
            f"other slices {usual[0]} x {usual[1]}; it does not belong to this series (move it elsewhere)"
        )
    if any(origin is None for _, origin, _ in headers):
        return  # no positions to compare (e.g. secondary captures): ITK stacks them in file order
    normal = np.asarray(headers[0][2]).reshape(3, 3)[:, 2]
    if any(not np.allclose(direction, headers[0][2], atol=1e-3) for _, _, direction in headers):
        return  # slices of several orientations: positions along one normal mean nothing
    along = np.array([float(np.dot(origin, normal)) for _, origin, _ in headers])
    order = np.argsort(along, kind="stable")
    names = [Path(files[i]).name for i in order]
    steps = np.diff(along[order])
    apart = steps[steps > 1e-4]
    if apart.size == 0:
        raise ValueError(f"DICOM series in {folder}: all {len(files)} slices are at the same position")
    usual = float(np.median(apart))
    for index, step in enumerate(steps):
        here, there = _mm(along[order][index]), _mm(along[order][index + 1])
        if step <= max(1e-4, 0.01 * usual):
            raise ValueError(
                f"DICOM series in {folder}: {names[index]} and {names[index + 1]} are both at {here} mm "
                "along the slice normal; a series has one slice per position (move one of them elsewhere)"
            )
        if step > _GAP * usual:
            missing = max(round(step / usual) - 1, 1)
            raise ValueError(
                f"DICOM series in {folder}: {missing} slice{'s' if missing > 1 else ''} missing between "
                f"{names[index]} (at {here} mm) and {names[index + 1]} (at {there} mm), where the slices "
                f"are {_mm(usual)} mm apart{_unreadable(folder, every_series_file)}"
            )


def _header(folder: Path, name: str) -> tuple[tuple[int, int], tuple[float, ...] | None, tuple[float, ...]]:
    """(columns, rows), position (None if the file has none) and direction of one slice file."""
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError(
            f"DICOM series in {folder}: cannot read {Path(name).name} ({lines[-1] if lines else error})"
        ) from None
    size = reader.GetSize()
    origin = reader.GetOrigin() if reader.HasMetaDataKey(_POSITION) else None
    return (size[0], size[1]), origin, reader.GetDirection()


def _unreadable(folder: Path, every_series_file: Sequence[str]) -> str:
    """'; X, Y in the folder cannot be read as DICOM ...' for DICOM files GDCM left out, or ''."""
    listed = {Path(name).name for name in every_series_file}
    left_out = sorted(
        path.name for path in folder.iterdir() if path.name not in listed and _is_slice_file(path)
    )
    if not left_out:
        return ""
    shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
    return f"; {shown} in the folder cannot be read as DICOM (damaged or cut short?)"


def is_dicom_file(path: Path) -> bool:
    """DICOM files carry 'DICM' after a 128-byte preamble, whatever their name."""
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _is_slice_file(path: Path) -> bool:
    """A file of the folder that may hold a slice (a DICOMDIR index holds none)."""
    return path.is_file() and path.name.upper() != "DICOMDIR" and is_dicom_file(path)


def _mm(value: float) -> str:
    return f"{round(float(value), 3):g}"
