"""Checks and readings of what a caller passes in, done before any slice runs.

Arrays are checked once (shape, dtype, finite values) with messages that name the argument, and
intensity ranges are read from a strided sample, so a large volume is never copied to check it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import sidecar_path
from ..config import MVGConfig
from ..intensity import IntensityRange, intensity_range
from ..types import Prompt
from .options import Options

CT_AIR_THRESHOLD = -500.0
"""``modality="auto"`` calls a volume CT when it holds values at or below this (air in HU)."""
SAMPLE_VOXELS = 1_000_000
"""Intensity ranges of larger volumes are estimated on a strided sample of this many voxels."""


def check_volume(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a real 3D volume (a bool mask as uint8 0/1, without a copy), or a one-line error."""
    array = np.asarray(array)
    if array.ndim != 3:
        hint = " (a 2D image is a one-slice volume: pass image[None])" if array.ndim == 2 else ""
        raise ValueError(f"{name} must be a 3D (k, j, i) array, got {array.ndim}D shape {array.shape}{hint}")
    if min(array.shape) < 1:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if np.iscomplexobj(array):
        raise ValueError(
            f"{name} holds complex values (dtype {array.dtype}); MVG works on real images: pass the "
            "magnitude (np.abs) or the real part, as you mean it"
        )
    if array.dtype == np.bool_:
        return array.view(np.uint8)  # a mask as 0/1 intensities, without a copy
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    for k in range(array.shape[0]):  # slice by slice: no whole-volume boolean copy
        check_finite(array[k], f"{name} slice {k} (axis 0)")
    return array


def check_finite(array: np.ndarray, name: str) -> None:
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; replace them before predicting")


def sample(array: np.ndarray) -> np.ndarray:
    """A strided view of at most SAMPLE_VOXELS voxels: robust percentiles of it are accurate, and
    taking them never copies a whole large volume."""
    array = np.asarray(array)
    if array.size <= SAMPLE_VOXELS:
        return array
    step = math.ceil((array.size / SAMPLE_VOXELS) ** (1 / array.ndim))
    return array[(slice(None, None, step),) * array.ndim]


def options_range(array: np.ndarray, opts: Options) -> IntensityRange:
    """``array``'s normalisation: ``window`` when given, else ``ct_window`` for CT, else its modality's."""
    modality = auto_modality(array, opts.modality)
    window = opts.window
    if window is None and modality == "CT":
        window = opts.ct_window
    return intensity_range(array, modality, window)


def prompt_range(prompt: Prompt, in_range: IntensityRange, opts: Options) -> IntensityRange:
    """A slice of the query volume shares its range; another volume's slice is scaled by its own."""
    if prompt.index is not None:
        return in_range
    return options_range(prompt.image, opts)


def auto_modality(array: np.ndarray, modality: str) -> str:
    if modality != "auto":
        return modality
    return "CT" if float(np.min(sample(array))) <= CT_AIR_THRESHOLD else "OTHER"


def plane_spacing(spacing: tuple[float, float, float] | None, axis: int) -> tuple[float, float]:
    """The in-plane spacing of slices along ``axis`` (isotropic pixels without a spacing)."""
    if spacing is None:
        return (1.0, 1.0)
    return tuple(s for a, s in enumerate(spacing) if a != axis)


def resolve_device(device: str) -> str:
    """``device`` as a torch device string, or a one-line error saying what exists here."""
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'"
            )
        index = 0 if device == "cuda" else device.split(":", 1)[1]
        if not str(index).isdigit() or int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA device(s)")
        return f"cuda:{int(index)}"
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def sidecar_config(path: Path) -> MVGConfig:
    """The config a pickle checkpoint's sidecar JSON holds (pickle files carry none of their own)."""
    side = sidecar_path(path.with_suffix(".safetensors"))
    if not side.is_file():
        raise ValueError(
            f"pickle checkpoint {path} has no config: pass config=MVGConfig(...) or add {side.name}"
        )
    meta = json.loads(side.read_text())
    if "config" not in meta:
        raise ValueError(f"{side} has no 'config'; pass config=MVGConfig(...)")
    return MVGConfig.from_dict(meta["config"], source=str(side))
