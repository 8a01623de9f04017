"""The run's data: its slice store, the cases held out for validation, and the training loader.

Whole cases are held out, never slices of a training case, so validation measures cases the model
has not seen. The loader's order is a pure function of (seed, step): a resumed run and every rank
draw exactly the samples an uninterrupted run would (see :mod:`MVGCore.train.batch`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from MVGCore.data.samplers import InContextDataset
from MVGCore.data.store import MANIFEST, SliceStore, StoredCase
from MVGCore.masking import DEFAULT_AR_PROBABILITY, MaskSampler
from MVGCore.train.batch import CanvasCollator, SampleStream, StepBatchSampler
from MVGCore.train.config import TrainConfig
from MVGCore.train.distributed import Distributed
from MVGCore.train.run_folder import RunFolder
from MVGCore.train.workers import WorkerLifetime

log = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1
"""Separate random streams of one seed, so that validation samples never repeat training draws."""


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
    """The name of a case that is unique in a store: datasets may reuse case ids."""
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


def split_store(
    config: TrainConfig, folder: RunFolder, env: Distributed
) -> tuple[SliceStore, SliceStore, dict[str, Any]]:
    """The run's store as (training, validation) views, and the split as ``split.json`` records it
    (written by :meth:`RunFolder.record_start` once every check of the start has passed)."""
    store = prepare_store(config, folder.path, env)
    tile_size = config.model_config().tile_size
    if store.tile_size < tile_size:
        raise ValueError(
            f"slice store {store.path} has {store.tile_size}-pixel tiles but model {config.model!r} "
            f"needs {tile_size}; set model_overrides.tile_size or prepare a bigger store"
        )
    train_keys, val_keys = split_cases(store.cases, config)
    split = {"store": str(store.path), "train": train_keys, "val": val_keys}
    return store_view(store, train_keys), store_view(store, val_keys), split


def train_loader(
    sampler: InContextDataset,
    config: TrainConfig,
    start: int,
    env: Distributed,
    workers: WorkerLifetime,
) -> DataLoader:
    """Batches of this rank for the steps after ``start``: ``grad_accum`` micro-batches per step;
    ``workers`` ends the loader's worker processes when the run ends (:mod:`.workers`)."""
    model_config = config.model_config()
    masks = MaskSampler(model_config.grid, ar_probability={**DEFAULT_AR_PROBABILITY, **config.mask_ar})
    collator = CanvasCollator(
        model_config.grid, config.seed, TRAIN_STREAM, masks, config.inpaint_outside_weight
    )
    return DataLoader(
        SampleStream(sampler, config.seed, TRAIN_STREAM),
        batch_sampler=StepBatchSampler(
            start, config.steps, config.batch_size, config.grad_accum, env.rank, env.world
        ),
        collate_fn=collator,
        num_workers=config.num_workers,
        pin_memory=env.device.type == "cuda",
        # A private generator: worker seeding must not draw from the global torch RNG, or a
        # resumed run's drop-path stream would differ from an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
        worker_init_fn=workers.worker_init(),
    )
