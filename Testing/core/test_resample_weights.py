"""Weights carried to another tile or patch size (MVGCore.resample_weights)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from MVGCore.config import config_for
from MVGCore.model import MVGModel
from MVGCore.predict import Predictor
from MVGCore.resample_weights import at_tile_size, fit_weights
from MVGCore.types import Prompt

SMALL = {"tile_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2, "merge_index": 0}
SMALL.update(feature_blocks=(1,), decoder_dim=4)


NOT_A_MULTIPLE = "tile_size must be a positive multiple of the model's patch size 16, got 40"
"""Both ways to a tile size (the Predictor option and at_tile_size) refuse 40 px at patch 16 alike."""


def _model(**changes) -> MVGModel:
    torch.manual_seed(0)
    return MVGModel(config_for("tiny", **{**SMALL, **changes}))


def test_patch_16_to_8_computes_what_patch_16_computes_on_the_image_enlarged_twice():
    """Kernel summed over 2x2 blocks: the 8 px embedding of an image equals the 16 px embedding of
    that image with every pixel repeated 2x2; the decoder's 8x8 pixel layout is the 2x2 average of
    the 16x16 one. Everything else loads as it is (strict load)."""
    wide = _model(patch_size=16)
    fine = MVGModel(dataclasses.replace(wide.config, patch_size=8))
    fine.load_state_dict(fit_weights(wide.state_dict(), fine.state_dict()))
    image = torch.rand(2, 3, 32, 32)
    enlarged = image.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    with torch.no_grad():
        assert torch.allclose(fine.patch_embed(image), wide.patch_embed(enlarged), atol=1e-5)
        features = torch.randn(5, fine.decoder_embed.in_features)
        channels = wide.config.decoder_dim
        coarse = wide.decoder_embed(features).reshape(5, 16, 16, channels).permute(0, 3, 1, 2)
        detail = fine.decoder_embed(features).reshape(5, 8, 8, channels).permute(0, 3, 1, 2)
        assert torch.allclose(detail, F.avg_pool2d(coarse, 2), atol=1e-5)
    assert torch.equal(fine.blocks[1].mlp.fc1.weight, wide.blocks[1].mlp.fc1.weight)
    assert fine.blocks[0].attn.rel_pos_h.shape[0] == 2 * 8 - 1  # 2x1 canvas of 4x4-token tiles


def test_at_tile_size_is_a_resampled_copy_and_leaves_the_model_alone():
    model = _model(patch_size=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert at_tile_size(model, 32) is model
    larger = at_tile_size(model, 48)
    assert larger is not model and larger.config.tile_size == 48
    assert larger.training == model.training
    assert larger.blocks[0].attn.rel_pos_h.shape[0] == 2 * 6 - 1
    assert torch.equal(larger.blocks[0].mlp.fc2.weight, model.blocks[0].mlp.fc2.weight)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=NOT_A_MULTIPLE):
        at_tile_size(model, 40)


def test_segmentation_runs_at_the_configs_segment_tile_and_image_tasks_at_the_models_own():
    model = _model(patch_size=16, segment_tile_size=48).eval()
    predictor = Predictor(model, device="cpu")
    at_48 = Predictor(at_tile_size(model, 48), device="cpu")
    assert predictor.task_tile_size("segment") == 48 and predictor.task_tile_size("denoise") == 32
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(4, 40, 36)).astype(np.float32)
    label = np.zeros((40, 36), np.uint8)
    label[10:30, 8:20] = 3
    prompts = [Prompt(volume[1], label, 1)]
    options = {"align_prompts": "off"}
    assert np.array_equal(
        predictor.segment(volume, prompts, **options), at_48.segment(volume, prompts, **options)
    )
    explicit = predictor.segment(volume, prompts, tile_size=32, **options)
    assert np.array_equal(
        explicit, Predictor(model, device="cpu").segment(volume, prompts, tile_size=32, **options)
    )
    assert np.array_equal(predictor.denoise(volume), predictor.denoise(volume, tile_size=32))
    assert not np.array_equal(predictor.denoise(volume), predictor.denoise(volume, tile_size=48))
    assert predictor.model is model and model.config.tile_size == 32
    with pytest.raises(ValueError, match=NOT_A_MULTIPLE):
        predictor.segment(volume, prompts, tile_size=40)
    with pytest.raises(ValueError, match="tile_size must be a positive whole number of pixels, got 0"):
        predictor.denoise(volume, tile_size=0)
    with pytest.raises(ValueError, match="segment_tile_size 40 must be a positive multiple of patch_size 16"):
        config_for("tiny", **SMALL, segment_tile_size=40)
