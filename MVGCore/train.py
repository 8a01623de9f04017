"""``python -m MVGCore.train``: headless MVG training on a CPU, one GPU, or many under torchrun.

Examples::

    python -m MVGCore.train --config MVGCore/configs/quickstart.yaml --out runs/quickstart
    torchrun --nproc_per_node=8 -m MVGCore.train --config MVGCore/configs/large_8gpu.yaml --out runs/large
    python -m MVGCore.train --out runs/large --resume

A run folder holds everything about a run: ``config.yaml`` (the resolved config), ``data/``
(generated phantoms and the slice store prepared from raw datasets), ``split.json`` (the cases
held out for validation), ``metrics.jsonl`` and ``tb/`` (TensorBoard), ``checkpoints/`` and
``val/`` (a PNG montage per task at every validation). Nothing outside it is written.

Resuming is exact: the data order, colors and masks are pure functions of (seed, sample
position) and the learning rate of the step, and checkpoints carry the optimizer and every RNG
state, so a resumed run logs the same losses as an uninterrupted one. SIGINT/SIGTERM finish the
current step, write a checkpoint and exit cleanly.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from MVGCore import cli
from MVGCore.canvas import gray_to_rgb, imagenet_denormalize, query_half
from MVGCore.checkpoint import PICKLE_SUFFIXES, atomic_write, load_tensors
from MVGCore.coloring import decode
from MVGCore.config import MVGConfig
from MVGCore.data.samplers import InContextDataset
from MVGCore.data.store import MANIFEST, SliceStore, StoredCase
from MVGCore.loss import mvg_loss
from MVGCore.masking import DEFAULT_AR_PROBABILITY, MaskSampler
from MVGCore.metrics import dice_per_class, psnr
from MVGCore.model import OPTIONAL_MODULES, MVGModel
from MVGCore.optim import build_optimizer, lr_at, set_lr
from MVGCore.resample_weights import fit_weights
from MVGCore.train_state import (
    last_checkpoint,
    last_step,
    load_checkpoint,
    local_rng_state,
    save_checkpoint,
)
from MVGCore.training_batch import (
    CanvasCollator,
    SampleStream,
    StepBatchSampler,
    TrainBatch,
)
from MVGCore.training_config import TrainConfig, load_config, parse_override, save_config
from MVGCore.volume_validation import validate_volumes

log = logging.getLogger("MVGCore.train")

RESUMABLE_KEYS = (
    "steps",
    "val_every",
    "ckpt_every",
    "log_every",
    "keep_checkpoints",
    "num_workers",
    "progress",
)
"""Settings a resumed run may change; anything else would make it a different run."""
TRAIN_STREAM, VAL_STREAM = 0, 1
MONTAGE_ROWS = 4


@dataclass
class Distributed:
    rank: int
    world: int
    device: torch.device
    initialised_here: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(deterministic: bool) -> Distributed:
    """Join the torchrun process group when launched by torchrun (NCCL on GPUs, gloo on CPUs)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Distributed(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    initialised_here = not dist.is_initialized()
    if initialised_here:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, initialised_here)


# -- data ------------------------------------------------------------------------------------------


def prepare_store(config: TrainConfig, out: Path, env: Distributed) -> SliceStore:
    """The run's slice store: the one given, or one prepared in ``out/data`` from raw data/phantoms.

    Raw datasets are validated first (missing or unreadable files, label grids, non-integer
    labels, empty datasets stop the run here with the file named). Rank 0 prepares; the others
    wait for it (the run folder must be visible to every rank, as on one machine or a shared disk).
    """
    paths = [Path(p) for p in config.data]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"training data not found: {path}")
    stores = [p for p in paths if (p / MANIFEST).is_file()]
    if stores:
        if len(paths) > 1 or config.phantoms:
            raise ValueError(
                f"data {config.data}: give one prepared slice store, or raw datasets/phantoms to "
                "prepare, not a mix (prepare several datasets into one store with python -m MVGCore.prepare)"
            )
        return SliceStore(stores[0])
    store_path = out / "data" / "store"
    if env.is_main and not store_path.exists():
        _prepare_raw(config, paths, out / "data", store_path)
    # The other ranks poll rather than wait in a collective: preparing can outlast its timeout.
    # The store appears complete or not at all (it is renamed into place); if rank 0 fails,
    # torchrun ends the waiting ranks.
    while not env.is_main and not (store_path / MANIFEST).is_file():
        time.sleep(1.0)
    return SliceStore(store_path)


