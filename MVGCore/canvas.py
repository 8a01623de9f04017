"""Slices <-> square tiles, and tiles -> the 2x1 in-context canvas the model sees.

A slice is resized so that its longer *physical* side fills the tile (anisotropic pixels are
honoured, so anatomy is not squashed), then padded symmetrically to a square. The inverse crops
the padding and resizes back onto the slice's own grid; for labels (nearest neighbour) the round
trip is exact whenever the tile has at least the slice's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TileFit:
    """Where a slice of ``shape`` sits in a ``size`` x ``size`` tile: ``content`` pixels at ``offset``."""

    shape: tuple[int, int]
    size: int
    content: tuple[int, int]
    offset: tuple[int, int]


def plan_fit(shape: tuple[int, int], size: int, spacing: tuple[float, float] = (1.0, 1.0)) -> TileFit:
    """The resize + pad that puts a slice of ``shape`` (rows, cols) with pixel ``spacing`` in a tile."""
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"a slice must be a non-empty 2D array, got shape {shape}")
    if size < 1:
        raise ValueError(f"tile size must be positive, got {size}")
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"pixel spacing must be two positive numbers, got {spacing}")
    extent = (shape[0] * spacing[0], shape[1] * spacing[1])
    scale = size / max(extent)
    content = tuple(min(size, max(1, round(e * scale))) for e in extent)
    offset = ((size - content[0]) // 2, (size - content[1]) // 2)
    return TileFit(shape=tuple(shape), size=size, content=content, offset=offset)


def resize_plane(array: np.ndarray, shape: tuple[int, int], is_label: bool) -> np.ndarray:
    """``array`` resized to ``shape``: nearest neighbour for labels (values kept exactly), bilinear
    for images, antialiased when shrinking."""
    if tuple(array.shape) == tuple(shape):
        return array.copy()
    if is_label:
        # float32 holds every label value up to 2**24 exactly.
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out = F.interpolate(x, size=shape, mode="nearest-exact")
        return out[0, 0].numpy().astype(array.dtype)
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrinking = shape[0] < array.shape[0] or shape[1] < array.shape[1]
    out = F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)
    return out[0, 0].numpy()


def fit_to_tile(
    slice2d: np.ndarray, size: int, is_label: bool, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[np.ndarray, TileFit]:
    """Resize (nearest for labels, bilinear for images) and zero-pad ``slice2d`` into a square tile."""
    slice2d = np.asarray(slice2d)
    if slice2d.ndim != 2:
        raise ValueError(f"fit_to_tile needs a 2D slice, got shape {slice2d.shape}")
    fit = plan_fit(slice2d.shape, size, spacing)
    content = resize_plane(slice2d, fit.content, is_label)
    tile = np.zeros((size, size), dtype=content.dtype)
    r, c = fit.offset
    tile[r : r + fit.content[0], c : c + fit.content[1]] = content
    return tile, fit


def unfit_from_tile(tile: np.ndarray, fit: TileFit, is_label: bool) -> np.ndarray:
    """The exact inverse grid of :func:`fit_to_tile`: a slice of ``fit.shape``."""
    tile = np.asarray(tile)
    if tile.shape != (fit.size, fit.size):
        raise ValueError(f"tile must be {fit.size}x{fit.size} for this fit, got {tile.shape}")
    r, c = fit.offset
    content = tile[r : r + fit.content[0], c : c + fit.content[1]]
    return resize_plane(content, fit.shape, is_label)


def gray_to_rgb(tiles: torch.Tensor) -> torch.Tensor:
    """(B, S, S) gray tiles in [0, 1] -> (B, 3, S, S), the gray repeated as the paper does."""
    if tiles.ndim != 3:
        raise ValueError(f"expected (B, S, S) gray tiles, got {tuple(tiles.shape)}")
    return tiles[:, None].expand(-1, 3, -1, -1)


def imagenet_normalize(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def imagenet_denormalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * std + mean


def stack_canvas(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Prompt tile on top of the query tile: (B, C, S, S) x 2 -> (B, C, 2S, S)."""
    if top.shape != bottom.shape:
        raise ValueError(f"prompt tile {tuple(top.shape)} and query tile {tuple(bottom.shape)} must match")
    return torch.cat([top, bottom], dim=-2)


def query_half(canvas: torch.Tensor) -> torch.Tensor:
    """The bottom (query) tile of (B, C, 2S, S) canvases."""
    return canvas[..., canvas.shape[-2] // 2 :, :]


@dataclass
class Canvases:
    """A batch of model inputs: ImageNet-normalised image/target canvases and their [0, 1] targets."""

    images: torch.Tensor
    targets: torch.Tensor
    targets01: torch.Tensor
    foreground: torch.Tensor


def _as_tiles(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 3:
        raise ValueError(f"{name} must be a (B, S, S) batch of tiles, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one prompt/query pair is needed")
    return x


def _check_images(x: torch.Tensor, name: str) -> torch.Tensor:
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be float images normalised to [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; clean or mask them first")
    return x.float()


def build_canvases(
    prompt_images: np.ndarray | torch.Tensor,
    prompt_targets: np.ndarray | torch.Tensor,
    query_images: np.ndarray | torch.Tensor,
    query_targets: np.ndarray | torch.Tensor | None = None,
    *,
    segmentation: bool,
    tables: np.ndarray | torch.Tensor | None = None,
) -> Canvases:
    """Assemble B canvases [prompt; query] from (B, S, S) tiles.

    Image tiles are floats in [0, 1]. Targets are integer label tiles for segmentation (colored
    through ``tables``, (B or 1, 256, 3), see :mod:`MVGCore.coloring`) or [0, 1] float tiles for
    the image tasks. ``query_targets=None`` (inference) leaves the query half of the target black;
    the model never sees it because inference hides that half.
    """
    from MVGCore.coloring import encode  # canvas <- coloring is the only dependency direction

    prompt_images = _check_images(_as_tiles(prompt_images, "prompt images"), "prompt images")
    query_images = _check_images(_as_tiles(query_images, "query images"), "query images")
    prompt_targets = _as_tiles(prompt_targets, "prompt targets")
    if query_targets is None:
        query_targets = torch.zeros_like(prompt_targets)
    query_targets = _as_tiles(query_targets, "query targets")
    shapes = {
        "prompt images": prompt_images.shape,
        "prompt targets": prompt_targets.shape,
        "query images": query_images.shape,
        "query targets": query_targets.shape,
    }
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
        raise ValueError(f"prompt and query tiles must all have one shape (B, S, S); got {listed}")
    if segmentation:
        if tables is None:
            raise ValueError("segmentation canvases need color tables (see MVGCore.coloring.color_table)")
        labels = torch.cat([prompt_targets, query_targets], dim=-2)
        targets01 = encode(labels, tables)
        foreground = labels > 0
    else:
        targets01 = gray_to_rgb(
            torch.cat(
                [
                    _check_images(prompt_targets, "prompt targets"),
                    _check_images(query_targets, "query targets"),
                ],
                -2,
            )
        )
        foreground = torch.ones(targets01.shape[0], *targets01.shape[-2:], dtype=torch.bool)
    images01 = gray_to_rgb(stack_canvas(prompt_images[:, None], query_images[:, None])[:, 0])
    return Canvases(
        images=imagenet_normalize(images01),
        targets=imagenet_normalize(targets01),
        targets01=targets01,
        foreground=foreground,
    )
