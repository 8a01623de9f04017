"""On-the-fly degradations that turn clean [0, 1] slices into denoising and inpainting tasks.

Clean images are plentiful while degraded/clean pairs are rare, so training pairs are made by
degrading clean slices. Each noise model mimics one acquisition: additive Gaussian (generic),
Rician (magnitude MR), Poisson (photon counting: X-ray, PET-like), low-dose CT (Poisson noise on
the projections, reconstructed by filtered back-projection, which gives CT's streaky correlated
texture) and speckle (ultrasound). Holes are boxes or free-form brush strokes, the two mask
families inpainting work trains on. Every function takes a ``numpy.random.Generator`` so that a
sample is a pure function of its seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

NOISE_LEVELS: dict[str, tuple[float, float]] = {
    "gaussian": (0.02, 0.10),  # standard deviation
    "rician": (0.02, 0.10),  # standard deviation of each quadrature channel
    "poisson": (20.0, 300.0),  # expected photon count at intensity 1 (lower = noisier)
    "lowdose_ct": (2e3, 5e4),  # incident photons per detector bin (lower = noisier)
    "speckle": (2.0, 16.0),  # number of looks (lower = noisier)
}
"""Default range each model's level is drawn from when none is given."""

HOLE_MODELS = ("box", "brush")


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"degradations work on 2D slices, got an array of shape {image.shape}")
    return image


