"""Classical peers for every MVG task, behind the Predictor's exact interface.

Each model number is reported next to what a standard non-learned method achieves on the same
slices: label propagation by 2D registration, copying the nearest prompt's label, or Slicer's
"Fill between slices" (segmentation); non-local means or BM3D (denoising); biharmonic
inpainting; and an intensity map learned from the prompt pairs, or histogram matching to the
prompt targets (synthesis). Like the Predictor, every method works slice by slice along ``axis``
and returns the target of an indexed prompt slice unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import isotonic_regression
from skimage.exposure import match_histograms
from skimage.restoration import denoise_nl_means, estimate_sigma, inpaint_biharmonic

from . import contour_interpolation
from .intensity import normalize
from .registration import Registration
from .slicewise import (
    SliceLoop,
    check_axis,
    kept_targets,
    label_dtype,
    map_slices,
    plane_shape,
    put_slice,
    required_prompts,
    take_slice,
)
from .types import CancelToken, ProgressFn, Prompt

SEGMENTATIONS = ("register", "copy", "fill")
MAPPINGS = ("histogram", "monotone", "match")


@dataclass(frozen=True)
class ClassicalBaseline:
    """Settings of the classical methods; defaults keep a 256x256 slice well under a second.

    segmentation: how labels reach the other slices: "register" (the nearest prompt's label warped
        by 2D registration), "copy" (the nearest prompt's label as it is) or "fill" (Slicer's
        "Fill between slices": ITK morphological contour interpolation between the indexed prompt
        slices; slices outside the prompts' range stay empty, as in Slicer).
    registration: deformable stage after the affine one ("demons", "bspline") or "affine" alone.
    registration_iterations: iterations per stage (demons: total; affine/B-spline: per level).
    bspline_mesh: B-spline control grid size per dimension.
    nlm_strength: non-local means filter strength ``h`` as a multiple of the estimated noise sigma.
    use_bm3d: denoise with BM3D (the optional ``bm3d`` package) instead of non-local means.
    synthesis_mapping: "histogram" (quantile map prompt image -> prompt target, always
        increasing), "monotone" (isotonic least-squares fit of target on image, increasing or
        decreasing, whichever fits the prompt pairs better) or "match" (each source slice's
        histogram matched to the pooled prompt targets, skimage ``match_histograms``; needs no
        paired pixels, but each slice gets its own map).
    """

    segmentation: str = "register"
    registration: str = "demons"
    registration_iterations: int = 30
    bspline_mesh: int = 8
    nlm_strength: float = 0.8
    use_bm3d: bool = False
    synthesis_mapping: str = "histogram"

    def __post_init__(self) -> None:
        if self.segmentation not in SEGMENTATIONS:
            raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {self.segmentation!r}")
        if self.synthesis_mapping not in MAPPINGS:
            raise ValueError(f"synthesis_mapping must be one of {MAPPINGS}, got {self.synthesis_mapping!r}")
        Registration(self.registration, self.registration_iterations, self.bspline_mesh)  # checks them
        if not self.nlm_strength > 0:
            raise ValueError(f"nlm_strength must be > 0, got {self.nlm_strength}")
        if self.use_bm3d:
            _import_bm3d()
        if self.segmentation == "fill":
            contour_interpolation.check_available()

    def segment(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Label volume in the prompt labels' dtype (see ``segmentation``). "register" and "copy"
        take, for each slice, the nearest prompt slice by index (ties: the first listed; when no
        prompt has an index, the first prompt); "fill" needs indexed prompts."""
        image = _volume(image, "image")
        prompts = required_prompts(prompts, "segment")
        dtype = label_dtype(prompts)
        kept = kept_targets(prompts, image.shape, axis)
        if self.segmentation == "fill":
            return _fill_between(
                image.shape, kept, axis, dtype, SliceLoop(image.shape[axis], progress, cancel)
            )
        indexed = [p for p in prompts if p.index is not None]
        if self.segmentation == "copy":
            _check_copyable(prompts, plane_shape(image.shape, axis))

        def one(index: int, plane: np.ndarray) -> np.ndarray:
            if index in kept:
                return kept[index]
            prompt = min(indexed, key=lambda p: abs(p.index - index)) if indexed else prompts[0]
            if self.segmentation == "copy":
                return np.asarray(prompt.target)
            return self._propagate(prompt, plane, index, dtype)

        return map_slices(one, image, axis, dtype=dtype, progress=progress, cancel=cancel)

    def denoise(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Non-local means (or BM3D) per slice with the noise sigma estimated on that slice.
        Prompts are not needed; indexed prompt slices return their targets."""
        image = _volume(image, "image")
        kept = kept_targets(prompts or (), image.shape, axis)
        denoise_plane = _bm3d_plane if self.use_bm3d else self._nlm_plane

        def one(index: int, plane: np.ndarray) -> np.ndarray:
            return kept[index] if index in kept else denoise_plane(plane)

        return map_slices(one, image, axis, progress=progress, cancel=cancel)

    def inpaint(
        self,
        image: np.ndarray,
        hole_mask: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Biharmonic inpainting of the hole in each slice; pixels outside the hole are kept."""
        image = _volume(image, "image")
        hole_mask = np.asarray(hole_mask, dtype=bool)
        if hole_mask.shape != image.shape:
            raise ValueError(f"hole_mask shape {hole_mask.shape} must equal image shape {image.shape}")
        kept = kept_targets(prompts or (), image.shape, axis)

        def one(index: int, plane: np.ndarray) -> np.ndarray:
            if index in kept:
                return kept[index]
            hole = take_slice(hole_mask, axis, index)
            if not hole.any():
                return plane
            if hole.all():
                raise ValueError(
                    f"hole_mask covers all of slice {index} along axis {axis}; nothing to extend"
                )
            return np.where(hole, inpaint_biharmonic(plane, hole), plane)

        return map_slices(one, image, axis, progress=progress, cancel=cancel)

    def synthesize(
        self,
        source: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """An intensity map to the prompt targets' units (see ``synthesis_mapping``): one map
        learned from all prompt pairs (pixels of prompt image -> prompt target) applied to every
        source slice, or each slice's histogram matched to the pooled prompt targets."""
        source = _volume(source, "source")
        prompts = required_prompts(prompts, "synthesize")
        kept = kept_targets(prompts, source.shape, axis)
        targets = np.concatenate([np.ravel(p.target) for p in prompts]).astype(np.float64)
        if self.synthesis_mapping == "match":
            reference = targets[None]  # match_histograms wants the image's number of dimensions

            def mapped(plane: np.ndarray) -> np.ndarray:
                return match_histograms(plane.astype(np.float64), reference)

        else:
            images = np.concatenate([np.ravel(p.image) for p in prompts]).astype(np.float64)
            fit = _quantile_map if self.synthesis_mapping == "histogram" else _isotonic_map
            knots_x, knots_y = fit(images, targets)

            def mapped(plane: np.ndarray) -> np.ndarray:
                return np.interp(plane, knots_x, knots_y)

        def one(index: int, plane: np.ndarray) -> np.ndarray:
            return kept[index] if index in kept else mapped(plane)

        return map_slices(one, source, axis, progress=progress, cancel=cancel)

    def _propagate(self, prompt: Prompt, plane: np.ndarray, index: int, dtype: np.dtype) -> np.ndarray:
        label = np.asarray(prompt.target).astype(dtype)
        if not label.any():
            return np.zeros(plane.shape, dtype=dtype)
        registration = Registration(self.registration, self.registration_iterations, self.bspline_mesh)
        fixed, moving = normalize(plane, "OTHER"), normalize(prompt.image, "OTHER")
        return registration.warp(fixed, moving, label, f"slice {index}")[1]

    def _nlm_plane(self, plane: np.ndarray) -> np.ndarray:
        plane = plane.astype(np.float64)
        sigma = float(estimate_sigma(plane))
        if sigma == 0:
            return plane
        return denoise_nl_means(
            plane, h=self.nlm_strength * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
        )


def _check_copyable(prompts: Sequence[Prompt], plane: tuple[int, int]) -> None:
    for number, prompt in enumerate(prompts):
        if np.shape(prompt.target) != plane:
            raise ValueError(
                f"copying labels needs prompt labels of the query's slice shape {plane}; prompt {number} "
                f"has shape {np.shape(prompt.target)} (use registration for prompts from another scan)"
            )


def _fill_between(
    shape: tuple[int, ...], kept: dict[int, np.ndarray], axis: int, dtype: np.dtype, loop: SliceLoop
) -> np.ndarray:
    """Slicer's "Fill between slices": every label is interpolated by ITK morphological contour
    interpolation between the prompt slices that show it; nothing is extrapolated, so slices
    beyond the outermost prompts of a label stay background. The prompt slices are kept exactly."""
    if not kept:
        raise ValueError(
            "fill between slices needs prompts that are slices of the volume itself (Prompt.index set)"
        )
    axis = check_axis(axis)
    classes = np.unique(np.concatenate([np.unique(t) for t in kept.values()]))
    classes = classes[classes != 0]
    # ITK wraps the filter for 8/16-bit labels only: label ids become 1..n and back afterwards.
    if len(classes) >= 2**16:
        raise ValueError(f"fill between slices handles at most {2**16 - 1} labels, got {len(classes)}")
    compact_dtype = np.uint8 if len(classes) < 2**8 else np.uint16
    ordinal = np.zeros(shape, dtype=compact_dtype)
    for index, target in kept.items():
        compact = np.where(target != 0, np.searchsorted(classes, target) + 1, 0).astype(compact_dtype)
        put_slice(ordinal, axis, index, compact)
    loop.check()
    compact = contour_interpolation.interpolate(ordinal, axis, check=loop.check)
    out = np.concatenate([[0], classes]).astype(dtype)[compact]
    for index, target in kept.items():
        put_slice(out, axis, index, target)
    loop.advance(loop.total)
    return out


def _import_bm3d():
    try:
        import bm3d
    except ImportError as error:
        raise ValueError(
            "use_bm3d=True needs the optional 'bm3d' package (pip install bm3d; note its "
            "non-commercial license)"
        ) from error
    return bm3d


def _bm3d_plane(plane: np.ndarray) -> np.ndarray:
    """BM3D's profiles are tuned for images in [0, 1], so the slice is scaled there and back."""
    plane = plane.astype(np.float64)
    low, high = float(plane.min()), float(plane.max())
    if high == low:
        return plane
    scaled = (plane - low) / (high - low)
    sigma = float(estimate_sigma(scaled))
    if sigma == 0:
        return plane
    return _import_bm3d().bm3d(scaled, sigma_psd=sigma) * (high - low) + low


def _collapse(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique x values with the mean y and the count at each (np.interp needs increasing x)."""
    unique_x, inverse = np.unique(x, return_inverse=True)
    counts = np.bincount(inverse).astype(np.float64)
    return unique_x, np.bincount(inverse, weights=y) / counts, counts


def _quantile_map(images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histogram matching of prompt image onto prompt target, kept as a fixed lookup so every
    source slice gets the same map (matching each slice to the target would not)."""
    levels = np.linspace(0.0, 1.0, 257)
    knots_x, knots_y, _ = _collapse(np.quantile(images, levels), np.quantile(targets, levels))
    return knots_x, knots_y


def _isotonic_map(images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    knots_x, means, counts = _collapse(images, targets)
    fits = [isotonic_regression(means, weights=counts, increasing=up).x for up in (True, False)]
    errors = [np.sum(counts * (fit - means) ** 2) for fit in fits]
    return knots_x, fits[int(np.argmin(errors))]


def _volume(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D (k, j, i) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array
