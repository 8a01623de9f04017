"""Training checkpoints that resume exactly: weights, optimizer moments, step and every RNG state.

A checkpoint at step s is two safetensors files in ``run/checkpoints``: ``step_{s}.safetensors``
is a plain model checkpoint (loadable by :func:`MVGCore.checkpoint.load_model`, so any
checkpoint can be used for inference or ``--init``), and ``step_{s}.state.safetensors`` holds the
optimizer state flattened into tensors, with param groups, the step and the numpy/python RNG
states in its JSON sidecar and the torch RNG states as byte tensors. No pickle anywhere. Both are
written atomically and only then does ``last.json`` point at them, so a crash at any moment
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MVGCore.checkpoint import atomic_write, load_tensors, save_model, save_tensors, sidecar_path
from MVGCore.model import MVGModel

LAST = "last.json"
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


@dataclass
class Resumed:
    step: int
    meta: dict[str, Any]
    rng_restored: bool


def checkpoint_paths(folder: Path, step: int) -> tuple[Path, Path]:
    """(model file, training-state file) of the checkpoint at ``step``."""
    return folder / f"step_{step:06d}.safetensors", folder / f"step_{step:06d}.state.safetensors"


def local_rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU, and the current GPU's once CUDA is in use)."""
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


class RngSnapshot:
    """Every RNG state of this process at one moment (torch, python, numpy), to go back to.

    A step whose data failed half-way (after a micro-batch's drop-path draws) is checkpointed as
    the step before it; that checkpoint must hold the RNG states that step ended with, or the
    resumed run would not draw what an uninterrupted one does.
    """

    def __init__(self) -> None:
        self.torch = local_rng_state()
        self.python = random.getstate()
        self.numpy = np.random.get_state(legacy=False)  # noqa: NPY002 (libraries use it)

    def restore(self) -> None:
        torch.set_rng_state(self.torch["torch_cpu"])
        if "torch_cuda" in self.torch:
            torch.cuda.set_rng_state(self.torch["torch_cuda"])
        random.setstate(self.python)
        np.random.set_state(self.numpy)  # noqa: NPY002 (restores what libraries may draw from)


def rng_json() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {
        "python": [version, list(internal), gauss],
        "numpy_global": _jsonable(np.random.get_state(legacy=False)),  # noqa: NPY002 (libraries use it)
    }


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], rank: int = 0) -> bool:
    """Restore rank ``rank``'s torch states and the python/numpy states; False if the rank is absent."""
    prefix = f"rng.rank{rank}."
    mine = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    if not mine:
        return False
    torch.set_rng_state(mine["torch_cpu"])
    if "torch_cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["torch_cuda"])
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(meta["rng"]["numpy_global"])
    numpy_state["state"] = {
        "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
        "pos": int(numpy_state["state"]["pos"]),
    }
    np.random.set_state(numpy_state)  # noqa: NPY002 (restores what libraries may draw from)
    return True


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer state as ``optim.state.{param}.{key}`` tensors plus JSON-able groups and scalars."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim.state."):
            index, key = name.removeprefix("optim.state.").split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, entry in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})


def save_checkpoint(
    folder: str | Path,
    step: int,
    model: MVGModel,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any] | None = None,
    keep: int = 3,
    rank_rng: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the checkpoint at ``step``, point ``last.json`` at it, delete all but the newest ``keep``.

    ``rank_rng`` holds :func:`local_rng_state` of every rank (gathered by the caller under DDP);
    by default this process's state is saved as rank 0's.
    """
    folder = Path(folder)
    model_path, state_path = checkpoint_paths(folder, step)
    save_model(model_path, model, {"step": step, **(extra or {})})
    tensors, optim_meta = optimizer_tensors(optimizer)
    for rank, state in enumerate(rank_rng or [local_rng_state()]):
        tensors.update({f"rng.rank{rank}.{name}": value for name, value in state.items()})
    meta = {"step": step, "optimizer": optim_meta, "rng": rng_json(), "model": model_path.name}
    save_tensors(state_path, tensors, meta)
    pointer = json.dumps({"step": step, "model": model_path.name, "state": state_path.name}, indent=2)
    atomic_write(folder / LAST, lambda temp: Path(temp).write_text(pointer))
    prune_checkpoints(folder, keep)
    return model_path


def last_checkpoint(folder: str | Path) -> Path | None:
    """The model file ``last.json`` points at, or None when the folder holds no checkpoint."""
    last = _read_last(Path(folder))
    return None if last is None else Path(folder) / last["model"]


def last_step(folder: str | Path) -> int | None:
    """The step of the checkpoint ``last.json`` points at, or None when there is none."""
    last = _read_last(Path(folder))
    return None if last is None else last["step"]


def _read_last(folder: Path) -> dict[str, Any] | None:
    pointer = folder / LAST
    if not pointer.is_file():
        return None
    try:
        last = json.loads(pointer.read_text(encoding="utf-8"))
        if not isinstance(last["model"], str) or isinstance(last["step"], bool) or int(last["step"]) < 0:
            raise ValueError("bad entries")
        return {"model": last["model"], "step": int(last["step"])}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"cannot resume: {pointer} is damaged ({error}); it must name the last checkpoint as "
            '{"step": N, "model": "step_N.safetensors", ...}'
        ) from error


def load_checkpoint(
    model_path: str | Path, model: MVGModel, optimizer: torch.optim.Optimizer, rank: int = 0
) -> Resumed:
    """Load weights, optimizer state and rank ``rank``'s RNG states; return the step to continue after.

    ``Resumed.rng_restored`` is False when the checkpoint has no RNG state for this rank (it was
    written by a run with fewer processes); that rank then keeps its current RNG.
    """
    model_path = Path(model_path)
    weights, model_meta = load_tensors(model_path)
    if model_meta.get("config") != model.config.to_dict():
        raise ValueError(
            f"checkpoint {model_path} was trained with a different model config; "
            f"resume with the run's own config.yaml"
        )
    model.load_state_dict(weights)
    state_path = model_path.with_name(model_path.name.replace(".safetensors", ".state.safetensors"))
    tensors, meta = load_tensors(state_path)
    load_optimizer(optimizer, tensors, meta)
    restored = restore_rng(tensors, meta, rank)
    return Resumed(step=int(meta["step"]), meta=model_meta, rng_restored=restored)


def prune_checkpoints(folder: Path, keep: int) -> None:
    steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)))
    for step in steps[:-keep]:
        for path in checkpoint_paths(folder, step):
            path.unlink(missing_ok=True)
            sidecar_path(path).unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
