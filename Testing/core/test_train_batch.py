"""Sampler dicts -> model batch: in-context coloring, task masks, loss weights, deterministic order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from MVGCore.canvas import IMAGENET_MEAN, IMAGENET_STD
from MVGCore.loss import BACKGROUND_WEIGHT
from MVGCore.masking import MaskSampler, ar_mask
from MVGCore.train.batch import (
    CanvasCollator,
    SampleStream,
    StepBatchSampler,
    collate_canvases,
    step_indices,
)

SIZE, GRID = 16, (4, 2)  # patch 8


def sample(task: str, rng: np.random.Generator) -> dict:
    image = lambda: rng.random((SIZE, SIZE)).astype(np.float32)  # noqa: E731
    if task == "segment":
        prompt, query = np.zeros((SIZE, SIZE), np.int64), np.zeros((SIZE, SIZE), np.int64)
        prompt[2:6, 2:6], prompt[8:12, 8:12], query[3:9, 3:9] = 1, 7, 7
        targets = (prompt, query)
    else:
        targets = (image(), image())
    hole = np.zeros((SIZE, SIZE), bool)
    if task == "inpaint":
        hole[4:8, 4:8] = True
    return {
        "prompt_image": image(),
        "prompt_target": targets[0],
        "query_image": image(),
        "query_target": targets[1],
        "hole": hole,
        "task": task,
    }


@pytest.fixture
def samples(rng) -> list[dict]:
    return [sample(t, rng) for t in ("segment", "denoise", "inpaint", "synthesize")]


def test_batch_shapes_weights_and_masks(samples):
    rngs = [np.random.default_rng(i) for i in range(4)]
    batch = collate_canvases(samples, rngs, GRID, MaskSampler(GRID))
    assert batch.images.shape == batch.targets.shape == batch.targets01.shape == (4, 3, 2 * SIZE, SIZE)
    assert batch.mask.shape == (4, 8) and batch.mask.dtype == torch.bool
    assert torch.equal(batch.mask[0], torch.from_numpy(ar_mask(GRID)))  # segmentation is always AR
    assert batch.is_segmentation.tolist() == [True, False, False, False]
    weights = batch.weights[:, 0]
    assert weights[0, 0, 0] == BACKGROUND_WEIGHT and weights[0, 2, 2] == 1.0  # prompt foreground
    assert torch.all(weights[1:] == 1.0)
    assert batch.classes[0] == [1, 7] and batch.tables[1] is None
    assert torch.equal(batch.holes[2], torch.from_numpy(samples[2]["hole"]))
    gray = batch.images[1, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert torch.allclose(gray[SIZE:], torch.from_numpy(samples[1]["query_image"]), atol=1e-6)


def test_inpainting_query_outside_its_hole_weighs_as_asked(samples):
    rngs = [np.random.default_rng(i) for i in range(4)]
    weights = collate_canvases(samples, rngs, GRID, MaskSampler(GRID), outside_hole_weight=0.25).weights[:, 0]
    query = weights[2, SIZE:]
    hole = torch.from_numpy(samples[2]["hole"])
    assert torch.all(query[hole] == 1.0) and torch.all(query[~hole] == 0.25)
    assert torch.all(weights[2, :SIZE] == 1.0)  # the prompt half keeps the reference's weight
    assert torch.all(weights[1] == 1.0) and torch.all(weights[3] == 1.0)  # other image tasks too
    uniform = collate_canvases(samples, rngs, GRID, MaskSampler(GRID)).weights[:, 0]
    assert torch.all(uniform[2] == 1.0)


def test_label_colors_are_shared_by_prompt_and_query_and_background_is_black(samples):
    batch = collate_canvases(samples[:1], [np.random.default_rng(0)], GRID)
    colors = batch.targets01[0]
    class7_prompt, class7_query = colors[:, 8, 8], colors[:, SIZE + 4, 4]
    assert torch.equal(class7_prompt, class7_query)
    assert not torch.equal(class7_prompt, colors[:, 2, 2])  # class 1 differs from class 7
    assert torch.all(colors[:, 0, 0] == 0)
    assert torch.equal(batch.mask[0], torch.from_numpy(ar_mask(GRID)))  # no sampler: AR everywhere


def test_same_generators_same_batch_other_generators_other_colors(samples):
    seg = samples[:1] * 1
    a = collate_canvases(seg, [np.random.default_rng(1)], GRID)
    b = collate_canvases(seg, [np.random.default_rng(1)], GRID)
    assert torch.equal(a.targets01, b.targets01)
    drawn = {tuple(collate_canvases(seg, [np.random.default_rng(s)], GRID).tables[0][7]) for s in range(8)}
    assert len(drawn) > 1


def test_bad_arguments_are_named(samples):
    with pytest.raises(ValueError, match="one generator per sample"):
        collate_canvases(samples, [np.random.default_rng(0)], GRID)
    with pytest.raises(ValueError, match="mask sampler grid"):
        collate_canvases(samples[:1], [np.random.default_rng(0)], GRID, MaskSampler((8, 4)))
    with pytest.raises(ValueError, match="no samples"):
        collate_canvases([], [], GRID)


def test_step_order_is_sharded_and_resumable():
    seen = [
        i
        for step in range(3)
        for micro in range(2)
        for rank in range(2)
        for i in step_indices(step, micro, rank, world=2, batch=4, accum=2)
    ]
    assert sorted(seen) == list(range(3 * 2 * 2 * 4))  # every position exactly once
    full = list(StepBatchSampler(0, 5, batch=3, accum=2, rank=1, world=2))
    tail = list(StepBatchSampler(2, 5, batch=3, accum=2, rank=1, world=2))
    assert len(full) == 10 and tail == full[4:]
    with pytest.raises(ValueError, match="rank"):
        StepBatchSampler(0, 1, 1, 1, rank=2, world=2)


class _Sampler:
    def sample(self, rng: np.random.Generator) -> dict:
        return sample(["segment", "denoise"][int(rng.integers(2))], rng)


def test_stream_and_collator_are_pure_functions_of_position():
    stream = SampleStream(_Sampler(), seed=4, stream=0)
    assert stream[5]["position"] == 5
    assert np.array_equal(stream[5]["query_image"], stream[5]["query_image"])
    assert not np.array_equal(stream[5]["query_image"], SampleStream(_Sampler(), 4, 1)[5]["query_image"])
    collate = CanvasCollator(GRID, seed=4, stream=0, mask_sampler=MaskSampler(GRID))
    a, b = collate([stream[i] for i in range(6)]), collate([stream[i] for i in range(6)])
    assert torch.equal(a.targets01, b.targets01) and torch.equal(a.mask, b.mask)


def test_loader_workers_deliver_the_same_batches_as_the_main_process():
    stream = SampleStream(_Sampler(), seed=2, stream=0)
    collate = CanvasCollator(GRID, seed=2, stream=0, mask_sampler=MaskSampler(GRID))

    def batches(workers: int) -> list:
        sampler = StepBatchSampler(1, 4, batch=3, accum=1, rank=0, world=1)
        loader = DataLoader(stream, batch_sampler=sampler, collate_fn=collate, num_workers=workers)
        return list(loader)

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a.images, b.images) and torch.equal(a.targets01, b.targets01)
        assert torch.equal(a.mask, b.mask) and a.tasks == b.tasks
