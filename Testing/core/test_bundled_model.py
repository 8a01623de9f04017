"""The shipped default model: intact, loadable, described by its card, and as good as the card says."""

import json

import numpy as np
import pytest

from MVGCore.checkpoint import load_model, sha256_of, sidecar_path
from MVGCore.demo import DEFAULT_MODEL, OUTPUT_FILES, REPO, run_demo

MODELS = REPO / "Resources" / "Models"
CARD = json.loads((MODELS / "model_card.json").read_text())
DEMO_MARGIN = 0.02  # the demo is deterministic on CPU; the margin absorbs BLAS differences between machines


def test_bundled_weights_match_card_registry_and_sidecar():
    digest = sha256_of(DEFAULT_MODEL)
    assert digest == CARD["sha256"]
    assert digest == json.loads(sidecar_path(DEFAULT_MODEL).read_text())["sha256"]
    registry = json.loads((MODELS / "Models.json").read_text())
    assert registry["models"][0]["file"] == DEFAULT_MODEL.name
    assert registry["models"][0]["sha256"] == digest
    assert DEFAULT_MODEL.stat().st_size <= 25 * 1024 * 1024


def test_bundled_weights_load_as_the_card_describes():
    model, meta = load_model(DEFAULT_MODEL)
    assert meta["model_card"] == "model_card.json"
    assert model.config.preset == CARD["preset"]
    assert sum(p.numel() for p in model.parameters()) == CARD["parameters"]
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reaches_the_cards_dice(tmp_path):
    result = run_demo(DEFAULT_MODEL, tmp_path, device="cpu")
    card = CARD["demo"]
    assert result.prompt_slices == card["prompt_slices"]
    assert result.dice_model >= card["dice_model"] - DEMO_MARGIN
    assert result.dice_baseline == pytest.approx(card["dice_baseline"], abs=DEMO_MARGIN)
    # exactly the files an unfinished run removes (OUTPUT_FILES), so that list cannot fall behind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES)


def test_an_unfinished_demo_leaves_no_folder_it_made_and_keeps_the_users(tmp_path, monkeypatch, capsys):
    """Ctrl-C during the demo used to leave its empty output folder behind (issue 37)."""
    from MVGCore import cli, demo

    def interrupted(model, out, device="auto"):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    argv = ["--out", str(tmp_path / "new" / "demo_out"), "--device", "cpu"]
    assert cli.run(demo.main, "demo", argv) == cli.INTERRUPTED_STATUS
    assert list(tmp_path.iterdir()) == []  # the parent folder it made is gone too

    def failed_after_a_write(model, out, device="auto"):
        (out / "segmentation_model.nrrd").write_bytes(b"half of a result")
        raise OSError("No space left on device")

    monkeypatch.setattr(demo, "run_demo", failed_after_a_write)
    (tmp_path / "mine").mkdir()  # the user's folder: the demo writes into mine_2 and removes only that
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert cli.run(demo.main, "demo", ["--out", str(tmp_path / "mine"), "--device", "cpu"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]

    def someone_else_wrote_there(model, out, device="auto"):
        (out / "results.json").write_text("{}")
        (out / "their_file.txt").write_text("not the demo's")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", someone_else_wrote_there)
    assert cli.run(demo.main, "demo", ["--out", str(tmp_path / "shared"), "--device", "cpu"]) == 130
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["their_file.txt"]  # never removed
    assert "interrupted" in capsys.readouterr().err
