"""Every expected value here is worked out by hand in the comment next to it."""

import math

import numpy as np
import pytest

from MVGCore.metrics import dice_per_class, hd95, psnr, ssim, summarize

C1, C2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2  # SSIM constants for data_range = 1


def test_dice_per_class_hand_computed():
    pred = np.array([[[1, 1, 0, 2, 4]]])
    truth = np.array([[[1, 0, 0, 2, 0]]])
    scores = dice_per_class(pred, truth)
    # class 1: |P|=2, |T|=1, overlap 1 -> 2/3; class 2: 1,1,1 -> 1; class 4 only predicted -> 0
    assert scores == pytest.approx({1: 2 / 3, 2: 1.0, 4: 0.0})


def test_dice_empty_empty_is_nan_and_default_labels_skip_it():
    pred = np.zeros((2, 3, 3), dtype=np.uint8)
    truth = pred.copy()
    truth[0, 0, 0] = pred[0, 0, 0] = 1
    assert dice_per_class(pred, truth) == {1: 1.0}
    scores = dice_per_class(pred, truth, labels=[1, 3])
    assert scores[1] == 1.0 and math.isnan(scores[3])


def test_dice_rejects_background_and_mismatched_shapes():
    with pytest.raises(ValueError, match="background"):
        dice_per_class(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), labels=[0])
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))


def test_hd95_single_voxels_use_spacing_in_kji_order():
    pred = np.zeros((4, 4, 4), dtype=np.uint8)
    truth = pred.copy()
    pred[0, 0, 0] = 1
    truth[0, 0, 3] = 1  # 3 voxels along i, spacing_i = 2 mm -> 6 mm
    assert hd95(pred, truth, spacing_kji=(5.0, 1.0, 2.0)) == pytest.approx(6.0)
    truth[:] = 0
    truth[2, 0, 0] = 1  # 2 voxels along k, spacing_k = 5 mm -> 10 mm
    assert hd95(pred, truth, spacing_kji=(5.0, 1.0, 2.0)) == pytest.approx(10.0)


def test_hd95_takes_the_95th_percentile_not_the_maximum():
    pred = np.zeros((3, 3, 25), dtype=np.uint8)
    truth = pred.copy()
    pred[1, 1, 0:21] = 1  # a line: every voxel is surface; distances to truth 0..20 voxels
    truth[1, 1, 0] = 1
    # numpy percentile of 0..20 at 95 % = 19 voxels, times 0.5 mm; truth -> pred is 0
    assert hd95(pred, truth, spacing_kji=(1.0, 1.0, 0.5)) == pytest.approx(9.5)


def test_hd95_concentric_cubes_use_surfaces_only():
    pred = np.zeros((9, 9, 9), dtype=np.uint8)
    truth = pred.copy()
    pred[2:7, 2:7, 2:7] = 1  # 5^3 cube, surface = 98 voxels at max-norm 2 from the centre
    truth[3:6, 3:6, 3:6] = 1  # 3^3 cube, surface = 26 voxels (centre excluded)
    # pred -> truth: 54 face voxels at 1, 36 edge voxels at sqrt 2, 8 corners at sqrt 3;
    # sorted, the 95th percentile sits at position 0.95 * 97 = 92.15, among the corners.
    # truth -> pred: every truth surface voxel is 1 away. max(sqrt 3, 1) = sqrt 3.
    assert hd95(pred, truth, spacing_kji=(1, 1, 1)) == pytest.approx(math.sqrt(3))
    assert hd95(pred * 2, truth * 2, spacing_kji=(1, 1, 1), label=2) == pytest.approx(math.sqrt(3))


def test_hd95_empty_rules_and_bad_spacing():
    empty = np.zeros((2, 2, 2))
    one = empty.copy()
    one[0, 0, 0] = 1
    assert math.isnan(hd95(empty, empty, (1, 1, 1)))
    assert hd95(one, empty, (1, 1, 1)) == math.inf
    assert hd95(empty, one, (1, 1, 1)) == math.inf
    with pytest.raises(ValueError, match="spacing_kji"):
        hd95(one, one, (1, 1))
    with pytest.raises(ValueError, match="spacing_kji"):
        hd95(one, one, (1, 0, 1))


def test_psnr_hand_computed_and_masked():
    truth = np.zeros((8, 8))
    assert psnr(truth + 0.1, truth) == pytest.approx(20.0)  # MSE 0.01 -> 10 log10(1 / 0.01)
    assert psnr(truth + 0.1, truth, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(truth, truth) == math.inf
    truth = np.full((8, 8), 0.5)
    pred = truth.copy()
    hole = np.zeros((8, 8), dtype=bool)
    hole[2:6, 2:6] = True
    pred[hole] += 0.1
    assert psnr(pred, truth, mask=hole) == pytest.approx(20.0)  # inside the hole MSE is 0.01
    # whole image: MSE = 0.01 * 16 / 64 = 0.0025
    assert psnr(pred, truth) == pytest.approx(10 * math.log10(1 / 0.0025))


def test_ssim_of_constant_images_hand_computed_2d_and_3d():
    # zero variances leave SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1)
    expected = (2 * 0.5 * 0.25 + C1) / (0.5**2 + 0.25**2 + C1)
    assert ssim(np.full((16, 16), 0.5), np.full((16, 16), 0.25)) == pytest.approx(expected)
    assert ssim(np.full((2, 16, 16), 0.5), np.full((2, 16, 16), 0.25)) == pytest.approx(expected)
    image = np.random.default_rng(0).random((3, 12, 12))
    assert ssim(image, image) == pytest.approx(1.0)


def test_ssim_inside_the_hole_is_the_mean_of_the_map_there():
    truth = np.full((32, 32), 0.5)
    pred = truth.copy()
    pred[4:28, 4:28] = 0.75
    hole = np.zeros_like(truth, dtype=bool)
    hole[7:25, 7:25] = True  # every 7x7 window centred here lies inside the changed block
    expected = (2 * 0.75 * 0.5 + C1) / (0.75**2 + 0.5**2 + C1)
    assert ssim(pred, truth, mask=hole) == pytest.approx(expected)
    # windows across the block edge see variance in pred but none in truth: SSIM drops there
    assert ssim(pred, truth) < expected


def test_image_metric_errors_name_the_problem():
    image = np.zeros((8, 8))
    with pytest.raises(ValueError, match="mask is empty"):
        psnr(image, image, mask=np.zeros((8, 8), dtype=bool))
    with pytest.raises(ValueError, match="mask shape"):
        ssim(image, image, mask=np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="7x7"):
        ssim(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="finite"):
        psnr(image + np.nan, image)


def test_summarize_counts_non_finite_values():
    summary = summarize([1.0, 2.0, 3.0, float("nan"), float("inf")])
    assert summary.mean == pytest.approx(2.0)
    assert summary.std == pytest.approx(math.sqrt(2 / 3))  # population std of 1, 2, 3
    assert (summary.n, summary.n_nan, summary.n_inf) == (3, 1, 1)
    assert math.isnan(summarize([]).mean)
