"""In-context training pairs drawn from a slice store, for the four MVG tasks.

A sample is a prompt pair and a query pair of the same task from the same dataset: by default
two different slices of one case (as the MVG reference does), optionally of two cases. Tasks and
datasets are drawn by configurable weights, so a small dataset is not drowned by a large one and
segmentation can be favoured over the image tasks. Degraded inputs are made on the fly from clean
slices (:mod:`MVGCore.degrade`), so every slice serves denoising and inpainting.

Every sample is a pure function of ``(seed, epoch, index)``: resuming at an index reproduces the
stream exactly, and DataLoader workers or DistributedSampler shards need no coordination.

The sampler's settings are in :mod:`.sampler_config`, its random choices (slices, classes,
weighted picks) in :mod:`.draws`, and how the two halves are cropped, flipped, moved and aligned
in :mod:`.views`; this module assembles them into samples per task and batches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..canvas import resize_plane
from ..degrade import add_noise, apply_hole, make_hole, noise_level
from ..intensity import IntensityRange
from ..registration import require_simpleitk
from ..types import TASKS
from .draws import keep_classes, propagation_positions, two_positions, weighted_choice
from .sampler_config import DEFAULT_NOISE, SamplerConfig
from .store import SliceStore, StoredCase
from .views import (
    align_prompt,
    apply_flips,
    crop,
    crop_box,
    move_half,
    native_scale,
    shared_augment,
    square_box,
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
        task = weighted_choice(rng, self._tasks, [self.config.tasks[t] for t in self._tasks])
        datasets = sorted(self._eligible[task])
        dataset = weighted_choice(rng, datasets, [self.config.datasets.get(d, 1.0) for d in datasets])
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
            positions = propagation_positions(rng, query_case, self.config.propagation)
        else:
            positions = two_positions(
                rng,
                prompt_case,
                query_case,
                prompt_case.foreground_positions,
                query_case.foreground_positions,
            )
        cases = (prompt_case, query_case)
        images = [self._read("segment", c, p, channel) for c, p in zip(cases, positions)]
        labels = keep_classes(
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
        positions = two_positions(rng, case, case, range(len(case.slices)), range(len(case.slices)))
        flips, jitter = shared_augment(rng, self.config.augment)
        box = self._image_box(rng, case)
        weights = self.config.noise.get(case.modalities[channel], DEFAULT_NOISE["OTHER"])
        model = weighted_choice(rng, sorted(weights), [weights[m] for m in sorted(weights)])
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
        positions = two_positions(rng, case, case, range(len(case.slices)), range(len(case.slices)))
        flips, jitter = shared_augment(rng, self.config.augment)
        box = self._image_box(rng, case)
        models = sorted(m for m, w in self.config.holes.items() if w > 0)
        out = {}
        for half, position in zip(("prompt", "query"), positions):
            clean = jitter(self._view(flips, box, self._read("inpaint", case, position, channel))[0])
            model = weighted_choice(rng, models, [self.config.holes[m] for m in models])
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
        positions = two_positions(
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
            return crop_box(rng, self.store_size, aug.crop_scale, aug.crop_ratio)
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
            resize_plane(crop(a, box), (self.size, self.size), is_label[i]) for i, a in enumerate(arrays)
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
