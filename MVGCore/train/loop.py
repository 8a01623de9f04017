"""The run itself: build everything once, then step until the last step or a stop request.

Every rank runs the same steps: set the step's learning rate, accumulate gradients over
``grad_accum`` micro-batches (DDP syncs only on the last), clip, step the optimizer, then agree
on the loss and on whether to stop. A step is validated before it is checkpointed, so a run
resumed from that checkpoint has every record up to its step. The order of the seeding below is
part of the exact-resume contract: a resumed run must draw what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from MVGCore.data.samplers import InContextDataset
from MVGCore.loss import mvg_loss
from MVGCore.model import MVGModel
from MVGCore.optim import build_optimizer, lr_at, set_lr
from MVGCore.train.batch import TrainBatch
from MVGCore.train.config import TrainConfig
from MVGCore.train.data import split_store, train_loader
from MVGCore.train.distributed import Distributed, amp_dtype, autocast, setup_distributed
from MVGCore.train.run_folder import MetricsLog, RunFolder, StopFlag
from MVGCore.train.state import (
    RngSnapshot,
    last_checkpoint,
    load_checkpoint,
    local_rng_state,
    save_checkpoint,
)
from MVGCore.train.validation import Validation, validation_batches
from MVGCore.train.weights import check_module_names, freeze_all_but, initialise, weights_digest
from MVGCore.train.workers import LoaderFailed, WorkerLifetime, next_batch

log = logging.getLogger(__name__)

StepCallback = Callable[[dict[str, Any]], None]


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume``, continue) training into the run folder ``out``; return the summary.

    ``on_step`` is called on every rank after each optimizer step with that step's record
    (step, loss, lr, grad_norm, samples_per_s), e.g. to drive a progress display.
    """
    folder = RunFolder(Path(out))
    env = setup_distributed(config.deterministic)
    stop = StopFlag()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        folder.start(config, resume, env.is_main)
        return run(config, folder, resume, env, stop, on_step)
    except BaseException:
        folder.undo_failed_start()
        raise
    finally:
        stop.restore()
        torch.use_deterministic_algorithms(was_deterministic)
        env.close()


def run(
    config: TrainConfig,
    folder: RunFolder,
    resume: bool,
    env: Distributed,
    stop: StopFlag,
    on_step: StepCallback | None,
) -> dict[str, Any]:
    """Train in a started run folder: build, validate the starting weights (new runs), step, sum up."""
    torch.use_deterministic_algorithms(config.deterministic)
    workers = WorkerLifetime()
    try:
        setup = build(config, folder, resume, env, workers)
        # Every check of the start has passed: only now is the folder written (a failed resume
        # leaves it as it was).
        folder.record_start(config, resume, env.is_main, setup.split)
        # Step `start` itself was logged (train record, validation) before its checkpoint was written.
        metrics = MetricsLog(folder.path, setup.start + 1 if resume else 0, env.is_main)
        steps = StepLog(metrics, config, setup.start, env, on_step)
        validation = Validation(
            setup.model, setup.val_batches, config, env, setup.amp, folder.path / "val", metrics
        )
        # Only now does Ctrl-C/SIGTERM mean "checkpoint and stop": while data is prepared and the
        # model built there is no step to finish, so they interrupt at once (nothing half-made is kept).
        stop.install()
        try:
            if not resume:
                validation(0)
            step = step_loop(setup, stop, steps, validation)
        finally:
            steps.close()
    finally:
        workers.end()  # whoever still holds the loader (a caller keeping the error), its workers exit
    return summarise(setup, step, validation.last)


@dataclass
class Setup:
    """What the step loop works with, built once before the first step."""

    config: TrainConfig
    folder: RunFolder
    env: Distributed
    model: MVGModel
    wrapped: torch.nn.Module
    """The module the steps run: ``model``, or its DDP wrapper under torchrun."""
    optimizer: torch.optim.Optimizer
    start: int
    """The step the run starts after: 0, or the step of the checkpoint it resumes."""
    loader: DataLoader
    val_batches: dict[str, list[TrainBatch]]
    amp: torch.dtype | None
    split: dict[str, Any]
    """The held-out cases, as ``split.json`` records them."""