def _prepare_raw(config: TrainConfig, paths: list[Path], data_dir: Path, store_path: Path) -> None:
    # SimpleITK is loaded only here: training from a prepared store runs without it.
    from MVGCore.data.phantoms import write_nnunet_dataset
    from MVGCore.data.sources import load_cases, validate_cases
    from MVGCore.prepare import prepare

    paths = list(paths)
    if config.phantoms:
        phantoms = data_dir / "phantoms" / "Dataset900_Phantom"
        if not phantoms.exists():
            log.info("generating %d phantom cases in %s", config.phantoms, phantoms)
            write_nnunet_dataset(
                data_dir / "phantoms",
                n_cases=config.phantoms,
                shape=tuple(config.phantom_shape),
                n_classes=config.phantom_classes,
                seed=config.seed,
            )
        paths.append(phantoms)
    cases = []
    for path in paths:
        cases += load_cases(path)
    # A case without foreground is skipped (logged) only when every task is segmentation;
    # otherwise it still serves the image tasks and the sampler keeps it out of segmentation.
    segment_only = set(config.task_weights()) == {"segment"}
    cases = validate_cases(cases, require_foreground=segment_only)
    log.info("preparing %d cases into %s", len(cases), store_path)
    prepare(cases, store_path, size=config.model_config().tile_size, axis=config.axis)


def case_key(case: StoredCase) -> str:
    return f"{case.dataset}/{case.case_id}"


def split_cases(cases: Sequence[StoredCase], config: TrainConfig) -> tuple[list[str], list[str]]:
    """(training, validation) case keys; whole cases are held out, never slices of a training case.

    ``val_cases`` names cases by id or ``dataset/id``; otherwise a seeded random ``val_fraction``.
    """
    keys = [case_key(c) for c in cases]
    if config.val_cases:
        by_name = {}
        for case in cases:
            by_name.setdefault(case.case_id, []).append(case_key(case))
            by_name[case_key(case)] = [case_key(case)]
        missing = [name for name in config.val_cases if name not in by_name]
        if missing:
            raise ValueError(f"val_cases {missing} are not in the store; its cases are {keys}")
        val = sorted({k for name in config.val_cases for k in by_name[name]})
    elif config.val_fraction > 0:
        if len(keys) < 2:
            raise ValueError(
                f"val_fraction {config.val_fraction} needs at least 2 cases to hold one out, the data has "
                f"{len(keys)}; set val_fraction: 0 (no validation) or add cases"
            )
        count = min(len(keys) - 1, max(1, round(config.val_fraction * len(keys))))
        order = np.random.default_rng([config.seed, 7]).permutation(len(keys))
        val = sorted(keys[i] for i in order[:count])
    else:
        val = []
    train = [k for k in keys if k not in set(val)]
    if not train:
        raise ValueError("every case is held out for validation; leave at least one for training")
    return train, val


def store_view(store: SliceStore, keys: Sequence[str]) -> SliceStore:
    """The same store restricted to the cases ``keys`` (rows are absolute, so nothing is copied)."""
    view = copy.copy(store)
    wanted = set(keys)
    view.cases = [case for case in store.cases if case_key(case) in wanted]
    return view


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
        collate = CanvasCollator(
            grid, config.seed, VAL_STREAM, None, config.inpaint_outside_weight, config.segment_change_weight
        )
        batches[task] = [
            collate(samples[i : i + config.batch_size]) for i in range(0, len(samples), config.batch_size)
        ]
    return batches


# -- validation ------------------------------------------------------------------------------------


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
            with _autocast(device, amp):
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
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


