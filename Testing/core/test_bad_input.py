"""Issue 13: bad input never costs a user data, a wrong result or a traceback.

One test per item of the issue, in its order. Command-line rows run the real command in a
subprocess and check the exit status, the one ``<prog>: error: ...`` line naming the file or
argument, that no traceback is printed, and that the working folder is byte-for-byte what it was
before (nothing created, changed or left behind). The Slicer batch row (item 7) lives with the
other batch tests in Testing/mrml/test_pipeline.py, where the MRML scene fixture is.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from MVGCore import cli
from MVGCore.checkpoint import load_model, save_model, sidecar_path
from MVGCore.config import config_for
from MVGCore.data.phantoms import write_nnunet_dataset
from MVGCore.data.sources import load_cases, load_nnunet, validate_cases
from MVGCore.io import read_volume, write_volume
from MVGCore.model import MVGModel
from MVGCore.predict import Predictor
from MVGCore.predict import main as predict_main
from MVGCore.prepare import prepare
from MVGCore.types import Geometry, Prompt, Volume

SHAPE = (6, 20, 24)
GEOMETRY = Geometry(spacing=(0.8, 0.9, 2.5))


# ------------------------------------------------------------------ helpers


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("MVG_DEBUG", None)
    env.update(extra)
    return env


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden ones too) with a hash of its bytes."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        state[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _refused(folder: Path, module: str, args: list[str], *expected: str, **env: str) -> str:
    """Run ``python -m MVGCore.<module> args`` in ``folder``; it must exit 2 with one error line
    holding every ``expected`` text, print no traceback, and leave ``folder`` unchanged."""
    before = _snapshot(folder)
    done = subprocess.run(
        [sys.executable, "-m", f"MVGCore.{module}", *args],
        cwd=folder,
        env=_env(**env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    prefix = f"python -m MVGCore.{module}: error: "
    errors = [line for line in done.stderr.splitlines() if line.startswith(prefix)]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    assert _snapshot(folder) == before
    return errors[0]


@pytest.fixture
def case(tmp_path) -> dict[str, Path]:
    """A small CT-like image, a sparse label with two labelled slices, and a hole mask."""
    rng = np.random.default_rng(0)
    image = rng.integers(-900, 400, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, np.uint8)
    label[1, 4:12, 5:15] = 1
    label[4, 6:14, 6:16] = 2
    hole = np.zeros(SHAPE, np.uint8)
    hole[2:4, 5:9, 5:9] = 1
    return {
        "image": write_volume(tmp_path / "image.nii.gz", Volume(image, GEOMETRY)),
        "label": write_volume(tmp_path / "label.nrrd", Volume(label, GEOMETRY)),
        "hole": write_volume(tmp_path / "hole.nii.gz", Volume(hole, GEOMETRY)),
    }


def _predict(checkpoint: Path, case: dict[str, Path], task: str, output: str, *more: str) -> list[str]:
    argv = ["--checkpoint", str(checkpoint), "--task", task, "--input", str(case["image"])]
    if task == "segment":
        argv += ["--prompts", str(case["label"])]
    return [*argv, "--output", output, "--quiet", *more]


# ------------------------------------------------------------------ 1. windows


@pytest.mark.parametrize("window", ["200,-100", "100,100"])
def test_1_predict_refuses_an_inverted_or_empty_window(tmp_path, checkpoint, case, window):
    args = _predict(checkpoint, case, "denoise", "out.nii.gz", "--window", window)
    _refused(tmp_path, "predict", args, "--window", "LOW must be below HIGH")


def test_1_prepare_refuses_an_inverted_window(tmp_path):
    data = write_nnunet_dataset(tmp_path / "raw", n_cases=1, shape=(4, 16, 16), n_classes=1, seed=0)
    _refused(tmp_path, "prepare", ["--data", str(data), "--out", "store", "--window", "200,-100"], "--window")


def test_1_window_with_a_negative_low_end_is_accepted_without_the_equals_sign(tmp_path, checkpoint, case):
    out = tmp_path / "den.nii.gz"
    assert predict_main(_predict(checkpoint, case, "denoise", str(out), "--window", "-100,200")) == 0
    assert read_volume(out).array.shape == SHAPE


def test_1_an_explicit_window_is_never_repaired_in_the_api(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="inverted or empty"):
        predictor.denoise(np.zeros((2, 8, 8), np.float32), window=(200.0, -100.0))


# ------------------------------------------------------------------ 2. complex images


def test_2_complex_images_are_refused_not_truncated(tmp_path, checkpoint):
    values = (np.ones(SHAPE) + 1j * np.ones(SHAPE)).astype(np.complex64)
    image = write_volume(tmp_path / "complex.nii.gz", Volume(values, GEOMETRY))
    args = ["--checkpoint", str(checkpoint), "--task", "denoise", "--input", str(image)]
    _refused(tmp_path, "predict", [*args, "--output", "out.nii.gz"], "--input", "complex.nii.gz", "complex")
    with pytest.raises(ValueError, match="complex values"):
        Predictor.from_checkpoint(checkpoint, device="cpu").denoise(values)


# ------------------------------------------------------------------ 3. outputs vs inputs


def test_3_output_equal_to_the_prompts_is_refused_even_with_overwrite(tmp_path, checkpoint, case):
    args = _predict(checkpoint, case, "segment", str(case["label"]), "--overwrite")
    _refused(tmp_path, "predict", args, "--output", "label.nrrd", "is the prompts file (--prompts)")


def test_3_output_and_disagreement_must_differ(tmp_path, checkpoint, case):
    args = _predict(checkpoint, case, "segment", "seg.nii.gz", "--disagreement", "seg.nii.gz")
    _refused(tmp_path, "predict", args, "--disagreement", "is the output file (--output)")


def test_3_a_bad_disagreement_suffix_is_found_before_the_segmentation_is_written(tmp_path, checkpoint, case):
    args = _predict(checkpoint, case, "segment", "seg.nii.gz", "--disagreement", "spread.png")
    _refused(tmp_path, "predict", args, "--disagreement", "spread.png", ".nii.gz")


def test_3_outputs_are_written_all_or_nothing(tmp_path, monkeypatch):
    from MVGCore import io

    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    volume = Volume(np.zeros((2, 3, 4), np.float32))
    real = io.sitk.WriteImage
    calls = []

    def fail_second(image, name, compress):
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        real(image, name, compress)

    monkeypatch.setattr(io.sitk, "WriteImage", fail_second)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_volumes([(first, volume), (second, volume)])
    assert list(tmp_path.iterdir()) == []  # neither file, no temporary left


# ------------------------------------------------------------------ 4. SIGTERM


def _terminate_when(process: subprocess.Popen, ready, what: str) -> int:
    deadline = time.monotonic() + 120
    while not ready():
        assert process.poll() is None, f"{what} ended before it could be stopped: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    return process.returncode


def test_4_sigterm_during_write_volume_leaves_no_temporary_file(tmp_path):
    script = (
        "import numpy as np\n"
        "from MVGCore.io import write_volume\n"
        "from MVGCore.types import Volume\n"
        "volume = Volume(np.random.default_rng(0).random((60, 256, 256), dtype=np.float32))\n"
        "while True:\n"
        "    write_volume('big_out.nii.gz', volume, overwrite=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=_env(), stderr=subprocess.PIPE, text=True
    )
    status = _terminate_when(process, lambda: any(tmp_path.glob(".big_out.*.tmp.nii.gz")), "write_volume")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert status == 143 and left in ([], ["big_out.nii.gz"]), (status, left)  # 143: via the cleanup


def test_4_sigterm_during_prepare_leaves_no_hidden_store_folder(tmp_path):
    data = write_nnunet_dataset(tmp_path / "raw", n_cases=8, shape=(40, 96, 96), n_classes=2, seed=0)
    stores = tmp_path / "stores"
    stores.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "MVGCore.prepare", "--data", str(data), "--out", str(stores / "s"), "--quiet"],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    status = _terminate_when(process, lambda: any(stores.iterdir()), "prepare")
    assert (status, list(stores.iterdir())) == (143, [])


# ------------------------------------------------------------------ 5. file names SimpleITK cannot open


def test_5_a_non_ascii_name_under_an_ascii_locale_is_refused_up_front(tmp_path, checkpoint, case):
    image = case["image"].rename(tmp_path / "imäge.nii.gz")
    args = ["--checkpoint", str(checkpoint), "--task", "denoise", "--input", image.name]
    ascii_locale = {"PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    line = _refused(tmp_path, "predict", [*args, "--output", "out.nii.gz"], "--input", **ascii_locale)
    assert "file-name encoding" in line and "UTF-8 locale" in line


# ------------------------------------------------------------------ 6. evaluate --prompts


def test_6_evaluate_refuses_as_many_prompts_as_slices_before_writing(tmp_path):
    data = write_nnunet_dataset(tmp_path / "raw", n_cases=1, shape=(4, 16, 16), n_classes=1, seed=0)
    args = ["--data", str(data), "--baselines", "classical", "--out", "report", "--prompts", "4"]
    _refused(tmp_path, "evaluate", [*args, "--tasks", "segment"], "--prompts 4", "4 slices along axis 0")


# ------------------------------------------------------------------ 8. open_samples and the locale


def test_8_tool_output_is_decoded_as_utf8_under_an_ascii_locale(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text("#!/bin/sh\nprintf 'Downloading \\342\\224\\201\\342\\224\\201 100%%\\n' >&2\nexit 1\n")
    fake.chmod(0o755)
    script = (
        "import sys\nfrom pathlib import Path\nfrom MVGCore.data import open_samples\n"
        f"open_samples.sys.executable = {str(fake)!r}\n"
        "try:\n    open_samples._pip_download('x==1', Path('.'))\n"
        "except RuntimeError as error:\n    print(ascii(str(error)))\n"
    )
    ascii_locale = {"PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=_env(**ascii_locale), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "could not download x==1" in done.stdout and "\\u2501" in done.stdout


# ------------------------------------------------------------------ one line instead of a traceback


def test_user_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, checkpoint, capsys):
    argv = ["--checkpoint", str(checkpoint), "--task", "denoise", "--input", "missing.nii.gz"]
    argv += ["--output", str(tmp_path / "o.nii.gz")]
    assert cli.run(predict_main, "predict", argv) == 2
    assert capsys.readouterr().err.strip() == "predict: error: image not found: missing.nii.gz"
    with pytest.raises(FileNotFoundError):
        cli.run(predict_main, "predict", [*argv, "--debug"])


def test_demo_loads_the_model_before_it_makes_its_folder(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"")
    sidecar_path(broken).write_text('{"sha256": "' + hashlib.sha256(b"").hexdigest() + '"}')
    _refused(tmp_path, "demo", ["--model", str(broken), "--out", "demo_out"], "broken.safetensors")


def test_denoise_of_a_constant_image_or_a_one_pixel_slice_and_of_a_mask(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    for image in (np.full((3, 8, 8), 5.0, np.float32), np.full((3, 1, 1), 5.0, np.float32)):
        assert np.isfinite(predictor.denoise(image)).all()
    mask = np.zeros((3, 8, 8), bool)
    mask[:, 2:6, 2:6] = True
    assert predictor.denoise(mask).shape == mask.shape


@pytest.mark.parametrize("index", [8.5, "8", True])
def test_prompt_index_must_be_a_whole_number(index):
    with pytest.raises(ValueError, match=r"Prompt\.index must be a whole slice number"):
        Prompt(np.zeros((4, 4)), np.zeros((4, 4), np.uint8), index=index)
    assert Prompt(np.zeros((4, 4)), np.zeros((4, 4), np.uint8), index=np.int64(3)).index == 3


def _tiny_checkpoint(folder: Path) -> Path:
    config = config_for(
        "tiny",
        tile_size=32,
        depth=1,
        embed_dim=16,
        num_heads=2,
        merge_index=0,
        feature_blocks=(0,),
        decoder_dim=8,
    )
    return save_model(folder / "m.safetensors", MVGModel(config))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", r"m\.safetensors.*not a complete safetensors file"),
        ("sidecar not json", r"cannot parse checkpoint sidecar .*m\.json"),
        ("sidecar not an object", r"m\.json must hold a JSON object"),
        ("no sha256", r"m\.json records no sha256"),
        ("shape mismatch", r"weights .*m\.safetensors do not fit the model config in m\.json"),
    ],
)
def test_checkpoint_errors_name_the_file(tmp_path, damage, message):
    path = _tiny_checkpoint(tmp_path)
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
        meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        side.write_text(json.dumps(meta))
    elif damage == "sidecar not json":
        side.write_text("{not json")
    elif damage == "sidecar not an object":
        side.write_text("[1, 2]")
    elif damage == "no sha256":
        del meta["sha256"]
        side.write_text(json.dumps(meta))
    else:
        meta["config"]["embed_dim"] = 32
        side.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_an_upper_case_sha256_is_accepted(tmp_path):
    path = _tiny_checkpoint(tmp_path)
    meta = json.loads(sidecar_path(path).read_text())
    meta["sha256"] = meta["sha256"].upper()
    sidecar_path(path).write_text(json.dumps(meta))
    assert load_model(path)[0] is not None


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("nowhere/out.nii.gz", "does not exist"),
        ("out.png", "the name must end with one of"),
        ("sub.nii.gz", "is a folder"),
    ],
)
def test_output_path_problems_are_found_before_reading_anything(tmp_path, checkpoint, case, output, expected):
    (tmp_path / "sub.nii.gz").mkdir()
    _refused(tmp_path, "predict", _predict(checkpoint, case, "denoise", output), "--output", expected)


def test_a_read_only_output_folder_is_found_before_inference(tmp_path, checkpoint, case, monkeypatch):
    """Run in-process: as root a real read-only folder stays writable, so os.access is told it is not."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    with pytest.raises(PermissionError, match=r"--output .*read_only.* is not writable"):
        predict_main(_predict(checkpoint, case, "denoise", str(folder / "out.nii.gz")))