def build(
    config: TrainConfig, folder: RunFolder, resume: bool, env: Distributed, workers: WorkerLifetime
) -> Setup:
    """Data, model, optimizer and loader, in an order that fails on a bad setting before slow work
    and seeds the model and the per-rank drop-path draws as every run of this config does."""
    model_config = config.model_config()
    check_module_names(config, model_config)
    train_store, val_store, split = split_store(config, folder, env)
    train_sampler = InContextDataset(
        train_store, config.sampler_config(), seed=config.seed, tile_size=model_config.tile_size
    )
    val_batches = (
        validation_batches(val_store, config, model_config.grid) if val_store.cases and env.is_main else {}
    )

    torch.manual_seed(config.seed)
    model = MVGModel(model_config).to(env.device)
    if not resume:  # a resumed run takes every weight from its checkpoint
        initialise(model, config)
    freeze_all_but(model, config.train_modules)
    optimizer = build_optimizer(
        model, config.lr, config.weight_decay, config.layer_decay, tuple(config.betas), config.lr_scales
    )
    torch.manual_seed(config.seed + 1 + env.rank)  # drop-path draws differ per rank
    start = resume_from_checkpoint(folder, model, optimizer, env) if resume else 0
    return Setup(
        config=config,
        folder=folder,
        env=env,
        model=model,
        wrapped=env.wrap(model),
        optimizer=optimizer,
        start=start,
        loader=train_loader(train_sampler, config, start, env, workers),
        val_batches=val_batches,
        amp=amp_dtype(config, env.device),
        split=split,
    )


def resume_from_checkpoint(
    folder: RunFolder, model: MVGModel, optimizer: torch.optim.Optimizer, env: Distributed
) -> int:
    """Load the last checkpoint (weights, optimizer, this rank's RNG states); return its step."""
    latest = last_checkpoint(folder.checkpoints)
    if latest is None:
        raise FileNotFoundError(f"cannot resume: no checkpoint in {folder.checkpoints}")
    resumed = load_checkpoint(latest, model, optimizer, rank=env.rank)
    if not resumed.rng_restored:
        log.warning("rank %d: %s has no RNG state for this rank (fewer processes?)", env.rank, latest)
    log.info("resumed from %s at step %d", latest, resumed.step)
    return resumed.step


def save_step(setup: Setup, step: int) -> None:
    """Checkpoint ``step``: rank 0 writes the weights, the optimizer and every rank's RNG states."""
    rank_rng = setup.env.gather(local_rng_state())
    if setup.env.is_main:
        save_checkpoint(
            setup.folder.checkpoints,
            step,
            setup.model,
            setup.optimizer,
            keep=setup.config.keep_checkpoints,
            rank_rng=rank_rng,
        )
    setup.env.barrier()


class StepLog:
    """Where each step's record goes: ``metrics.jsonl`` and TensorBoard (every ``log_every`` steps
    and the last), the progress bar (rank 0 with ``progress``) and the caller's ``on_step``."""

    def __init__(
        self,
        metrics: MetricsLog,
        config: TrainConfig,
        start: int,
        env: Distributed,
        on_step: StepCallback | None,
    ) -> None:
        from tqdm import tqdm

        self.metrics, self.config, self.on_step = metrics, config, on_step
        self.samples_per_step = config.batch_size * config.grad_accum * env.world
        self.bar = tqdm(
            total=config.steps,
            initial=start,
            disable=not (env.is_main and config.progress),
            dynamic_ncols=True,
        )

    def record(self, step: int, loss: float, lr: float, grad_norm: float, seconds: float) -> None:
        record = {
            "step": step,
            "kind": "train",
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": self.samples_per_step / seconds,
        }
        if step % self.config.log_every == 0 or step == self.config.steps:
            self.metrics.write(record)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if self.on_step is not None:
            self.on_step(record)

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()


