"""Domain-randomised phantoms (SynthSeg-style): random anatomy, random contrast per tissue.

Labelled medical images are scarce, but "find in the query what the prompt marks in the prompt
image" can be learnt from images whose only regularity is that each label has a consistent
intensity within one image. A phantom is a random tissue map made from smoothed noise fields, one
random intensity per tissue and channel, a smooth multiplicative bias field, blur and noise. A
second channel with independent per-tissue intensities is a paired contrast of the same anatomy
(a synthesis pair). Tests use :func:`write_nnunet_dataset` to put a dataset on disk in the layout
users have; training can use the same generator for pre-training.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..types import Geometry, Volume

CHANNEL_NAMES = ("T1", "T2", "FLAIR", "PD")
"""nnU-Net channel names of written phantoms; MR-like, so they are normalised by percentiles."""

AIR, TISSUE = 0, 1
"""Tissue ids below the labelled classes: air outside the body, unlabelled tissue inside it."""


@dataclass
class Phantom:
    """``images`` (C, k, j, i) float32, arbitrary MR-like units; ``label`` (k, j, i) uint8, 0 = background."""

    images: np.ndarray
    label: np.ndarray
    tissues: np.ndarray


def random_anatomy(shape: tuple[int, int, int], n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A tissue map: 0 air, 1 unlabelled tissue, 1 + c for class c (c = 1..n_classes).

    The body is an elliptic cylinder along k. The classes partition an ellipsoid inside it by the
    argmax of smoothed noise fields, so structures are blobby and contiguous, and the slices near
    either end of k hold no labelled class (as real scans have slices without the organ).
    """
    shape = _check_shape(shape)
    if not 1 <= n_classes <= 254:
        raise ValueError(f"n_classes must be between 1 and 254 (uint8 labels), got {n_classes}")
    k, j, i = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    body_axes = rng.uniform(0.7, 0.95, 2)
    body = (j / body_axes[0]) ** 2 + (i / body_axes[1]) ** 2 <= 1.0
    region_axes = np.array([rng.uniform(0.5, 0.8), *(body_axes * rng.uniform(0.6, 0.85, 2))])
    region = (k / region_axes[0]) ** 2 + (j / region_axes[1]) ** 2 + (i / region_axes[2]) ** 2 <= 1.0
    sigma = max(1.0, 0.08 * min(shape[1:]))
    fields = np.stack(
        [ndimage.gaussian_filter(rng.standard_normal(shape), sigma) for _ in range(n_classes + 1)]
    )
    fields[0] += 0.5 * fields[1:].std()  # unlabelled tissue also fills part of the region
    tissues = np.where(body, TISSUE, AIR).astype(np.uint8)
    tissues[region & body] = (TISSUE + np.argmax(fields, axis=0)[region & body]).astype(np.uint8)
    return tissues


def render_contrast(tissues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One channel: random intensity per tissue, texture, bias field, blur and noise (float32, ~0..1000)."""
    n_tissues = int(tissues.max()) + 1
    means = rng.uniform(0.1, 1.0, n_tissues)
    means[AIR] = rng.uniform(0.0, 0.05)
    stds = rng.uniform(0.0, 0.04, n_tissues)
    image = means[tissues] + stds[tissues] * ndimage.gaussian_filter(rng.standard_normal(tissues.shape), 1.0)
    coarse = rng.standard_normal(tuple(max(2, n // 8) for n in tissues.shape))
    zoom = [n / c for n, c in zip(tissues.shape, coarse.shape)]
    bias = np.exp(rng.uniform(0.0, 0.3) * ndimage.zoom(coarse, zoom, order=3, grid_mode=True, mode="nearest"))
    image = ndimage.gaussian_filter(image * bias, rng.uniform(0.0, 1.0))
    image += rng.normal(0.0, rng.uniform(0.0, 0.03), image.shape)
    return (1000.0 * np.clip(image, 0.0, None)).astype(np.float32)


def make_phantom(
    shape: tuple[int, int, int], n_classes: int, rng: np.random.Generator, channels: int = 2
) -> Phantom:
    """A phantom with ``channels`` paired contrasts of one random anatomy and its label map."""
    if channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    tissues = random_anatomy(shape, n_classes, rng)
    images = np.stack([render_contrast(tissues, rng) for _ in range(channels)])
    label = np.maximum(tissues.astype(np.int16) - TISSUE, 0).astype(np.uint8)
    return Phantom(images=images, label=label, tissues=tissues)


def write_nnunet_dataset(
    root: str | Path,
    n_cases: int,
    shape: tuple[int, int, int],
    n_classes: int,
    seed: int,
    channels: int = 2,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    name: str = "Dataset900_Phantom",
) -> Path:
    """Write phantoms as an nnU-Net v2 raw dataset ``root/name`` and return that folder.

    Case ``i`` depends only on ``(seed, i)``. ``spacing`` is in (i, j, k) order. The folder is
    built under a temporary name and renamed into place, and an existing one is never replaced.
    """
    from ..io import write_volume  # SimpleITK stays out of phantom generation itself

    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    root = Path(root)
    target = root / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another root or name")
    root.mkdir(parents=True, exist_ok=True)
    names = [CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"MR{c}" for c in range(channels)]
    geometry = Geometry(spacing=spacing)
    building = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        (building / "imagesTr").mkdir()
        (building / "labelsTr").mkdir()
        for case in range(n_cases):
            phantom = make_phantom(shape, n_classes, np.random.default_rng([seed, case]), channels)
            case_id = f"phantom_{case:03d}"
            for c in range(channels):
                image = Volume(phantom.images[c], geometry)
                write_volume(building / "imagesTr" / f"{case_id}_{c:04d}.nii.gz", image)
            write_volume(building / "labelsTr" / f"{case_id}.nii.gz", Volume(phantom.label, geometry))
        description = {
            "name": name.split("_", 1)[-1],
            "description": f"MVGCore domain-randomised phantoms (seed {seed}, shape {list(shape)})",
            "channel_names": {str(c): n for c, n in enumerate(names)},
            "labels": {"background": 0, **{f"class{c}": c for c in range(1, n_classes + 1)}},
            "numTraining": n_cases,
            "file_ending": ".nii.gz",
            "license": "CC0-1.0 (generated)",
        }
        (building / "dataset.json").write_text(json.dumps(description, indent=2))
        building.chmod(0o755)  # mkdtemp makes it private
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target


def _check_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"phantom shape must be three positive sizes (k, j, i), got {shape}")
    return tuple(int(n) for n in shape)
