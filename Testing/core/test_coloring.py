import numpy as np
import pytest
import torch

from MVGCore.coloring import MAX_CLASSES, color_table, decode, encode, palette


def test_palette_is_black_first_distinct_and_well_separated():
    colors = palette()
    assert colors.shape == (MAX_CLASSES + 1, 3)
    assert np.array_equal(colors[0], [0, 0, 0])
    distance = np.abs(colors[:, None] - colors[None]).sum(-1)
    assert distance[np.triu_indices(len(colors), 1)].min() >= 0.19


@pytest.mark.parametrize("encoding", ["palette", "random"])
def test_round_trip_is_exact_for_clean_colors_up_to_255_classes(encoding, rng):
    labels = torch.from_numpy(rng.integers(0, MAX_CLASSES + 1, (2, 40, 40)))
    classes = torch.unique(labels).tolist()
    table = color_table(classes, encoding, rng)
    decoded = decode(encode(labels, table), table, classes)
    assert torch.equal(decoded, labels)


def test_decoding_is_robust_to_small_noise(rng):
    labels = torch.from_numpy(rng.integers(0, 6, (1, 64, 64)))
    table = color_table(range(1, 6), "random", rng)
    noisy = encode(labels, table) + torch.from_numpy(rng.normal(0, 0.04, (1, 3, 64, 64)).astype(np.float32))
    assert torch.equal(decode(noisy, table, list(range(1, 6))), labels)


def test_decoding_only_returns_classes_the_prompt_used(rng):
    labels = torch.from_numpy(rng.integers(0, 4, (1, 16, 16)))
    table = color_table([1, 2, 3], "palette")
    decoded = decode(encode(labels, table), table, [2])
    assert set(torch.unique(decoded).tolist()) <= {0, 2}


def test_random_coloring_changes_per_draw_but_is_injective(rng):
    a = color_table([1, 2, 3], "random", rng)
    b = color_table([1, 2, 3], "random", rng)
    assert not np.array_equal(a[1:4], b[1:4])
    assert len({tuple(c) for c in a[1:4]}) == 3
    assert np.array_equal(a[0], [0, 0, 0])


def test_gray_encoding_is_the_reference_ramp():
    table = color_table([1, 2, 30], "gray")
    np.testing.assert_allclose(table[[1, 2]], [[10 / 255] * 3, [20 / 255] * 3])
    np.testing.assert_allclose(table[30], [1, 1, 1])  # saturates past class 25


def test_bad_labels_and_encodings_are_refused(rng):
    with pytest.raises(ValueError, match="unknown label encoding"):
        color_table([1], "rainbow")
    with pytest.raises(ValueError, match=r"classes must lie in \[1, 255\]"):
        color_table([256], "palette")
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        color_table([1], "random")
    table = color_table([1], "palette")
    with pytest.raises(TypeError, match="integer label map"):
        encode(torch.zeros(1, 4, 4), table)
    with pytest.raises(ValueError, match=r"found values in \[-1, -1\]"):
        encode(torch.full((1, 4, 4), -1), table)
