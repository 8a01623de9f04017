"""Per-modality intensity normalisation to [0, 1].

CT has physical units, so it is windowed (the MVG paper trains on [-100, 200] HU). MR, X-ray and
ultrasound have arbitrary units, so they are scaled between robust percentiles of the volume.
The result is the [0, 1] space every later stage (canvas, metrics, PSNR/SSIM) works in.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

MODALITIES = ("CT", "MR", "XR", "US", "OTHER")

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "paper": (-100.0, 200.0),
    "abdomen": (-160.0, 240.0),
    "soft_tissue": (-125.0, 225.0),
    "lung": (-1350.0, 150.0),
    "bone": (-450.0, 1050.0),
    "brain": (0.0, 80.0),
    "wide": (-1000.0, 400.0),
}
DEFAULT_CT_WINDOW = "paper"
DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityRange:
    """The input values mapped to 0 and 1; kept so outputs can be mapped back to input units."""

    low: float
    high: float

    def normalize(self, array: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(array, dtype=np.float32) - self.low) / (self.high - self.low)
        return np.clip(scaled, 0.0, 1.0, out=scaled)

    def denormalize(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float32) * (self.high - self.low) + self.low


def parse_window(text: str) -> str | tuple[float, float]:
    """A command-line CT window: a preset name, or ``LOW,HIGH`` in HU (argparse ``type=``)."""
    if "," not in text:
        return text
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a CT window must be a preset name or LOW,HIGH (two numbers), got {text!r}"
        ) from None
    try:
        return check_window((low, high))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text}: {error}") from None


def check_window(window: tuple[float, float]) -> tuple[float, float]:
    """An explicit (low, high) window: finite, with low below high.

    An inverted or empty window the user gave is refused rather than repaired: mapping every value
    to one side of it would silently flatten the whole output.
    """
    if len(window) != 2:
        raise ValueError(f"a window is two numbers (low, high), got {window!r}")
    low, high = (float(w) for w in window)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"window ({low:g}, {high:g}) must be two finite numbers")
    if not low < high:
        raise ValueError(f"window ({low:g}, {high:g}) is inverted or empty: LOW must be below HIGH")
    return low, high


def ct_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """A CT window given as a preset name or (low, high), as a checked (low, high) in HU."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; presets are {sorted(CT_WINDOWS)}")
        return CT_WINDOWS[window]
    return check_window(window)


def check_modality(modality: str) -> str:
    key = modality.upper()
    aliases = {"MRI": "MR", "XRAY": "XR", "X-RAY": "XR", "CR": "XR", "DX": "XR", "ULTRASOUND": "US"}
    key = aliases.get(key, key)
    if key not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} (or an alias), got {modality!r}")
    return key


def intensity_range(
    array: np.ndarray,
    modality: str,
    window: str | tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> IntensityRange:
    """The range to normalise ``array`` with.

    ``window`` (a CT preset name or explicit (low, high)) wins for any modality; otherwise CT uses
    the paper's window and other modalities robust percentiles of the finite voxels.
    """
    modality = check_modality(modality)
    if window is None and modality == "CT":
        window = DEFAULT_CT_WINDOW
    if window is not None:
        return IntensityRange(*ct_window(window))
    values = np.asarray(array)
    if values.size > 4_000_000:  # percentiles of a strided subsample are accurate and cheap
        values = values.reshape(-1)[:: values.size // 2_000_000]
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError("cannot normalise an image with no finite voxels")
    low, high = (float(v) for v in np.percentile(finite, percentiles))
    if not high > low:
        high = low + 1.0  # constant image (not a window the user gave): map it to 0, no division by zero
    return IntensityRange(low, high)


def normalize(
    array: np.ndarray,
    modality: str,
    window: str | tuple[float, float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """``array`` as float32 in [0, 1] (see :func:`intensity_range`)."""
    return intensity_range(array, modality, window, percentiles).normalize(array)
