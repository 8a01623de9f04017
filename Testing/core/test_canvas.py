import numpy as np
import pytest
import torch

from MVGCore.canvas import (
    build_canvases,
    fit_to_tile,
    imagenet_denormalize,
    plan_fit,
    query_half,
    unfit_from_tile,
)
from MVGCore.coloring import color_table


@pytest.mark.parametrize(
    ("shape", "spacing", "size"),
    [
        ((37, 53), (1.0, 1.0), 64),
        ((61, 17), (1.0, 1.0), 128),
        ((20, 33), (2.0, 0.7), 96),
        ((1, 9), (1, 1), 16),
    ],
)
def test_label_round_trip_is_exact_for_odd_non_square_and_anisotropic_slices(shape, spacing, size, rng):
    labels = rng.integers(0, 7, shape).astype(np.uint8)
    tile, fit = fit_to_tile(labels, size, is_label=True, spacing=spacing)
    assert tile.shape == (size, size) and tile.dtype == np.uint8
    back = unfit_from_tile(tile, fit, is_label=True)
    assert back.shape == shape
    np.testing.assert_array_equal(back, labels)


def test_downsampled_labels_land_on_the_original_grid(rng):
    labels = np.zeros((300, 211), dtype=np.uint8)
    labels[100:200, 50:150] = 3
    tile, fit = fit_to_tile(labels, 64, is_label=True)
    back = unfit_from_tile(tile, fit, is_label=True)
    assert back.shape == labels.shape
    assert set(np.unique(back)) == {0, 3}
    assert (back == labels).mean() > 0.97


def test_anisotropic_spacing_preserves_physical_aspect():
    fit = plan_fit((20, 100), 100, spacing=(5.0, 1.0))  # 100 mm x 100 mm physically
    assert fit.content == (100, 100)
    fit = plan_fit((20, 100), 100, spacing=(1.0, 1.0))
    assert fit.content == (20, 100) and fit.offset == (40, 0)


def test_image_round_trip_is_close(rng):
    image = np.linspace(0, 1, 45 * 31, dtype=np.float32).reshape(45, 31)
    tile, fit = fit_to_tile(image, 128, is_label=False)
    back = unfit_from_tile(tile, fit, is_label=False)
    assert back.shape == image.shape
    assert np.abs(back - image).max() < 0.02


def test_canvases_stack_prompt_on_query_and_color_labels(rng):
    s = 16
    prompt_images = rng.random((2, s, s), dtype=np.float32)
    query_images = rng.random((2, s, s), dtype=np.float32)
    labels = rng.integers(0, 3, (2, s, s))
    table = color_table([1, 2], "palette")
    canvases = build_canvases(prompt_images, labels, query_images, labels, segmentation=True, tables=table)
    assert canvases.images.shape == (2, 3, 2 * s, s)
    rgb = imagenet_denormalize(canvases.images)
    np.testing.assert_allclose(rgb[:, 0, :s].numpy(), prompt_images, atol=1e-6)
    np.testing.assert_allclose(query_half(rgb)[:, 1].numpy(), query_images, atol=1e-6)
    np.testing.assert_array_equal(canvases.foreground[:, :s].numpy(), labels > 0)
    np.testing.assert_allclose(canvases.targets01[0, :, 0, 0].numpy(), table[labels[0, 0, 0]])


def test_inference_canvas_leaves_the_query_target_black(rng):
    s = 8
    canvases = build_canvases(
        rng.random((1, s, s), dtype=np.float32),
        rng.random((1, s, s), dtype=np.float32),
        rng.random((1, s, s), dtype=np.float32),
        segmentation=False,
    )
    assert torch.count_nonzero(query_half(canvases.targets01)) == 0


def test_bad_canvas_inputs_raise_clear_errors(rng):
    s = 8
    img = rng.random((1, s, s), dtype=np.float32)
    lab = np.ones((1, s, s), dtype=np.int64)
    table = color_table([1], "palette")
    with pytest.raises(ValueError, match="empty: at least one prompt"):
        build_canvases(img[:0], lab[:0], img[:0], segmentation=True, tables=table)
    with pytest.raises(ValueError, match="must all have one shape"):
        build_canvases(img, lab, rng.random((1, s, s + 2), dtype=np.float32), segmentation=True, tables=table)
    nan = img.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        build_canvases(nan, lab, img, segmentation=True, tables=table)
    with pytest.raises(TypeError, match="must be float images"):
        build_canvases(lab, lab, img, segmentation=True, tables=table)
    with pytest.raises(TypeError, match="integer label map"):
        build_canvases(img, img, img, segmentation=True, tables=table)
    with pytest.raises(ValueError, match=r"classes in \[0, 255\]"):
        build_canvases(img, lab * 300, img, segmentation=True, tables=table)
    with pytest.raises(ValueError, match="2D slice"):
        fit_to_tile(np.zeros((2, 3, 4)), 16, is_label=False)
