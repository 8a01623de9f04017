"""The run folder and what the run leaves in it besides checkpoints: config, metrics, stop requests.

A run folder belongs to one run. A new run refuses a folder that holds another run, a resumed run
refuses a config that would make it a different run, and a start that fails before its first
checkpoint takes back everything it wrote (the folder too, if it made it), so that the user's
corrected retry does not meet it and nothing half-made is left. A resumed run writes nothing until
every check of its start has passed (the data, the model, the checkpoint), so that a failed resume
leaves the folder as it was. ``metrics.jsonl`` is trimmed on resume to the steps before the
checkpoint, so that every step is logged once. SIGINT/SIGTERM only set a flag: the loop finishes
the step and checkpoints first (the loader's workers leave them to it: :mod:`.workers`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
import yaml

from MVGCore.checkpoint import atomic_write
from MVGCore.train.config import TrainConfig, load_config, save_config
from MVGCore.train.state import last_checkpoint, last_step

log = logging.getLogger(__name__)

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
RUN_ENTRIES = (
    "config.yaml",
    "data",
    "split.json",
    "metrics.jsonl",
    "tb",
    "val",
    "checkpoints",
    "summary.json",
)
"""What a run writes in its folder (see :mod:`MVGCore.train`)."""


class RunFolder:
    """The folder ``path`` of one run, and what this start of the run has added to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.new_entries: list[str] = []
        """What this start may take back on failure: the run files it found missing at its start."""
        self.made_folder = False

    def check(self, config: TrainConfig, resume: bool) -> None:
        """Refuse to mix runs: a new run needs a folder without checkpoints, a resumed one its own config."""
        saved_path = self.path / "config.yaml"
        if resume:
            if not saved_path.is_file():
                raise FileNotFoundError(
                    f"cannot resume: {saved_path} not found (is {self.path} a run folder?)"
                )
            saved = load_config(saved_path).to_dict()
            changed = sorted(
                k for k, v in config.to_dict().items() if saved.get(k) != v and k not in RESUMABLE_KEYS
            )
            if changed:
                raise ValueError(
                    f"cannot resume {self.path} with a different config: {changed} differ from {saved_path} "
                    f"(only {list(RESUMABLE_KEYS)} may change)"
                )
            reached = last_step(self.checkpoints)
            if reached is not None and config.steps <= reached:
                raise ValueError(
                    f"cannot resume {self.path}: it has reached step {reached} and --steps is "
                    f"{config.steps}; give --steps above {reached} to train further"
                )
            return
        if last_checkpoint(self.checkpoints) is not None:
            raise FileExistsError(
                f"{self.path} already holds a run with checkpoints; pass --resume to continue it "
                "or choose a new --out"
            )
        if saved_path.is_file() and load_config(saved_path).to_dict() != config.to_dict():
            raise FileExistsError(f"{self.path} holds another run's config.yaml; choose a new --out")

    def start(self, config: TrainConfig, resume: bool, is_main: bool) -> None:
        """Check the folder and create it; rank 0 prints the resolved config and, for a new run,
        saves it at once: it claims the folder, so that a retry with another config (or data) is
        refused rather than silently reusing the data this start prepares."""
        self.check(config, resume)
        if is_main and not resume:
            self.made_folder = not self.path.exists()
            self.new_entries = [name for name in RUN_ENTRIES if not (self.path / name).exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        if not is_main:
            return
        if not resume:
            save_config(config, self.path / "config.yaml")
        log.info(
            "resolved config (%s %s):\n%s",
            "of the run in" if resume else "saved to",
            self.path / "config.yaml",
            yaml.safe_dump(config.to_dict(), sort_keys=False),
        )

    def record_start(self, config: TrainConfig, resume: bool, is_main: bool, split: dict[str, Any]) -> None:
        """Once every check of the start has passed: (rank 0) the split, and a resumed run's config
        with its changed settings (``steps``...), which a failed resume must leave as they were."""
        if not is_main:
            return
        if resume:
            save_config(config, self.path / "config.yaml")
        self.write_json("split.json", split, 1)

    def undo_failed_start(self) -> None:
        """After a failure: a new run that wrote no checkpoint takes back every run file it wrote.

        Its config.yaml must not block the user's corrected retry ("holds another run's
        config.yaml"), its prepared data must not be silently reused by a retry with other data,
        and its split, metrics, TensorBoard and validation files would make a half-made run folder;
        a folder this start made goes too once it is empty. A resumed run, or one that wrote a
        checkpoint, keeps everything: it is resumable.
        """
        if not self.new_entries or last_checkpoint(self.checkpoints) is not None:
            return
        for name in self.new_entries:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if self.made_folder:
            try:
                self.path.rmdir()
            except OSError:  # something else was put there meanwhile: it stays, and so does the folder
                pass

    def write_json(self, name: str, data: Any, indent: int) -> None:
        """``data`` as the JSON file ``name`` in the folder, written atomically (never half a file)."""
        text = json.dumps(data, indent=indent)
        atomic_write(self.path / name, lambda temp: Path(temp).write_text(text))


class StopFlag:
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


class MetricsLog:
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
