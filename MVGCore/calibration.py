"""Denoising output calibrated on the user's own prompt pairs: a blend of the model's answer and
the noisy input, fitted by least squares on the prompts.

Why: a denoiser that blurs can return an image worse than its input, and the input itself is an
estimate of the clean image whose errors (the noise) are nearly independent of the model's (lost
detail). A weighted sum ``a * model + b * input + c`` with weights fitted on known (noisy, clean)
pairs is then never worse than the better of the two on those pairs (``a = 0, b = 1`` and
``a = 1, b = 0`` are both candidates) and usually better than both. The pairs come from the
prompts, leave-one-out: each prompt's noisy image is denoised with the *other* prompts, so the fit
sees the model's error on images it was not shown the answer of, as the query slices are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .intensity import IntensityRange
from .slicewise import put_slice, take_slice
from .types import Prompt

CALIBRATIONS = ("blend", "off")
"""``blend``: fit and apply :class:`Blend` on the prompt pairs; ``off``: the model's answer as it is."""

MIN_HALF = 16
"""Smallest half (pixels along the cut side) a single prompt is split into for calibration."""


@dataclass(frozen=True)
class Blend:
    """``model_weight * model + input_weight * input + offset``, in the image's own units."""

    model_weight: float
    input_weight: float
    offset: float

    def apply(self, model_out: np.ndarray, given: np.ndarray) -> np.ndarray:
        blended = self.model_weight * model_out.astype(np.float64) + self.input_weight * given + self.offset
        return blended.astype(np.float32)


def fit_blend(
    model_outs: Sequence[np.ndarray], inputs: Sequence[np.ndarray], truths: Sequence[np.ndarray]
) -> Blend:
    """The least-squares :class:`Blend` of ``model_outs`` and ``inputs`` towards ``truths``, pooled
    over every pixel of every pair (arrays of one pair share a shape)."""
    if not (len(model_outs) == len(inputs) == len(truths)) or not model_outs:
        raise ValueError("fit_blend needs one model output, input and truth per pair, and at least one pair")
    columns = []
    for out, given, truth in zip(model_outs, inputs, truths):
        if not (out.shape == given.shape == truth.shape):
            raise ValueError(
                f"fit_blend: a pair's model output, input and truth differ in shape "
                f"({out.shape}, {given.shape}, {truth.shape})"
            )
        columns.append(np.stack([np.ravel(out), np.ravel(given), np.ravel(truth)], axis=1).astype(np.float64))
    data = np.concatenate(columns)
    design = np.column_stack([data[:, 0], data[:, 1], np.ones(len(data))])
    (model_weight, input_weight, offset), *_ = np.linalg.lstsq(design, data[:, 2], rcond=None)
    return Blend(float(model_weight), float(input_weight), float(offset))


def calibration_pairs(prompts: Sequence[Prompt]) -> list[Prompt] | None:
    """The (noisy, clean) pairs a blend is fitted on: the prompts themselves when there are two or
    more; one prompt cut in two halves along its longer side; None when there is nothing to fit
    on (no prompt, or one whose halves would be under :data:`MIN_HALF` pixels)."""
    if len(prompts) != 1:
        return list(prompts) or None
    prompt = prompts[0]
    along = int(np.argmax(prompt.image.shape))
    half = prompt.image.shape[along] // 2
    if half < MIN_HALF:
        return None
    key: list[slice] = [slice(None), slice(None)]
    pairs = []
    for cut in (slice(0, half), slice(half, None)):
        key[along] = cut
        pairs.append(Prompt(prompt.image[tuple(key)], prompt.target[tuple(key)]))
    return pairs


def leave_one_out_blend(
    denoise_one: Callable[[np.ndarray, list[Prompt]], np.ndarray], pairs: Sequence[Prompt]
) -> Blend:
    """The :class:`Blend` fitted on ``pairs`` (from :func:`calibration_pairs`): each pair's noisy
    image is denoised by ``denoise_one(image, other_pairs)`` (a 2D answer, with the other pairs as
    examples from another image) and compared with its clean target."""
    if len(pairs) < 2:
        raise ValueError(f"a leave-one-out blend needs at least two pairs, got {len(pairs)}")
    outs, inputs, truths = [], [], []
    for number, pair in enumerate(pairs):
        others = [Prompt(p.image, p.target) for n, p in enumerate(pairs) if n != number]
        outs.append(denoise_one(pair.image, others))
        inputs.append(np.asarray(pair.image, dtype=np.float64))
        truths.append(np.asarray(pair.target, dtype=np.float64))
    return fit_blend(outs, inputs, truths)


MIN_NOISE = 0.01
"""Floor of an estimated noise level (in [0, 1] units): the level of self-made denoising prompts
and recorrupted pairs on clean or constant slices."""


def noise_level(plane: np.ndarray) -> float:
    """The Gaussian noise level of a [0, 1] plane (skimage ``estimate_sigma``), at least
    ``MIN_NOISE``; a constant plane has none to estimate (NaN), nor has a 1-pixel side: the floor
    is used."""
    from skimage.restoration import estimate_sigma

    sigma = float(estimate_sigma(plane)) if min(plane.shape) > 1 else MIN_NOISE
    return max(sigma, MIN_NOISE) if np.isfinite(sigma) else MIN_NOISE


def recorrupted_pairs(planes: Sequence[np.ndarray], seed: int) -> list[Prompt]:
    """Calibration pairs when no prompt is given, from [0, 1] ``planes`` ``y`` of the volume itself:
    ``(y + n, y - n)`` with Gaussian ``n`` of the level estimated on each. A target ``y`` itself
    would carry the input's own noise and pull the fit onto the input; with ``y - n`` the two
    noises are uncorrelated, so the least-squares fit aims at the clean image
    (recorrupted-to-recorrupted, Pang et al., CVPR 2021)."""
    rng = np.random.default_rng([seed, 1])  # not the self-made prompts' own noise
    pairs = []
    for plane in planes:
        noise = rng.normal(0.0, noise_level(plane), plane.shape).astype(np.float32)
        pairs.append(Prompt(np.clip(plane + noise, 0.0, 1.0), np.clip(plane - noise, 0.0, 1.0)))
    return pairs


def blend_volume(
    blend: Blend,
    result: np.ndarray | tuple[np.ndarray, np.ndarray],
    volume: np.ndarray,
    axis: int,
    kept: set[int],
    in_range: IntensityRange,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A denoising ``result`` (output, or output and disagreement) blended with the noisy
    ``volume`` slice by slice; the ``kept`` prompt slices keep their targets.

    The blend is applied in the model's units, the volume's normalisation ``in_range`` (values
    outside its window clipped), as it was fitted: raw targets outside the window (air at -1000 HU
    under a soft-tissue window) would otherwise drive the fit towards the input, as the model
    cannot answer there. The disagreement scales with the model's weight."""
    out, disagreement = result if isinstance(result, tuple) else (result, None)
    for index in range(volume.shape[axis]):
        if index not in kept:
            blended = blend.apply(
                in_range.normalize(take_slice(out, axis, index)),
                in_range.normalize(take_slice(volume, axis, index)),
            )
            put_slice(out, axis, index, in_range.denormalize(np.clip(blended, 0.0, 1.0)))
    if disagreement is None:
        return out
    return out, (disagreement * abs(blend.model_weight)).astype(disagreement.dtype)