def test_hole_only_for_inpaint_and_never_empty(tmp_path, checkpoint, case):
    args = _predict(checkpoint, case, "denoise", "out.nii.gz", "--hole", str(case["hole"]))
    _refused(tmp_path, "predict", args, "--hole is only used by --task inpaint")
    empty = write_volume(tmp_path / "empty_hole.nii.gz", Volume(np.zeros(SHAPE, np.uint8), GEOMETRY))
    args = _predict(checkpoint, case, "inpaint", "out.nii.gz", "--hole", str(empty))
    _refused(tmp_path, "predict", args, "--hole", "empty_hole.nii.gz", "marks no voxel")


def test_resume_with_steps_not_above_the_reached_step_is_refused(tmp_path):
    from MVGCore.train import train
    from MVGCore.train.config import load_config, save_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = load_config(None, {"data": [str(tmp_path / "data")], "steps": 3})
    save_config(config, run / "config.yaml")
    (run / "checkpoints" / "last.json").write_text('{"step": 5, "model": "step_000005.safetensors"}')
    with pytest.raises(ValueError, match=r"reached step 5 and --steps is 3"):
        train(config, run, resume=True)
    (run / "checkpoints" / "last.json").write_text("{cut off")
    with pytest.raises(ValueError, match=r"last\.json is damaged"):
        train(config, run, resume=True)


