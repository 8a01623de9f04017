"""What an :class:`~MVGCore.data.samplers.InContextDataset` draws: its config, parsed and checked.

Kept apart from the dataset so that a training config (``MVGCore.train.config``) and test-time
adaptation (``MVGCore.adapt``) can read and validate sampler settings without the sampling code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ..degrade import HOLE_MODELS, NOISE_MODELS
from ..intensity import ct_window
from ..registration import ALIGNMENTS
from ..retired import drop_retired
from ..types import TASKS

DEFAULT_NOISE: dict[str, dict[str, float]] = {
    "CT": {"gaussian": 1.0, "poisson": 1.0},
    "MR": {"gaussian": 1.0, "rician": 1.0},
    "XR": {"gaussian": 1.0, "poisson": 1.0},
    "US": {"speckle": 1.0},
    "OTHER": {"gaussian": 1.0},
}
"""Noise models per modality, by weight. ``lowdose_ct`` is opt-in: its projection round trip
costs ~0.15 s per tile on one CPU core."""


PAIRINGS = ("propagation", "independent")

RETIRED_PROPAGATION: dict[str, Any] = {"query_slices": "any"}
"""Retired ``propagation`` keys, with the value that is now the only behaviour: ``query_slices:
foreground`` (queries among labelled slices only) lost to "any" in the stage-4 ablation
(research/README.md), and the recipe's configs named "any"."""


@dataclass
class AugmentConfig:
    """Random resized crop (one box for prompt and query, or independent ones with
    ``SamplerConfig.pairing="independent"``, the reference's random crops), flips (shared, so
    prompt and query keep one orientation) and intensity jitter (shared, so the prompt still shows
    the query's mapping). Labels always follow their image's geometry."""

    crop_prob: float = 1.0
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (0.8, 1.25)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    jitter_prob: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: tuple[float, float] = (-0.05, 0.05)


@dataclass
class PropagationConfig:
    """Slice distance and the small independent motion between prompt and query of a propagation pair."""

    near: tuple[int, int] = (1, 8)
    """Distance in source slices, drawn uniformly in this range ..."""
    far_prob: float = 0.15
    """... except with this chance, when the query is any other slice of the case. The query may be
    any stored slice, the prompt always a labelled one, as at inference, where the user labels a
    few slices and every other slice is segmented, so the model also learns where a structure ends
    (a lesion spans a few slices of the volume)."""
    shift: float = 3.0
    """Independent shift of the prompt half, in tile pixels (uniform in +-shift)."""
    rotate: float = 4.0
    """Independent rotation of the prompt half, in degrees (uniform in +-rotate)."""
    scale: tuple[float, float] = (0.95, 1.05)
    """Independent scale of the prompt half."""


