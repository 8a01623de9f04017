import numpy as np
import pytest

from MVGCore.io import read_volume, write_volume
from MVGCore.predict import main
from MVGCore.types import Geometry, Volume

SHAPE = (6, 20, 24)
C, S = np.cos(0.4), np.sin(0.4)
GEOMETRIES = {
    "anisotropic": Geometry(spacing=(0.7, 0.9, 4.0), origin=(-10.0, 5.0, 30.0)),
    "flipped": Geometry(spacing=(1.0, 1.2, 2.5), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)),
    "oblique": Geometry(
        spacing=(0.8, 0.8, 3.0),
        origin=(1.0, 2.0, 3.0),
        direction=(C, -S, 0, S * C, C * C, -S, S * S, S * C, C),
    ),
}


PROMPT_SLICES = {0: (1, 4), 1: (4, 10), 2: (4, 12)}
"""Two slices along each axis that hold foreground in the label below."""


def _case(folder, geometry: Geometry, axis: int):
    """Image and a sparse label file with two labelled slices along ``axis`` (PROMPT_SLICES)."""
    rng = np.random.default_rng(axis)
    image = rng.integers(0, 500, SHAPE).astype(np.int16)
    full = np.zeros(SHAPE, dtype=np.uint8)
    full[2:5, 5:15, 6:18] = 2
    full[1:4, 3:8, 3:9] = 1
    sparse = np.zeros_like(full)
    for index in PROMPT_SLICES[axis]:
        key = [slice(None)] * 3
        key[axis] = index
        sparse[tuple(key)] = full[tuple(key)]
    image_path = write_volume(folder / "image.nii.gz", Volume(image, geometry))
    sparse_path = write_volume(folder / "sparse.nrrd", Volume(sparse, geometry))
    return image_path, sparse_path, image, sparse


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_segment_output_keeps_the_grid_and_prompt_labels(tmp_path, checkpoint, name, axis):
    geometry = GEOMETRIES[name]
    image_path, sparse_path, image, sparse = _case(tmp_path, geometry, axis)
    out = tmp_path / "seg.nii.gz"
    argv = ["--checkpoint", str(checkpoint), "--task", "segment", "--input", str(image_path)]
    assert (
        main([*argv, "--prompts", str(sparse_path), "--output", str(out), "--axis", str(axis), "--quiet"])
        == 0
    )
    result = read_volume(out)
    assert result.array.shape == image.shape
    assert np.allclose(result.geometry.spacing, geometry.spacing, atol=1e-5)
    assert np.allclose(result.geometry.origin, geometry.origin, atol=1e-5)
    assert np.allclose(result.geometry.direction, geometry.direction, atol=1e-5)
    for index in PROMPT_SLICES[axis]:
        assert np.array_equal(np.take(result.array, index, axis), np.take(sparse, index, axis))
    assert set(np.unique(result.array)) <= {0, 1, 2}


def test_explicit_slices_other_volume_prompts_and_disagreement(tmp_path, checkpoint):
    image_path, sparse_path, image, sparse = _case(tmp_path, GEOMETRIES["anisotropic"], 0)
    other = write_volume(tmp_path / "other.nii.gz", Volume(image[::-1].copy()))
    other_label = write_volume(tmp_path / "other_label.nii.gz", Volume(sparse[::-1].copy()))
    out, spread = tmp_path / "seg.nii.gz", tmp_path / "spread.nii.gz"
    argv = ["--checkpoint", str(checkpoint), "--task", "segment", "--input", str(image_path), "--quiet"]
    argv += [
        "--prompts",
        str(sparse_path),
        "--slices",
        "1,2",
        "--output",
        str(out),
        "--disagreement",
        str(spread),
    ]
    argv += ["--prompt-image", str(other), "--prompt-target", str(other_label), "--k-prompts", "2"]
    assert main(argv) == 0
    result = read_volume(out).array
    assert np.array_equal(result[2], np.zeros_like(result[2]))  # an explicitly chosen empty slice stays empty
    assert np.array_equal(result[1], sparse[1])
    disagreement = read_volume(spread).array
    assert disagreement.shape == image.shape and disagreement.dtype == np.float32
    assert disagreement.min() >= 0 and disagreement.max() <= 1 and not disagreement[1].any()
    with pytest.raises(FileExistsError, match="exists"):
        main(argv)  # nothing the user has is overwritten


