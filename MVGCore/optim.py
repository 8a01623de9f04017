"""AdamW with layer-wise learning-rate decay and a warmup + cosine schedule, as the MVG recipe uses.

Fine-tuning a pre-trained ViT works best when the early blocks move least: block depth d of L
gets ``lr * layer_decay ** (L + 1 - d)``. Norms, biases, learned tokens and position tables get
no weight decay, since shrinking them towards zero only hurts. The schedule is a pure function
of the step, so a resumed run needs only the step to continue it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from MVGCore.model import MVGModel

EMBEDDING_PREFIXES = ("patch_embed", "mask_token", "segment_token_x", "segment_token_y", "pos_embed")
NO_DECAY_NAMES = ("mask_token", "segment_token_x", "segment_token_y", "pos_embed", "rel_pos_h", "rel_pos_w")


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter: embeddings 0, block i -> i + 1, final norm and decoder depth + 1."""
    if name.startswith(EMBEDDING_PREFIXES):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def uses_weight_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim > 1 and name.split(".")[-1] not in NO_DECAY_NAMES


def module_lr_scale(name: str, lr_scales: Mapping[str, float]) -> float:
    """The multiplier of the first ``lr_scales`` module name that ``name`` lies in (else 1)."""
    for module, scale in lr_scales.items():
        if name.startswith(f"{module}."):
            return float(scale)
    return 1.0


def param_groups(
    model: MVGModel, weight_decay: float, layer_decay: float, lr_scales: Mapping[str, float] | None = None
) -> list[dict]:
    """One group per (depth, decay or not, module multiplier), each with an ``lr_scale`` the
    schedule multiplies in. ``lr_scales`` maps module names to learning-rate multipliers: a module
    that starts at zero when fine-tuning (a gate of ``copy_gates``) moves at most ``lr`` per Adam
    step, so reaching a gate of 1 takes thousands of steps at a fine-tuning rate unless it learns
    faster than the weights around it."""
    depth = model.config.depth
    groups: dict[tuple[int, bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_id(name, depth)
        decay = uses_weight_decay(name, param)
        multiplier = module_lr_scale(name, lr_scales or {})
        group = groups.setdefault(
            (layer, decay, multiplier),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer) * multiplier,
                "layer": layer,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    model: MVGModel,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay, lr_scales)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
