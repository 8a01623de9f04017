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

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..degrade import HOLE_MODELS, NOISE_MODELS, add_noise, apply_hole, make_hole, noise_level
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


@dataclass
class AugmentConfig:
    """Random resized crop (independent for prompt and query, as the reference's random crops),
    flips (shared, so prompt and query keep one orientation) and intensity jitter (shared, so
    the prompt still shows the query's mapping). Labels always follow their image's geometry."""

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
class SamplerConfig:
    """What to draw. Unlisted datasets get weight 1; a weight of 0 switches a task or dataset off."""

    tasks: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TASKS, 1.0))
    datasets: dict[str, float] = field(default_factory=dict)
    cross_case_prob: float = 0.0
    """Segmentation and synthesis: chance that the prompt comes from another case of the dataset."""
    binary_prob: float = 0.0
    """Segmentation: chance to keep one class present in the prompt (as a user prompting one structure)."""
    real_pair_prob: float = 0.5
    """Denoising: chance to use a stored degraded/clean pair when the case has one."""
    noise: dict[str, dict[str, float]] = field(
        default_factory=lambda: {m: dict(w) for m, w in DEFAULT_NOISE.items()}
    )
    holes: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HOLE_MODELS, 1.0))
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None) -> SamplerConfig:
        """Build from a plain (YAML/JSON) dict; unknown keys and names are errors, not ignored."""
        config = dict(config or {})
        _check_keys(config, cls, "sampler config")
        augment = dict(config.pop("augment", None) or {})
        _check_keys(augment, AugmentConfig, "sampler config 'augment'")
        augment = {k: tuple(v) if isinstance(v, list) else v for k, v in augment.items()}
        result = cls(**config, augment=AugmentConfig(**augment))
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
        for name in ("cross_case_prob", "binary_prob", "real_pair_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"sampler config {name} must be a probability in [0, 1], got {getattr(self, name)}"
                )


