import threading

import numpy as np
import pytest

from MVGCore.intensity import intensity_range, normalize
from MVGCore.types import Cancelled, CancelToken, Geometry, Prompt, Volume


def test_ct_uses_the_paper_window_and_other_modalities_robust_percentiles(rng):
    ct = np.array([-1000.0, -100.0, 50.0, 200.0, 3000.0])
    np.testing.assert_allclose(normalize(ct, "CT"), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(normalize(ct, "CT", window="brain"), [0, 0, 50 / 80, 1, 1])
    np.testing.assert_allclose(
        normalize(ct, "CT", window="wide"), np.array([0, 900, 1050, 1200, 1400]) / 1400
    )
    mr = rng.normal(300, 50, 100_000)
    mr[:10] = 1e6  # a few hot voxels must not squash the range
    r = intensity_range(mr, "MRI")
    assert 100 < r.low < 200 and 400 < r.high < 500
    np.testing.assert_allclose(
        r.denormalize(r.normalize(np.array([r.low, r.high]))), [r.low, r.high], rtol=1e-6
    )


def test_constant_and_empty_images_do_not_divide_by_zero():
    assert np.all(normalize(np.full((4, 4), 7.0), "MR") == 0)
    with pytest.raises(ValueError, match="no finite voxels"):
        normalize(np.full(3, np.nan), "US")


def test_bad_modality_and_window_names_are_refused():
    with pytest.raises(ValueError, match="modality must be one of"):
        normalize(np.zeros(3), "PET")
    with pytest.raises(ValueError, match="unknown CT window 'liverish'"):
        normalize(np.zeros(3), "CT", window="liverish")


def test_geometry_and_volume_validate_their_inputs():
    g = Geometry(spacing=(0.5, 0.7, 3.0))
    assert g.spacing_kji == (3.0, 0.7, 0.5)
    with pytest.raises(ValueError, match="spacing must be three positive"):
        Geometry(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="direction must hold 9"):
        Geometry(direction=(1.0, 0.0))
    with pytest.raises(ValueError, match="must be 3D"):
        Volume(np.zeros((2, 2, 2, 2)))


def test_prompts_from_a_volume_and_their_checks():
    volume = np.arange(24).reshape(2, 3, 4)
    p = Prompt.from_volume(volume, 2, np.ones((2, 3), dtype=np.uint8), axis=2)
    np.testing.assert_array_equal(p.image, volume[:, :, 2])
    assert p.index == 2
    with pytest.raises(ValueError, match="prompt index 4 is out of range for axis 2"):
        Prompt.from_volume(volume, 4, np.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match="same shape"):
        Prompt(np.zeros((2, 3)), np.zeros((3, 2)))


def test_cancel_token_is_seen_across_threads():
    token = CancelToken()
    token.raise_if_cancelled()
    threading.Thread(target=token.cancel).start()
    with pytest.raises(Cancelled):
        for _ in range(10_000_000):
            token.raise_if_cancelled()


def test_crop_keeps_every_voxel_at_its_physical_position():
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane
    g = Geometry(spacing=(0.5, 2.0, 3.0), origin=(10.0, 20.0, 30.0), direction=direction)
    volume = Volume(np.arange(4 * 5 * 6).reshape(4, 5, 6), g)
    cropped = volume.crop((1, 2, 3), (3, 5, 6))
    assert cropped.array[0, 0, 0] == volume.array[1, 2, 3]

    def position(geometry, kji):
        ijk = np.array(kji[::-1], dtype=float) * np.array(geometry.spacing)
        return np.array(geometry.origin) + np.array(geometry.direction).reshape(3, 3) @ ijk

    np.testing.assert_allclose(position(cropped.geometry, (0, 0, 0)), position(g, (1, 2, 3)))
    with pytest.raises(ValueError, match="does not fit"):
        volume.crop((0, 0, 0), (5, 5, 6))
