"""The model's weights around training: where they start, which of them train, and their digest.

A run starts from fresh weights, from a checkpoint (``init``: fine-tuning, also across tile and
patch sizes), or with a pretrained ViT encoder (``init_encoder``); ``train_modules`` freezes all
but some modules. Everything here fails before data is read or a step is taken.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

from MVGCore.checkpoint import PICKLE_SUFFIXES, load_tensors
from MVGCore.config import MVGConfig
from MVGCore.model import OPTIONAL_MODULES, MVGModel
from MVGCore.resample_weights import fit_weights
from MVGCore.train.config import TrainConfig

log = logging.getLogger(__name__)


def check_module_names(config: TrainConfig, model_config: MVGConfig) -> None:
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


def initialise(model: MVGModel, config: TrainConfig) -> None:
    """Load ``config.init`` (resampled to this model's tile/patch size) and ``config.init_encoder``."""
    if config.init:
        path = Path(config.init)
        if path.suffix in PICKLE_SUFFIXES:
            raise ValueError(f"init {path}: MVGCore checkpoints are .safetensors; convert pickle files first")
        weights, meta = load_tensors(path)
        target = model.state_dict()
        weights = fit_weights(weights, target)  # another tile or patch size
        # Modules an option adds (OPTIONAL_MODULES) start as a no-op, so a checkpoint made without them
        # initialises everything else.
        optional = tuple(f"{name}." for name in OPTIONAL_MODULES if getattr(model, name) is not None)
        misfits = [k for k in weights if k not in target or weights[k].shape != target[k].shape]
        misfits += [k for k in target if k not in weights and not k.startswith(optional)]
        if misfits:
            raise ValueError(architecture_mismatch(path, meta.get("config"), model, misfits, weights))
        missing, _ = model.load_state_dict(weights, strict=False)
        fresh = sorted({k.split(".")[0] for k in missing})
        log.info("initialised weights from %s%s", path, f" (new, as initialised: {fresh})" if fresh else "")
    if config.init_encoder:
        from MVGCore.checkpoint import load_state_dict_file
        from MVGCore.pretrained import load_vit_encoder

        report = load_vit_encoder(model, load_state_dict_file(config.init_encoder))
        log.info("encoder initialised from %s:\n%s", config.init_encoder, report.summary())


NOT_ARCHITECTURE = (
    "tile_size",
    "patch_size",
    "drop_path_rate",
    "grad_checkpointing",
    "refine_tasks",
    "segment_tile_size",
    "notes",
)
"""Model settings that do not decide the weights' shapes (tile and patch sizes are resampled)."""


def architecture_mismatch(
    path: Path, theirs: Any, model: MVGModel, misfits: list[str], weights: dict[str, torch.Tensor]
) -> str:
    """One short line on why ``path`` cannot initialise ``model``: the architecture settings that
    differ (from the checkpoint's sidecar config) and a few of the tensors, never all of them (the
    list torch gives named every tensor, some 10 KB for the smallest model)."""
    ours = model.config.to_dict()
    theirs = theirs if isinstance(theirs, dict) else {}
    keys = [k for k in ours if k not in NOT_ARCHITECTURE and theirs.get(k, ours[k]) != ours[k]]
    if keys:
        mine = _settings(ours, keys)
        first = f"init {path} is a model with {_settings(theirs, keys)}; this run builds {mine}"
    else:
        first = f"init {path} does not fit the model this run builds"
    target = model.state_dict()
    examples = [f"{k} {_shape(weights.get(k))} vs {_shape(target.get(k))}" for k in misfits[:3]]
    more = f" and {len(misfits) - 3} more" if len(misfits) > 3 else ""
    return (
        f"{first}; init (--init) needs the same architecture (a tile or patch size change is "
        f"resampled): {len(misfits)} tensors differ, e.g. {'; '.join(examples)}{more}"
    )


def _settings(config: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key} {config.get(key)}" for key in keys[:6]) + (", ..." if len(keys) > 6 else "")


def _shape(tensor: torch.Tensor | None) -> str:
    return "absent" if tensor is None else "x".join(str(n) for n in tensor.shape) or "scalar"


def freeze_all_but(model: MVGModel, train_modules: list[str]) -> None:
    """With ``train_modules`` set, only their weights train: a module added to a trained model (a
    refiner) then learns without moving what the rest already does well, and the backward pass
    stops where the first trained module reads the frozen ones."""
    if not train_modules:
        return
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.split(".")[0] in train_modules)
    log.info("training only %s; every other weight is frozen", sorted(train_modules))


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer, to show that ranks hold identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
