"""Damaged inputs and contested outputs (issue 37): a cut-short NIfTI, a DICOM series with a missing,
duplicated or odd slice, two writers of one new file, a full disk and a 4D input are each refused
with one line that names the file, and no partial file is ever left or published."""

from __future__ import annotations

import gzip
import re
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from MVGCore.io import read_channels, read_geometry, read_labels, read_volume, write_volume
from MVGCore.types import Geometry, Volume


def _volume() -> Volume:
    array = (np.arange(20 * 30 * 40).reshape(20, 30, 40) % 997 + 1).astype(np.int16)
    return Volume(array, Geometry(spacing=(0.5, 0.5, 2.0)))


# ------------------------------------------------------------------ 1. truncated NIfTI


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_a_truncated_nifti_is_refused_by_every_reader(tmp_path, name):
    path = write_volume(tmp_path / name, _volume())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])  # ITK would read the rest as zero slices
    expected = re.escape(name) + r" is truncated: \d+ bytes of voxel data, header promises 48000"
    for reader in (read_volume, read_labels, read_channels, read_geometry):
        with pytest.raises(ValueError, match=expected):
            reader(path)


def test_a_nifti_cut_inside_its_header_is_refused(tmp_path):
    path = write_volume(tmp_path / "head.nii", _volume())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"head\.nii is truncated: 200 bytes, .*header alone is 348"):
        read_volume(path)


def test_a_gzip_cut_before_the_header_ends_is_refused(tmp_path):
    path = write_volume(tmp_path / "early.nii.gz", _volume())
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"early\.nii\.gz is truncated: its gzip stream ends after"):
        read_volume(path)


def test_intact_nifti_reads_including_multi_member_gzip_and_plain_bytes_named_gz(tmp_path):
    volume = _volume()
    plain = write_volume(tmp_path / "v.nii", volume)
    np.testing.assert_array_equal(read_volume(plain).array, volume.array)
    data = plain.read_bytes()
    members = tmp_path / "members.nii.gz"  # as bgzip and pigz --independent write: many gzip members
    members.write_bytes(b"".join(gzip.compress(data[i : i + 5000]) for i in range(0, len(data), 5000)))
    np.testing.assert_array_equal(read_volume(members).array, volume.array)
    uncompressed = tmp_path / "plain.nii.gz"  # ITK's reader takes uncompressed bytes under .gz too
    shutil.copyfile(plain, uncompressed)
    np.testing.assert_array_equal(read_volume(uncompressed).array, volume.array)


def test_a_truncated_multi_member_gzip_is_refused(tmp_path):
    data = write_volume(tmp_path / "v.nii", _volume()).read_bytes()
    cut = tmp_path / "members.nii.gz"
    stream = b"".join(gzip.compress(data[i : i + 5000]) for i in range(0, len(data), 5000))
    cut.write_bytes(stream[: len(stream) * 6 // 10])
    with pytest.raises(ValueError, match=r"members\.nii\.gz is truncated"):
        read_volume(cut)


# ------------------------------------------------------------------ 5. 4D input


def test_a_4d_input_says_why_it_is_refused(tmp_path):
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)) for _ in range(3)])
    sitk.WriteImage(image, str(tmp_path / "cine.nrrd"))
    expected = r"cine\.nrrd is a 4D image of size \(4, 3, 2, 3\); MVG reads 2D or 3D volumes: split it"
    for reader in (read_volume, read_geometry):
        with pytest.raises(ValueError, match=expected):
            reader(tmp_path / "cine.nrrd")
