import warnings

import numpy as np
import pytest
from scipy import ndimage

from MVGCore.metrics import dice_per_class
from MVGCore.registration import Registration


def _disc(centre_i: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    j, i = np.mgrid[:size, :size]
    label = ((j - size // 2) ** 2 + (i - centre_i) ** 2 <= 9**2).astype(np.int64) * 5
    return ndimage.gaussian_filter(label.astype(np.float32) * 20 + 10, 1.5), label


@pytest.mark.parametrize(("method", "least_dice"), [("affine", 0.7), ("demons", 0.9), ("bspline", 0.9)])
def test_warp_carries_image_and_label_onto_the_fixed_slice(method, least_dice):
    fixed, fixed_label = _disc(24)
    moving, moving_label = _disc(30)
    image, label = Registration(method).warp(fixed, moving, moving_label)
    assert image.shape == fixed.shape and image.dtype == np.float32
    assert label.dtype == moving_label.dtype and set(np.unique(label)) == {0, 5}
    assert dice_per_class(moving_label, fixed_label)[5] < 0.75  # 6 px apart before
    assert dice_per_class(label, fixed_label)[5] > least_dice
    centre = np.s_[8:40, 8:40]  # the warp fills what lies outside the moving slice with 0
    assert np.abs(image - fixed)[centre].mean() < 0.8 * np.abs(moving - fixed)[centre].mean()


def test_failed_registration_warns_and_falls_back_to_the_centred_transform():
    rng = np.random.default_rng(0)
    fixed, moving = rng.normal(size=(2, 4, 4)).astype(np.float32)  # too small for the pyramid
    label = np.eye(4, dtype=np.uint8)
    with pytest.warns(UserWarning, match="registration onto prompt 3 failed"):
        _, warped = Registration().warp(fixed, moving, label, "prompt 3")
    assert np.array_equal(warped, label)


def test_a_blank_slice_gets_the_centred_transform_without_a_warning():
    """The air beyond a head has nothing to register by: no failed registration to warn about."""
    blank = np.zeros((16, 16), np.float32)
    image = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    label = np.eye(16, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fixed, moving in ((blank, image), (image, blank)):
            _, warped = Registration().warp(fixed, moving, label, "a blank slice")
            assert np.array_equal(warped, label)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="registration must be one of"):
        Registration("rigid")
    with pytest.raises(ValueError, match="must be >= 1"):
        Registration(iterations=0)


def test_align_is_the_warp_unless_the_warp_leaves_no_label():
    fixed, _ = _disc(24)
    moving, moving_label = _disc(30)
    aligned, warped = (
        Registration().align(fixed, moving, moving_label),
        Registration().warp(fixed, moving, moving_label),
    )
    assert all(np.array_equal(a, w) for a, w in zip(aligned, warped))

    class PushedOut(Registration):
        def warp(self, fixed, moving, label, what="slice"):
            return np.zeros_like(moving), np.zeros_like(label)

    image, label = PushedOut().align(fixed, moving, moving_label)
    assert image is moving and label is moving_label  # the prompt as it lay