def gaussian(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, clipped back to [0, 1]."""
    image = _as_image(image)
    _check_sigma("gaussian", sigma)
    noisy = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(noisy, 0.0, 1.0)


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise in both channels, as in magnitude MR."""
    image = _as_image(image)
    _check_sigma("rician", sigma)
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.clip(np.hypot(real, imag), 0.0, 1.0).astype(np.float32)


def poisson(image: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """Photon-counting noise: intensity 1 corresponds to ``peak`` expected counts."""
    image = _as_image(image)
    if peak <= 0:
        raise ValueError(f"poisson peak must be positive, got {peak}")
    counts = rng.poisson(np.clip(image, 0.0, None) * peak)
    return np.clip(counts / peak, 0.0, 1.0).astype(np.float32)


def lowdose_ct(
    image: np.ndarray,
    photons: float,
    rng: np.random.Generator,
    n_angles: int = 90,
    attenuation_per_pixel: float = 0.02,
) -> np.ndarray:
    """Low-dose CT: Poisson noise on the transmitted photons, reconstructed by filtered back-projection.

    The image is read as an attenuation map (intensity 1 = ``attenuation_per_pixel``, roughly water
    at 1 mm pixels). Only the noise is reconstructed (FBP is linear), so the result is the clean
    image plus CT-textured noise that is stronger behind dense structures, without the streaks
    that a sparse-view reconstruction of the image itself would add.
    """
    from skimage.transform import iradon, radon

    image = _as_image(image)
    if photons <= 0:
        raise ValueError(f"lowdose_ct photons must be positive, got {photons}")
    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    line_integrals = radon(np.clip(image, 0.0, None) * attenuation_per_pixel, theta, circle=False)
    counts = rng.poisson(photons * np.exp(-line_integrals))
    noisy_integrals = -np.log(np.maximum(counts, 1) / photons)
    noise = iradon(
        noisy_integrals - line_integrals,
        theta,
        output_size=max(image.shape),
        filter_name="ramp",
        circle=False,
    )
    noise = noise[: image.shape[0], : image.shape[1]] / attenuation_per_pixel
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32)


def speckle(image: np.ndarray, looks: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative speckle of an ultrasound intensity image averaged over ``looks`` looks.

    Fully developed speckle intensity is exponential for one look and Gamma(L, 1/L) for L looks;
    a slight blur of the multiplicative field gives it a grain larger than one pixel.
    """
    image = _as_image(image)
    if looks <= 0:
        raise ValueError(f"speckle looks must be positive, got {looks}")
    field = rng.gamma(looks, 1.0 / looks, image.shape)
    field = ndimage.gaussian_filter(field, 0.7)
    field /= field.mean()
    return np.clip(image * field, 0.0, 1.0).astype(np.float32)


NOISE_MODELS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "gaussian": gaussian,
    "rician": rician,
    "poisson": poisson,
    "lowdose_ct": lowdose_ct,
    "speckle": speckle,
}


def noise_level(model: str, rng: np.random.Generator) -> float:
    """A level for ``model`` drawn log-uniformly from its default range (levels span decades)."""
    low, high = NOISE_LEVELS[check_noise_model(model)]
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def check_noise_model(model: str) -> str:
    if model not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {model!r}; known models are {sorted(NOISE_MODELS)}")
    return model


def add_noise(image: np.ndarray, model: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` degraded by noise ``model`` at ``level`` (see :data:`NOISE_LEVELS` for its meaning)."""
    return NOISE_MODELS[check_noise_model(model)](image, check_noise_level(model, level), rng)


def check_noise_level(model: str, level: float) -> float:
    """``level`` if it is a valid level of ``model``: a standard deviation >= 0 for gaussian and
    rician, a positive photon count or number of looks for the others."""
    check_noise_model(model)
    level = float(level)
    sigma = model in ("gaussian", "rician")
    if not np.isfinite(level) or level < 0 or (level == 0 and not sigma):
        meaning = "a standard deviation >= 0" if sigma else "positive"
        raise ValueError(f"noise level of {model!r} must be {meaning}, got {level:g}")
    return level


def _check_sigma(model: str, sigma: float) -> None:
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"{model} noise standard deviation must be >= 0, got {sigma}")


def box_hole(
    shape: tuple[int, int], rng: np.random.Generator, area: tuple[float, float] = (0.05, 0.25)
) -> np.ndarray:
    """A boolean mask with one axis-aligned box covering a fraction of the slice drawn from ``area``."""
    rows, cols = _check_shape(shape)
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"box area fractions must satisfy 0 < low <= high <= 1, got {area}")
    fraction = rng.uniform(*area)
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    height = int(np.clip(round(np.sqrt(fraction * rows * cols * aspect)), 1, rows))
    width = int(np.clip(round(fraction * rows * cols / height), 1, cols))
    top = int(rng.integers(0, rows - height + 1))
    left = int(rng.integers(0, cols - width + 1))
    mask = np.zeros((rows, cols), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


def brush_hole(
    shape: tuple[int, int],
    rng: np.random.Generator,
    strokes: tuple[int, int] = (1, 4),
    vertices: tuple[int, int] = (4, 10),
    width: tuple[float, float] = (0.03, 0.08),
) -> np.ndarray:
    """Free-form holes: thick random polylines, as users scribble over artefacts.

    ``width`` is the brush diameter as a fraction of the slice's shorter side.
    """
    from skimage.draw import line

    rows, cols = _check_shape(shape)
    centre_line = np.zeros((rows, cols), dtype=bool)
    radius = rng.uniform(*width) * min(rows, cols) / 2
    for _ in range(int(rng.integers(strokes[0], strokes[1] + 1))):
        point = np.array([rng.uniform(0, rows - 1), rng.uniform(0, cols - 1)])
        for _ in range(int(rng.integers(vertices[0], vertices[1] + 1))):
            angle = rng.uniform(0, 2 * np.pi)
            length = rng.uniform(0.05, 0.25) * min(rows, cols)
            step = length * np.array([np.sin(angle), np.cos(angle)])
            end = np.clip(point + step, 0, [rows - 1, cols - 1])
            rr, cc = line(*np.round(point).astype(int), *np.round(end).astype(int))
            centre_line[rr, cc] = True
            point = end
    return ndimage.distance_transform_edt(~centre_line) <= radius


def make_hole(model: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A hole mask of kind ``model`` ("box" or "brush") with default parameters."""
    if model == "box":
        return box_hole(shape, rng)
    if model == "brush":
        return brush_hole(shape, rng)
    raise ValueError(f"unknown hole model {model!r}; known models are {list(HOLE_MODELS)}")


def apply_hole(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``image`` with the hole set to 0, the value the model is told means "missing"."""
    image = _as_image(image)
    if hole.shape != image.shape:
        raise ValueError(f"hole mask shape {hole.shape} does not match the image shape {image.shape}")
    return np.where(hole, np.float32(0.0), image)


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 2:
        raise ValueError(f"a hole needs a 2D shape of at least 2x2, got {shape}")
    return int(shape[0]), int(shape[1])
