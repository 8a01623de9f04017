"""Damaged inputs and contested outputs (issue 37): a cut-short NIfTI, a DICOM series with a missing,
duplicated or odd slice, two writers of one new file, a full disk and a 4D input are each refused
with one line that names the file, and no partial file is ever left or published."""

from __future__ import annotations

import errno
import gzip
import re
import shutil
import threading
from collections import namedtuple

import numpy as np
import pytest
import SimpleITK as sitk

from MVGCore import io
from MVGCore.io import read_channels, read_geometry, read_labels, read_volume, write_volume
from MVGCore.types import Geometry, Volume

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.37"


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


# ------------------------------------------------------------------ 2. two writers of one new file


def test_two_writers_of_one_new_file_one_wins_the_other_is_told(tmp_path, monkeypatch):
    path = tmp_path / "same.nrrd"
    real = io.sitk.WriteImage
    both_written = threading.Barrier(2, timeout=60)

    def write_then_wait(image, name, compress):
        real(image, name, compress)
        both_written.wait()  # both have checked that `path` is absent and written their data

    monkeypatch.setattr(io.sitk, "WriteImage", write_then_wait)
    volumes = [Volume(np.full((2, 3, 4), value, np.int16)) for value in (1, 2)]
    outcomes: list[object] = [None, None]

    def writer(index: int) -> None:
        try:
            outcomes[index] = write_volume(path, volumes[index])
        except Exception as error:
            outcomes[index] = error

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(losers) == 1 and isinstance(losers[0], FileExistsError), outcomes
    assert "same.nrrd" in str(losers[0]) and "\n" not in str(losers[0])
    winner = outcomes.index(path)
    np.testing.assert_array_equal(read_volume(path).array, volumes[winner].array)
    assert [p.name for p in tmp_path.iterdir()] == ["same.nrrd"]  # no temporary left


def test_a_file_made_meanwhile_undoes_the_files_already_published(tmp_path, monkeypatch):
    first, second = tmp_path / "a.nrrd", tmp_path / "b.nrrd"
    real = io.sitk.WriteImage
    calls = []

    def another_program_makes_b(image, name, compress):
        real(image, name, compress)
        calls.append(name)
        if len(calls) == 2:
            second.write_bytes(b"made by another program")

    monkeypatch.setattr(io.sitk, "WriteImage", another_program_makes_b)
    volume = Volume(np.zeros((2, 3, 4), np.int16))
    with pytest.raises(FileExistsError, match=r"b\.nrrd"):
        io.write_volumes([(first, volume), (second, volume)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.nrrd"]  # both or none of ours
    assert second.read_bytes() == b"made by another program"  # and theirs is kept


def test_publishing_without_hard_links_still_refuses_an_existing_file(tmp_path, monkeypatch):
    """FAT, exFAT and some network shares have no hard links; a reservation takes the link's place."""

    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io.os, "link", no_links)
    path = write_volume(tmp_path / "v.nrrd", Volume(np.ones((2, 3, 4), np.int16)))
    np.testing.assert_array_equal(read_volume(path).array, np.ones((2, 3, 4)))
    real = io.sitk.WriteImage

    def another_program_makes_it(image, name, compress):
        real(image, name, compress)
        (tmp_path / "w.nrrd").write_bytes(b"theirs")

    monkeypatch.setattr(io.sitk, "WriteImage", another_program_makes_it)
    with pytest.raises(FileExistsError, match=r"w\.nrrd"):
        write_volume(tmp_path / "w.nrrd", Volume(np.ones((2, 3, 4), np.int16)))
    assert (tmp_path / "w.nrrd").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nrrd", "w.nrrd"]


# ------------------------------------------------------------------ 4. disk full

_ITK_NRRD_FULL = (
    "Exception thrown in SimpleITK ImageFileWriter_Execute: itkNrrdImageIO.cxx:1349:\n"
    "ITK ERROR: NrrdImageIO(0x1): Write: Error writing out.nrrd:\n[nrrd] nrrdSave:\n"
    "[nrrd] _nrrdEncodingGzip_write: expected to write 1310720 bytes, but only wrote 327680\n"
)
_Usage = namedtuple("_Usage", "total used free")


def _full_disk(monkeypatch, free: int = 0) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: _Usage(10**9, 10**9 - free, free))


