"""What a method's answer to a trial scores, on the voxels the method was not given.

Prompt slices are returned unchanged by every method, so scoring them would only add the same
perfect voxels to every method; they are left out (a single image prompted by half of itself is
scored on its other half).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..metrics import dice_per_class, hd95, psnr, ssim
from .trials import Trial

log = logging.getLogger(__package__)  # one logger for the package, named as when it was one module

METRICS = {
    "segment": ("dice", "hd95"),
    "denoise": ("psnr", "ssim"),
    "inpaint": ("psnr", "ssim", "psnr_hole", "ssim_hole"),
    "synthesize": ("psnr", "ssim"),
}
"""Dice: mean over foreground classes; HD95 in mm; PSNR/SSIM on [0, 1]-scaled images."""


def score(trial: Trial, output: np.ndarray, axis: int) -> dict[str, float]:
    """Metrics of ``output`` on the slices that were not prompts (those are returned as given), or
    on the ``scored`` voxels of a single image prompted by half of itself."""
    keep = [i for i in range(trial.volume.shape[axis]) if i not in trial.prompt_slices]
    truth = np.take(trial.truth, keep, axis=axis)
    region = None if trial.scored is None else np.take(trial.scored, keep, axis=axis)
    if trial.task == "segment":
        pred = np.take(output, keep, axis=axis)
        if region is not None:
            pred, truth = np.where(region, pred, 0), np.where(region, truth, 0)
        dice = [v for v in dice_per_class(pred, truth).values() if math.isfinite(v)]
        return {
            "dice": float(np.mean(dice)) if dice else float("nan"),
            "hd95": hd95(pred, truth, trial.spacing_kji),
        }
    pred = trial.scale.normalize(np.take(output, keep, axis=axis))
    # SSIM over k slices, as metrics defines
    scores = {"psnr": psnr(pred, truth, mask=region), "ssim": ssim(pred, truth, mask=region)}
    if trial.task == "inpaint":
        hole = np.take(trial.hole, keep, axis=axis)
        hole = hole if region is None else hole & region
        if hole.any():
            scores.update(psnr_hole=psnr(pred, truth, mask=hole), ssim_hole=ssim(pred, truth, mask=hole))
        else:  # the hole fell where nothing is scored (e.g. the prompt half of a single image)
            log.warning("%s: no hole voxel in the scored region; hole metrics are NaN", trial.name)
            scores.update(psnr_hole=float("nan"), ssim_hole=float("nan"))
    return scores
