"""MVG training: :func:`train` from Python, ``python -m MVGCore.train`` from a shell (:mod:`.cli`).

A run folder holds everything about a run: ``config.yaml`` (the resolved config), ``data/``
(generated phantoms and the slice store prepared from raw datasets), ``split.json`` (the cases
held out for validation), ``metrics.jsonl`` and ``tb/`` (TensorBoard), ``checkpoints/`` and
``val/`` (a PNG montage per task at every validation). Nothing outside it is written.

Resuming is exact: the data order, colors and masks are pure functions of (seed, sample
position) and the learning rate of the step, and checkpoints carry the optimizer and every RNG
state, so a resumed run logs the same losses as an uninterrupted one. SIGINT/SIGTERM finish the
current step, write a checkpoint and exit cleanly. A data error ends the run at once, in one
line, after a checkpoint of the last completed step.

One module per job: :mod:`.config` (the settings), :mod:`.run_folder` (the folder, metrics, stop
requests), :mod:`.distributed` (ranks and devices), :mod:`.data` (store, split, loader),
:mod:`.batch` (samples to model batches), :mod:`.weights` (initial and frozen weights),
:mod:`.validation`, :mod:`.state` (checkpoints that resume exactly), :mod:`.workers` (the data
loader's processes) and :mod:`.loop` (the steps).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "case_key": "data",
    "main": "cli",
    "split_cases": "data",
    "store_view": "data",
    "train": "loop",
    "weights_digest": "weights",
}
"""The module of each public name, imported on first use: inference imports :mod:`.batch` (test-time
adaptation builds its batches there), and that must not load the training loop and what it imports
(scipy.stats, through the validation metrics, added one to two seconds to every inference start here)."""

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
