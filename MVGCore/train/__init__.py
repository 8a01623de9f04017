"""MVG training: :func:`train` from Python, ``python -m MVGCore.train`` from a shell (:mod:`.cli`).

A run folder holds everything about a run: ``config.yaml`` (the resolved config), ``data/``
(generated phantoms and the slice store prepared from raw datasets), ``split.json`` (the cases
held out for validation), ``metrics.jsonl`` and ``tb/`` (TensorBoard), ``checkpoints/`` and
``val/`` (a PNG montage per task at every validation). Nothing outside it is written.

Resuming is exact: the data order, colors and masks are pure functions of (seed, sample
position) and the learning rate of the step, and checkpoints carry the optimizer and every RNG
state, so a resumed run logs the same losses as an uninterrupted one. SIGINT/SIGTERM finish the
current step, write a checkpoint and exit cleanly.

One module per job: :mod:`.config` (the settings), :mod:`.run_folder` (the folder, metrics, stop
requests), :mod:`.distributed` (ranks and devices), :mod:`.data` (store, split, loader),
:mod:`.batch` (samples to model batches), :mod:`.weights` (initial and frozen weights),
:mod:`.validation`, :mod:`.state` (checkpoints that resume exactly) and :mod:`.loop` (the steps).
"""

from __future__ import annotations

from MVGCore.train.cli import main
from MVGCore.train.data import case_key, split_cases, store_view
from MVGCore.train.loop import train
from MVGCore.train.weights import weights_digest

__all__ = ["case_key", "main", "split_cases", "store_view", "train", "weights_digest"]
