"""The reference's training loss: weighted smooth-L1 on the hidden target patches.

Pixels count only where the mask hid their patch. Segmentation background pixels weigh 0.1 and
foreground 1 (so small organs are not drowned by background); image tasks weigh 1 everywhere,
except, optionally, an inpainting query outside its hole: inference returns the input there, so
those pixels teach only the copy, which pulls the hole towards its zero fill (the dark holes).
A sample whose *visible* target carries no information (all background, or a constant image)
gives the model nothing to learn in context, so it is dropped from the loss, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH_L1_BETA = 0.01
BACKGROUND_WEIGHT = 0.1
EMPTY_STD = 1e-3


def pixel_mask(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(B, tokens) token mask -> (B, 1, rows * patch, cols * patch) float pixel mask."""
    rows, cols = grid
    m = mask.reshape(mask.shape[0], 1, rows, cols).float()
    return m.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)


def pixel_weights(foreground: torch.Tensor, is_segmentation: torch.Tensor) -> torch.Tensor:
    """(B, H, W) foreground flags and (B,) task flags -> (B, 1, H, W) weights."""
    seg = is_segmentation.view(-1, 1, 1).to(torch.bool)
    weights = torch.where(seg & ~foreground.bool(), BACKGROUND_WEIGHT, 1.0)
    return weights[:, None].float()


def outside_hole_weights(
    weights: torch.Tensor, holes: torch.Tensor, is_inpaint: torch.Tensor, outside: float
) -> torch.Tensor:
    """``weights`` (B, 1, 2S, S) of [prompt; query] canvases with the query half of each inpainting
    sample scaled by ``outside`` where its (B, S, S) ``holes`` mask is False."""
    if not 0.0 <= outside <= 1.0:
        raise ValueError(f"the weight outside the hole must lie in [0, 1], got {outside}")
    return _scale_queries(weights, holes, is_inpaint, inside=1.0, outside=outside)


def _scale_queries(
    weights: torch.Tensor, where: torch.Tensor, selected: torch.Tensor, inside: float, outside: float
) -> torch.Tensor:
    """``weights`` with the query half of each ``selected`` (B,) sample scaled by ``inside`` where
    its (B, S, S) mask ``where`` is True and by ``outside`` elsewhere; other samples unchanged."""
    size = where.shape[-2]
    if weights.shape[-2] != 2 * size or weights.shape[-1] != where.shape[-1]:
        raise ValueError(
            f"weights {tuple(weights.shape)} are not [prompt; query] canvases of {tuple(where.shape)} masks"
        )
    scale = torch.ones_like(weights)
    query = torch.where(where.bool(), inside, outside).to(weights.dtype)[:, None]
    scale[:, :, size:] = torch.where(selected.view(-1, 1, 1, 1).bool(), query, 1.0)
    return weights * scale


def informative_samples(target01: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """(B,) True where the visible part of the [0, 1] target canvas is not constant."""
    visible = 1.0 - hidden
    count = visible.sum(dim=(1, 2, 3)).clamp_min(1.0) * target01.shape[1]
    mean = (target01 * visible).sum(dim=(1, 2, 3), keepdim=True) / count.view(-1, 1, 1, 1)
    var = (((target01 - mean) * visible) ** 2).sum(dim=(1, 2, 3)) / count
    return var.sqrt() > EMPTY_STD


def mvg_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    target01: torch.Tensor,
    mask: torch.Tensor,
    weights: torch.Tensor,
    grid: tuple[int, int],
    patch: int,
) -> torch.Tensor:
    """Scalar loss.

    ``pred`` and ``target`` are (B, 3, H, W) canvases in the model's (ImageNet-normalised) space;
    ``target01`` is the same target in [0, 1] (used only for the drop rule); ``mask`` the
    (B, tokens) hidden-patch mask; ``weights`` (B, 1, H, W) per-pixel weights.
    Returns 0 (with a gradient path) when every sample was dropped.
    """
    hidden = pixel_mask(mask, grid, patch).to(pred.dtype)
    keep = informative_samples(target01.float(), hidden.float()).to(pred.dtype).view(-1, 1, 1, 1)
    per_pixel = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=SMOOTH_L1_BETA)
    w = hidden.float() * weights.float() * keep.float()
    total_weight = w.sum() * pred.shape[1]
    return (per_pixel * w).sum() / total_weight.clamp_min(1e-6)