def test_image_tasks_write_float_volumes(tmp_path, checkpoint):
    image_path, _, image, _ = _case(tmp_path, GEOMETRIES["flipped"], 0)
    hole = np.zeros(SHAPE, dtype=np.uint8)
    hole[2:4, 5:10, 5:10] = 1
    hole_path = write_volume(tmp_path / "hole.nii.gz", Volume(hole, GEOMETRIES["flipped"]))
    base = ["--checkpoint", str(checkpoint), "--input", str(image_path), "--quiet"]
    assert main([*base, "--task", "denoise", "--output", str(tmp_path / "den.nii.gz")]) == 0
    denoised = read_volume(tmp_path / "den.nii.gz")
    assert denoised.array.dtype == np.float32 and denoised.array.shape == SHAPE
    assert np.allclose(denoised.geometry.direction, GEOMETRIES["flipped"].direction)
    out = tmp_path / "inp.nii.gz"
    assert main([*base, "--task", "inpaint", "--hole", str(hole_path), "--output", str(out)]) == 0
    filled = read_volume(out).array
    assert np.array_equal(filled[hole == 0], image[hole == 0].astype(np.float32))


def test_cli_errors_name_the_file_and_flag(tmp_path, checkpoint):
    image_path, sparse_path, _, _ = _case(tmp_path, GEOMETRIES["anisotropic"], 0)
    wrong = write_volume(tmp_path / "wrong.nii.gz", Volume(np.ones((6, 20, 23), dtype=np.uint8)))
    shifted = write_volume(
        tmp_path / "shifted.nii.gz", Volume(np.ones(SHAPE, dtype=np.uint8), Geometry(spacing=(0.7, 0.9, 4.0)))
    )
    base = [
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(image_path),
        "--output",
        str(tmp_path / "o.nii.gz"),
    ]
    with pytest.raises(ValueError, match=r"wrong\.nii\.gz has shape"):
        main([*base, "--task", "segment", "--prompts", str(wrong)])
    with pytest.raises(ValueError, match=r"shifted\.nii\.gz origin"):
        main([*base, "--task", "segment", "--prompts", str(shifted)])
    with pytest.raises(ValueError, match="--slices: slice 9 is out of range"):
        main([*base, "--task", "segment", "--prompts", str(sparse_path), "--slices", "9"])
    with pytest.raises(ValueError, match="needs prompts"):
        main([*base, "--task", "segment"])
    with pytest.raises(ValueError, match="needs --hole"):
        main([*base, "--task", "inpaint"])
    with pytest.raises(ValueError, match="is the input file"):
        main([*base[:4], "--task", "denoise", "--output", str(image_path)])
    with pytest.raises(FileNotFoundError):
        main([*base, "--task", "denoise", "--input", str(tmp_path / "missing.nii.gz")])


def _denoise_with_clean_slices(tmp_path, checkpoint) -> tuple[list[str], np.ndarray]:
    """Denoise arguments with clean prompt slices 1 and 4 of the case, and that clean volume."""
    image_path, _, image, _ = _case(tmp_path, GEOMETRIES["flipped"], 0)
    clean = (image.astype(np.float32) * 0.5).astype(np.float32)
    clean_path = write_volume(tmp_path / "clean.nii.gz", Volume(clean, GEOMETRIES["flipped"]))
    base = ["--checkpoint", str(checkpoint), "--input", str(image_path), "--quiet", "--task", "denoise"]
    return [*base, "--prompts", str(clean_path), "--slices", "1,4"], clean


