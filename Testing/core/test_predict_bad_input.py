"""Issue 37, ``python -m MVGCore.predict`` and the Python API: bad input in the user's words.

Each command-line row checks that the refusal names the flag (or file) and what is expected, and
that it comes before the model is loaded (``Predictor.from_checkpoint`` is replaced by one that
fails the test) and, where the row says so, before any volume is read (``--input`` names a file
that does not exist, so reading it first would give another error).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from MVGCore import cli
from MVGCore.checkpoint import load_model
from MVGCore.io import write_volume
from MVGCore.predict import Predictor, main
from MVGCore.types import Geometry, Prompt, Volume

SHAPE = (6, 20, 24)
GEOMETRY = Geometry(spacing=(0.8, 0.9, 2.5))
GIB = 1 << 30


@pytest.fixture
def case(tmp_path) -> dict[str, Path]:
    """A CT-like image, a sparse label with two labelled slices, and a clean target volume."""
    rng = np.random.default_rng(0)
    image = rng.integers(-900, 400, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[1, 4:12, 5:15] = 1
    label[4, 6:14, 6:16] = 2
    return {
        "image": write_volume(tmp_path / "image.nii.gz", Volume(image, GEOMETRY)),
        "label": write_volume(tmp_path / "label.nrrd", Volume(label, GEOMETRY)),
        "clean": write_volume(tmp_path / "clean.nrrd", Volume(image.astype(np.float32), GEOMETRY)),
    }


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: every refusal here must come before it."""

    def load(cls, *args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(load))


def _argv(checkpoint: Path, task: str, image: Path, output: Path, *more: str) -> list[str]:
    argv = ["--checkpoint", str(checkpoint), "--task", task, "--input", str(image)]
    return [*argv, "--output", str(output), "--quiet", "--device", "cpu", *more]


def _one_line(argv: list[str], capsys) -> str:
    """The one error line ``python -m MVGCore.predict`` prints for ``argv`` (exit status 2)."""
    try:
        status = cli.run(main, "predict", argv)
    except SystemExit as stop:  # argparse's own refusals
        status = stop.code
    assert status == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


# ------------------------------------------------------------------ the Python API's argument types


@pytest.mark.parametrize("field", ["image", "target"])
def test_a_prompt_of_lists_is_refused_naming_the_field(field):
    arrays = {"image": np.zeros((4, 4)), "target": np.zeros((4, 4), np.uint8)}
    arrays[field] = arrays[field].tolist()
    with pytest.raises(TypeError, match=rf"Prompt\.{field} must be a 2D numpy array.*got list"):
        Prompt(arrays["image"], arrays["target"])


