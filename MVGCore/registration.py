"""2D registration of one slice onto another, and warping a slice's image and label with it.

Two users share it: the registration baseline propagates a prompt's label by warping it onto each
query slice (:mod:`MVGCore.baselines`), and the Predictor aligns each prompt tile to its query
tile before the model sees it (``Options.align_prompts``), so the model corrects a registered
label instead of carrying one over from a slice where anatomy sits elsewhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

METHODS = ("demons", "bspline", "affine")
ALIGNMENTS = ("off", *METHODS)
"""Choices of prompt alignment (``Options.align_prompts``, the sampler's ``align_prompts``)."""


@dataclass(frozen=True)
class Registration:
    """An affine stage by Mattes mutual information (copes with prompts from another scan), then
    the deformable ``method`` ("demons", "bspline") unless it is "affine".

    iterations: per stage (demons: total; affine / B-spline: per resolution level).
    bspline_mesh: B-spline control grid size per dimension.
    """

    method: str = "demons"
    iterations: int = 30
    bspline_mesh: int = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"registration must be one of {METHODS}, got {self.method!r}")
        if self.iterations < 1 or self.bspline_mesh < 1:
            raise ValueError("registration iterations and bspline_mesh must be >= 1")

    def warp(
        self, fixed: np.ndarray, moving: np.ndarray, label: np.ndarray, what: str = "slice"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``moving`` (float image) and its ``label`` resampled onto the grid of ``fixed``
        (linear / nearest neighbour; outside the moving slice: 0). All three are 2D; ``fixed``
        and ``moving`` should be in comparable units. If registration fails, the centred initial
        transform is used and a warning names ``what``; a blank slice (one value everywhere, such
        as the air beyond a head) has nothing to register by and gets that transform silently."""
        import SimpleITK as sitk

        fixed_image = sitk.GetImageFromArray(np.asarray(fixed, dtype=np.float32))
        moving_image = sitk.GetImageFromArray(np.asarray(moving, dtype=np.float32))
        try:
            if np.ptp(fixed) == 0 or np.ptp(moving) == 0:
                transform = _centred_affine(fixed_image, moving_image)
            else:
                transform = self._transform(fixed_image, moving_image)
        except RuntimeError as error:
            warnings.warn(
                f"registration onto {what} failed ({error}); using the centred initial transform",
                stacklevel=2,
            )
            transform = _centred_affine(fixed_image, moving_image)
        label = np.asarray(label)
        warped_image = sitk.Resample(moving_image, fixed_image, transform, sitk.sitkLinear, 0.0)
        warped_label = sitk.Resample(
            sitk.GetImageFromArray(label), fixed_image, transform, sitk.sitkNearestNeighbor, 0
        )
        return (
            sitk.GetArrayFromImage(warped_image).astype(np.float32),
            sitk.GetArrayFromImage(warped_label).astype(label.dtype),
        )

    def align(
        self, fixed: np.ndarray, image: np.ndarray, label: np.ndarray, what: str = "slice"
    ) -> tuple[np.ndarray, np.ndarray]:
        """A prompt's ``image`` and ``label`` warped onto ``fixed`` (:meth:`warp`), or as they lay
        when the warp pushes the whole label out of the slice: a prompt never loses its example."""
        warped_image, warped_label = self.warp(fixed, image, label, what)
        if not warped_label.any():
            return image, label
        return warped_image, warped_label

    def _transform(self, fixed, moving):
        """Transform mapping fixed (query) points into the moving (prompt) slice."""
        import SimpleITK as sitk

        method = _mattes_method(sitk)
        method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, self.iterations)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2])
        method.SetSmoothingSigmasPerLevel([2, 1])
        method.SetInitialTransform(_centred_affine(fixed, moving), inPlace=False)
        affine = method.Execute(fixed, moving)
        if self.method == "affine":
            return affine
        if self.method == "bspline":
            bspline = sitk.BSplineTransformInitializer(fixed, [self.bspline_mesh] * 2)
            method = _mattes_method(sitk)
            method.SetOptimizerAsLBFGSB(1e-5, self.iterations)
            method.SetShrinkFactorsPerLevel([2, 1])
            method.SetSmoothingSigmasPerLevel([1, 0])
            method.SetMovingInitialTransform(affine)
            method.SetInitialTransform(bspline, inPlace=True)
            method.Execute(fixed, moving)
            return sitk.CompositeTransform([affine, bspline])
        # demons assume equal intensities, so the affinely aligned prompt is histogram-matched first
        aligned = sitk.HistogramMatching(sitk.Resample(moving, fixed, affine, sitk.sitkLinear, 0.0), fixed)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(self.iterations)
        demons.SetStandardDeviations(1.5)
        field = demons.Execute(fixed, aligned)
        return sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(field)])


def require_simpleitk(what: str) -> None:
    """A one-line error naming ``what`` before any work, where SimpleITK is not installed (it is a
    dependency of MVGCore, but a bare torch image, such as a GPU machine's, may lack it)."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            f"{what} needs SimpleITK (pip install SimpleITK), which is not installed"
        ) from None


def _mattes_method(sitk):
    """Mutual information copes with prompts from another scan; fixed-seed sampling keeps it repeatable."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, 1)
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _centred_affine(fixed, moving):
    import SimpleITK as sitk

    return sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
