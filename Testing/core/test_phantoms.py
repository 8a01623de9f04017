"""Domain-randomised phantoms: labelled anatomy, an intensity per tissue, paired contrasts, nnU-Net."""

import json

import numpy as np
import pytest

from MVGCore.data import phantoms


def test_anatomy_has_air_tissue_and_every_class(rng):
    tissues = phantoms.random_anatomy((24, 64, 64), 3, rng)
    assert tissues.shape == (24, 64, 64) and tissues.dtype == np.uint8
    assert set(np.unique(tissues)) == {0, 1, 2, 3, 4}
    # the labelled classes sit inside an ellipsoid, so the end slices hold none of them
    assert not (tissues[0] > phantoms.TISSUE).any() and not (tissues[-1] > phantoms.TISSUE).any()
    assert (tissues[12] > phantoms.TISSUE).any()


def test_phantom_intensity_is_consistent_within_a_tissue_and_channels_differ(rng):
    phantom = phantoms.make_phantom((16, 48, 48), 2, rng, channels=2)
    assert phantom.images.shape == (2, 16, 48, 48) and phantom.images.dtype == np.float32
    assert phantom.label.dtype == np.uint8 and phantom.label.max() == 2
    np.testing.assert_array_equal(phantom.label, np.maximum(phantom.tissues.astype(int) - 1, 0))
    means = np.array([[phantom.images[c][phantom.tissues == t].mean() for t in range(4)] for c in range(2)])
    # tissues are told apart by intensity: the spread within a tissue is small next to the means
    within = max(phantom.images[0][phantom.tissues == t].std() for t in range(4))
    assert np.ptp(means[0]) > 2 * within
    # the second contrast orders tissues differently from the first (a real synthesis task)
    assert not np.allclose(means[0] / means[0].max(), means[1] / means[1].max(), atol=0.05)


def test_phantom_is_a_pure_function_of_the_generator():
    first = phantoms.make_phantom((8, 32, 32), 2, np.random.default_rng(5))
    second = phantoms.make_phantom((8, 32, 32), 2, np.random.default_rng(5))
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.label, second.label)


def test_bad_phantom_arguments_are_named(rng):
    with pytest.raises(ValueError, match="n_classes"):
        phantoms.random_anatomy((8, 16, 16), 0, rng)
    with pytest.raises(ValueError, match="phantom shape"):
        phantoms.random_anatomy((16, 16), 2, rng)
    with pytest.raises(ValueError, match="channels"):
        phantoms.make_phantom((8, 16, 16), 2, rng, channels=0)


def test_write_nnunet_dataset_is_readable_by_the_dataset_loaders(tmp_path):
    from MVGCore.data.sources import load_cases, validate_cases
    from MVGCore.io import read_volume

    root = phantoms.write_nnunet_dataset(tmp_path, 2, (8, 32, 24), 2, seed=3, spacing=(0.8, 0.8, 2.0))
    assert root == tmp_path / "Dataset900_Phantom"
    description = json.loads((root / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "T1", "1": "T2"}
    assert description["labels"] == {"background": 0, "class1": 1, "class2": 2}
    assert description["numTraining"] == 2
    cases = validate_cases(load_cases(root))
    assert [c.case_id for c in cases] == ["phantom_000", "phantom_001"]
    assert cases[0].modalities == ("MR", "MR") and "synthesize" in cases[0].tasks
    label = read_volume(cases[0].label)
    image = read_volume(cases[0].images[1])
    assert label.array.shape == (8, 32, 24)
    np.testing.assert_allclose(image.geometry.spacing, (0.8, 0.8, 2.0), rtol=1e-6)  # NIfTI stores float32
    expected = phantoms.make_phantom((8, 32, 24), 2, np.random.default_rng([3, 0]), 2)
    np.testing.assert_array_equal(label.array, expected.label)
    np.testing.assert_allclose(image.array, expected.images[1])
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


def test_write_nnunet_dataset_never_replaces_an_existing_folder(tmp_path):
    (tmp_path / "Dataset900_Phantom").mkdir()
    (tmp_path / "Dataset900_Phantom" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="already exists"):
        phantoms.write_nnunet_dataset(tmp_path, 1, (4, 16, 16), 1, seed=0)
    assert (tmp_path / "Dataset900_Phantom" / "mine.txt").read_text() == "user data"