def test_a_full_disk_is_named_not_itks_text(tmp_path, monkeypatch):
    def itk_fails(image, name, compress):
        with open(name, "wb") as partial:
            partial.write(b"NRRD0004\n")
        raise RuntimeError(_ITK_NRRD_FULL)

    monkeypatch.setattr(io.sitk, "WriteImage", itk_fails)
    _full_disk(monkeypatch)
    with pytest.raises(OSError, match=r"^no space left on device writing .*out\.nrrd") as raised:
        write_volume(tmp_path / "out.nrrd", _volume())
    assert raised.value.errno == errno.ENOSPC and "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_enospc_from_the_system_is_named_too(tmp_path, monkeypatch):
    def system_says_full(image, name, compress):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.sitk, "WriteImage", system_says_full)
    with pytest.raises(OSError, match=r"^no space left on device writing .*out\.nii\.gz"):
        write_volume(tmp_path / "out.nii.gz", _volume())


@pytest.mark.parametrize("free", [0, 10**9])
def test_a_nifti_the_writer_left_short_is_never_published(tmp_path, monkeypatch, free):
    """ITK's NIfTI writer reports a full disk only on stderr ("NWAD: wrote only 0 of ... bytes")."""
    real = io.sitk.WriteImage

    def writes_short(image, name, compress):
        real(image, name, compress)
        with open(name, "r+b") as written:
            written.truncate(4096)

    monkeypatch.setattr(io.sitk, "WriteImage", writes_short)
    _full_disk(monkeypatch, free)
    expected = r"no space left on device writing" if free == 0 else r"could not write .*out\.nii completely"
    with pytest.raises(OSError, match=expected):
        write_volume(tmp_path / "out.nii", _volume())
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_keep_their_words(tmp_path, monkeypatch):
    def fails(image, name, compress):
        raise RuntimeError("ITK ERROR: unsupported pixel type")

    monkeypatch.setattr(io.sitk, "WriteImage", fails)
    with pytest.raises(RuntimeError, match="unsupported pixel type"):
        write_volume(tmp_path / "out.nrrd", _volume())


# ------------------------------------------------------------------ 3. DICOM series


def _series(folder, n=7, spacing=5.0, size=8, skip=()):
    folder.mkdir()
    for k in range(n):
        if k in skip:
            continue
        _slice(folder / f"s{k:02d}.dcm", k * spacing, k, size)
    return folder


def _slice(path, z, value, size=8):
    image = sitk.GetImageFromArray(np.full((size, size), value * 10, np.int16))
    image.SetSpacing((0.5, 0.5))
    tags = {
        "0008|0060": "CT",
        "0020|000e": SERIES_UID,
        "0020|0032": f"0\\0\\{z}",
        "0020|0037": "1\\0\\0\\0\\1\\0",
        "0020|0013": str(value + 1),
    }
    for tag, text in tags.items():
        image.SetMetaData(tag, text)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


def test_an_intact_series_reads_at_its_spacing(tmp_path):
    volume = read_volume(_series(tmp_path / "ct"))
    assert volume.array.shape == (7, 8, 8)
    assert volume.geometry.spacing[2] == pytest.approx(5.0)


def test_a_series_with_a_truncated_slice_names_the_gap_and_the_file(tmp_path):
    folder = _series(tmp_path / "ct")
    damaged = folder / "s03.dcm"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # GDCM then leaves it out of the series
    with pytest.raises(ValueError) as raised:
        read_volume(folder)
    message = str(raised.value)
    assert "\n" not in message
    for part in ("1 slice missing", "s02.dcm", "s04.dcm", "5 mm", "s03.dcm", "cannot be read"):
        assert part in message, message


def test_a_series_with_a_missing_slice_is_refused(tmp_path):
    folder = _series(tmp_path / "ct", n=9, skip=(4, 5))
    with pytest.raises(ValueError, match=r"2 slices missing between s03\.dcm .* and s06\.dcm"):
        read_volume(folder)


def test_two_slices_at_one_position_are_named(tmp_path):
    folder = _series(tmp_path / "ct")
    _slice(folder / "again.dcm", 15.0, 9)
    with pytest.raises(ValueError, match=r"(again\.dcm and s03\.dcm|s03\.dcm and again\.dcm).*15"):
        read_volume(folder)


def test_a_slice_of_another_size_is_named(tmp_path):
    folder = _series(tmp_path / "ct")
    _slice(folder / "odd.dcm", 35.0, 7, size=4)
    with pytest.raises(ValueError, match=r"odd\.dcm is 4 x 4 pixels, the other slices 8 x 8"):
        read_volume(folder)


# ------------------------------------------------------------------ 5. 4D input


def test_a_4d_input_says_why_it_is_refused(tmp_path):
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)) for _ in range(3)])
    sitk.WriteImage(image, str(tmp_path / "cine.nrrd"))
    expected = r"cine\.nrrd is a 4D image of size \(4, 3, 2, 3\); MVG reads 2D or 3D volumes: split it"
    for reader in (read_volume, read_geometry):
        with pytest.raises(ValueError, match=expected):
            reader(tmp_path / "cine.nrrd")
