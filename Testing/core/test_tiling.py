import numpy as np
import pytest

from MVGCore.tiling import blend, extract, match_tiles, plan_tiles, weights


@pytest.mark.parametrize(
    "shape", [(1, 1), (5, 300), (127, 129), (128, 128), (129, 257), (333, 97), (2000, 1500)]
)
def test_identity_model_returns_the_plane_bit_for_bit(shape):
    plane = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    plan = plan_tiles(shape, 128, 32)
    tiles = extract(plane, plan)
    assert tiles.shape == (len(plan), 128, 128) and tiles.dtype == np.float32
    assert np.array_equal(blend(tiles, plan).astype(np.float32), plane)
    for r, c in plan.boxes:  # tiles cover the padded canvas and stay inside it
        assert 0 <= r <= plan.padded[0] - 128 and 0 <= c <= plan.padded[1] - 128
    for starts in (plan.rows, plan.cols):
        assert all(b - a <= 128 - 32 for a, b in zip(starts, starts[1:]))  # overlaps of at least 32


def test_small_planes_are_padded_never_enlarged():
    plan = plan_tiles((5, 300), 128, 32)
    assert plan.padded == (128, 300) and plan.rows == (0,) and plan.offset == (61, 0)
    tiles = extract(np.ones((5, 300), dtype=np.float32), plan, fill=0.0)
    assert tiles[:, 61:66].all() and not tiles[:, :61].any() and not tiles[:, 66:].any()  # 1:1 pixels


@pytest.mark.parametrize("shape", [(300, 200), (129, 129), (500, 130)])
def test_weights_sum_to_one_and_ramp_smoothly(shape):
    plan = plan_tiles(shape, 64, 16)
    each = weights(plan)
    np.testing.assert_allclose(each.sum(0), 1.0, rtol=0, atol=1e-12)
    assert np.array_equal(blend(np.ones((len(plan), 64, 64)), plan), np.ones(shape))  # exactly 1 together
    assert each.min() >= 0.0
    step = np.abs(np.diff(each, axis=2)).max()
    assert step < 0.2  # no seams: weights change gradually across an overlap of 16 pixels


def test_blend_mixes_disagreeing_tiles_inside_the_overlap_only():
    plan = plan_tiles((64, 112), 64, 16)
    assert plan.cols == (0, 48) and len(plan) == 2
    plane = blend(np.stack([np.zeros((64, 64)), np.ones((64, 64))]), plan)
    assert (plane[:, :48] == 0).all() and (plane[:, 64:] == 1).all()
    assert np.all(np.diff(plane[0, 48:64]) > 0)  # a smooth ramp from one tile to the other


def test_prompts_of_the_query_shape_get_the_tile_at_the_same_position():
    query = plan_tiles((300, 200), 128, 32)
    assert match_tiles(query, plan_tiles((300, 200), 128, 32)) == [[n] for n in range(len(query))]
    prompt = plan_tiles((600, 400), 128, 32)  # a larger image: nearest by relative position
    pairs = match_tiles(query, prompt, count=2)
    assert all(len(p) == 2 for p in pairs)
    for n, (nearest, second) in enumerate(pairs):
        gaps = np.linalg.norm(prompt.centres() - query.centres()[n], axis=1)
        assert gaps[nearest] == gaps.min() and gaps[second] == np.sort(gaps)[1]
    matched_rows = [prompt.boxes[p[0]][0] for p in pairs[:: len(query.cols)]]  # first tile of each row
    assert matched_rows == sorted(matched_rows) and matched_rows[0] < matched_rows[-1]
    tiny = plan_tiles((40, 40), 128, 32)
    assert match_tiles(query, tiny, count=3) == [[0]] * len(query)  # one tile: everyone pairs with it


def test_bad_plans_and_tiles_are_refused():
    with pytest.raises(ValueError, match="overlap must be"):
        plan_tiles((10, 10), 64, 64)
    with pytest.raises(ValueError, match="non-empty 2D"):
        plan_tiles((0, 10), 64)
    plan = plan_tiles((100, 100), 64)
    with pytest.raises(ValueError, match="does not match"):
        extract(np.zeros((100, 99)), plan)
    with pytest.raises(ValueError, match="expected 9 tiles"):
        blend(np.zeros((3, 64, 64)), plan)
