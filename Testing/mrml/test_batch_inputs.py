"""The Slicer batch entry reads and writes files by MVGCore's rules (issue 37): a 4D input says why
it is refused, a cut-short NIfTI is refused instead of loading with zero slices, and a new output
made by another program meanwhile is kept."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from MVGSlicerLib import batch, batch_cli, mrml_io
from MVGSlicerLib.simple_engine import SimpleEngine


def test_a_4d_input_says_why_it_cannot_be_read(mrml, tmp_path, capsys):
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)) for _ in range(3)])
    sitk.WriteImage(image, str(tmp_path / "cine.nrrd"))
    with pytest.raises(ValueError, match=r"cine\.nrrd is a 4D image .* split it"):
        batch.load_volume(mrml.volumes, tmp_path / "cine.nrrd")
    argv = ["--task", "Denoise", "--input", str(tmp_path / "cine.nrrd"), "--output", str(tmp_path / "o.nrrd")]
    capsys.readouterr()
    assert batch_cli.main(argv, mrml.scene, mrml.volumes, mrml.segmentations, lambda _a: SimpleEngine()) == 2
    error = capsys.readouterr().err.strip()
    assert "is a 4D image" in error and "\n" not in error, error


def test_a_truncated_nifti_input_is_refused(mrml, tmp_path):
    array = (np.arange(20 * 30 * 40).reshape(20, 30, 40) % 997 + 1).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "ct.nii.gz"))
    data = (tmp_path / "ct.nii.gz").read_bytes()
    (tmp_path / "ct.nii.gz").write_bytes(data[: len(data) * 6 // 10])  # Slicer would load zero slices
    with pytest.raises(ValueError, match=r"ct\.nii\.gz is truncated"):
        batch.load_volume(mrml.volumes, tmp_path / "ct.nii.gz")
    with pytest.raises(ValueError, match=r"ct\.nii\.gz is truncated"):
        batch.load_segmentation(mrml.segmentations, tmp_path / "ct.nii.gz")


def test_an_output_made_by_another_program_meanwhile_is_kept(mrml, tmp_path, monkeypatch):
    volume = mrml_io.add_volume_from_array(mrml.scene, np.ones((2, 3, 4), np.float32), np.eye(4), "v")
    output = tmp_path / "out.nrrd"
    checked = batch.check_output

    def check_then_another_program_writes(path, kind):
        result = checked(path, kind)
        output.write_bytes(b"theirs")  # a second run finishing first
        return result

    monkeypatch.setattr(batch, "check_output", check_then_another_program_writes)
    with pytest.raises(FileExistsError, match=r"out\.nrrd"):
        batch.save_node(volume, output)
    assert output.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]  # no temporary left
