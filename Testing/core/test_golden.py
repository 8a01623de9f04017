"""Golden tests: what users and programs see of the CLIs and the four tasks, pinned byte for byte.

They guard refactors that must not change behaviour: the ``--help`` text of every CLI, output
hashes of each task on the bundled sample with fixed seeds, the ``--progress json`` event stream
the Slicer runner reads, and the one-line error messages of common mistakes. (Exact training resume
is pinned by ``test_train.py::test_hard_kill_then_resume_continues_the_loss_sequence_exactly``.)

A deliberate change of behaviour regenerates the files: ``MVG_UPDATE_GOLDEN=1 python -m pytest
Testing/core/test_golden.py``, and the diff of ``Testing/golden/`` goes into the same commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from MVGCore.io import read_volume

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "Testing" / "golden"
SAMPLE = REPO / "Resources" / "SampleData"
MODEL = REPO / "Resources" / "Models" / "mvg_tiny_default.safetensors"
UPDATE = os.environ.get("MVG_UPDATE_GOLDEN") == "1"
CLIS = ("predict", "train", "evaluate", "prepare", "demo")
PROMPT_SLICES = (8, 12)


def _matches_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.is_file(), f"{path} is missing; run with MVG_UPDATE_GOLDEN=1 once to write it"
    assert text == path.read_text()


@pytest.mark.parametrize("cli", CLIS)
def test_help_text_is_unchanged(cli, monkeypatch):
    import importlib

    monkeypatch.setenv("COLUMNS", "100")
    main = importlib.import_module(f"MVGCore.{cli}").main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    _matches_golden(f"help_{cli}.txt", out.getvalue())


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return f"{array.dtype}{list(array.shape)}:{hashlib.sha256(array.tobytes()).hexdigest()[:20]}"


@pytest.fixture(scope="module")
def sample():
    from MVGCore.predict import Predictor
    from MVGCore.types import Prompt

    image = read_volume(SAMPLE / "MVGSampleLungCT.nrrd")
    label = read_volume(SAMPLE / "MVGSampleLungCT_label.nrrd")
    volume = image.array.astype(np.float32)
    prompts = [Prompt.from_volume(volume, k, label.array[k], axis=0) for k in PROMPT_SLICES]
    spacing = image.geometry.spacing_kji
    # a second contrast for synthesis: a smooth monotone map of the CT (prompt targets only)
    contrast = np.sqrt(np.clip(volume + 1024.0, 0.0, None)).astype(np.float32)
    pairs = [Prompt.from_volume(volume, k, contrast[k], axis=0) for k in PROMPT_SLICES]
    clean = [Prompt.from_volume(volume, k, volume[k], axis=0) for k in PROMPT_SLICES]
    hole = np.zeros(volume.shape, dtype=bool)
    hole[9:12, 70:90, 55:75] = True
    holed = np.where(hole, 0.0, volume).astype(np.float32)
    noisy = volume + np.random.default_rng(0).normal(0.0, 40.0, volume.shape).astype(np.float32)
    return {
        "predictor": Predictor.from_checkpoint(MODEL, device="cpu"),
        "volume": volume,
        "noisy": noisy,
        "prompts": prompts,
        "pairs": pairs,
        "clean": clean,
        "hole": hole,
        "holed": holed,
        "spacing": spacing,
    }


RUNS = {
    "segment_default": lambda s: s["predictor"].segment(s["volume"], s["prompts"], spacing=s["spacing"]),
    "segment_no_propagation": lambda s: s["predictor"].segment(
        s["volume"], s["prompts"], spacing=s["spacing"], propagate=False
    ),
    "segment_model_answer_whole": lambda s: s["predictor"].segment(
        s["volume"], s["prompts"], spacing=s["spacing"], answer="model", zoom="whole", k_prompts=2
    ),
    "denoise_self_made": lambda s: s["predictor"].denoise(s["noisy"], axis=0, spacing=s["spacing"], seed=3),
    "denoise_prompts": lambda s: s["predictor"].denoise(
        s["noisy"], s["clean"], spacing=s["spacing"], return_disagreement=True
    ),
    "inpaint": lambda s: s["predictor"].inpaint(s["holed"], s["hole"], spacing=s["spacing"], seed=1),
    "synthesize": lambda s: s["predictor"].synthesize(s["volume"], s["pairs"], spacing=s["spacing"]),
}


@pytest.mark.slow
def test_task_outputs_on_the_bundled_sample_are_unchanged(sample):
    digests = {}
    for name, run in RUNS.items():
        result = run(sample)
        parts = result if isinstance(result, tuple) else (result,)
        digests[name] = [_digest(part) for part in parts]
    _matches_golden("task_outputs.json", json.dumps(digests, indent=1) + "\n")


@pytest.mark.slow
def test_progress_json_event_stream_is_unchanged(tmp_path, capsys):
    from MVGCore.predict import main

    out = tmp_path / "seg.nrrd"
    argv = ["--checkpoint", str(MODEL), "--task", "segment", "--input", str(SAMPLE / "MVGSampleLungCT.nrrd")]
    argv += ["--prompts", str(SAMPLE / "MVGSampleLungCT_label.nrrd"), "--slices", "8,12"]
    argv += ["--output", str(out), "--progress", "json", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    events = capsys.readouterr().out.replace(str(out), "<OUTPUT>")
    _matches_golden("progress_events.jsonl", events + f"# output {_digest(read_volume(out).array)}\n")


def _error(call) -> str:
    try:
        call()
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, SystemExit) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def test_error_messages_are_unchanged(checkpoint, tmp_path, capsys):
    from MVGCore.io import write_volume
    from MVGCore.predict import Options, Predictor, main
    from MVGCore.types import Prompt, Volume

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    volume = np.zeros((4, 16, 16), dtype=np.float32)
    label = np.zeros((16, 16), dtype=np.uint8)
    label[4:8, 4:8] = 1
    prompt = [Prompt.from_volume(volume, 1, label)]
    image = write_volume(tmp_path / "image.nrrd", Volume(volume))
    base = ["--checkpoint", str(checkpoint), "--input", str(image), "--output", str(tmp_path / "o.nrrd")]
    cases = {
        "unknown option": lambda: Options.parse({"zoomm": "whole"}),
        "bad zoom": lambda: Options(zoom="near"),
        "bad answer": lambda: Options(answer="x"),
        "bad k_prompts": lambda: Options(k_prompts=0),
        "bad spacing": lambda: Options(spacing=(1.0, 0.0, 1.0)),
        "bad calibrate": lambda: Options(calibrate="yes"),
        "2D image": lambda: predictor.segment(volume[0], prompt),
        "NaN image": lambda: predictor.segment(np.full((2, 4, 4), np.nan), prompt),
        "empty labels": lambda: predictor.segment(volume, [Prompt.from_volume(volume, 1, label * 0)]),
        "adapt inpaint": lambda: predictor.inpaint(volume, volume > 1, adapt_steps=2),
        "no prompts": lambda: predictor.segment(volume, []),
        "bad device": lambda: Predictor.from_checkpoint(checkpoint, device="tpu"),
        "bad batch": lambda: Predictor.from_checkpoint(checkpoint, batch_size=0),
        "cli no prompts": lambda: main([*base, "--task", "segment"]),
        "cli hole elsewhere": lambda: main([*base, "--task", "denoise", "--hole", str(image)]),
        "cli output is input": lambda: main([*base[:4], "--output", str(image), "--task", "denoise"]),
        "cli adapt inpaint": lambda: main([*base, "--task", "inpaint", "--adapt-steps", "3"]),
        "cli inpaint without hole": lambda: main([*base, "--task", "inpaint"]),
    }
    messages = {name: _error(call).replace(str(tmp_path), "<TMP>") for name, call in cases.items()}
    capsys.readouterr()
    _matches_golden("error_messages.json", json.dumps(messages, indent=1) + "\n")
