"""In-context training pairs drawn from a slice store, for the four MVG tasks.

A sample is a prompt pair and a query pair of the same task from the same dataset: by default
two different slices of one case (as the MVG reference does), optionally of two cases. Tasks and
datasets are drawn by configurable weights, so a small dataset is not drowned by a large one and
segmentation can be favoured over the image tasks. Degraded inputs are made on the fly from clean
slices (:mod:`MVGCore.degrade`), so every slice serves denoising and inpainting.

Every sample is a pure function of ``(seed, epoch, index)``: resuming at an index reproduces the
stream exactly, and DataLoader workers or DistributedSampler shards need no coordination.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..canvas import resize_plane
from ..degrade import HOLE_MODELS, NOISE_MODELS, add_noise, apply_hole, make_hole, noise_level
from ..intensity import IntensityRange, ct_window
from ..registration import ALIGNMENTS, Registration, require_simpleitk
from ..retired import drop_retired
from ..types import TASKS
from .store import SliceStore, StoredCase

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


class InContextDataset(Dataset):
    """Map-style dataset of ``length`` in-context samples per epoch, drawn from a slice store.

    Samples are ``tile_size`` pixels square (default: the store's tile). A store of larger tiles
    lets segmentation zoom onto structures and image tasks crop at native pixel scale without
    enlarging a shrunken slice.

    Each item is a dict: ``prompt_image``, ``query_image`` float32 (S, S) in [0, 1];
    ``prompt_target``, ``query_target`` int64 labels for "segment", float32 [0, 1] images
    otherwise; ``hole`` bool (S, S) (the query's hole for "inpaint", else all False) and
    ``prompt_hole``; ``task``, ``dataset`` and ``case_id`` strings. Batches mixing label and
    image targets need :func:`collate`.
    """

    def __init__(
        self,
        store: SliceStore | str | Path,
        config: SamplerConfig | dict[str, Any] | None = None,
        length: int = 10_000,
        seed: int = 0,
        tile_size: int | None = None,
    ) -> None:
        self.store = store if isinstance(store, SliceStore) else SliceStore(store)
        self.config = config if isinstance(config, SamplerConfig) else SamplerConfig.from_dict(config)
        self.config.validate()
        if self.config.align_prompts != "off" and self.config.tasks.get("segment", 0) > 0:
            require_simpleitk(f"sampler config align_prompts={self.config.align_prompts!r}")
        if length < 1:
            raise ValueError(f"length (samples per epoch) must be positive, got {length}")
        # Checked against the whole store, so that a view of some of its cases (a train/validation
        # split) accepts weights for datasets it happens not to contain.
        unknown = set(self.config.datasets) - {case["dataset"] for case in self.store.manifest["cases"]}
        if unknown:
            raise ValueError(
                f"sampler config names datasets not in store {self.store.path}: {sorted(unknown)}"
            )
        self.length, self.seed, self.epoch = length, seed, 0
        self.store_size = self.store.tile_size
        self.size = self.store_size if tile_size is None else int(tile_size)
        if not 1 <= self.size <= self.store_size:
            raise ValueError(
                f"sample tile size {self.size} must lie in [1, {self.store_size}] (the tiles of store "
                f"{self.store.path}); prepare a store with --size {self.size} or larger"
            )
        self._eligible = self._index_cases()
        self._check_ct_windows()
        self._tasks = [t for t in TASKS if self._eligible.get(t)]
        if not self._tasks:
            raise ValueError(
                f"no task can be sampled from store {self.store.path} with task weights {self.config.tasks} "
                f"and dataset weights {self.config.datasets}"
            )

    def _index_cases(self) -> dict[str, dict[str, list[int]]]:
        """task -> dataset -> indices of cases that can serve it (with positive weights only)."""
        eligible: dict[str, dict[str, list[int]]] = {}
        for index, case in enumerate(self.store.cases):
            if self.config.datasets.get(case.dataset, 1.0) <= 0:
                continue
            for task in TASKS:
                if self.config.tasks.get(task, 0.0) > 0 and task in case.tasks and _serves(case, task):
                    eligible.setdefault(task, {}).setdefault(case.dataset, []).append(index)
        return eligible

    def _check_ct_windows(self) -> None:
        """Every CT case a windowed task draws was stored in a window that contains that task's window
        (re-windowing cannot bring back values the store clipped)."""
        for task, (low, high) in self.config.ct_windows.items():
            for indices in self._eligible.get(task, {}).values():
                for case in (self.store.cases[i] for i in indices):
                    for stored_low, stored_high in _ct_ranges(case):
                        if not stored_low <= low < high <= stored_high:
                            raise ValueError(
                                f"sampler config ct_windows[{task!r}] = [{low:g}, {high:g}] HU lies outside "
                                f"the window [{stored_low:g}, {stored_high:g}] that store {self.store.path} "
                                f"holds case {case.case_id!r} in; prepare the store with a --window "
                                "containing it"
                            )

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw a different (still reproducible) set of samples for each epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"sample index {index} out of range for an epoch of {self.length}")
        return self.sample(np.random.default_rng([self.seed, self.epoch, int(index)]))

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        task = _weighted_choice(rng, self._tasks, [self.config.tasks[t] for t in self._tasks])
        datasets = sorted(self._eligible[task])
        dataset = _weighted_choice(rng, datasets, [self.config.datasets.get(d, 1.0) for d in datasets])
        cases = self._eligible[task][dataset]
        query_case = self.store.cases[cases[rng.integers(len(cases))]]
        prompt_case = query_case
        if (
            task in ("segment", "synthesize")
            and len(cases) > 1
            and rng.random() < self.config.cross_case_prob
        ):
            others = [c for c in cases if self.store.cases[c] is not query_case]
            prompt_case = self.store.cases[others[rng.integers(len(others))]]
        build = {
            "segment": self._segment,
            "denoise": self._denoise,
            "inpaint": self._inpaint,
            "synthesize": self._synthesize,
        }[task]
        sample = build(rng, prompt_case, query_case)
        sample.setdefault("hole", np.zeros((self.size, self.size), dtype=bool))
        sample.setdefault("prompt_hole", np.zeros((self.size, self.size), dtype=bool))
        return {**sample, "task": task, "dataset": dataset, "case_id": query_case.case_id}

    # -- tasks ------------------------------------------------------------------------------------

    def _segment(self, rng: np.random.Generator, prompt_case: StoredCase, query_case: StoredCase) -> dict:
        channel = int(rng.integers(min(prompt_case.channels, query_case.channels)))
        propagation = prompt_case is query_case and self.config.pairing == "propagation"
        if propagation:
            positions = _propagation_positions(rng, query_case, self.config.propagation)
        else:
            positions = _two_positions(
                rng,
                prompt_case,
                query_case,
                prompt_case.foreground_positions,
                query_case.foreground_positions,
            )
        cases = (prompt_case, query_case)
        images = [self._read("segment", c, p, channel) for c, p in zip(cases, positions)]
        labels = _keep_classes(
            rng,
            [self.store.label(c, p).astype(np.int64) for c, p in zip(cases, positions)],
            self.config.binary_prob,
            self.config.max_classes,
        )
        flips, jitter = shared_augment(rng, self.config.augment)
        if propagation:  # one grid for both halves, as two slices of one volume at inference
            box = self._segment_box(rng, query_case, labels)
            boxes = [box, box]
        else:
            boxes = [self._segment_box(rng, c, [label]) for c, label in zip(cases, labels)]
        (prompt_image, prompt_label), (query_image, query_label) = (
            self._view(flips, box, image, label) for box, image, label in zip(boxes, images, labels)
        )
        if propagation:
            prompt_image, prompt_label = move_half(rng, self.config.propagation, prompt_image, prompt_label)
        prompt_image, query_image = jitter(prompt_image), jitter(query_image)
        if self.config.align_prompts != "off":
            prompt_image, prompt_label = align_prompt(
                self.config.align_prompts, query_image, prompt_image, prompt_label
            )
        return {
            "prompt_image": prompt_image,
            "prompt_target": prompt_label.astype(np.int64),
            "query_image": query_image,
            "query_target": query_label.astype(np.int64),
        }

    def _denoise(self, rng: np.random.Generator, prompt_case: StoredCase, query_case: StoredCase) -> dict:
        case = query_case
        real = case.target_row is not None and rng.random() < self.config.real_pair_prob
        channel = 0 if real else int(rng.integers(case.channels))
        positions = _two_positions(rng, case, case, range(len(case.slices)), range(len(case.slices)))
        flips, jitter = shared_augment(rng, self.config.augment)
        box = self._image_box(rng, case)
        weights = self.config.noise.get(case.modalities[channel], DEFAULT_NOISE["OTHER"])
        model = _weighted_choice(rng, sorted(weights), [weights[m] for m in sorted(weights)])
        level = noise_level(model, rng)  # one noise model and level shared: the prompt shows it
        out = {}
        for half, position in zip(("prompt", "query"), positions):
            if real:
                degraded, clean = self._view(
                    flips,
                    box,
                    self._read("denoise", case, position, 0),
                    self._read("denoise", case, position, "target"),
                )
                degraded, clean = jitter(degraded), jitter(clean)
            else:
                clean = jitter(self._view(flips, box, self._read("denoise", case, position, channel))[0])
                degraded = add_noise(clean, model, level, rng)
            out[f"{half}_image"], out[f"{half}_target"] = degraded, clean
        return out

    def _inpaint(self, rng: np.random.Generator, prompt_case: StoredCase, query_case: StoredCase) -> dict:
        case = query_case
        channel = int(rng.integers(case.channels))
        positions = _two_positions(rng, case, case, range(len(case.slices)), range(len(case.slices)))
        flips, jitter = shared_augment(rng, self.config.augment)
        box = self._image_box(rng, case)
        models = sorted(m for m, w in self.config.holes.items() if w > 0)
        out = {}
        for half, position in zip(("prompt", "query"), positions):
            clean = jitter(self._view(flips, box, self._read("inpaint", case, position, channel))[0])
            model = _weighted_choice(rng, models, [self.config.holes[m] for m in models])
            hole = make_hole(model, clean.shape, rng)
            out[f"{half}_image"], out[f"{half}_target"] = apply_hole(clean, hole), clean
            out["hole" if half == "query" else "prompt_hole"] = hole
        return out

    def _synthesize(self, rng: np.random.Generator, prompt_case: StoredCase, query_case: StoredCase) -> dict:
        sources = _synthesis_sources(query_case)
        shared = [s for s in sources if s in _synthesis_sources(prompt_case)]
        if len(shared) < 2:  # the other case lacks the channels: pair within the query's case
            prompt_case = query_case
        else:
            sources = shared
        pairs = [(a, b) for a in sources for b in sources if a != b]
        source, target = pairs[rng.integers(len(pairs))]
        positions = _two_positions(
            rng, prompt_case, query_case, range(len(prompt_case.slices)), range(len(query_case.slices))
        )
        flips, jitter = shared_augment(rng, self.config.augment)
        box = self._image_box(rng, query_case)
        out = {}
        for half, case, position in zip(("prompt", "query"), (prompt_case, query_case), positions):
            image = self._read("synthesize", case, position, source)
            other = self._read("synthesize", case, position, target)
            image, other = self._view(flips, box, image, other)
            out[f"{half}_image"], out[f"{half}_target"] = jitter(image), other
        return out

    def _read(self, task: str, case: StoredCase, position: int, channel: int | str) -> np.ndarray:
        """A stored channel (or the explicit ``"target"``) in [0, 1]; CT in ``task``'s window when
        ``ct_windows`` names one (a target shares channel 0's modality and window)."""
        is_target = channel == "target"
        values = self.store.target(case, position) if is_target else self.store.image(case, position, channel)
        window = self.config.ct_windows.get(task)
        if window is None or case.modalities[0 if is_target else channel] != "CT":
            return values
        stored_low, stored_high = _stored_range(case, channel)
        return IntensityRange(*window).normalize(values * (stored_high - stored_low) + stored_low)

    # -- augmentation -----------------------------------------------------------------------------

    def _whole_box(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A random resized crop of the stored tile (or all of it), (top, left, height, width)."""
        aug = self.config.augment
        if rng.random() < aug.crop_prob:
            return _crop_box(rng, self.store_size, aug.crop_scale, aug.crop_ratio)
        return (0, 0, self.store_size, self.store_size)

    def _segment_box(
        self, rng: np.random.Generator, case: StoredCase, labels: list[np.ndarray]
    ) -> tuple[int, int, int, int]:
        """The kept structures' box with a random margin (the zoom of inference), or a whole-slice crop.

        A whole-slice crop that would cut away all of a label's foreground becomes the whole tile,
        so a prompt never loses its only example.
        """
        rows, cols = np.nonzero(np.any(np.stack(labels) > 0, axis=0))
        if rows.size and rng.random() < self.config.zoom_prob:
            margin = rng.uniform(*self.config.zoom_margin)
            floor = self.config.zoom_min_size * native_scale(case)
            return square_box(rows.min(), rows.max() + 1, cols.min(), cols.max() + 1, margin, floor)
        box = self._whole_box(rng)
        top, left, height, width = box
        if any(lab.any() and not lab[top : top + height, left : left + width].any() for lab in labels):
            return (0, 0, self.store_size, self.store_size)
        return box

    def _image_box(self, rng: np.random.Generator, case: StoredCase) -> tuple[int, int, int, int]:
        """A tile-sized crop at the source's native pixel scale (tiled inference), or a whole-slice crop."""
        if rng.random() >= self.config.native_prob:
            return self._whole_box(rng)
        side = max(1, round(self.size * native_scale(case)))
        fit = case.source["fit"]
        (top, left), (height, width) = fit["offset"], fit["content"]
        # Anywhere inside the slice's content; centred (and padded) when the content is smaller.
        row = top + (int(rng.integers(height - side + 1)) if height > side else (height - side) // 2)
        col = left + (int(rng.integers(width - side + 1)) if width > side else (width - side) // 2)
        return (row, col, side, side)

    def _view(
        self,
        flips: tuple[bool, bool],
        box: tuple[int, int, int, int],
        image: np.ndarray,
        label: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """``box`` of the stored tile (zero outside it) resized to the sample tile, then flipped.

        ``label`` is a label map (nearest neighbour) when it has an integer dtype, else a paired
        image, resized like the image.
        """
        arrays = [image] if label is None else [image, label]
        is_label = [False, label is not None and np.issubdtype(label.dtype, np.integer)]
        arrays = [
            resize_plane(_crop(a, box), (self.size, self.size), is_label[i]) for i, a in enumerate(arrays)
        ]
        return tuple(apply_flips(a, flips) for a in arrays)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples of any task mix into a batch.

    torch's default collate cannot stack int64 labels with float32 images (it fails inside
    workers), so targets are stacked as float32 (class ids are exact) and ``is_label`` (B,) says
    which rows are label maps; ``batch["query_target"][batch["is_label"]].long()`` recovers them.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in ("prompt_image", "query_image", "prompt_target", "query_target"):
        batch[key] = torch.stack([torch.as_tensor(s[key], dtype=torch.float32) for s in samples])
    for key in ("hole", "prompt_hole"):
        batch[key] = torch.stack([torch.as_tensor(s[key]) for s in samples])
    batch["is_label"] = torch.tensor([s["task"] == "segment" for s in samples])
    for key in ("task", "dataset", "case_id"):
        batch[key] = [s[key] for s in samples]
    return batch


def _ct_ranges(case: StoredCase) -> list[tuple[float, float]]:
    """The stored [low, high] of each CT channel of ``case`` (and of its target, when channel 0 is CT)."""
    channels = [c for c, m in enumerate(case.modalities) if m == "CT"]
    if case.modalities[0] == "CT" and case.target_row is not None:
        channels.append("target")
    return [_stored_range(case, c) for c in channels]


def _stored_range(case: StoredCase, channel: int | str) -> tuple[float, float]:
    """The [low, high] that ``case``'s ``channel`` (or ``"target"``) was normalised from when stored."""
    try:
        source = case.source
        low, high = source["target_intensity"] if channel == "target" else source["intensity"][channel]
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"case {case.case_id!r} of dataset {case.dataset!r} records no stored intensity range for "
            f"channel {channel!r}, so ct_windows cannot re-window it; prepare it with MVGCore.prepare"
        ) from None
    return float(low), float(high)


def _serves(case: StoredCase, task: str) -> bool:
    if task == "segment":
        return case.label_row is not None and len(case.foreground_positions) > 0
    if task == "synthesize":
        return len(_synthesis_sources(case)) >= 2
    return True


def _synthesis_sources(case: StoredCase) -> list[int | str]:
    return [*range(case.channels), *(["target"] if case.target_row is not None else [])]


def _two_positions(rng, prompt_case, query_case, prompt_pool, query_pool) -> tuple[int, int]:
    """Stored slice positions for prompt and query; two different slices when both are one case."""
    prompt_pool, query_pool = list(prompt_pool), list(query_pool)
    query = query_pool[rng.integers(len(query_pool))]
    if prompt_case is query_case and len(prompt_pool) > 1:
        prompt_pool = [p for p in prompt_pool if p != query]
    return prompt_pool[rng.integers(len(prompt_pool))], query


def _crop_box(rng, size, scale, ratio) -> tuple[int, int, int, int]:
    area = rng.uniform(*scale) * size * size
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    height = int(np.clip(round(np.sqrt(area / aspect)), 1, size))
    width = int(np.clip(round(np.sqrt(area * aspect)), 1, size))
    return int(rng.integers(size - height + 1)), int(rng.integers(size - width + 1)), height, width


def native_scale(case: StoredCase) -> float:
    """Stored tile pixels per source pixel (along the finer in-plane axis): 1 for a 512 px CT
    slice in a 512 store, 2 for a 256 px MR slice there, 0.25 for a 512 px slice in a 128 store."""
    fit = case.source.get("fit") if case.source else None
    if not fit:
        return 1.0
    return max(c / s for c, s in zip(fit["content"], fit["shape"]))


def square_box(
    top: float, bottom: float, left: float, right: float, margin: float, floor: float
) -> tuple[int, int, int, int]:
    """The square (top, left, side, side) around rows [top, bottom) x cols [left, right) with
    ``margin`` x the longer side added on each side, and at least ``floor`` pixels wide."""
    side = max(bottom - top, right - left)
    side_px = int(np.ceil(max(side * (1.0 + 2.0 * margin), floor, 1.0)))
    centre_r, centre_c = (top + bottom) / 2.0, (left + right) / 2.0
    return (round(centre_r - side_px / 2.0), round(centre_c - side_px / 2.0), side_px, side_px)


def _crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``array[top:top+height, left:left+width]``, zero where the box leaves the array."""
    top, left, height, width = box
    out = np.zeros((height, width), dtype=array.dtype)
    r0, r1 = max(top, 0), min(top + height, array.shape[0])
    c0, c1 = max(left, 0), min(left + width, array.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = array[r0:r1, c0:c1]
    return out


def _propagation_positions(
    rng: np.random.Generator, case: StoredCase, config: PropagationConfig
) -> tuple[int, int]:
    """(prompt, query) stored positions of one case: the prompt a labelled slice, the query the
    slice nearest to a drawn number of source slices away from it, or any other slice with
    ``far_prob``."""
    labelled = list(case.foreground_positions)
    prompt = labelled[rng.integers(len(labelled))]
    others = [p for p in range(len(case.slices)) if p != prompt]
    if not others:
        return prompt, prompt
    if rng.random() < config.far_prob:
        return prompt, others[rng.integers(len(others))]
    distance = int(rng.integers(config.near[0], config.near[1] + 1)) * (1 if rng.random() < 0.5 else -1)
    wanted = case.slices[prompt] + distance
    query = min(others, key=lambda p: (abs(case.slices[p] - wanted), p))
    return prompt, query


def _keep_classes(
    rng: np.random.Generator, labels: list[np.ndarray], binary_prob: float, max_classes: int
) -> list[np.ndarray]:
    """Keep one (with ``binary_prob``) or up to ``max_classes`` of the prompt's (``labels[0]``)
    classes; the others become background in every label."""
    present = np.unique(labels[0][labels[0] > 0])
    if not present.size:
        return labels
    count = 1 if rng.random() < binary_prob else min(max_classes, present.size)
    if count == present.size:
        return labels
    keep = rng.choice(present, size=count, replace=False)
    return [np.where(np.isin(label, keep), label, 0) for label in labels]


def shared_augment(rng: np.random.Generator, aug: AugmentConfig) -> tuple[tuple[bool, bool], Any]:
    """Flips (vertical, horizontal) and an intensity jitter drawn once per sample, for prompt and
    query alike."""
    flips = (bool(rng.random() < aug.vflip_prob), bool(rng.random() < aug.hflip_prob))
    if rng.random() >= aug.jitter_prob:
        return flips, lambda image: image
    gamma = float(np.exp(rng.uniform(np.log(aug.gamma[0]), np.log(aug.gamma[1]))))
    contrast, brightness = float(rng.uniform(*aug.contrast)), float(rng.uniform(*aug.brightness))

    def jitter(image: np.ndarray) -> np.ndarray:
        out = (np.power(image, gamma) - 0.5) * contrast + 0.5 + brightness
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    return flips, jitter


def apply_flips(array: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
    """``array`` flipped (vertically, horizontally) as :func:`shared_augment` drew, contiguous."""
    array = array[::-1] if flips[0] else array
    return np.ascontiguousarray(array[:, ::-1] if flips[1] else array)


def move_half(
    rng: np.random.Generator, config: PropagationConfig, image: np.ndarray, label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A small random shift, rotation and scale of one half (the anatomy moving between slices)."""
    size = image.shape[-1]
    angle = np.deg2rad(rng.uniform(-config.rotate, config.rotate))
    scale = rng.uniform(*config.scale)
    shift = rng.uniform(-config.shift, config.shift, size=2) * 2.0 / size  # normalised coordinates
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape], align_corners=False)
    planes = torch.from_numpy(np.stack([image, label]).astype(np.float32))[:, None]
    moved_image = F.grid_sample(planes[:1], grid, mode="bilinear", align_corners=False)[0, 0]
    moved_label = F.grid_sample(planes[1:], grid, mode="nearest", align_corners=False)[0, 0]
    return moved_image.numpy(), moved_label.numpy().astype(label.dtype)


def align_prompt(
    method: str, query_image: np.ndarray, prompt_image: np.ndarray, prompt_label: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The prompt half registered onto the query half (``SamplerConfig.align_prompts``), or as
    it lay when the warp leaves no label (:meth:`Registration.align`). Registration failures fall
    back to the centred transform silently here: a training stream would otherwise log one
    warning per empty slice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Registration(method).align(query_image, prompt_image, prompt_label)


def _weighted_choice(rng: np.random.Generator, items: list, weights: list[float]):
    weights = np.asarray(weights, dtype=float)
    if not items or weights.sum() <= 0:
        raise ValueError(f"nothing to choose from: items {items} with weights {list(weights)}")
    return items[rng.choice(len(items), p=weights / weights.sum())]


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
