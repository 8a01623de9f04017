"""Initialise the MVG encoder from a timm or MAE ViT state dict (the paper starts from MAE weights).

The model names its encoder modules as timm's ViT does (``patch_embed.proj``, ``blocks.N.attn.qkv``,
``blocks.N.mlp.fc1``, ``norm`` ...), so the mapping is mostly the identity: wrappers are stripped,
the position embedding is resampled to the configured grid, and everything that does not fit is
reported rather than silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from MVGCore.model import MVGModel

WRAPPER_PREFIXES = ("module.", "encoder.", "backbone.", "model.")


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    mismatched: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    not_initialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        resized = ", ".join(self.resized) or "-"
        lines = [
            f"loaded {len(self.loaded)} tensors ({len(self.resized)} resized: {resized})",
            f"not in the file, kept at random init: {len(self.not_initialised)}",
            f"in the file but unused: {len(self.unused)}"
            + (f" (e.g. {', '.join(self.unused[:5])})" if self.unused else ""),
        ]
        lines += [f"shape mismatch, skipped: {k}: {why}" for k, why in self.mismatched.items()]
        return "\n".join(lines)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def load_vit_encoder(model: MVGModel, state_dict: dict[str, torch.Tensor]) -> LoadReport:
    """Copy matching encoder weights from ``state_dict`` into ``model`` in place."""
    report = LoadReport()
    own = model.state_dict()
    grid = model.config.pos_embed_grid
    updates: dict[str, torch.Tensor] = {}
    for raw_key, value in state_dict.items():
        key = _strip(raw_key)
        if key.startswith("decoder") or key not in own:
            report.unused.append(raw_key)
            continue
        target = own[key]
        if key == "pos_embed" and value.shape != target.shape and value.shape[-1] == target.shape[-1]:
            tokens = value.shape[1]
            prefix = 0 if int(tokens**0.5) ** 2 == tokens else 1
            side = int((tokens - prefix) ** 0.5)
            value = resample_abs_pos_embed(
                value.float(), new_size=[grid, grid], old_size=[side, side], num_prefix_tokens=prefix
            )
            if prefix == 0:
                value = torch.cat([torch.zeros_like(value[:, :1]), value], dim=1)
            report.resized.append(key)
        elif key == "patch_embed.proj.weight" and value.shape[:2] == target.shape[:2]:
            if value.shape != target.shape:
                value = resample_patch_embed(value.float(), list(target.shape[-2:]))
                report.resized.append(key)
        if value.shape != target.shape:
            report.mismatched[raw_key] = f"file {tuple(value.shape)} vs model {tuple(target.shape)}"
            continue
        updates[key] = value.to(target.dtype)
        report.loaded.append(key)
    model.load_state_dict(updates, strict=False)
    report.not_initialised = sorted(set(own) - set(updates))
    return report