def test_lr_scales_or_train_modules_for_a_module_the_model_lacks_is_refused_before_reading_data(tmp_path):
    from MVGCore.train import train
    from MVGCore.train.config import load_config

    overrides = {"data": [str(tmp_path / "nowhere")], "lr_scales": {"decoder_gates": 30.0}}
    with pytest.raises(ValueError, match=r"lr_scales names \['decoder_gates'\].*switched off"):
        train(load_config(None, overrides), tmp_path / "run")  # not "nowhere": no data was read
    with pytest.raises(ValueError, match=r"lr_scales\['decoder_gates'\] must be a positive number"):
        load_config(None, {**overrides, "lr_scales": {"decoder_gates": 0}})
    frozen = {"data": [str(tmp_path / "nowhere")], "train_modules": ["decoder_refine"]}
    with pytest.raises(ValueError, match=r"train_modules names \['decoder_refine'\].*switched off"):
        train(load_config(None, frozen), tmp_path / "run")


def test_a_failed_start_does_not_block_its_retry(tmp_path):
    from MVGCore.train import train
    from MVGCore.train.config import load_config

    run = tmp_path / "run"
    for steps in (3, 4):  # the second attempt has another config; it must not meet the first's
        config = load_config(None, {"data": [str(tmp_path / "nowhere")], "steps": steps})
        with pytest.raises(FileNotFoundError, match="nowhere"):
            train(config, run)
        assert not (run / "config.yaml").exists()


