"""The model's weights around training: where they start, which of them train, and their digest.

A run starts from fresh weights, from a checkpoint (``init``: fine-tuning, also across tile and
patch sizes), or with a pretrained ViT encoder (``init_encoder``); ``train_modules`` freezes all
but some modules. Everything here fails before data is read or a step is taken.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

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
