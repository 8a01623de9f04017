"""Sampler dicts -> one model batch (canvases, token mask, pixel weights), for training and validation.

This is the single place where a sample becomes what the model and the loss see: segmentation
labels get a random per-sample color table (the in-context coloring the paper reports best),
every sample gets its task's mask (AR or MIM), and the loss weights follow the task. The
randomness comes from one generator per sample, derived from the sample's global index by the
caller, so a batch is the same whichever worker or rank builds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from MVGCore.canvas import build_canvases
from MVGCore.coloring import color_table
from MVGCore.loss import outside_hole_weights, pixel_weights
from MVGCore.masking import MaskSampler, ar_mask


@dataclass
class TrainBatch:
    """Model inputs and loss terms for B samples, plus what validation needs to score them.

    ``tables[b]`` is the (256, 3) color table of a segmentation sample (None otherwise) and
    ``classes[b]`` the classes it colored; ``holes`` (B, S, S) is the query's inpainting hole.
    """

    images: torch.Tensor
    targets: torch.Tensor
    targets01: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor
    is_segmentation: torch.Tensor
    holes: torch.Tensor
    tasks: list[str]
    tables: list[np.ndarray | None]
    classes: list[list[int]]
    prompt_images: torch.Tensor
    query_images: torch.Tensor

    def __len__(self) -> int:
        return len(self.tasks)

    def to(self, device: torch.device | str) -> TrainBatch:
        moved = {
            name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for name, value in vars(self).items()
        }
        return TrainBatch(**moved)


def collate_canvases(
    samples: Sequence[dict[str, Any]],
    rngs: Sequence[np.random.Generator],
    grid: tuple[int, int],
    mask_sampler: MaskSampler | None = None,
    outside_hole_weight: float = 1.0,
) -> TrainBatch:
    """Build a batch from sampler dicts; ``rngs[b]`` draws sample b's colors and mask.

    ``grid`` is the model's token grid (``MVGConfig.grid``). ``mask_sampler=None`` hides the whole
    query half of every sample (the inference situation, used for validation) instead of drawing
    AR/MIM masks. ``outside_hole_weight`` weighs an inpainting query's pixels outside its hole
    (:func:`MVGCore.loss.outside_hole_weights`; 1 is the reference's uniform weight).
    """
    if not samples:
        raise ValueError("cannot build a batch from no samples")
    if len(rngs) != len(samples):
        raise ValueError(f"need one generator per sample: {len(samples)} samples, {len(rngs)} generators")
    if mask_sampler is not None and tuple(mask_sampler.grid) != tuple(grid):
        raise ValueError(f"mask sampler grid {mask_sampler.grid} differs from the model grid {grid}")
    parts, masks, tables, classes = [], [], [], []
    for sample, rng in zip(samples, rngs):
        segmentation = sample["task"] == "segment"
        table, present = None, []
        if segmentation:
            prompt_target = np.asarray(sample["prompt_target"]).astype(np.int64)
            query_target = np.asarray(sample["query_target"]).astype(np.int64)
            # The prompt defines the task: a query class it does not show cannot be inferred (and
            # inference decodes only the prompt's classes), so it is background in the target.
            present = [c for c in np.unique(prompt_target).tolist() if c != 0]
            query_target = np.where(np.isin(query_target, present), query_target, 0)
            table = color_table(present, "random", rng)
            targets = (prompt_target[None], query_target[None])
        else:
            targets = (np.asarray(sample["prompt_target"])[None], np.asarray(sample["query_target"])[None])
        canvases = build_canvases(
            np.asarray(sample["prompt_image"])[None],
            targets[0],
            np.asarray(sample["query_image"])[None],
            targets[1],
            segmentation=segmentation,
            tables=None if table is None else table[None],
        )
        mask = ar_mask(grid) if mask_sampler is None else mask_sampler(sample["task"], rng)
        parts.append(canvases)
        masks.append(torch.from_numpy(mask))
        tables.append(table)
        classes.append(present)
    is_seg = torch.tensor([s["task"] == "segment" for s in samples])
    is_inpaint = torch.tensor([s["task"] == "inpaint" for s in samples])
    foreground = torch.cat([c.foreground for c in parts])
    holes = torch.stack([torch.as_tensor(np.asarray(s["hole"], dtype=bool)) for s in samples])
    weights = pixel_weights(foreground, is_seg)
    if outside_hole_weight != 1.0:
        weights = outside_hole_weights(weights, holes, is_inpaint, outside_hole_weight)
    return TrainBatch(
        images=torch.cat([c.images for c in parts]),
        targets=torch.cat([c.targets for c in parts]),
        targets01=torch.cat([c.targets01 for c in parts]),
        mask=torch.stack(masks),
        weights=weights,
        is_segmentation=is_seg,
        holes=holes,
        tasks=[s["task"] for s in samples],
        tables=tables,
        classes=classes,
        prompt_images=torch.stack([torch.as_tensor(s["prompt_image"], dtype=torch.float32) for s in samples]),
        query_images=torch.stack([torch.as_tensor(s["query_image"], dtype=torch.float32) for s in samples]),
    )


def step_indices(step: int, micro: int, rank: int, world: int, batch: int, accum: int) -> list[int]:
    """Global sample positions of one micro-batch: disjoint across ranks, micro-batches and steps.

    The data order is a pure function of the step, so a run resumed at step s sees exactly the
    samples an uninterrupted run would, and each rank its own shard (as DistributedSampler does).
    """
    first = ((step * accum + micro) * world + rank) * batch
    return list(range(first, first + batch))


class StepBatchSampler:
    """Batch sampler for a DataLoader: micro-batches of steps ``start..total-1`` for one rank."""

    def __init__(self, start: int, total: int, batch: int, accum: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} must lie in [0, world size {world})")
        self.start, self.total, self.batch, self.accum = start, total, batch, accum
        self.rank, self.world = rank, world

    def __iter__(self):
        for step in range(self.start, self.total):
            for micro in range(self.accum):
                yield step_indices(step, micro, self.rank, self.world, self.batch, self.accum)

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.accum


class SampleStream:
    """Map-style dataset: position g -> ``sampler.sample(rng(seed, stream, g))``, tagged with g.

    ``sampler`` is an :class:`MVGCore.data.samplers.InContextDataset` (anything with
    ``sample(rng)``); ``stream`` separates training (0) from validation (1) draws of one seed.
    """

    def __init__(self, sampler: Any, seed: int, stream: int) -> None:
        self.sampler, self.seed, self.stream = sampler, seed, stream

    def __getitem__(self, position: int) -> dict[str, Any]:
        sample = self.sampler.sample(np.random.default_rng([self.seed, self.stream, int(position)]))
        return {**sample, "position": int(position)}


@dataclass
class CanvasCollator:
    """DataLoader ``collate_fn``: :func:`collate_canvases` with generators derived from positions."""

    grid: tuple[int, int]
    seed: int
    stream: int
    mask_sampler: MaskSampler | None = None
    outside_hole_weight: float = 1.0

    def __call__(self, samples: list[dict[str, Any]]) -> TrainBatch:
        rngs = [np.random.default_rng([self.seed, self.stream, s["position"], 1]) for s in samples]
        return collate_canvases(samples, rngs, self.grid, self.mask_sampler, self.outside_hole_weight)
