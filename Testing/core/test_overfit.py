"""The whole training signal works: a tiny model memorises one in-context segmentation example."""

import numpy as np
import pytest
import torch

from MVGCore.canvas import build_canvases, imagenet_denormalize, query_half
from MVGCore.coloring import color_table, decode
from MVGCore.config import config_for
from MVGCore.loss import mvg_loss, pixel_weights
from MVGCore.masking import ar_mask
from MVGCore.model import MVGModel


@pytest.mark.slow
def test_tiny_model_overfits_one_in_context_example():
    rng = np.random.default_rng(0)
    size = 32
    yy, xx = np.mgrid[:size, :size]
    prompt_label = ((yy - 12) ** 2 + (xx - 14) ** 2 < 49).astype(np.int64)
    query_label = ((yy - 18) ** 2 + (xx - 17) ** 2 < 64).astype(np.int64)
    prompt_image = (0.2 + 0.6 * prompt_label + rng.normal(0, 0.05, (size, size))).clip(0, 1)
    query_image = (0.2 + 0.6 * query_label + rng.normal(0, 0.05, (size, size))).clip(0, 1)
    table = color_table([1], "palette")
    c = build_canvases(
        prompt_image[None].astype(np.float32),
        prompt_label[None],
        query_image[None].astype(np.float32),
        query_label[None],
        segmentation=True,
        tables=table,
    )
    config = config_for("tiny", tile_size=size, depth=4, merge_index=0, feature_blocks=(0, 1, 2, 3))
    model = MVGModel(config)
    mask = torch.from_numpy(ar_mask(config.grid))[None]
    weights = pixel_weights(c.foreground, torch.tensor([True]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(300):
        loss = mvg_loss(
            model(c.images, c.targets, mask), c.targets, c.targets01, mask, weights, config.grid, 16
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    with torch.no_grad():
        rgb = query_half(imagenet_denormalize(model(c.images, c.targets, mask)))
    predicted = decode(rgb.clamp(0, 1), table, [1])[0].numpy()
    dice = 2 * (predicted * query_label).sum() / (predicted.sum() + query_label.sum())
    assert dice > 0.9
