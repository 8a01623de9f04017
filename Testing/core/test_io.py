"""Volume IO keeps geometry, reads every supported format and refuses to clobber user files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MVGCore.io import read_channels, read_geometry, read_volume, write_volume
from MVGCore.types import Geometry, Volume

OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _volume(dtype=np.int16) -> Volume:
    array = np.arange(4 * 5 * 6, dtype=dtype).reshape(4, 5, 6)
    return Volume(array, Geometry(spacing=(0.7, 0.8, 2.5), origin=(-10.0, 5.0, 3.0), direction=OBLIQUE))


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd", "v.seg.nrrd", "v.mha"])
def test_round_trip_keeps_array_and_geometry(tmp_path, name):
    volume = _volume()
    written = write_volume(tmp_path / name, volume)
    back = read_volume(written)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.geometry.spacing, volume.geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.geometry.origin, volume.geometry.origin, atol=1e-5)
    np.testing.assert_allclose(back.geometry.direction, OBLIQUE, atol=1e-6)
    shape, geometry = read_geometry(written)
    assert shape == (4, 5, 6)
    np.testing.assert_allclose(geometry.spacing, volume.geometry.spacing, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_write_refuses_overwrite_and_bad_names(tmp_path):
    path = write_volume(tmp_path / "a.nrrd", _volume())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"a\.nrrd"):
        write_volume(path, Volume(np.zeros((1, 2, 2), np.int16)))
    assert path.read_bytes() == before
    write_volume(path, Volume(np.ones((1, 2, 2), np.int16)), overwrite=True)
    assert read_volume(path).array.shape == (1, 2, 2)
    with pytest.raises(ValueError, match=r"\.mhd"):
        write_volume(tmp_path / "a.mhd", _volume())
    with pytest.raises(FileNotFoundError, match="missing"):
        write_volume(tmp_path / "missing" / "a.nrrd", _volume())


def test_bool_volume_is_written_as_uint8(tmp_path):
    mask = Volume(np.eye(3, dtype=bool)[np.newaxis])
    back = read_volume(write_volume(tmp_path / "m.nii.gz", mask))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array[0], np.eye(3))


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.nii\.gz"):
        read_volume(tmp_path / "nope.nii.gz")
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"broken\.nii\.gz"):
        read_volume(garbage)
    with pytest.raises(ValueError, match=r"broken\.nii\.gz"):
        read_geometry(garbage)
    with pytest.raises(ValueError, match="no DICOM series"):
        read_volume(tmp_path)  # a folder without DICOM


def test_png_rgb_becomes_one_slice_luminance(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, :, 0] = 255  # red row
    rgb[1, :, 1] = 255  # green row
    path = tmp_path / "photo.png"
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path))
    volume = read_volume(path)
    assert volume.array.shape == (1, 3, 4)
    np.testing.assert_allclose(volume.array[0, :, 0], [0.299 * 255, 0.587 * 255, 0.0], rtol=1e-5)
    assert volume.geometry.spacing[2] == 1.0
    assert read_geometry(path)[0] == (1, 3, 4)


def _write_dicom(path, array, extra=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.25))
    for tag, value in {"0008|0060": "CR", **(extra or {})}.items():
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(image)


def _make_monochrome1(path):
    """GDCM always writes MONOCHROME2; patch the (same-length) value as film X-ray files carry it."""
    data = path.read_bytes()
    assert data.count(b"MONOCHROME2") == 1
    path.write_bytes(data.replace(b"MONOCHROME2", b"MONOCHROME1"))


def test_single_dicom_keeps_spacing_and_inverts_monochrome1(tmp_path):
    array = np.array([[0, 100], [200, 1000]], np.uint16)
    _write_dicom(tmp_path / "mono2.dcm", array)
    _write_dicom(tmp_path / "mono1.dcm", array)
    _make_monochrome1(tmp_path / "mono1.dcm")
    normal = read_volume(tmp_path / "mono2.dcm")
    assert normal.array.shape == (1, 2, 2)
    np.testing.assert_array_equal(normal.array[0], array)
    np.testing.assert_allclose(normal.geometry.spacing[:2], (0.5, 0.25))
    inverted = read_volume(tmp_path / "mono1.dcm").array[0]
    np.testing.assert_array_equal(inverted, 65535 - array)  # bright = dense: stored maximum minus value
    assert inverted.dtype == array.dtype


def test_pydicom_fallback_matches_simpleitk(tmp_path, monkeypatch):
    pytest.importorskip("pydicom", reason="pydicom is the optional fallback reader for single DICOM files")
    import MVGCore.io as io

    array = np.array([[0, 100], [200, 1000]], np.uint16)
    _write_dicom(tmp_path / "mono1.dcm", array)
    _make_monochrome1(tmp_path / "mono1.dcm")
    expected = read_volume(tmp_path / "mono1.dcm")

    def undecodable(path):
        raise RuntimeError("pretend GDCM lacks the codec")

    monkeypatch.setattr(io.sitk, "ReadImage", undecodable)
    fallback = read_volume(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(fallback.array, expected.array)
    np.testing.assert_allclose(fallback.geometry.spacing, expected.geometry.spacing)


def test_dicom_without_suffix_is_recognised(tmp_path):
    _write_dicom(tmp_path / "IM0001.dcm", np.full((3, 3), 7, np.uint16))
    (tmp_path / "IM0001.dcm").rename(tmp_path / "IM0001")  # scanners often write names without suffix
    assert read_volume(tmp_path / "IM0001").array[0, 0, 0] == 7


def test_dicom_series_folder_is_stacked_in_position_order(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.1"
    for k in range(3):  # written in reverse so the reader must sort by position
        z = 2 - k
        _write_dicom(
            folder / f"slice{k}.dcm",
            np.full((4, 4), z * 10, np.int16),
            extra={
                "0020|000e": series_uid,
                "0020|0032": f"0\\0\\{z * 3.0}",
                "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0013": str(z + 1),
            },
        )
    volume = read_volume(folder)
    assert volume.array.shape == (3, 4, 4)
    np.testing.assert_array_equal(volume.array[:, 0, 0], [0, 10, 20])
    assert volume.geometry.spacing[2] == pytest.approx(3.0)


def test_read_channels_splits_4d(tmp_path):
    array = np.stack([np.full((2, 3, 4), c, np.float32) for c in range(3)])
    image = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in array])
    image.SetSpacing((1.0, 2.0, 3.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "multi.nii.gz"))
    channels = read_channels(tmp_path / "multi.nii.gz")
    assert [c.array.shape for c in channels] == [(2, 3, 4)] * 3
    assert [float(c.array[0, 0, 0]) for c in channels] == [0.0, 1.0, 2.0]
    assert channels[1].geometry.spacing == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match=r"multi\.nii\.gz"):
        read_volume(tmp_path / "multi.nii.gz")  # 4D is not a Volume