def optimizer_step(
    setup: Setup, batches: Iterator[TrainBatch], lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at ``lr`` over ``grad_accum`` micro-batches; (this rank's mean loss, the
    gradient norm before clipping)."""
    config, env, model = setup.config, setup.env, setup.model
    set_lr(setup.optimizer, lr)
    setup.optimizer.zero_grad(set_to_none=True)
    step_loss = torch.zeros((), device=env.device)
    for micro in range(config.grad_accum):
        batch = next_batch(batches).to(env.device)
        last_micro = micro == config.grad_accum - 1
        # DDP averages gradients on every backward pass unless told not to: once per step suffices.
        sync = setup.wrapped.no_sync() if env.world > 1 and not last_micro else nullcontext()
        with sync:
            with autocast(env.device, setup.amp):
                pred = setup.wrapped(batch.images, batch.targets, batch.mask, tasks=batch.tasks)
            loss = mvg_loss(
                pred.float(),
                batch.targets,
                batch.targets01,
                batch.mask,
                batch.weights,
                model.config.grid,
                model.config.patch_size,
            )
            (loss / config.grad_accum).backward()
        step_loss += loss.detach() / config.grad_accum
    max_norm = config.clip_grad if config.clip_grad > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    setup.optimizer.step()
    return step_loss, grad_norm


def step_loop(setup: Setup, stop: StopFlag, steps: StepLog, validation: Validation) -> int:
    """Step from ``setup.start`` to ``config.steps``, validating and checkpointing on schedule;
    return the last step done (earlier than ``config.steps`` when a stop was requested)."""
    config, env = setup.config, setup.env
    batches = iter(setup.loader)
    step = saved = setup.start
    while step < config.steps:
        started = time.perf_counter()
        rng = RngSnapshot()
        lr = lr_at(step, config.lr, config.warmup_steps, config.steps, config.min_lr)
        try:
            step_loss, grad_norm = optimizer_step(setup, batches, lr)
        except LoaderFailed as failure:
            raise data_failure(setup, failure, step, saved, rng) from failure.error
        step += 1
        loss = float(env.average(step_loss))
        stopping = env.any_rank(stop.requested)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at step {step}; lower lr or enable clip_grad, "
                f"and resume from the last checkpoint in {setup.folder.checkpoints}"
            )
        steps.record(step, loss, lr, float(grad_norm), time.perf_counter() - started)
        if step % config.val_every == 0 or step == config.steps:
            validation(step)
        if step % config.ckpt_every == 0 or step == config.steps or stopping:
            save_step(setup, step)
            saved = step
        if stopping:
            log.warning("stopped at step %d on request; resume with --resume", step)
            break
    return step


def data_failure(
    setup: Setup, failure: LoaderFailed, step: int, saved: int, rng: RngSnapshot
) -> BaseException:
    """The one-line error that ends the run when the batch of step ``step + 1`` cannot be made,
    after checkpointing ``step`` if it is newer than the last checkpoint ``saved``.

    The failed step changed no weight (its optimizer step never ran), and ``rng`` takes back what
    its first micro-batches drew, so the checkpoint is the one an uninterrupted run would write.
    Under torchrun the other ranks wait in a collective and torchrun ends them: no checkpoint then.
    """
    if step > saved and setup.env.world == 1:
        rng.restore()
        save_step(setup, step)
        saved = step
    where = "a data loader worker" if failure.in_worker else "the training data"
    message = f"{where} failed at step {step + 1}: {failure.reason}"
    if saved:
        message += f"; {setup.folder.path} resumes from step {saved} with --resume once the data is fixed"
    else:
        message += "; no step was trained"
    return failure.rebuilt(message)


def summarise(setup: Setup, step: int, last_val: dict[str, float]) -> dict[str, Any]:
    """The run's summary (rank 0 also writes it as ``summary.json``), with every rank's weight digest."""
    config = setup.config
    summary = {
        "step": step,
        "steps": config.steps,
        "stopped_early": step < config.steps,
        "checkpoint": str(last_checkpoint(setup.folder.checkpoints)),
        "weights_sha256": setup.env.gather(weights_digest(setup.model)),
        "world_size": setup.env.world,
        "val": last_val,
    }
    if setup.env.is_main:
        setup.folder.write_json("summary.json", summary, 2)
    return summary
