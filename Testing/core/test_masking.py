import numpy as np
import pytest

from MVGCore.masking import MaskSampler, ar_mask, block_mask

GRID = (56, 28)  # the paper's 896x448 canvas


def test_ar_mask_hides_exactly_the_query_half():
    mask = ar_mask(GRID).reshape(GRID)
    assert mask[28:].all() and not mask[:28].any()


def test_block_mask_hides_the_reference_number_of_patches_in_blocks(rng):
    for _ in range(20):
        mask = block_mask(GRID, rng)
        assert mask.sum() == 256
    mask = block_mask(GRID, rng).reshape(GRID)
    # Blocks, not scattered tokens: most hidden tokens have a hidden 4-neighbour.
    padded = np.pad(mask, 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (neighbours & mask).sum() / mask.sum() > 0.8


def test_block_mask_works_on_small_grids(rng):
    mask = block_mask((8, 4), rng, ratio=0.25)
    assert mask.sum() == 8


def test_hybrid_sampler_follows_the_reference_mix(rng):
    sampler = MaskSampler(GRID)
    ar = ar_mask(GRID)
    assert all(np.array_equal(sampler("segment", rng), ar) for _ in range(50))
    draws = [np.array_equal(sampler("denoise", rng), ar) for _ in range(400)]
    assert 0.05 < np.mean(draws) < 0.16


def test_sampler_configuration_is_checked(rng):
    with pytest.raises(ValueError, match="AR probability"):
        MaskSampler(GRID, ar_probability={"segment": 1.5})
    with pytest.raises(ValueError, match="no AR probability for task 'detect'"):
        MaskSampler(GRID)("detect", rng)
