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
from ..checks import is_whole
from ..config import MVGConfig
from ..intensity import IntensityRange, intensity_range
from ..resample_weights import check_tile_size
from ..slicewise import plane_shape
from ..types import Prompt
from .options import Options

CT_AIR_THRESHOLD = -500.0
"""``modality="auto"`` calls a volume CT when it holds values at or below this (air in HU)."""
FLOAT32_MAX = float(np.finfo(np.float32).max)
SPACING_ADVICE = "check the spacing passed (spacing=None fits square pixels)"
"""What :func:`check_slices_fit` advises a caller of the Python API."""
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
    """Refuse NaN or infinite values, and values a float64 array holds that the model's float32
    would turn into infinities (1e300 is finite here and garbage once cast)."""
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.inexact):
        return
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; replace them before predicting")
    if array.dtype.itemsize > 4 and array.size and max(-array.min(), array.max()) > FLOAT32_MAX:
        raise ValueError(
            f"{name} holds values beyond float32's range (+-{FLOAT32_MAX:.3g}), which the model "
            "computes in; rescale them before predicting"
        )


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


def check_slices_fit(
    shape: tuple[int, int, int],
    axis: int,
    spacing: tuple[float, float, float] | None,
    tile_size: int,
    native: bool,
    name: str,
    advice: str,
) -> None:
    """Refuse a volume whose slices, fitted into the tile by their physical extent
    (:func:`MVGCore.canvas.plan_fit`; with ``native`` 1:1 tiles, a tile-sized part of a slice),
    would be less than one pixel across one way.

    Every row (or column) would then be averaged into one tile pixel and the answer stretched back:
    nothing of the slice is seen, and the output is the prompt slices and noise. Such pixels
    (0.001 x 1000 mm) come from a wrong header far more often than from a scanner, so this is
    refused rather than warned about: a warning scrolls past while the output looks like a result.
    ``name`` and ``advice`` say where the spacing came from and how to fix it."""
    if spacing is None:
        return
    plane = plane_shape(shape, axis)
    if native:
        plane = (min(plane[0], tile_size), min(plane[1], tile_size))
    pixel = plane_spacing(spacing, axis)
    extent = (plane[0] * pixel[0], plane[1] * pixel[1])
    across = [e * tile_size / max(extent) for e in extent]
    if any(n > 1 and a < 1 for n, a in zip(plane, across)):
        raise ValueError(
            f"{name}: slices along axis {axis}, {plane[0]} x {plane[1]} pixels of {pixel[0]:g} x "
            f"{pixel[1]:g} mm, fit the {tile_size}-pixel tile less than one pixel across "
            f"({min(across):.2g} px); {advice}"
        )


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` (canvases per forward pass) as an int, or a one-line error."""
    if not is_whole(batch_size, 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def task_tile(
    config: MVGConfig, task: str, tile_size: int | None = None, name: str = "option tile_size"
) -> int:
    """The tile in pixels ``task`` runs at: ``tile_size`` (checked as the option; ``name`` names it
    in the error), else for segmentation the config's ``segment_tile_size`` when set, else the
    model's own tile. A function of the config alone, so a command can check it before loading."""
    if tile_size is None:
        if task == "segment" and config.segment_tile_size is not None:
            return config.segment_tile_size
        return config.tile_size
    return check_tile_size(Options(tile_size=tile_size).tile_size, config.patch_size, name)


def resolve_device(device: str | torch.device) -> str:
    """``device`` as a torch device string, or a one-line error saying what exists here.

    A ``torch.device`` is taken by its name, as PyTorch users pass one; anything else that is
    not a string (``None``) is refused here, where the argument can still be named."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
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
