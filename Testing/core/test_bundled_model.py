"""The shipped default model: intact, loadable, described by its card, and as good as the card says."""

import json

import numpy as np
import pytest

from MVGCore.checkpoint import load_model, sha256_of, sidecar_path
from MVGCore.demo import DEFAULT_MODEL, REPO, run_demo

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
    for name in (
        "segmentation_model.nrrd",
        "denoised_model.nrrd",
        "inpainted_model.nrrd",
        "demo.png",
        "results.json",
    ):
        assert (tmp_path / name).is_file()
