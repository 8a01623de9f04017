"""The memory one forward pass of the model needs, estimated before it is allocated.

A tile far past what the machine holds (``tile_size=4096``: 131072 tokens a canvas, a dense
attention bias of 2**36 numbers per head) otherwise fails after the model is loaded and resampled,
with torch's "can't allocate memory", naming neither the option nor the size. The estimate is the
larger of each block's attention (heads x tokens x keys per canvas: the relative-position bias is a
dense matrix) and token activations, doubled in the blocks before the image and target streams
merge. Measured on a CPU with the bundled tiny model (docs/inference.md, "Memory"): at tile 1024
it says 1.76 GB for one canvas, the peak was 1.80 GB; at tile 512 138 MB a canvas, each canvas
added 148 MB to the peak (about 65 MB more are fixed, beside any batch).

What is done when a pass does not fit differs by cause. A tile of which even one slice's canvases
do not fit is refused: no batch size helps, and a smaller tile changes the answer, so the user
chooses. A batch larger than fits is made smaller with a warning, as the out-of-memory retry
already does on GPUs: the batch size changes the speed, never the answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from ..capacity import available_memory
from ..config import MVGConfig

if TYPE_CHECKING:
    from .predictor import Predictor

log = logging.getLogger(__name__)

ACTIVATION_COPIES = 12
"""Token activations alive at a block's peak, in tokens x embed_dim (q, k, v, the MLP's 4x
hidden layer, residuals, norms): fitted to the CPU measurement in the module docstring."""


def tokens(config: MVGConfig, tile_size: int) -> int:
    """Tokens of one canvas (prompt tile above the query tile) at ``tile_size``."""
    side = tile_size // config.patch_size
    return 2 * side * side


def forward_bytes(config: MVGConfig, tile_size: int, canvases: int, device: str) -> int:
    """About the peak bytes of one forward pass of ``canvases`` canvases at ``tile_size``
    (bfloat16 on CUDA, where the Predictor runs under autocast; float32 elsewhere)."""
    count = tokens(config, tile_size)
    size = 2 if device.startswith("cuda") else 4
    peak = 0
    for block in range(config.depth):
        windowed = block in config.window_blocks and config.window_size > 0
        keys = min(count, config.window_size**2) if windowed else count
        per_canvas = (config.num_heads * count * keys + ACTIVATION_COPIES * count * config.embed_dim) * size
        streams = 2 if block <= config.merge_index else 1
        peak = max(peak, streams * per_canvas)
    return peak * canvases


def free_bytes(device: str) -> int | None:
    """Bytes a new allocation on ``device`` can still get, or None where that cannot be read."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + reusable)
    return available_memory()


def check_tile_fits(
    config: MVGConfig, tile_size: int, k: int, device: str, name: str = "option tile_size"
) -> None:
    """Refuse ``tile_size`` when one slice's ``k`` canvases (the fewest one pass runs) need more
    memory than ``device`` has free; ``name`` names the option or flag in the message."""
    need = forward_bytes(config, tile_size, k, device)
    have = free_bytes(device)
    if have is not None and need > have:
        raise ValueError(
            f"{name} {tile_size}: one forward pass of {k} canvas(es) of {tokens(config, tile_size)} tokens "
            f"needs about {gb(need)} of memory on {device}, and {gb(have)} is free; use a smaller "
            f"{name.split()[-1]}"
        )


def fit_batch(predictor: Predictor, k: int, queries: int) -> None:
    """Lower ``predictor.batch_size`` (canvases per pass) to what fits in free memory, with a
    warning, when the pass it would run for ``queries`` query slices of ``k`` canvases each
    does not fit; left as it is when even one slice does not fit (the tile was checked)."""
    per_pass = min(max(1, predictor.batch_size // k), queries)
    one = forward_bytes(predictor.config, predictor.config.tile_size, k, predictor.device)
    have = free_bytes(predictor.device)
    if have is None or per_pass * one <= have or have < one:
        return
    fitting = int(have // one) * k
    log.warning(
        "batch_size %d: one forward pass of %d canvases would need about %s of memory on %s, and %s "
        "is free; using %d",
        predictor.batch_size,
        per_pass * k,
        gb(per_pass * one),
        predictor.device,
        gb(have),
        fitting,
    )
    predictor.batch_size = fitting


def gb(size: int) -> str:
    return f"{size / 1e9:.3g} GB"
