"""Which target patches the model must predict: AR (the query half), MIM (random blocks), or a mix.

"AR" hides the whole query half of the target canvas: the model predicts the query output from
the prompt pair and the query image, exactly the inference situation. "MIM" hides BEiT-style
random rectangular blocks anywhere on the target canvas. The reference mixes them per task.
Masks are (rows * cols) booleans over the canvas token grid, row-major, True = hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# The reference: segmentation always AR; image tasks AR with probability 0.1, MIM otherwise.
DEFAULT_AR_PROBABILITY = {"segment": 1.0, "denoise": 0.1, "inpaint": 0.1, "synthesize": 0.1}


def ar_mask(grid: tuple[int, int]) -> np.ndarray:
    rows, cols = grid
    mask = np.zeros((rows, cols), dtype=bool)
    mask[rows // 2 :] = True
    return mask.reshape(-1)


def block_mask(
    grid: tuple[int, int],
    rng: np.random.Generator,
    ratio: float = 256 / 1568,
    min_block: int = 16,
    max_block: int | None = 128,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> np.ndarray:
    """BEiT block masking: place random rectangles until ``ratio`` of the tokens are hidden.

    Block areas are drawn in [min_block, max_block] tokens (scaled down for small grids) with a
    log-uniform aspect ratio; each rectangle adds only tokens not hidden yet.
    """
    rows, cols = grid
    total = rows * cols
    goal = max(1, round(ratio * total))
    max_block = goal if max_block is None else min(max_block, goal)
    min_block = min(min_block, max_block)
    mask = np.zeros((rows, cols), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    hidden = 0
    while hidden < goal:
        added = 0
        for _ in range(attempts):
            area = rng.uniform(min_block, max(min_block, min(max_block, goal - hidden)))
            ar = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * ar))
            w = round(math.sqrt(area / ar))
            if 1 <= h <= rows and 1 <= w <= cols:
                top = int(rng.integers(0, rows - h + 1))
                left = int(rng.integers(0, cols - w + 1))
                patch = mask[top : top + h, left : left + w]
                new = h * w - int(patch.sum())
                if 0 < new <= goal - hidden:
                    patch[:] = True
                    added = new
                    break
        if added == 0:  # no block fits the remainder: finish with single random tokens
            free = np.flatnonzero(~mask.reshape(-1))
            pick = rng.choice(free, size=goal - hidden, replace=False)
            mask.reshape(-1)[pick] = True
            break
        hidden += added
    return mask.reshape(-1)


@dataclass
class MaskSampler:
    """Draws a mask per sample: AR with the task's probability, MIM blocks otherwise."""

    grid: tuple[int, int]
    ar_probability: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_AR_PROBABILITY))
    mim_ratio: float = 256 / 1568
    min_block: int = 16
    max_block: int = 128

    def __post_init__(self) -> None:
        for task, p in self.ar_probability.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AR probability for task {task!r} must lie in [0, 1], got {p}")
        if not 0.0 < self.mim_ratio < 1.0:
            raise ValueError(f"mim_ratio must lie in (0, 1), got {self.mim_ratio}")

    def __call__(self, task: str, rng: np.random.Generator) -> np.ndarray:
        if task not in self.ar_probability:
            raise ValueError(
                f"no AR probability for task {task!r}; known tasks {sorted(self.ar_probability)}"
            )
        if rng.random() < self.ar_probability[task]:
            return ar_mask(self.grid)
        return block_mask(self.grid, rng, self.mim_ratio, self.min_block, self.max_block)
