"""Quality measures for the four tasks, with the conventions written down so numbers compare.

Segmentation is scored on the whole 3D case (Dice per foreground class, HD95 in millimetres);
image tasks on images already scaled to [0, 1] with :mod:`MVGCore.intensity` (PSNR, SSIM with
``data_range=1``), inpainting additionally inside the hole only. The rules for empty masks are
part of each function's contract; docs/metrics.md collects them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {truth.shape}")


def dice_per_class(
    pred: np.ndarray, truth: np.ndarray, labels: Sequence[int] | None = None
) -> dict[int, float]:
    """Dice of each foreground label, computed over the whole array (the 3D case, not per slice).

    ``labels`` defaults to every non-zero label found in either array, so a class absent from
    both never appears. A class that is asked for explicitly but is absent from both arrays gets
    NaN: there is nothing to find, and scoring it 1.0 would inflate means (average with
    ``np.nanmean`` or :func:`summarize`, which skips it).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _same_shape(pred, truth)
    if labels is None:
        labels = sorted((set(np.unique(pred).tolist()) | set(np.unique(truth).tolist())) - {0})
    scores: dict[int, float] = {}
    for label in labels:
        if label == 0:
            raise ValueError("labels must be foreground classes; 0 is background")
        in_pred, in_truth = pred == label, truth == label
        size = int(in_pred.sum()) + int(in_truth.sum())
        overlap = int(np.logical_and(in_pred, in_truth).sum())
        scores[int(label)] = 2.0 * overlap / size if size else float("nan")
    return scores


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask; voxels on the array border count."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing_kji: Sequence[float],
    label: int | None = None,
) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask surfaces, in millimetres.

    Masks are ``array == label``, or ``array != 0`` when ``label`` is None. Surface voxels are
    mask voxels with a face-connected neighbour outside the mask. For each surface voxel of one
    mask the Euclidean distance (spacing-aware, ``spacing_kji`` in array order) to the nearest
    surface voxel of the other is taken; the result is the larger of the two directed 95th
    percentiles (numpy's linear interpolation), as MONAI computes it.
    Both masks empty -> NaN (nothing to measure); exactly one empty -> inf (the structure was
    missed or invented; :func:`summarize` counts such cases instead of averaging them).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _same_shape(pred, truth)
    spacing = tuple(float(s) for s in spacing_kji)
    if len(spacing) != pred.ndim or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ValueError(f"spacing_kji must hold {pred.ndim} positive numbers, got {spacing_kji}")
    pred_mask = pred != 0 if label is None else pred == label
    truth_mask = truth != 0 if label is None else truth == label
    if not pred_mask.any() and not truth_mask.any():
        return float("nan")
    if not pred_mask.any() or not truth_mask.any():
        return float("inf")
    pred_surface, truth_surface = _surface(pred_mask), _surface(truth_mask)
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[truth_surface]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _image_pair(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None):
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    _same_shape(pred, truth)
    if not (np.isfinite(pred).all() and np.isfinite(truth).all()):
        raise ValueError("images must hold finite values only")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != truth.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {truth.shape}")
        if not mask.any():
            raise ValueError("mask is empty; there is no region to measure")
    return pred, truth, mask


def psnr(
    pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None
) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range**2 / MSE)`` (scikit-image).

    Images are expected in [0, data_range] (MVGCore normalises to [0, 1]); they are not clipped.
    With ``mask`` the MSE is taken over the masked voxels only (inpainting: inside the hole).
    Identical images give inf.
    """
    pred, truth, mask = _image_pair(pred, truth, mask)
    if mask is not None:
        pred, truth = pred[mask], truth[mask]
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(truth, pred, data_range=data_range))


def ssim(
    pred: np.ndarray, truth: np.ndarray, data_range: float = 1.0, mask: np.ndarray | None = None
) -> float:
    """Structural similarity with scikit-image's defaults (7x7 uniform window, K1=0.01, K2=0.03).

    2D images are scored as such; 3D (k, j, i) arrays slice by slice along k, because the tasks
    run on slices and volumes often have fewer than 7 slices. Without ``mask`` the result is
    scikit-image's mean SSIM (the map with a 3-pixel border cropped), averaged over slices. With
    ``mask`` it is the mean of the full SSIM maps over the masked pixels (inpainting: the hole).
    """
    pred, truth, mask = _image_pair(pred, truth, mask)
    if truth.ndim not in (2, 3):
        raise ValueError(f"SSIM needs 2D or 3D (k, j, i) images, got shape {truth.shape}")
    if min(truth.shape[-2:]) < 7:
        raise ValueError(f"SSIM needs slices of at least 7x7 pixels, got {truth.shape[-2:]}")
    planes = zip(pred.reshape(-1, *truth.shape[-2:]), truth.reshape(-1, *truth.shape[-2:]))
    results = [structural_similarity(p, t, data_range=data_range, full=True) for p, t in planes]
    if mask is None:
        return float(np.mean([mean for mean, _ in results]))
    maps = np.stack([full for _, full in results]).reshape(truth.shape)
    return float(maps[mask].mean())


@dataclass(frozen=True)
class Summary:
    """Mean and population standard deviation of the finite values, and how many were not finite."""

    mean: float
    std: float
    n: int
    n_nan: int
    n_inf: int


def summarize(values: Iterable[float]) -> Summary:
    """Summary over cases; NaN (nothing to score) and inf (e.g. HD95 with a missed structure)
    are left out of mean/std and counted separately so they are reported, not hidden."""
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    return Summary(
        mean=float(finite.mean()) if finite.size else float("nan"),
        std=float(finite.std()) if finite.size else float("nan"),
        n=int(finite.size),
        n_nan=int(np.isnan(array).sum()),
        n_inf=int(np.isinf(array).sum()),
    )
