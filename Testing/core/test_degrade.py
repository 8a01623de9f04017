"""Noise models and hole masks: the statistics each model promises, determinism, clear errors."""

import numpy as np
import pytest

from MVGCore import degrade


def _disc(size: int = 96, value: float = 0.5) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    inside = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (0.4 * size) ** 2
    return np.where(inside, value, 0.0).astype(np.float32)


def test_gaussian_noise_has_the_requested_std_and_stays_in_range(rng):
    image = np.full((128, 128), 0.5, dtype=np.float32)
    noisy = degrade.gaussian(image, 0.05, rng)
    assert noisy.dtype == np.float32 and noisy.shape == image.shape
    assert abs(float((noisy - image).std()) - 0.05) < 0.003
    assert abs(float((noisy - image).mean())) < 0.003
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0


def test_poisson_noise_variance_follows_the_signal(rng):
    bright = degrade.poisson(np.full((128, 128), 0.8, np.float32), 100.0, rng)
    dark = degrade.poisson(np.full((128, 128), 0.2, np.float32), 100.0, rng)
    # counts ~ Poisson(x * peak): variance of x_hat = x / peak
    assert bright.var() == pytest.approx(0.8 / 100, rel=0.1)
    assert dark.var() == pytest.approx(0.2 / 100, rel=0.1)


def test_rician_noise_biases_dark_regions_upwards(rng):
    noisy = degrade.rician(np.zeros((128, 128), np.float32), 0.05, rng)
    # the magnitude of pure noise is Rayleigh distributed, mean sigma * sqrt(pi / 2)
    assert noisy.mean() == pytest.approx(0.05 * np.sqrt(np.pi / 2), rel=0.05)


def test_speckle_is_multiplicative(rng):
    image = _disc()
    noisy = degrade.speckle(image, 4.0, rng)
    assert np.all(noisy[image == 0] == 0)
    inside = image > 0
    assert noisy[inside].mean() == pytest.approx(0.5, rel=0.05)
    assert noisy[inside].std() > 0.1  # 4 looks: relative std 0.5 before the grain blur


def test_lowdose_ct_noise_drops_with_dose_and_keeps_the_mean(rng):
    image = _disc()
    low = degrade.lowdose_ct(image, 2e3, rng, n_angles=60)
    high = degrade.lowdose_ct(image, 5e4, rng, n_angles=60)
    inside = image > 0
    std_low, std_high = (float((x - image)[inside].std()) for x in (low, high))
    assert std_low > 2 * std_high > 0
    assert abs(float((low - image)[inside].mean())) < 0.02
    # FBP noise is spatially correlated, unlike white noise: neighbours covary
    residual = (low - image)[20:76, 20:76]
    correlation = np.corrcoef(residual[:, :-1].ravel(), residual[:, 1:].ravel())[0, 1]
    assert abs(correlation) > 0.1


@pytest.mark.parametrize("model", sorted(degrade.NOISE_MODELS))
def test_every_model_is_deterministic_given_the_generator(model):
    image = _disc(48)
    level = degrade.noise_level(model, np.random.default_rng(0))
    low, high = degrade.NOISE_LEVELS[model]
    assert low <= level <= high
    first = degrade.add_noise(image, model, level, np.random.default_rng(7))
    second = degrade.add_noise(image, model, level, np.random.default_rng(7))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, image)


def test_unknown_model_and_bad_input_are_named():
    with pytest.raises(ValueError, match="unknown noise model 'salt'"):
        degrade.add_noise(np.zeros((8, 8)), "salt", 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="2D slices"):
        degrade.gaussian(np.zeros((2, 8, 8)), 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown hole model"):
        degrade.make_hole("circle", (8, 8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not match"):
        degrade.apply_hole(np.zeros((8, 8)), np.zeros((4, 4), bool))


def test_box_hole_covers_the_requested_fraction(rng):
    for _ in range(20):
        hole = degrade.box_hole((64, 80), rng, area=(0.1, 0.2))
        assert hole.dtype == bool and hole.shape == (64, 80)
        assert 0.07 <= hole.mean() <= 0.23
        rows, cols = np.nonzero(hole)
        assert hole[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle


def test_brush_hole_is_irregular_and_reproducible():
    hole = degrade.brush_hole((96, 96), np.random.default_rng(3))
    assert 0.005 < hole.mean() < 0.6
    rows, cols = np.nonzero(hole)
    bounding_box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert hole.sum() < 0.9 * bounding_box  # strokes, not a box
    np.testing.assert_array_equal(hole, degrade.brush_hole((96, 96), np.random.default_rng(3)))


def test_apply_hole_zeroes_only_the_hole(rng):
    image = rng.uniform(0.1, 1.0, (32, 32)).astype(np.float32)
    hole = degrade.box_hole((32, 32), rng)
    holed = degrade.apply_hole(image, hole)
    assert np.all(holed[hole] == 0)
    np.testing.assert_array_equal(holed[~hole], image[~hole])