class InContextDataset(Dataset):
    """Map-style dataset of ``length`` in-context samples per epoch, drawn from a slice store.

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
    ) -> None:
        self.store = store if isinstance(store, SliceStore) else SliceStore(store)
        self.config = config if isinstance(config, SamplerConfig) else SamplerConfig.from_dict(config)
        self.config.validate()
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
        self.size = self.store.tile_size
        self._eligible = self._index_cases()
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
        positions = _two_positions(
            rng, prompt_case, query_case, prompt_case.foreground_positions, query_case.foreground_positions
        )
        flips, jitter = self._shared_augment(rng)
        halves = []
        for case, position in zip((prompt_case, query_case), positions):
            image, label = self.store.image(case, position, channel), self.store.label(case, position)
            image, label = self._crop_pair(rng, flips, image, label, other_is_label=True)
            halves.append((jitter(image), label.astype(np.int64)))
        (prompt_image, prompt_label), (query_image, query_label) = halves
        if rng.random() < self.config.binary_prob:
            present = np.unique(prompt_label[prompt_label > 0])
            if present.size:
                keep = present[rng.integers(present.size)]
                prompt_label = (prompt_label == keep).astype(np.int64)
                query_label = (query_label == keep).astype(np.int64)
        return {
            "prompt_image": prompt_image,
            "prompt_target": prompt_label,
            "query_image": query_image,
            "query_target": query_label,
        }

    def _denoise(self, rng: np.random.Generator, prompt_case: StoredCase, query_case: StoredCase) -> dict:
        case = query_case
        real = case.target_row is not None and rng.random() < self.config.real_pair_prob
        channel = 0 if real else int(rng.integers(case.channels))
        positions = _two_positions(rng, case, case, range(len(case.slices)), range(len(case.slices)))
        flips, jitter = self._shared_augment(rng)
        weights = self.config.noise.get(case.modalities[channel], DEFAULT_NOISE["OTHER"])
        model = _weighted_choice(rng, sorted(weights), [weights[m] for m in sorted(weights)])
        level = noise_level(model, rng)  # one noise model and level shared: the prompt shows it
        out = {}
        for half, position in zip(("prompt", "query"), positions):
            clean = self.store.target(case, position) if real else self.store.image(case, position, channel)
            if real:
                degraded = self.store.image(case, position, 0)
                degraded, clean = self._crop_pair(rng, flips, degraded, clean)
                degraded, clean = jitter(degraded), jitter(clean)
            else:
                clean = jitter(self._crop_pair(rng, flips, clean)[0])
                degraded = add_noise(clean, model, level, rng)
            out[f"{half}_image"], out[f"{half}_target"] = degraded, clean
        return out

    def _inpaint(self, rng: np.random.Generator, prompt_case: StoredCase, query_case: StoredCase) -> dict:
        case = query_case
        channel = int(rng.integers(case.channels))
        positions = _two_positions(rng, case, case, range(len(case.slices)), range(len(case.slices)))
        flips, jitter = self._shared_augment(rng)
        models = sorted(m for m, w in self.config.holes.items() if w > 0)
        out = {}
        for half, position in zip(("prompt", "query"), positions):
            clean = jitter(self._crop_pair(rng, flips, self.store.image(case, position, channel))[0])
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
        flips, jitter = self._shared_augment(rng)
        out = {}
        for half, case, position in zip(("prompt", "query"), (prompt_case, query_case), positions):
            image = self._channel(case, position, source)
            other = self._channel(case, position, target)
            image, other = self._crop_pair(rng, flips, image, other)
            out[f"{half}_image"], out[f"{half}_target"] = jitter(image), other
        return out

    def _channel(self, case: StoredCase, position: int, channel: int | str) -> np.ndarray:
        return (
            self.store.target(case, position)
            if channel == "target"
            else self.store.image(case, position, channel)
        )

    # -- augmentation -----------------------------------------------------------------------------

    def _shared_augment(self, rng: np.random.Generator) -> tuple[tuple[bool, bool], Any]:
        """Flips and an intensity jitter drawn once per sample, for prompt and query alike."""
        aug = self.config.augment
        flips = (bool(rng.random() < aug.vflip_prob), bool(rng.random() < aug.hflip_prob))
        if rng.random() >= aug.jitter_prob:
            return flips, lambda image: image
        gamma = float(np.exp(rng.uniform(np.log(aug.gamma[0]), np.log(aug.gamma[1]))))
        contrast, brightness = float(rng.uniform(*aug.contrast)), float(rng.uniform(*aug.brightness))

        def jitter(image: np.ndarray) -> np.ndarray:
            out = (np.power(image, gamma) - 0.5) * contrast + 0.5 + brightness
            return np.clip(out, 0.0, 1.0).astype(np.float32)

        return flips, jitter

    def _crop_pair(
        self,
        rng: np.random.Generator,
        flips: tuple[bool, bool],
        image: np.ndarray,
        other: np.ndarray | None = None,
        other_is_label: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """The same random resized crop and flips on an image and its label (or paired image).

        A crop that would cut away all of a label's foreground is replaced by the whole tile, so
        a segmentation prompt never loses its only example.
        """
        arrays = [image] if other is None else [image, other]
        aug = self.config.augment
        if rng.random() < aug.crop_prob:
            top, left, height, width = _crop_box(rng, self.size, aug.crop_scale, aug.crop_ratio)
            cropped = [a[top : top + height, left : left + width] for a in arrays]
            if not (other_is_label and other.any() and not cropped[1].any()):
                arrays = [
                    _resize(c, self.size, is_label=i == 1 and other_is_label) for i, c in enumerate(cropped)
                ]
        if flips[0]:
            arrays = [a[::-1] for a in arrays]
        if flips[1]:
            arrays = [a[:, ::-1] for a in arrays]
        return tuple(np.ascontiguousarray(a) for a in arrays)


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


def _resize(array: np.ndarray, size: int, is_label: bool) -> np.ndarray:
    if array.shape == (size, size):
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if is_label:
        return F.interpolate(x, size=(size, size), mode="nearest-exact")[0, 0].numpy().astype(array.dtype)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


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