def test_ctrl_c_while_train_prepares_data_stops_at_once(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "MVGCore.train", "--out", str(run), "--phantoms", "40"]
    command += ["--set", "phantom_shape=[40, 96, 96]", "--set", "steps=2"]
    # A terminal's Ctrl-C: the child starts with SIGINT's default action even when this test runs in
    # a background job (a non-interactive shell's `&` starts it ignored, and Python keeps that).
    process = subprocess.Popen(
        command,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (run / "data").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr[-3000:]
    assert "python -m MVGCore.train: interrupted" in stderr and "Traceback" not in stderr
    assert not (run / "config.yaml").exists() and not (run / "data").exists()


def test_a_damaged_metrics_line_is_named_on_resume(tmp_path):
    from MVGCore.train.run_folder import MetricsLog as _Metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl line 2"):
        _Metrics(tmp_path, 2, enabled=True)
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"ste')  # a kill cut the last write: dropped
    _Metrics(tmp_path, 3, enabled=True).close()
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_channel_names_must_be_channel_numbers(tmp_path):
    data = write_nnunet_dataset(tmp_path / "raw", n_cases=1, shape=(4, 16, 16), n_classes=1, seed=0)
    description = json.loads((data / "dataset.json").read_text())
    description["channel_names"] = {"CT": "0"}
    (data / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match=r"dataset\.json: 'channel_names' keys must be channel numbers"):
        load_nnunet(data)


def test_negative_noise_level_is_refused_before_evaluating(tmp_path):
    data = write_nnunet_dataset(tmp_path / "raw", n_cases=1, shape=(4, 16, 16), n_classes=1, seed=0)
    args = ["--data", str(data), "--baselines", "classical", "--out", "report", "--noise-level", "-1"]
    _refused(tmp_path, "evaluate", args, "noise level of 'gaussian' must be a standard deviation >= 0")


def test_a_text_file_named_dcm_is_not_given_plugin_advice(tmp_path):
    fake = tmp_path / "notes.dcm"
    fake.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"notes\.dcm: it is not a DICOM file") as error:
        read_volume(fake)
    assert "pylibjpeg" not in str(error.value)


