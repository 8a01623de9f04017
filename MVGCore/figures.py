"""PNG montages for evaluation reports: prompt, query, each method's answer and the truth side by side.

Written with Pillow alone (no matplotlib), so figures are made on headless GPU machines too.
Label maps are drawn in the inference palette over their gray image, so a reader sees the same
colors the model was shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .checkpoint import atomic_write
from .coloring import palette

TITLE_HEIGHT = 14
LABEL_OPACITY = 0.5


@dataclass(frozen=True)
class Panel:
    """One titled picture: a [0, 1] gray ``image``, optionally with a ``labels`` map drawn over it."""

    title: str
    image: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if np.ndim(self.image) != 2:
            raise ValueError(f"panel {self.title!r}: image must be 2D, got shape {np.shape(self.image)}")
        if self.labels is not None and np.shape(self.labels) != np.shape(self.image):
            shapes = f"labels {np.shape(self.labels)} must match image {np.shape(self.image)}"
            raise ValueError(f"panel {self.title!r}: {shapes}")

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8: gray clipped to [0, 1], labels blended in their palette color."""
        gray = np.clip(np.nan_to_num(np.asarray(self.image, dtype=np.float32)), 0.0, 1.0)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        if self.labels is not None:
            labels = np.asarray(self.labels).astype(np.int64)
            inside = labels > 0
            colors = palette()[np.clip(labels, 0, len(palette()) - 1)]
            rgb[inside] = (1 - LABEL_OPACITY) * rgb[inside] + LABEL_OPACITY * colors[inside]
        return (rgb * 255 + 0.5).astype(np.uint8)


def _fitted(panel: Panel, size: int) -> Image.Image:
    """The panel scaled to fit a ``size`` square (nearest neighbour keeps label edges honest), titled."""
    picture = Image.fromarray(panel.rgb())
    scale = size / max(picture.size)
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
        Image.Resampling.NEAREST,
    )
    tile = Image.new("RGB", (size, size + TITLE_HEIGHT), "black")
    tile.paste(picture, ((size - picture.width) // 2, TITLE_HEIGHT + (size - picture.height) // 2))
    ImageDraw.Draw(tile).text((2, 1), panel.title[: size // 6], fill="white", font=ImageFont.load_default())
    return tile


def montage(rows: Sequence[Sequence[Panel]], path: str | Path, panel_size: int = 128) -> Path:
    """Write a grid of panels (one row per example) to the PNG ``path`` atomically; return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {path}")
    if not rows or not all(rows):
        raise ValueError("a montage needs at least one row with at least one panel")
    if panel_size < 16:
        raise ValueError(f"panel_size must be at least 16 pixels, got {panel_size}")
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (columns * panel_size, len(rows) * (panel_size + TITLE_HEIGHT)), "black")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            sheet.paste(_fitted(panel, panel_size), (c * panel_size, r * (panel_size + TITLE_HEIGHT)))
    atomic_write(path, lambda temp: sheet.save(temp, format="PNG"))
    return path