# -- the run ---------------------------------------------------------------------------------------


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the main process, which finishes the step and
    writes a checkpoint. A stop sent to the whole process group (Ctrl-C, ``kill -- -PGID``,
    ``pkill -f``, a scheduler) reaches the workers too: without this, a worker dies of it and the
    main process fails on the lost worker instead of stopping cleanly. Workers still exit when the
    loader shuts them down or when the main process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, to show that ranks hold identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _initialise(model: MVGModel, config: TrainConfig) -> None:
    if config.init:
        path = Path(config.init)
        if path.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"init {path}: MVGCore checkpoints are .safetensors; convert pickle files first")
        weights, _ = load_tensors(path)
        weights = fit_weights(weights, model.state_dict())  # another tile or patch size
        # Modules an option adds (OPTIONAL_MODULES) start as a no-op, so a checkpoint made without them
        # initialises everything else.
        optional = tuple(f"{name}." for name in OPTIONAL_MODULES if getattr(model, name) is not None)
        try:
            missing, unexpected = model.load_state_dict(weights, strict=False)
        except RuntimeError as error:
            raise ValueError(
                f"init {path} does not fit model {config.model} {config.model_overrides}: {error}"
            ) from error
        lacking = [k for k in missing if not k.startswith(optional)]
        if lacking or unexpected:
            raise ValueError(
                f"init {path} does not fit model {config.model} {config.model_overrides}: "
                f"missing {lacking}, unexpected {list(unexpected)}"
            )
        fresh = sorted({k.split(".")[0] for k in missing})
        log.info("initialised weights from %s%s", path, f" (new, as initialised: {fresh})" if fresh else "")
    if config.init_encoder:
        from MVGCore.checkpoint import load_state_dict_file
        from MVGCore.pretrained import load_vit_encoder

        report = load_vit_encoder(model, load_state_dict_file(config.init_encoder))
        log.info("encoder initialised from %s:\n%s", config.init_encoder, report.summary())


def _check_run_folder(config: TrainConfig, out: Path, resume: bool) -> int | None:
    """Refuse to mix runs: a new run needs a folder without checkpoints, a resumed one its own config."""
    saved_path = out / "config.yaml"
    checkpoints = out / "checkpoints"
    if resume:
        if not saved_path.is_file():
            raise FileNotFoundError(f"cannot resume: {saved_path} not found (is {out} a run folder?)")
        saved = load_config(saved_path).to_dict()
        changed = sorted(
            k for k, v in config.to_dict().items() if saved.get(k) != v and k not in RESUMABLE_KEYS
        )
        if changed:
            raise ValueError(
                f"cannot resume {out} with a different config: {changed} differ from {saved_path} "
                f"(only {list(RESUMABLE_KEYS)} may change)"
            )
        reached = last_step(checkpoints)
        if reached is not None and config.steps <= reached:
            raise ValueError(
                f"cannot resume {out}: it has reached step {reached} and --steps is {config.steps}; "
                f"give --steps above {reached} to train further"
            )
        return None
    if last_checkpoint(checkpoints) is not None:
        raise FileExistsError(
            f"{out} already holds a run with checkpoints; pass --resume to continue it or choose a new --out"
        )
    if saved_path.is_file() and load_config(saved_path).to_dict() != config.to_dict():
        raise FileExistsError(f"{out} holds another run's config.yaml; choose a new --out")
    return 0