@pytest.mark.parametrize("device", [None, 0])
def test_a_device_that_is_not_a_string_is_refused_naming_the_argument(checkpoint, device):
    model, _ = load_model(checkpoint)
    with pytest.raises(TypeError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        Predictor(model, device=device)


def test_a_torch_device_is_taken_as_its_name(checkpoint):
    import torch

    model, _ = load_model(checkpoint)
    assert Predictor(model, device=torch.device("cpu")).device == "cpu"


# ------------------------------------------------------------------ slice lists


@pytest.mark.parametrize("flag", ["--slices", "--prompt-slices"])
@pytest.mark.parametrize("text", [",", " , "])
def test_an_empty_slice_list_names_its_flag(tmp_path, checkpoint, case, no_model, capsys, flag, text):
    more = ["--prompts", str(case["label"])]
    more += ["--prompt-image", str(case["image"]), "--prompt-target", str(case["label"])]
    line = _one_line(
        _argv(checkpoint, "segment", case["image"], tmp_path / "o.nrrd", *more, flag, text), capsys
    )
    assert flag in line and "no slice index" in line and "needs prompts" not in line


# ------------------------------------------------------------------ the checkpoint path


def test_a_sidecar_given_as_the_checkpoint_names_the_weights_file(tmp_path, checkpoint, capsys):
    sidecar = checkpoint.with_suffix(".json")
    argv = _argv(sidecar, "denoise", tmp_path / "missing.nii.gz", tmp_path / "o.nrrd")
    line = _one_line(argv, capsys)
    assert f"--checkpoint {sidecar} is the JSON sidecar" in line and checkpoint.name in line
    assert ".json.json" not in line
    with pytest.raises(ValueError, match=r"is the JSON sidecar") as error:
        load_model(sidecar)
    assert ".json.json" not in str(error.value)


def test_a_folder_given_as_the_checkpoint_is_named_as_a_folder(tmp_path, capsys):
    argv = _argv(tmp_path, "denoise", tmp_path / "missing.nii.gz", tmp_path / "o.nrrd")
    line = _one_line(argv, capsys)
    assert f"--checkpoint {tmp_path} is a folder" in line and ".safetensors" in line
    with pytest.raises(IsADirectoryError, match=r"is a folder; give a \.safetensors file"):
        Predictor.from_checkpoint(tmp_path)


def test_weights_without_their_sidecar_are_found_before_the_input_is_read(tmp_path, checkpoint, capsys):
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(checkpoint.read_bytes())
    line = _one_line(_argv(lonely, "denoise", tmp_path / "missing.nii.gz", tmp_path / "o.nrrd"), capsys)
    assert "lonely.json" in line and "missing.nii.gz" not in line


# ------------------------------------------------------------------ bounds of every option flag


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--seed", "-1", "seed must be a whole number >= 0"),
        ("--batch-size", "0", "batch_size must be a positive integer"),
        ("--k-prompts", "0", "k_prompts must be a positive integer"),
        ("--k-prompts", "two", "expected a whole number"),
        ("--tile-size", "0", "tile_size must be a positive"),
        ("--tile-size", "40", "multiple of the model's patch size 16"),
        ("--adapt-steps", "-1", "adaptation steps must be a whole number >= 0"),
        ("--zoom-margin", "20", "zoom_margin must be a number in [0, 10)"),
        ("--zoom-margin", "-0.5", "zoom_margin must be a number in [0, 10)"),
        ("--window", "foo", "unknown CT window 'foo'"),
        ("--ct-window", "foo", "unknown CT window 'foo'"),
        ("--modality", "PET", "modality must be one of"),
    ],
)
def test_option_flags_are_checked_naming_the_flag_before_anything_is_read(
    tmp_path, checkpoint, no_model, capsys, flag, value, expected
):
    argv = _argv(checkpoint, "denoise", tmp_path / "missing.nii.gz", tmp_path / "o.nrrd", flag, value)
    line = _one_line(argv, capsys)
    assert flag in line and expected in line, line


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        # each flag is fine alone; the task refuses the pair
        (["--prompts", "{clean}", "--adapt-steps", "2", "--image-scale", "fit"], 'use image_scale="native"'),
        (["--adapt-steps", "2"], "--adapt-steps tunes the model on (noisy, clean) prompt pairs"),
    ],
)
def test_option_errors_of_the_task_come_before_the_model_is_loaded(
    tmp_path, checkpoint, case, capsys, no_model, more, expected
):
    more = [m.format(clean=case["clean"]) for m in more]
    line = _one_line(_argv(checkpoint, "denoise", case["image"], tmp_path / "o.nrrd", *more), capsys)
    assert expected in line


def test_a_pickle_checkpoint_without_allow_pickle_is_refused_before_the_input_is_read(tmp_path, capsys):
    import torch

    pickle = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(1)}, pickle)
    line = _one_line(_argv(pickle, "denoise", tmp_path / "missing.nii.gz", tmp_path / "o.nrrd"), capsys)
    assert f"--checkpoint {pickle} is a pickle file" in line and "--allow-pickle" in line


def test_a_ct_window_with_a_negative_low_end_needs_no_equals_sign(tmp_path, checkpoint, case, no_model):
    more = ["--prompts", str(case["label"]), "--ct-window", "-1000,400"]
    with pytest.raises(AssertionError, match="the model was loaded"):  # every check passed
        main(_argv(checkpoint, "segment", case["image"], tmp_path / "o.nrrd", *more))


def test_a_seed_below_zero_is_refused_by_the_api():
    from MVGCore.predict import Options

    with pytest.raises(ValueError, match="option seed must be a whole number >= 0, got -1"):
        Options(seed=-1)
    with pytest.raises(ValueError, match="option window: unknown CT window 'foo'"):
        Options(window="foo")
    with pytest.raises(ValueError, match="option target_window: unknown CT window 'foo'"):
        Options(target_window="foo")