def test_denoise_calibration_flag(tmp_path, checkpoint):
    base, clean = _denoise_with_clean_slices(tmp_path, checkpoint)
    outputs = {}
    for flag in ("blend", "off"):
        out = tmp_path / f"den_{flag}.nii.gz"
        assert main([*base, "--calibrate", flag, "--output", str(out)]) == 0
        outputs[flag] = read_volume(out).array
    assert not np.array_equal(outputs["blend"], outputs["off"])
    for index in (1, 4):  # the prompt slices keep the given clean slices either way
        assert np.array_equal(outputs["blend"][index], clean[index])
    with pytest.raises(SystemExit):
        main([*base, "--calibrate", "sometimes", "--output", str(tmp_path / "x.nii.gz")])


def test_denoise_adaptation_flag_tunes_on_the_prompt_slices(tmp_path, checkpoint):
    base, clean = _denoise_with_clean_slices(tmp_path, checkpoint)
    base += ["--calibrate", "off"]
    outputs = {}
    for steps in ("0", "2"):
        out = tmp_path / f"den_{steps}.nii.gz"
        assert main([*base, "--adapt-steps", steps, "--output", str(out)]) == 0
        outputs[steps] = read_volume(out).array
    assert not np.array_equal(outputs["0"], outputs["2"])
    for index in (1, 4):
        assert np.array_equal(outputs["2"][index], clean[index])


def test_segment_alignment_and_ct_window_flags(tmp_path, checkpoint):
    image_path, sparse_path, _, sparse = _case(tmp_path, GEOMETRIES["flipped"], 0)
    base = ["--checkpoint", str(checkpoint), "--task", "segment", "--input", str(image_path)]
    base += ["--prompts", str(sparse_path), "--quiet"]
    outputs = {}
    for flag in ("off", "demons"):
        out = tmp_path / f"seg_{flag}.nii.gz"
        assert main([*base, "--align-prompts", flag, "--ct-window", "wide", "--output", str(out)]) == 0
        outputs[flag] = read_volume(out).array
    for index in PROMPT_SLICES[0]:  # prompt slices stay as painted either way
        assert np.array_equal(outputs["demons"][index], sparse[index])
    assert not np.array_equal(outputs["off"], outputs["demons"])
    out = tmp_path / "seg_model_answer.nii.gz"
    assert main([*base, "--answer", "model", "--ct-window", "wide", "--output", str(out)]) == 0
    assert not np.array_equal(read_volume(out).array, outputs["demons"])  # the default trims
    for flags in (["--align-prompts", "rigid"], ["--ct-window", "1,2,3"], ["--answer", "union"]):
        with pytest.raises(SystemExit):
            main([*base, *flags, "--output", str(tmp_path / "x.nii.gz")])


def test_segment_propagates_by_default_and_no_propagate_answers_each_slice_from_its_prompts(
    tmp_path, checkpoint
):
    from MVGCore.predict import Predictor
    from MVGCore.types import Prompt

    geometry = GEOMETRIES["anisotropic"]
    image_path, sparse_path, image, sparse = _case(tmp_path, geometry, 0)
    base = ["--checkpoint", str(checkpoint), "--task", "segment", "--input", str(image_path)]
    base += ["--prompts", str(sparse_path), "--slices", "1", "--quiet"]  # slices 3-5 chain from 2
    outputs = {}
    for flags in ([], ["--propagate"], ["--no-propagate"]):
        out = tmp_path / f"seg{len(outputs)}.nii.gz"
        assert main([*base, *flags, "--output", str(out)]) == 0
        outputs[" ".join(flags)] = read_volume(out).array
    prompts = [Prompt.from_volume(image, 1, sparse[1])]
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert not np.array_equal(outputs[""], outputs["--no-propagate"])
    for flag, propagate in (("", True), ("--propagate", True), ("--no-propagate", False)):
        expected = predictor.segment(image, prompts, spacing=geometry.spacing_kji, propagate=propagate)
        assert np.array_equal(outputs[flag], expected), flag