class _StopFlag:
    """SIGINT/SIGTERM request a clean stop at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. embedded in a GUI worker): no handlers
            self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning(
            "received %s: finishing this step, writing a checkpoint, then stopping",
            signal.Signals(signum).name,
        )
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Metrics:
    """metrics.jsonl (one record per line) and TensorBoard, written by rank 0 only."""

    def __init__(self, out: Path, start_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            self._trim(start_step)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"), purge_step=start_step)
        self.handle = open(self.path, "a", encoding="utf-8")  # closed in close()

    def _trim(self, start_step: int) -> None:
        """Drop records of steps this run will log again: those a killed run logged after its last
        checkpoint, or (``start_step`` 0) everything an attempt that never checkpointed logged."""
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines):  # the last record, cut off by a kill: it is logged again
                    log.warning("%s: dropping its unreadable last line (a write cut off)", self.path)
                    continue
                raise ValueError(
                    f"cannot resume: {self.path} line {number} is not a metrics record"
                ) from error
            if step < start_step:
                kept.append(line)
        atomic_write(self.path, lambda temp: Path(temp).write_text("".join(f"{x}\n" for x in kept)))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        for key, value in record.items():
            if key not in ("step", "kind") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

    def images(self, montages: dict[str, torch.Tensor], step: int) -> None:
        if self.enabled:
            from torchvision.utils import make_grid

            for task, tiles in montages.items():
                self.writer.add_image(f"val/{task}", make_grid(tiles, nrow=5, padding=2), step)

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            self.writer.close()


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume``, continue) training into the run folder ``out``; return the summary.

    ``on_step`` is called on every rank after each optimizer step with that step's record
    (step, loss, lr, grad_norm, samples_per_s), e.g. to drive a progress display.
    """
    out = Path(out)
    env = setup_distributed(config.deterministic)
    stop = _StopFlag()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    wrote_config = made_data = False
    try:
        _check_run_folder(config, out, resume)
        out.mkdir(parents=True, exist_ok=True)
        if env.is_main:
            wrote_config = not (out / "config.yaml").is_file()
            made_data = not (out / "data").exists()
            save_config(config, out / "config.yaml")
            log.info(
                "resolved config (saved to %s):\n%s",
                out / "config.yaml",
                yaml.safe_dump(config.to_dict(), sort_keys=False),
            )
        return _run(config, out, resume, env, stop, on_step)
    except BaseException:
        # A start that failed before its first checkpoint must not block its own retry with a
        # corrected config ("holds another run's config.yaml"): its config.yaml goes with it, and
        # so does the data it prepared, which a retry with other data must not silently reuse.
        if wrote_config and last_checkpoint(out / "checkpoints") is None:
            (out / "config.yaml").unlink(missing_ok=True)
            if made_data:
                shutil.rmtree(out / "data", ignore_errors=True)
        raise
    finally:
        stop.restore()
        torch.use_deterministic_algorithms(was_deterministic)
        if env.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def _check_module_names(config: TrainConfig, model_config: MVGConfig) -> None:
    """Refuse ``lr_scales`` or ``train_modules`` naming a module the model lacks, before any data is
    read (the model is built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        modules = dict(MVGModel(model_config).named_children())
    for option, names in (("lr_scales", config.lr_scales), ("train_modules", config.train_modules)):
        unknown = sorted(m for m in names if m not in modules)
        if unknown:
            raise ValueError(
                f"{option} names {unknown}, which model {config.model!r} does not have "
                f"(or has switched off); its modules are {sorted(modules)}"
            )


def _freeze_all_but(model: MVGModel, train_modules: list[str]) -> None:
    """With ``train_modules`` set, only their weights train: a module added to a trained model (a
    refiner) then learns without moving what the rest already does well, and the backward pass
    stops where the first trained module reads the frozen ones."""
    if not train_modules:
        return
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in train_modules)
    log.info("training only %s; every other weight is frozen", sorted(train_modules))


def _run(
    config: TrainConfig,
    out: Path,
    resume: bool,
    env: Distributed,
    stop: _StopFlag,
    on_step: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    torch.use_deterministic_algorithms(config.deterministic)
    model_config = config.model_config()
    _check_module_names(config, model_config)
    store = prepare_store(config, out, env)
    if store.tile_size < model_config.tile_size:
        raise ValueError(
            f"slice store {store.path} has {store.tile_size}-pixel tiles but model {config.model!r} "
            f"needs {model_config.tile_size}; set model_overrides.tile_size or prepare a bigger store"
        )
    train_keys, val_keys = split_cases(store.cases, config)
    if env.is_main:
        split = json.dumps({"store": str(store.path), "train": train_keys, "val": val_keys}, indent=1)
        atomic_write(out / "split.json", lambda temp: Path(temp).write_text(split))
    grid = model_config.grid
    train_sampler = InContextDataset(
        store_view(store, train_keys),
        config.sampler_config(),
        seed=config.seed,
        tile_size=model_config.tile_size,
    )
    val_batches = (
        validation_batches(store_view(store, val_keys), config, grid) if val_keys and env.is_main else {}
    )

    torch.manual_seed(config.seed)
    model = MVGModel(model_config).to(env.device)
    if not resume:  # a resumed run takes every weight from its checkpoint
        _initialise(model, config)
    _freeze_all_but(model, config.train_modules)
    optimizer = build_optimizer(
        model, config.lr, config.weight_decay, config.layer_decay, tuple(config.betas), config.lr_scales
    )
    checkpoints = out / "checkpoints"
    step = 0
    torch.manual_seed(config.seed + 1 + env.rank)  # drop-path draws differ per rank
    if resume:
        latest = last_checkpoint(checkpoints)
        if latest is None:
            raise FileNotFoundError(f"cannot resume: no checkpoint in {checkpoints}")
        resumed = load_checkpoint(latest, model, optimizer, rank=env.rank)
        step = resumed.step
        if not resumed.rng_restored:
            log.warning("rank %d: %s has no RNG state for this rank (fewer processes?)", env.rank, latest)
        log.info("resumed from %s at step %d", latest, step)
    wrapped: torch.nn.Module = model
    if env.world > 1:
        unused = max(model_config.feature_blocks) < model_config.depth - 1
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=unused,
        )

    amp = _amp_dtype(config, env.device)
    # Step `step` itself was logged (train record, validation) before its checkpoint was written.
    metrics = _Metrics(out, step + 1 if resume else 0, env.is_main)
    masks = MaskSampler(grid, ar_probability={**DEFAULT_AR_PROBABILITY, **config.mask_ar})
    collator = CanvasCollator(
        grid, config.seed, TRAIN_STREAM, masks, config.inpaint_outside_weight, config.segment_change_weight
    )
    loader = DataLoader(
        SampleStream(train_sampler, config.seed, TRAIN_STREAM),
        batch_sampler=StepBatchSampler(
            step, config.steps, config.batch_size, config.grad_accum, env.rank, env.world
        ),
        collate_fn=collator,
        num_workers=config.num_workers,
        pin_memory=env.device.type == "cuda",
        # A private generator: worker seeding must not draw from the global torch RNG, or a
        # resumed run's drop-path stream would differ from an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=_ignore_stop_signals,
    )
    from tqdm import tqdm

    bar = tqdm(
        total=config.steps, initial=step, disable=not (env.is_main and config.progress), dynamic_ncols=True
    )
    last_val: dict[str, float] = {}

    def run_validation(at: int) -> None:
        nonlocal last_val
        if env.is_main and (val_batches or config.val_volumes):
            last_val, montages = (
                validate(model, val_batches, env.device, amp, out / "val", at) if val_batches else ({}, {})
            )
            if config.val_volumes:
                last_val.update(
                    validate_volumes(
                        model, config.val_volumes, config.val_volume_prompts, **config.val_volume_options
                    )
                )
            metrics.write({"step": at, "kind": "val", **last_val})
            metrics.images(montages, at)
            log.info("step %d validation: %s", at, {k: round(v, 4) for k, v in last_val.items()})
        env.barrier()

    # Only now does Ctrl-C/SIGTERM mean "checkpoint and stop": while data is prepared and the model
    # built there is no step to finish, so they interrupt at once (nothing half-made is kept).
    stop.install()
    try:
        if not resume:
            run_validation(0)
        batches = iter(loader)
        samples_per_step = config.batch_size * config.grad_accum * env.world
        while step < config.steps:
            started = time.perf_counter()
            lr = lr_at(step, config.lr, config.warmup_steps, config.steps, config.min_lr)
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), device=env.device)
            for micro in range(config.grad_accum):
                batch = next(batches).to(env.device)
                last_micro = micro == config.grad_accum - 1
                sync = wrapped.no_sync() if env.world > 1 and not last_micro else nullcontext()
                with sync:
                    with _autocast(env.device, amp):
                        pred = wrapped(batch.images, batch.targets, batch.mask, tasks=batch.tasks)
                    loss = mvg_loss(
                        pred.float(),
                        batch.targets,
                        batch.targets01,
                        batch.mask,
                        batch.weights,
                        grid,
                        model_config.patch_size,
                    )
                    (loss / config.grad_accum).backward()
                step_loss += loss.detach() / config.grad_accum
            max_norm = config.clip_grad if config.clip_grad > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            step += 1
            stop_now = torch.tensor(float(stop.requested), device=env.device)
            if env.world > 1:
                dist.all_reduce(step_loss)
                step_loss /= env.world
                dist.all_reduce(stop_now, op=dist.ReduceOp.MAX)
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"training loss became {loss_value} at step {step}; lower lr or enable clip_grad, "
                    f"and resume from the last checkpoint in {checkpoints}"
                )
            elapsed = time.perf_counter() - started
            record = {
                "step": step,
                "kind": "train",
                "loss": loss_value,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "samples_per_s": samples_per_step / elapsed,
            }
            if step % config.log_every == 0 or step == config.steps:
                metrics.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if on_step is not None:
                on_step(record)
            stopping = bool(stop_now)
            # Validate before checkpointing, so that a run resumed from this checkpoint has
            # every record up to its step.
            if step % config.val_every == 0 or step == config.steps:
                run_validation(step)
            if step % config.ckpt_every == 0 or step == config.steps or stopping:
                rank_rng = [local_rng_state()]
                if env.world > 1:
                    rank_rng = [None] * env.world
                    dist.all_gather_object(rank_rng, local_rng_state())
                if env.is_main:
                    save_checkpoint(
                        checkpoints, step, model, optimizer, keep=config.keep_checkpoints, rank_rng=rank_rng
                    )
                env.barrier()
            if stopping:
                log.warning("stopped at step %d on request; resume with --resume", step)
                break
    finally:
        bar.close()
        metrics.close()

    digests = [weights_digest(model)]
    if env.world > 1:
        digests = [None] * env.world
        dist.all_gather_object(digests, weights_digest(model))
    summary = {
        "step": step,
        "steps": config.steps,
        "stopped_early": step < config.steps,
        "checkpoint": str(last_checkpoint(checkpoints)),
        "weights_sha256": digests,
        "world_size": env.world,
        "val": last_val,
    }
    if env.is_main:
        text = json.dumps(summary, indent=2)
        atomic_write(out / "summary.json", lambda temp: Path(temp).write_text(text))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MVGCore.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="YAML training config (see MVGCore/configs)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created; never reused silently)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    parser.add_argument("--data", action="append", help="slice store or dataset folder/manifest (repeatable)")
    parser.add_argument("--phantoms", type=int, help="generate this many phantom cases as training data")
    parser.add_argument("--steps", type=int, help="number of optimizer steps")
    parser.add_argument("--seed", type=int, help="random seed of data, colors, masks and init")
    parser.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    overrides = dict(parse_override(item) for item in args.set)
    for key in ("data", "phantoms", "steps", "seed", "init"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = (
                [str(v) for v in value] if key == "data" else (str(value) if key == "init" else value)
            )
    if args.resume:
        base = args.out / "config.yaml"
        if not base.is_file():
            raise FileNotFoundError(f"cannot resume: {base} not found (is {args.out} a run folder?)")
        config = load_config(base, overrides)
        if args.config is not None and load_config(args.config, overrides).to_dict() != config.to_dict():
            raise ValueError(f"--config {args.config} differs from the run's {base}; resume without --config")
    else:
        if args.config is None and not overrides:
            parser.error("give --config FILE (or settings with --set/--data/--phantoms)")
        config = load_config(args.config, overrides)
        # Absolute paths, so that the saved config still works from another directory.
        config.data = [str(Path(p).resolve()) for p in config.data]
        for key in ("init", "init_encoder"):
            if getattr(config, key):
                setattr(config, key, str(Path(getattr(config, key)).resolve()))
    summary = train(config, args.out, resume=args.resume)
    log.info("finished at step %d; last checkpoint %s", summary["step"], summary["checkpoint"])
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "python -m MVGCore.train"))