# ------------------------------------------------------------------ --overwrite in the CLI's words


def test_an_output_made_while_predict_ran_names_the_overwrite_flag(
    tmp_path, checkpoint, case, capsys, monkeypatch
):
    output = tmp_path / "o.nrrd"
    original = Predictor.denoise

    def denoise_while_another_writes(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not output.exists():  # another run got there first (calibration calls denoise again)
            write_volume(output, Volume(np.zeros(SHAPE, np.float32)))
        return result

    monkeypatch.setattr(Predictor, "denoise", denoise_while_another_writes)
    line = _one_line(_argv(checkpoint, "denoise", case["image"], output), capsys)
    assert f"--output {output}" in line and "--overwrite" in line and "overwrite=True" not in line


# ------------------------------------------------------------------ flags that would be ignored


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (["--slices", "1,4"], "--slices picks slices of --prompts"),
        (["--slices", "1,4", "--prompt-image", "{image}", "--prompt-target", "{label}"], "--slices picks"),
        (["--prompts", "{label}", "--prompt-slices", "1"], "--prompt-slices picks slices of --prompt-image"),
    ],
)
def test_a_slice_list_without_its_volume_is_refused(
    tmp_path, checkpoint, case, no_model, capsys, more, expected
):
    more = [m.format(image=case["image"], label=case["label"]) for m in more]
    line = _one_line(_argv(checkpoint, "segment", case["image"], tmp_path / "o.nrrd", *more), capsys)
    assert expected in line


@pytest.mark.parametrize(
    ("task", "more", "expected"),
    [
        ("denoise", ["--zoom", "whole"], "--zoom is only used by --task segment, not by --task denoise"),
        ("inpaint", ["--zoom-margin", "0.5"], "--zoom-margin is only used by --task segment"),
        ("synthesize", ["--align-prompts", "off"], "--align-prompts is only used by --task segment"),
        ("denoise", ["--answer", "model"], "--answer is only used by --task segment"),
        ("segment", ["--image-scale", "fit"], "--image-scale is only used by --task denoise, inpaint and"),
        ("synthesize", ["--calibrate", "off"], "--calibrate is only used by --task denoise, not by"),
        ("inpaint", ["--adapt-steps", "0"], "--adapt-steps is only used by --task segment and denoise"),
    ],
)
def test_a_flag_the_task_does_not_use_is_refused(
    tmp_path, checkpoint, case, no_model, capsys, task, more, expected
):
    argv = _argv(checkpoint, task, case["image"], tmp_path / "o.nrrd", "--prompts", str(case["label"]), *more)
    line = _one_line([*argv, "--hole", str(case["label"])] if task == "inpaint" else argv, capsys)
    assert expected in line


@pytest.mark.parametrize("task", ["denoise", "synthesize"])
def test_an_image_is_never_written_under_a_segmentation_name(
    tmp_path, checkpoint, case, no_model, capsys, task
):
    argv = _argv(checkpoint, task, case["image"], tmp_path / "o.seg.nrrd", "--prompts", str(case["clean"]))
    line = _one_line(argv, capsys)
    assert f"--output {tmp_path / 'o.seg.nrrd'}" in line and "use .nrrd" in line


def test_the_disagreement_map_is_never_written_under_a_segmentation_name(
    tmp_path, checkpoint, case, no_model, capsys
):
    argv = _argv(
        checkpoint, "segment", case["image"], tmp_path / "o.seg.nrrd", "--prompts", str(case["label"])
    )
    line = _one_line([*argv, "--disagreement", str(tmp_path / "d.seg.nrrd")], capsys)
    assert "--disagreement" in line and "use .nrrd" in line


# ------------------------------------------------------------------ values float32 cannot hold


def test_values_beyond_float32_are_refused_naming_the_input(tmp_path, checkpoint, no_model, capsys):
    array = np.zeros(SHAPE, np.float64)
    array[3, 2, 2] = 1e300  # finite here, infinite once the model's float32 sees it
    image = write_volume(tmp_path / "huge.nrrd", Volume(array, GEOMETRY))
    line = _one_line(_argv(checkpoint, "denoise", image, tmp_path / "o.nrrd"), capsys)
    assert f"--input {image} slice 3" in line and "float32" in line


