"""Weights of one token geometry carried over to another: tile size and patch size.

A checkpoint fixes its tile and patch size only through three kinds of tensors: the
relative-position tables (one row per token offset), the patch embedding's kernel (patch x patch
pixels) and the decoder's linear layer (patch x patch x decoder_dim outputs per token). Resampled,
the same weights start a model of another geometry (``--init`` in :mod:`MVGCore.train`) or run at
another tile size at inference (``Options.tile_size`` in :mod:`MVGCore.predict`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed

from MVGCore.checks import is_whole
from MVGCore.model import MVGModel

log = logging.getLogger(__name__)

PATCH_EMBED = "patch_embed.proj.weight"
DECODER_EMBED = ("decoder_embed.weight", "decoder_embed.bias")


def resize_rel_pos_tables(
    weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``weights`` with each relative-position table (``rel_pos_h`` / ``rel_pos_w``) whose length
    differs from ``target``'s linearly resampled to it, as SAM and ViTDet resize them for another
    token grid. Other tensors are left as they are."""
    resized = dict(weights)
    for name, table in weights.items():
        wanted = target.get(name)
        if not name.endswith(("rel_pos_h", "rel_pos_w")) or wanted is None or wanted.shape == table.shape:
            continue
        if table.ndim != 2 or table.shape[1] != wanted.shape[1]:
            continue
        line = table.float().t()[None]  # (1, head_dim, length)
        line = F.interpolate(line, size=wanted.shape[0], mode="linear", align_corners=False)
        resized[name] = line[0].t().to(table.dtype).contiguous()
        log.debug("resized %s from %d to %d positions", name, table.shape[0], wanted.shape[0])
    return resized


def resize_patch(
    weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``weights`` of patch size p carried to ``target``'s patch size q. Shrinking by a whole
    factor f = p / q, the embedding kernel is summed over f x f blocks and the decoder's per-token
    pixel layout (p x p x channels outputs) averaged over them: the q-patch model on an image then
    computes what the p-patch model computes on that image enlarged f times by pixel repetition
    (before its pixel convolutions), shrunk back. Other sizes use timm's pseudo-inverse resize of
    the kernel (FlexiViT) and a bilinear resize of the decoder's layout. Other tensors are left
    as they are."""
    kernel, wanted = weights.get(PATCH_EMBED), target.get(PATCH_EMBED)
    if kernel is None or wanted is None or kernel.shape == wanted.shape:
        return dict(weights)
    if kernel.shape[:2] != wanted.shape[:2]:
        return dict(weights)  # another embedding width: left for load_state_dict to refuse
    old, new = kernel.shape[-1], wanted.shape[-1]
    resized = dict(weights)
    whole = new < old and old % new == 0
    if whole:
        embedding = F.avg_pool2d(kernel.float(), old // new) * (old // new) ** 2
    else:
        embedding = resample_patch_embed(kernel.float(), [new, new], verbose=False)
    resized[PATCH_EMBED] = embedding.to(kernel.dtype)
    for name in DECODER_EMBED:
        tensor = weights[name].float()
        channels = tensor.shape[0] // (old * old)
        trailing = tensor.shape[1:]  # (inputs,) for the weight, () for the bias
        pixels = tensor.reshape(old, old, channels, -1).permute(2, 3, 0, 1).reshape(1, -1, old, old)
        if whole:
            pixels = F.avg_pool2d(pixels, old // new)
        else:
            pixels = F.interpolate(pixels, size=(new, new), mode="bilinear", align_corners=False)
        pixels = pixels.reshape(channels, -1, new, new).permute(2, 3, 0, 1)
        resized[name] = pixels.reshape(new * new * channels, *trailing).to(weights[name].dtype).contiguous()
    log.debug("resized the patch embedding and decoder from %d to %d pixels", old, new)
    return resized


def fit_weights(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` resampled to ``target``'s tile and patch size (both functions above); a mismatch
    in any other tensor is left for ``load_state_dict`` to refuse."""
    return resize_rel_pos_tables(resize_patch(weights, target), target)


def check_tile_size(tile_size: Any, patch: int, name: str = "option tile_size") -> int:
    """``tile_size`` as an int when it is a positive whole multiple of ``patch`` (the only tiles a
    model of that patch size can run at); a one-line error naming the option (``name``: a command
    line names its flag) otherwise."""
    if not is_whole(tile_size, patch) or tile_size % patch:
        raise ValueError(
            f"{name} must be a positive multiple of the model's patch size {patch}, got {tile_size!r}"
        )
    return int(tile_size)


def at_tile_size(model: MVGModel, tile_size: int) -> MVGModel:
    """A new model running ``model``'s weights at ``tile_size`` pixels (relative-position tables
    resampled); ``model`` itself is not changed and is returned as it is at its own tile size."""
    if tile_size == model.config.tile_size:
        return model
    tile_size = check_tile_size(tile_size, model.config.patch_size)
    first = next(model.parameters())
    resized = MVGModel(dataclasses.replace(model.config, tile_size=tile_size)).to(first.device, first.dtype)
    resized.load_state_dict(fit_weights(model.state_dict(), resized.state_dict()))
    return resized.train(model.training)
