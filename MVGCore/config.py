"""The one model configuration, with named presets; saved as JSON beside every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .retired import drop_retired
from .types import TASKS

RETIRED: dict[str, Any] = {"carry_prompt": False}
"""Fields that were retired, with the value that is now the only behaviour. ``carry_prompt`` (the
prompt tile's pixels added to the decoder's) did not pay in the stage-4 ablation and no shipped
weights use it (research/README.md)."""


@dataclass(frozen=True)
class MVGConfig:
    """Architecture and canvas geometry of an MVG generator.

    ``merge_index`` is the block after which the image and target streams are averaged into one;
    ``feature_blocks`` are the block outputs the decoder reads (they must come at or after the
    merge). ``window_blocks`` lists blocks whose attention is restricted to non-overlapping
    ``window_size`` x ``window_size`` windows (empty = every block global, as in the reference).
    """

    preset: str = "custom"
    tile_size: int = 448
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    merge_index: int = 2
    feature_blocks: tuple[int, ...] = (5, 11, 17, 23)
    decoder_dim: int = 64
    pos_embed_grid: int = 14
    use_rel_pos: bool = True
    window_size: int = 0
    window_blocks: tuple[int, ...] = ()
    grad_checkpointing: bool = False
    pixel_skip: bool = False
    """Give the decoder the image canvas' own pixels (a 3x3 convolution added to its pixel features),
    so image tasks can keep the query's detail at 1:1; off in the presets, as in the reference."""
    copy_gates: bool = False
    """Add to each output pixel gated copies of two pixels the answer is often close to: the query's
    own image (denoising, inpainting outside the hole) and the prompt tile's target at the same place
    (propagation shows a nearby slice on the same grid, so its label is the best first guess). The
    gates are per pixel and per channel, read from the decoder's features, and start at zero; without
    them both reach the output only through 16 px tokens and a normalised convolution, which cannot
    return an input exactly. Off in the presets, as in the reference."""
    refine_layers: int = 0
    """Hidden 3x3 convolutions of a residual pixel refiner after the output (0 = none). It reads the
    decoder's pixel features, the output and the image canvas, and adds a correction, so local work
    (denoising) sees the input ``refine_layers + 3`` pixels each way at 1:1 rather than through
    two 3x3 convolutions and 16 px tokens. Starts as a no-op (last convolution zero). Off in the presets."""
    refine_tasks: tuple[str, ...] = TASKS
    """The tasks whose samples get the refiner's correction, in training and at inference; the
    others decode exactly as the model without it. A refiner taught denoising makes holes and labels
    worse, so a model can keep it to ``("denoise",)``."""
    segment_tile_size: int | None = None
    """The tile in pixels segmentation runs at when ``Options.tile_size`` is not given (None =
    ``tile_size``), the weights resampled to it (:mod:`MVGCore.resample_weights`). It is measured for
    one set of weights, not a property of the architecture: the bundled tiny model's sidecar sets 192
    (docs/inference.md, "Tile size")."""
    notes: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_blocks", tuple(int(b) for b in self.feature_blocks))
        object.__setattr__(self, "window_blocks", tuple(int(b) for b in self.window_blocks))
        object.__setattr__(self, "refine_tasks", tuple(str(t) for t in self.refine_tasks))
        problems = []
        if self.tile_size % self.patch_size:
            problems.append(f"tile_size {self.tile_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if not 0 <= self.merge_index < self.depth:
            problems.append(f"merge_index {self.merge_index} must be a block index in [0, {self.depth})")
        if not self.feature_blocks:
            problems.append("feature_blocks must name at least one block")
        for b in self.feature_blocks:
            if not self.merge_index <= b < self.depth:
                problems.append(
                    f"feature block {b} must lie in [merge_index={self.merge_index}, depth={self.depth})"
                )
        if not 0 <= self.refine_layers <= self.patch_size - 2:
            # query_only decoding gives the convolutions one token row of context above the query.
            problems.append(
                f"refine_layers {self.refine_layers} must lie in [0, patch_size - 2 = {self.patch_size - 2}]"
            )
        unknown_tasks = sorted(set(self.refine_tasks) - set(TASKS))
        if unknown_tasks or not self.refine_tasks:
            problems.append(
                f"refine_tasks {list(self.refine_tasks)} must be a non-empty subset of {list(TASKS)}"
            )
        if self.segment_tile_size is not None and (
            self.segment_tile_size <= 0 or self.segment_tile_size % self.patch_size
        ):
            problems.append(
                f"segment_tile_size {self.segment_tile_size} must be a positive multiple of patch_size "
                f"{self.patch_size}"
            )
        if self.window_blocks and self.window_size <= 0:
            problems.append("window_blocks are set but window_size is not positive")
        for b in self.window_blocks:
            if not 0 <= b < self.depth:
                problems.append(f"window block {b} is not a block index in [0, {self.depth})")
        if problems:
            raise ValueError("invalid MVGConfig: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, columns) of a 2x1 canvas: prompt tile on top of the query tile."""
        side = self.tile_size // self.patch_size
        return (2 * side, side)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["feature_blocks"] = list(self.feature_blocks)
        data["window_blocks"] = list(self.window_blocks)
        data["refine_tasks"] = list(self.refine_tasks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> MVGConfig:
        """The config a checkpoint's sidecar (or a saved run) holds. ``source`` names it in the
        note or error of a retired field (:data:`RETIRED`), which older sidecars still name."""
        data = drop_retired(data, RETIRED, source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown MVGConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> MVGConfig:
        return dataclasses.replace(self, **changes)


def _evenly_spaced_features(depth: int) -> tuple[int, ...]:
    """Four block outputs at the ends of the four quarters of the network (5, 11, 17, 23 for 24)."""
    return tuple(depth * (q + 1) // 4 - 1 for q in range(4))


PRESETS: dict[str, MVGConfig] = {
    # The reference (Painter/MVG ViT-L/16): 370,721,155 parameters at a 448 tile.
    "large": MVGConfig(preset="large", embed_dim=1024, depth=24, num_heads=16),
    "base": MVGConfig(
        preset="base", embed_dim=768, depth=12, num_heads=12, feature_blocks=_evenly_spaced_features(12)
    ),
    "small": MVGConfig(
        preset="small",
        embed_dim=384,
        depth=12,
        num_heads=6,
        drop_path_rate=0.05,
        feature_blocks=_evenly_spaced_features(12),
    ),
    # Sized to train to something useful on a laptop-class CPU within hours.
    "tiny": MVGConfig(
        preset="tiny",
        tile_size=128,
        embed_dim=192,
        depth=8,
        num_heads=3,
        drop_path_rate=0.0,
        merge_index=1,
        feature_blocks=_evenly_spaced_features(8),
        decoder_dim=32,
    ),
}


def config_for(preset: str, **overrides: Any) -> MVGConfig:
    """The named preset with ``overrides`` applied (e.g. ``tile_size=224``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides)