def test_prompt_errors_name_the_file(tmp_path, checkpoint, case):
    fractions = np.zeros(SHAPE, np.float32)
    fractions[1, 4:8, 4:8] = 0.5
    bad = write_volume(tmp_path / "fractions.nii.gz", Volume(fractions, GEOMETRY))
    args = ["--checkpoint", str(checkpoint), "--task", "segment", "--input", str(case["image"])]
    args += ["--prompts", str(bad), "--output", "seg.nii.gz"]
    _refused(tmp_path, "predict", args, "label", "fractions.nii.gz", "non-integer")


def test_whole_number_float_labels_follow_one_rule_in_predict_and_prepare(tmp_path, checkpoint, case):
    labels = read_volume(case["label"]).array.astype(np.float32)
    floats = write_volume(tmp_path / "float_label.nii.gz", Volume(labels, GEOMETRY))
    out = tmp_path / "seg.nii.gz"
    argv = ["--checkpoint", str(checkpoint), "--task", "segment", "--input", str(case["image"])]
    assert predict_main([*argv, "--prompts", str(floats), "--output", str(out), "--quiet"]) == 0
    segmentation = read_volume(out).array
    assert segmentation.dtype == np.uint8 and np.array_equal(segmentation[1], labels[1])

    data = write_nnunet_dataset(tmp_path / "raw", n_cases=1, shape=(4, 16, 16), n_classes=1, seed=0)
    label_file = next((data / "labelsTr").iterdir())
    label = read_volume(label_file)
    label_file.unlink()
    write_volume(label_file, Volume(label.array.astype(np.float32), label.geometry))
    store = prepare(validate_cases(load_cases(data)), tmp_path / "store", size=16)
    assert (store / "manifest.json").is_file()
