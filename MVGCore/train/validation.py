"""Validation during training: fixed held-out samples per task, scored the way the task is used.

The samples are drawn once, from the held-out cases with the validation stream of the seed, and
with the whole query half hidden (the inference situation), so two validations differ only by the
weights. Rank 0 validates while the other ranks wait at a barrier.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from MVGCore.canvas import gray_to_rgb, imagenet_denormalize, query_half
from MVGCore.checkpoint import atomic_write
from MVGCore.coloring import decode
from MVGCore.data.samplers import InContextDataset
from MVGCore.data.store import SliceStore
from MVGCore.loss import mvg_loss
from MVGCore.metrics import dice_per_class, psnr
from MVGCore.model import MVGModel
from MVGCore.train.batch import CanvasCollator, SampleStream, TrainBatch
from MVGCore.train.config import TrainConfig
from MVGCore.train.data import VAL_STREAM
from MVGCore.train.distributed import Distributed, autocast
from MVGCore.train.run_folder import MetricsLog
from MVGCore.volume_validation import validate_volumes

log = logging.getLogger(__name__)

MONTAGE_ROWS = 4
"""Samples shown per task in a validation montage (a row of five tiles each)."""


def validation_batches(
    store: SliceStore, config: TrainConfig, grid: tuple[int, int]
) -> dict[str, list[TrainBatch]]:
    """Fixed validation samples per task (same every time), in chunks of ``batch_size``."""
    batches: dict[str, list[TrainBatch]] = {}
    for task, weight in config.task_weights().items():
        if weight <= 0:
            continue
        sampler_config = config.sampler_config()
        sampler_config.tasks = {task: 1.0}
        try:
            sampler = InContextDataset(
                store, sampler_config, seed=config.seed, tile_size=config.model_config().tile_size
            )
        except ValueError as error:
            log.warning("no validation for task %r: %s", task, error)
            continue
        stream = SampleStream(sampler, config.seed, VAL_STREAM)
        samples = [stream[i] for i in range(config.val_samples)]
        collate = CanvasCollator(grid, config.seed, VAL_STREAM, None, config.inpaint_outside_weight)
        batches[task] = [
            collate(samples[i : i + config.batch_size]) for i in range(0, len(samples), config.batch_size)
        ]
    return batches


@torch.no_grad()
def validate(
    model: MVGModel,
    batches: dict[str, list[TrainBatch]],
    device: torch.device,
    amp: torch.dtype | None,
    montage_dir: Path | None,
    step: int,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Validation loss per task, Dice (segmentation) and PSNR (image tasks; inpainting also in the
    hole) of the query half predicted from the prompt pair, and a montage image per task."""
    was_training = model.training
    model.eval()
    cfg = model.config
    results: dict[str, float] = {}
    montages: dict[str, torch.Tensor] = {}
    total_loss, total_count = 0.0, 0
    for task, chunks in batches.items():
        losses, scores, hole_scores, rows = [], [], [], []
        for cpu_batch in chunks:
            batch = cpu_batch.to(device)
            with autocast(device, amp):
                pred = model(batch.images, batch.targets, batch.mask, tasks=batch.tasks)
            pred = pred.float()
            loss = mvg_loss(
                pred, batch.targets, batch.targets01, batch.mask, batch.weights, cfg.grid, cfg.patch_size
            )
            losses.append((float(loss), len(batch)))
            query = imagenet_denormalize(query_half(pred)).clamp(0, 1).cpu()
            truth = query_half(cpu_batch.targets01)
            for b in range(len(batch)):
                if task == "segment":
                    labels = decode(query[b : b + 1], cpu_batch.tables[b], cpu_batch.classes[b])[0]
                    truth_labels = decode(truth[b : b + 1], cpu_batch.tables[b], cpu_batch.classes[b])[0]
                    dice = dice_per_class(labels.numpy(), truth_labels.numpy())
                    if dice:
                        scores.append(float(np.mean(list(dice.values()))))
                else:
                    scores.append(psnr(query[b].mean(0).numpy(), truth[b, 0].numpy()))
                    hole = cpu_batch.holes[b].numpy()
                    if task == "inpaint" and hole.any():
                        hole_scores.append(psnr(query[b].mean(0).numpy(), truth[b, 0].numpy(), mask=hole))
            rows.append(_montage_rows(cpu_batch, query))
        task_loss = sum(v * n for v, n in losses) / sum(n for _, n in losses)
        results[f"val_loss/{task}"] = task_loss
        total_loss += task_loss * sum(n for _, n in losses)
        total_count += sum(n for _, n in losses)
        metric = "dice" if task == "segment" else "psnr"
        results[f"{metric}/{task}"] = _finite_mean(scores)
        if hole_scores:
            results["psnr_hole/inpaint"] = _finite_mean(hole_scores)
        montages[task] = torch.cat(rows)[: MONTAGE_ROWS * 5]
        if montage_dir is not None:
            _save_montage(montages[task], montage_dir / f"step_{step:06d}_{task}.png")
    results["val_loss"] = total_loss / max(total_count, 1)
    model.train(was_training)
    return results, montages


def _montage_rows(batch: TrainBatch, query_pred: torch.Tensor) -> torch.Tensor:
    """Per sample: prompt image, prompt target, query image, prediction, query target (RGB tiles)."""
    size = batch.query_images.shape[-1]
    prompt_target = batch.targets01[..., :size, :]
    query_target = batch.targets01[..., size:, :]
    prompt, query = gray_to_rgb(batch.prompt_images), gray_to_rgb(batch.query_images)
    tiles = torch.stack([prompt, prompt_target, query, query_pred, query_target], 1)
    return tiles.reshape(-1, 3, size, size)


def _save_montage(tiles: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temp: save_image(tiles, temp, nrow=5, padding=2, format="png"))


def _finite_mean(values: list[float]) -> float:
    """The mean of the finite scores: one constant tile (infinite PSNR) must not hide the rest."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


class Validation:
    """Validation at a step: the fixed samples and, with ``val_volumes``, whole held-out volumes
    segmented as users run it; the results go to the metrics log and stay in ``last`` for the
    run's summary."""

    def __init__(
        self,
        model: MVGModel,
        batches: dict[str, list[TrainBatch]],
        config: TrainConfig,
        env: Distributed,
        amp: torch.dtype | None,
        montage_dir: Path,
        metrics: MetricsLog,
    ) -> None:
        self.model, self.batches, self.config, self.env = model, batches, config, env
        self.amp, self.montage_dir, self.metrics = amp, montage_dir, metrics
        self.last: dict[str, float] = {}

    def __call__(self, step: int) -> None:
        config, env = self.config, self.env
        if env.is_main and (self.batches or config.val_volumes):
            results, montages = (
                validate(self.model, self.batches, env.device, self.amp, self.montage_dir, step)
                if self.batches
                else ({}, {})
            )
            if config.val_volumes:
                results.update(
                    validate_volumes(
                        self.model, config.val_volumes, config.val_volume_prompts, **config.val_volume_options
                    )
                )
            self.last = results
            self.metrics.write({"step": step, "kind": "val", **results})
            self.metrics.images(montages, step)
            log.info("step %d validation: %s", step, {k: round(v, 4) for k, v in results.items()})
        env.barrier()