@dataclass
class SamplerConfig:
    """What to draw. Unlisted datasets get weight 1; a weight of 0 switches a task or dataset off."""

    tasks: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASKS, 1.0))
    datasets: dict[str, float] = field(default_factory=dict)
    cross_case_prob: float = 0.0
    """Segmentation and synthesis: chance that the prompt comes from another case of the dataset."""
    binary_prob: float = 0.0
    """Segmentation: chance to keep one class present in the prompt (as a user prompting one structure)."""
    max_classes: int = 8
    """Segmentation: at most this many of the prompt's classes are kept (a random subset), as users paint."""
    pairing: str = "propagation"
    """Segmentation: "propagation" (prompt a few slices from the query, one crop box for both, plus a
    small independent jitter: what inference in a volume sees) or "independent" (any two foreground
    slices, independent crops: the reference's pairs)."""
    propagation: PropagationConfig = field(default_factory=lambda: PropagationConfig())
    align_prompts: str = "off"
    """Segmentation: warp the prompt half (image and label) onto the query half by 2D
    registration after every augmentation, as inference does (``Options.align_prompts``):
    "demons", "bspline", "affine" or "off". A warp that pushes the label out of the tile keeps
    the prompt as it lay, as inference does. Costs about 0.1 s per sample on one core."""
    zoom_prob: float = 0.0
    """Segmentation: chance of a view centred on the kept structures' box (with margin), the zoom
    inference applies (:mod:`MVGCore.zoom`); otherwise a crop of the whole slice."""
    zoom_margin: tuple[float, float] = (0.1, 0.5)
    """Margin added on each side of the structures' box, as a fraction of its longer side (drawn)."""
    zoom_min_size: int = 48
    """Smallest zoom box side in native pixels (inference uses the same floor)."""
    native_prob: float = 0.0
    """Denoise / inpaint: chance of a crop at the source's native pixel scale (what tiled inference
    sees); otherwise the whole slice as fitted into the store."""
    real_pair_prob: float = 0.5
    """Denoising: chance to use a stored degraded/clean pair when the case has one."""
    noise: dict[str, dict[str, float]] = field(
        default_factory=lambda: {m: dict(w) for m, w in DEFAULT_NOISE.items()}
    )
    holes: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HOLE_MODELS, 1.0))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ct_windows: dict[str, Any] = field(default_factory=dict)
    """CT window per task (a preset name or [low, high] HU), applied to CT channels at sample time,
    so one store serves tasks that infer in different windows (segmentation in a wide window that
    keeps air, lung and fat apart; image tasks in the paper's). Unlisted tasks get the stored
    window, which must contain every listed one (prepare the store with a wide ``--window``)."""

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> SamplerConfig:
        """Build from a plain (YAML/JSON) dict; unknown keys and names are errors, not ignored."""
        config = dict(config or {})
        _check_keys(config, cls, "sampler config")
        augment = dict(config.pop("augment", None) or {})
        _check_keys(augment, AugmentConfig, "sampler config 'augment'")
        augment = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}
        propagation = dict(config.pop("propagation", None) or {})
        propagation = drop_retired(propagation, RETIRED_PROPAGATION, "sampler config 'propagation'")
        _check_keys(propagation, PropagationConfig, "sampler config 'propagation'")
        propagation = {k: tuple(v) if isinstance(v, list) else v for k, v in propagation.items()}
        config = {k: tuple(v) if k == "zoom_margin" else v for k, v in config.items()}
        result = cls(**config, augment=AugmentConfig(**augment), propagation=PropagationConfig(**propagation))
        if "noise" in config:  # a partial table overrides the defaults modality by modality
            result.noise = {**{m: dict(w) for m, w in DEFAULT_NOISE.items()}, **config["noise"]}
        result.validate()
        return result

    def validate(self) -> None:
        _check_weights(self.tasks, TASKS, "tasks")
        _check_weights(self.holes, HOLE_MODELS, "holes")
        for modality, weights in self.noise.items():
            _check_weights(weights, tuple(NOISE_MODELS), f"noise[{modality!r}]", need_positive=True)
        if self.tasks.get("inpaint", 0) > 0:
            _check_weights(self.holes, HOLE_MODELS, "holes", need_positive=True)
        _check_weights(self.datasets, None, "datasets")
        unknown = sorted(set(self.ct_windows) - set(TASKS))
        if unknown:
            raise ValueError(f"sampler config ct_windows names unknown tasks {unknown}; tasks are {TASKS}")
        self.ct_windows = {task: ct_window(window) for task, window in self.ct_windows.items()}
        if self.align_prompts is False:  # YAML reads an unquoted `off` as false
            self.align_prompts = "off"
        if self.align_prompts not in ALIGNMENTS:
            raise ValueError(
                f"sampler config align_prompts must be one of {ALIGNMENTS}, got {self.align_prompts!r}"
            )
        if self.pairing not in PAIRINGS:
            raise ValueError(f"sampler config pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if (
            isinstance(self.max_classes, bool)
            or not isinstance(self.max_classes, int)
            or self.max_classes < 1
        ):
            raise ValueError(
                f"sampler config max_classes must be a positive integer, got {self.max_classes!r}"
            )
        near = self.propagation.near
        if len(near) != 2 or not 1 <= near[0] <= near[1]:
            raise ValueError(
                f"sampler config propagation.near must be (low, high) with 1 <= low <= high, got {near}"
            )
        if not 0.0 <= self.zoom_margin[0] <= self.zoom_margin[1]:
            raise ValueError(
                f"sampler config zoom_margin must be (low, high), 0 <= low <= high, got {self.zoom_margin}"
            )
        for name in ("cross_case_prob", "binary_prob", "real_pair_prob", "zoom_prob", "native_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"sampler config {name} must be a probability in [0, 1], got {getattr(self, name)}"
                )


def _check_keys(config: dict[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = set(config) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known keys are {sorted(known)}")


def _check_weights(
    weights: dict[str, float], known: tuple[str, ...] | None, where: str, need_positive: bool = False
) -> None:
    if not isinstance(weights, dict):
        raise ValueError(f"sampler config {where} must map names to weights, got {weights!r}")
    for name, weight in weights.items():
        if known is not None and name not in known:
            raise ValueError(f"sampler config {where}: unknown name {name!r}; known names are {list(known)}")
        if not isinstance(weight, (int, float)) or weight < 0 or not np.isfinite(weight):
            raise ValueError(f"sampler config {where}[{name!r}] must be a weight >= 0, got {weight!r}")
    if need_positive and not any(w > 0 for w in weights.values()):
        raise ValueError(f"sampler config {where} needs at least one positive weight, got {weights}")
