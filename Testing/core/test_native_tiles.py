"""Image tasks at 1:1 pixels: slices cut into overlapping tiles, prompts tiled alike, answers blended back."""

import numpy as np
import pytest
import torch

from MVGCore.config import config_for
from MVGCore.model import MVGModel
from MVGCore.predict import Predictor
from MVGCore.types import Prompt

TILE = 32


def _config():
    return config_for(
        "tiny", tile_size=TILE, depth=1, embed_dim=16, num_heads=1, merge_index=0, feature_blocks=(0,)
    )


class CopyQuery(MVGModel):
    """Answers with the query image itself: an identity denoiser."""

    def __init__(self) -> None:
        super().__init__(_config())

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        bottom = images[..., images.shape[-2] // 2 :, :]
        return bottom if query_only else torch.cat([bottom, bottom], dim=-2)


class CopyPromptTarget(MVGModel):
    """Answers with the prompt's target: shows which prompt tile each query tile was given."""

    def __init__(self) -> None:
        super().__init__(_config())

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        top = targets[..., : targets.shape[-2] // 2, :]
        return top if query_only else torch.cat([top, top], dim=-2)


@pytest.mark.parametrize("shape", [(2, 1, 1), (3, 5, 300), (2, 77, 45), (2, 301, 260)])
def test_an_identity_model_returns_the_input_on_odd_tiny_and_large_slices(shape):
    volume = np.random.default_rng(0).uniform(0.0, 100.0, shape).astype(np.float32)
    prompts = [Prompt.from_volume(volume, 0, volume[0])]
    predictor = Predictor(CopyQuery(), device="cpu")
    options = {"modality": "OTHER", "window": (0.0, 100.0), "calibrate": "off"}  # the tiling alone
    native = predictor.denoise(volume, prompts, **options)
    assert native.shape == volume.shape
    np.testing.assert_allclose(native, volume, atol=1e-3)  # normalise -> model -> denormalise only
    if max(shape[1:]) > TILE:  # fitting the whole slice into one tile loses the detail
        fitted = predictor.denoise(volume, prompts, image_scale="fit", **options)
        assert np.abs(fitted - volume).max() > 1.0


def test_prompts_are_tiled_like_the_query():
    rng = np.random.default_rng(1)
    volume = rng.uniform(0.0, 100.0, (4, 90, 70)).astype(np.float32)
    clean = rng.uniform(0.0, 100.0, (90, 70)).astype(np.float32)
    predictor = Predictor(CopyPromptTarget(), device="cpu")
    result = predictor.denoise(
        volume, [Prompt(volume[1], clean, 1)], modality="OTHER", window=(0.0, 100.0), calibrate="off"
    )
    for k in range(4):  # every query tile got the prompt tile at its own position
        np.testing.assert_allclose(result[k], clean, atol=1e-3)
    other = Prompt(volume[1], clean)  # another image of the same size: the same positions again
    np.testing.assert_allclose(
        predictor.synthesize(
            volume, [other], modality="OTHER", window=(0.0, 100.0), target_window=(0.0, 100.0)
        ),
        np.broadcast_to(clean, volume.shape),
        atol=1e-3,
    )


def test_inpainting_keeps_every_voxel_outside_the_hole_and_reports_progress_once():
    rng = np.random.default_rng(2)
    volume = rng.uniform(0.0, 100.0, (3, 70, 50)).astype(np.float32)
    hole = np.zeros(volume.shape, bool)
    hole[1, 20:40, 10:30] = True
    seen = []
    result = Predictor(CopyQuery(), device="cpu").inpaint(
        volume, hole, modality="OTHER", progress=lambda d, t: seen.append((d, t))
    )
    assert np.array_equal(result[~hole], volume[~hole])
    assert seen[-1][0] == seen[-1][1] and [d for d, t in seen].count(seen[-1][1]) == 1