def test_a_nan_input_names_the_file(tmp_path, checkpoint, no_model, capsys):
    array = np.zeros(SHAPE, np.float32)
    array[3, 2, 2] = np.nan
    image = write_volume(tmp_path / "nan.nrrd", Volume(array, GEOMETRY))
    line = _one_line(_argv(checkpoint, "denoise", image, tmp_path / "o.nrrd"), capsys)
    assert f"--input {image} slice 3" in line and "NaN" in line


# ------------------------------------------------------------------ slices that fit no tile


THIN = Geometry(spacing=(0.001, 1000.0, 2.5))
"""In-plane pixels of 0.001 x 1000 mm: a 20 x 24 slice is 20 m by 0.024 mm."""


def test_a_slice_that_collapses_below_a_pixel_is_refused_by_the_cli(
    tmp_path, checkpoint, case, no_model, capsys
):
    rng = np.random.default_rng(0)
    image = write_volume(tmp_path / "thin.nrrd", Volume(rng.normal(size=SHAPE).astype(np.float32), THIN))
    line = _one_line(_argv(checkpoint, "denoise", image, tmp_path / "o.nrrd"), capsys)
    assert f"--input {image}" in line and "less than one pixel" in line and "spacing" in line


@pytest.mark.parametrize("task", ["segment", "denoise"])
def test_a_slice_that_collapses_below_a_pixel_is_refused_by_the_api(checkpoint, task):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    volume = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    label = np.zeros(SHAPE[1:], np.uint8)
    label[4:9, 4:9] = 1
    prompts = [Prompt.from_volume(volume, 1, label if task == "segment" else volume[1])]
    with pytest.raises(ValueError, match=r"option spacing .* less than one pixel"):
        getattr(predictor, task)(volume, prompts, spacing=THIN.spacing_kji)
    # the same spacing with the slices standing the other way round fits
    assert getattr(predictor, task)(volume, prompts, spacing=(1.0, 1.0, 1.0)).shape == SHAPE


# ------------------------------------------------------------------ memory


@pytest.fixture
def predict_memory():
    from MVGCore.predict import memory

    return memory


def test_a_tile_too_large_for_memory_is_refused_before_the_model_is_resampled(
    checkpoint, monkeypatch, predict_memory
):
    monkeypatch.setattr(predict_memory, "free_bytes", lambda device: 8 * GIB)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    volume = np.zeros(SHAPE, np.float32)
    with pytest.raises(ValueError, match=r"option tile_size 4096: .* needs about [\d.]+ GB .* 8\.59 GB"):
        predictor.denoise(volume, tile_size=4096)


def test_a_tile_too_large_for_memory_is_refused_by_the_cli_before_loading(
    tmp_path, checkpoint, no_model, capsys, monkeypatch, predict_memory
):
    monkeypatch.setattr(predict_memory, "free_bytes", lambda device: 8 * GIB)
    argv = _argv(
        checkpoint, "denoise", tmp_path / "missing.nii.gz", tmp_path / "o.nrrd", "--tile-size", "4096"
    )
    line = _one_line(argv, capsys)
    assert "--tile-size 4096" in line and "GB" in line


def test_a_batch_too_large_for_memory_is_made_smaller_with_a_warning(
    checkpoint, monkeypatch, caplog, predict_memory
):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=10**7)
    one = predict_memory.forward_bytes(predictor.config, predictor.config.tile_size, 1, "cpu")
    monkeypatch.setattr(predict_memory, "free_bytes", lambda device: int(2.5 * one))
    volume = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="MVGCore.predict"):
        result = predictor.denoise(volume, image_scale="fit")
    assert predictor.batch_size == 2
    assert any(
        "batch_size 10000000" in r.getMessage() and "using 2" in r.getMessage() for r in caplog.records
    )
    expected = Predictor.from_checkpoint(checkpoint, device="cpu", batch_size=1).denoise(
        volume, image_scale="fit"
    )
    assert np.allclose(result, expected, atol=1e-5)
