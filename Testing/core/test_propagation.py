"""Segmentation as users run it: propagation training pairs, zoom to the prompts, colors by class
order, the query classes a prompt cannot show, and the decoder's pixel path."""

import logging

import numpy as np
import pytest
import torch
from scipy import ndimage

from MVGCore.checkpoint import load_model
from MVGCore.config import config_for
from MVGCore.data.samplers import InContextDataset
from MVGCore.data.store import SliceStore, StoreWriter
from MVGCore.metrics import dice_per_class
from MVGCore.model import MVGModel
from MVGCore.predict import Predictor
from MVGCore.train.batch import collate_canvases
from MVGCore.types import Prompt
from MVGCore.zoom import Region, prompt_box, region_around, union_box

STORE, TILE, SIDE, SHIFT = 128, 64, 24, 4
STILL = {"shift": 0.0, "rotate": 0.0, "scale": (1.0, 1.0), "near": (1, 3), "far_prob": 0.0}
NO_AUGMENT = {"hflip_prob": 0.0, "vflip_prob": 0.0, "jitter_prob": 0.0}


@pytest.fixture(scope="module")
def shifted_store(tmp_path_factory) -> SliceStore:
    """One case of 12 slices: a 24 px square of class 1 that moves 4 px down per slice."""
    labels = np.zeros((12, STORE, STORE), np.uint8)
    for s in range(12):
        labels[s, 10 + SHIFT * s : 10 + SHIFT * s + SIDE, 20 : 20 + SIDE] = 1
    images = (0.2 + 0.6 * labels.astype(np.float32))[:, None]
    out = tmp_path_factory.mktemp("stores") / "shifted"
    with StoreWriter(out, STORE, 0) as writer:
        writer.add_case(
            "c0", "D", ("MR",), ("segment",), images, tuple(range(12)), (True,) * 12, label=labels
        )
    return SliceStore(out)


def _centre_and_side(label: np.ndarray) -> tuple[float, float]:
    rows = np.flatnonzero(label.any(1))
    return float(rows.mean()), float(rows.size)


@pytest.mark.parametrize("zoom_prob", [0.0, 1.0])
def test_propagation_pairs_keep_a_known_shift_through_the_shared_crop(shifted_store, zoom_prob):
    """Prompt and query share one crop box: the square's displacement, measured in squares, is the
    stored one (4 px per slice over a 24 px square) in a whole view and in a zoom; the slices lie
    1-3 apart."""
    config = {
        "tasks": {"segment": 1.0},
        "propagation": STILL,
        "zoom_prob": zoom_prob,
        "zoom_min_size": 8,
        "augment": {**NO_AUGMENT, "crop_prob": 0.0},
    }
    dataset = InContextDataset(shifted_store, config, length=24, seed=0, tile_size=TILE)
    for index in range(24):
        sample = dataset[index]
        (prompt_row, prompt_side), (query_row, query_side) = (
            _centre_and_side(sample[f"{half}_target"]) for half in ("prompt", "query")
        )
        assert prompt_side == pytest.approx(query_side, abs=1)  # one scale for both halves
        slices = (query_row - prompt_row) / query_side * SIDE / SHIFT
        assert 1 <= abs(round(slices)) <= 3 and slices == pytest.approx(round(slices), abs=0.35), index


def test_propagation_motion_moves_only_the_prompt_half_and_labels_follow(shifted_store):
    config = {"tasks": {"segment": 1.0}, "augment": NO_AUGMENT, "propagation": {"shift": 3.0, "rotate": 10.0}}
    dataset = InContextDataset(shifted_store, config, length=8, seed=1, tile_size=TILE)
    for index in range(8):
        sample = dataset[index]
        for half in ("prompt", "query"):
            image, label = sample[f"{half}_image"], sample[f"{half}_target"]
            inside = image[ndimage.binary_erosion(label == 1, iterations=2)]
            assert inside.size and np.allclose(inside, 0.8, atol=0.02)  # still on its bright square


def test_propagation_queries_also_lie_where_the_structure_has_ended(tmp_path):
    """A lesion on slices 4-7 of 16: prompts are always labelled slices, as a user's are; the query
    is also drawn past the lesion's end, where its target is empty."""
    labels = np.zeros((16, STORE, STORE), np.uint8)
    labels[4:8, 40:64, 40:64] = 1
    images = (0.2 + 0.6 * labels.astype(np.float32))[:, None]
    with StoreWriter(tmp_path / "lesion", STORE, 0) as writer:
        labelled = tuple(bool(label.any()) for label in labels)
        writer.add_case("c0", "D", ("MR",), ("segment",), images, tuple(range(16)), labelled, label=labels)
    config = {
        "tasks": {"segment": 1.0},
        "augment": {**NO_AUGMENT, "crop_prob": 0.0},
        "propagation": {**STILL, "near": (1, 8)},
    }
    dataset = InContextDataset(SliceStore(tmp_path / "lesion"), config, length=40, seed=0, tile_size=TILE)
    samples = [dataset[i] for i in range(40)]
    assert all(s["prompt_target"].any() for s in samples)
    empty = sum(not s["query_target"].any() for s in samples)
    assert empty > 5


def test_aligned_prompts_lie_on_the_query_as_inference_aligns_them(shifted_store):
    """With ``align_prompts`` the prompt half is registered onto the query half: the square that
    moved 4-12 px between the slices overlaps the query's (Dice 0.5-0.83 as it lay); the query is
    untouched."""
    config = {"tasks": {"segment": 1.0}, "propagation": STILL, "augment": {**NO_AUGMENT, "crop_prob": 0.0}}
    as_lying = InContextDataset(shifted_store, config, length=6, seed=0, tile_size=TILE)
    aligned = InContextDataset(
        shifted_store, {**config, "align_prompts": "demons"}, length=6, seed=0, tile_size=TILE
    )
    for index in range(6):
        before, after = as_lying[index], aligned[index]
        assert np.array_equal(before["query_image"], after["query_image"])
        assert np.array_equal(before["query_target"], after["query_target"])
        assert dice_per_class(before["prompt_target"], before["query_target"])[1] < 0.9
        assert dice_per_class(after["prompt_target"], after["query_target"])[1] > 0.93
        assert after["prompt_image"].dtype == np.float32 and after["prompt_target"].dtype == np.int64
    with pytest.raises(ValueError, match="align_prompts must be one of"):
        InContextDataset(shifted_store, {**config, "align_prompts": "rigid"})
    unquoted = InContextDataset(shifted_store, {**config, "align_prompts": False})  # YAML's `off`
    assert unquoted.config.align_prompts == "off"


def test_the_retired_query_slices_loads_as_any_and_refuses_foreground_in_one_line(shifted_store, caplog):
    config = {"tasks": {"segment": 1.0}, "propagation": {**STILL, "query_slices": "any"}}
    with caplog.at_level(logging.INFO, logger="MVGCore.retired"):
        named = InContextDataset(shifted_store, config, length=4, tile_size=TILE)
    assert "dropped the retired setting query_slices='any'" in caplog.text
    plain = InContextDataset(shifted_store, {**config, "propagation": STILL}, length=4, tile_size=TILE)
    assert named.config == plain.config and np.array_equal(named[3]["query_target"], plain[3]["query_target"])
    with pytest.raises(ValueError) as refused:
        InContextDataset(shifted_store, {**config, "propagation": {"query_slices": "foreground"}})
    assert "query_slices='foreground' was retired (only query_slices='any' remains)" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1


def test_sampler_refuses_a_tile_larger_than_the_store(shifted_store):
    with pytest.raises(ValueError, match="tile size 256 must lie in"):
        InContextDataset(shifted_store, {"tasks": {"segment": 1.0}}, tile_size=256)


def test_query_classes_the_prompt_does_not_show_are_background():
    prompt = np.zeros((TILE, TILE), np.int64)
    prompt[2:8, 2:8] = 1
    query = prompt.copy()
    query[20:30, 20:30] = 5  # a structure the prompt gives no hint of
    sample = {
        "task": "segment",
        "prompt_image": np.zeros((TILE, TILE), np.float32),
        "query_image": np.zeros((TILE, TILE), np.float32),
        "prompt_target": prompt,
        "query_target": query,
        "hole": np.zeros((TILE, TILE), bool),
    }
    batch = collate_canvases([sample], [np.random.default_rng(0)], (2 * TILE // 16, TILE // 16))
    assert batch.classes == [[1]]
    query_colors = batch.targets01[0, :, TILE:]
    assert query_colors[:, 20:30, 20:30].abs().sum() == 0 and query_colors[:, 2:8, 2:8].sum() > 0


# ------------------------------------------------------------------ zoom


class CopyPromptLarge(MVGModel):
    """A known model on 64 px tiles: the query answer is the prompt's target."""

    def __init__(self) -> None:
        super().__init__(
            config_for(
                "tiny", tile_size=64, depth=1, embed_dim=16, num_heads=1, merge_index=0, feature_blocks=(0,)
            )
        )

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        top = targets[..., : targets.shape[-2] // 2, :]
        return top if query_only else torch.cat([top, top], dim=-2)


def _lesion_scene(shape=(9, 101, 77)):
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 50.0, shape).astype(np.float32)
    label = np.zeros(shape, np.int16)
    for k in range(shape[0]):
        label[k, 40 + k : 52 + k, 30:41] = 3
    return volume, label


@pytest.mark.parametrize("flip", [(), (1,), (2,), (1, 2)])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (5.0, 0.7, 1.3)])
def test_zoom_pastes_back_exactly_on_odd_anisotropic_and_flipped_grids(flip, spacing):
    volume, label = _lesion_scene()
    if flip:
        volume, label = np.flip(volume, flip).copy(), np.flip(label, flip).copy()
    prompts = [Prompt.from_volume(volume, k, label[k]) for k in (2, 6)]
    predictor = Predictor(CopyPromptLarge(), device="cpu")
    result = predictor.segment(volume, prompts, spacing=spacing, align_prompts="off")
    assert result.shape == volume.shape and result.dtype == label.dtype
    for k in range(volume.shape[0]):
        nearest = 2 if k <= 4 else 6
        assert np.array_equal(result[k], label[nearest]), k  # exact: the region is at most the tile
    whole = predictor.segment(volume, prompts, spacing=spacing, zoom="whole", align_prompts="off")
    assert whole.shape == volume.shape


class BrightAsPrompt(CopyPromptLarge):
    """A known model on 64 px tiles: where the query image is bright, the color its prompt's
    target has where the prompt image is brightest; background elsewhere."""

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        half = targets.shape[-2] // 2
        prompt_image, query_image = images[..., :half, :].mean(1), images[..., half:, :].mean(1)
        top = targets[..., :half, :]
        brightest = prompt_image.flatten(1).argmax(1)
        color = top.flatten(2)[torch.arange(top.shape[0]), :, brightest][..., None, None]
        query = torch.where(query_image[:, None] > 0, color, top[..., :1, :1])
        return query if query_only else torch.cat([top, query], dim=-2)


def test_with_propagation_the_zoom_region_follows_the_labels_out_of_the_prompts_region():
    """A lesion that moves 4 px per slice leaves the region around the two prompt slices' labels;
    the region grows with the propagated labels, so the far slices keep it."""
    label = np.zeros((9, 101, 77), np.uint8)
    for k in range(9):
        label[k, 40:52, 30 + 4 * k : 41 + 4 * k] = 1
    volume = np.where(label > 0, 500.0, -500.0).astype(np.float32)
    prompts = [Prompt.from_volume(volume, k, label[k]) for k in (0, 1)]
    fixed = region_around(prompt_box(prompts), (101, 77), margin=0.25)
    assert not label[8][fixed.top : fixed.bottom, fixed.left : fixed.right].any()
    predictor = Predictor(BrightAsPrompt(), device="cpu")
    options = dict(modality="CT", window=(-1000.0, 1000.0), align_prompts="off")
    followed = predictor.segment(volume, prompts, **options)
    for k in range(2, 9):
        assert dice_per_class(followed[k], label[k], [1])[1] > 0.9, k
    alone = predictor.segment(volume, prompts, propagate=False, **options)  # the prompts' region only
    assert dice_per_class(alone[5], label[5], [1])[1] > 0.9 and not alone[8].any()


def test_zoom_region_is_square_in_physical_units_and_inside_the_plane():
    region = region_around((40, 52, 30, 41), (101, 77), spacing=(0.7, 1.4), margin=0.25, min_size=8)
    rows, cols = region.shape
    assert rows * 0.7 == pytest.approx(cols * 1.4, abs=1.4)
    edge = region_around((0, 5, 70, 77), (101, 77), margin=0.25, min_size=20)
    assert edge.top == 0 and edge.right == 77 and edge.shape == (20, 20)
    assert prompt_box([Prompt(np.zeros((5, 5)), np.zeros((5, 5), np.uint8), 0)]) is None
    assert Region(0, 5, 0, 5).covers((5, 5))
    assert union_box((3, 5, 2, 4), None, (1, 4, 3, 9)) == (1, 5, 2, 9) and union_box(None) is None
    pasted = Region(1, 3, 2, 5).paste(np.ones((2, 3), np.int16), (4, 6))
    assert pasted.dtype == np.int16 and pasted.sum() == 6 and pasted[1:3, 2:5].all()


# ------------------------------------------------------------------ colors by class order


def test_large_and_non_contiguous_label_ids_segment_like_one_to_n(checkpoint):
    rng = np.random.default_rng(3)
    volume = rng.normal(0, 1, (6, 32, 32)).astype(np.float32)
    small = np.zeros((6, 32, 32), np.uint8)
    small[:, 4:14, 4:14], small[:, 18:28, 16:30], small[:, 2:6, 20:30] = 1, 2, 3
    ids = np.array([0, 40, 77, 201], np.uint8)  # past the 32 colors training draws, with gaps
    prompts_small = [Prompt.from_volume(volume, k, small[k]) for k in (1, 4)]
    prompts_large = [Prompt.from_volume(volume, k, ids[small[k]]) for k in (1, 4)]
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")  # the suite's small random model
    answer_small = predictor.segment(volume, prompts_small, zoom="whole")
    answer_large = predictor.segment(volume, prompts_large, zoom="whole")
    assert np.array_equal(answer_large, ids[answer_small])


# ------------------------------------------------------------------ the decoder's pixel path


@pytest.mark.parametrize(
    "option, value, module",
    [
        ("pixel_skip", True, "decoder_skip"),
        ("copy_gates", True, "decoder_gates"),
        ("refine_layers", 2, "decoder_refine"),
        ("refine_layers", 14, "decoder_refine"),  # the most query-only decoding has context for
    ],
)
def test_a_pixel_path_starts_as_the_model_without_it_and_loads_its_weights(checkpoint, option, value, module):
    config = load_model(checkpoint)[0].config
    torch.manual_seed(0)
    plain = MVGModel(config).eval()
    extra = MVGModel(config.replace(**{option: value})).eval()
    missing, unexpected = extra.load_state_dict(plain.state_dict(), strict=False)
    added = sorted(name for name, _ in extra.named_parameters() if name.startswith(f"{module}."))
    assert sorted(missing) == added and added and not unexpected
    images, targets = torch.randn(2, 3, 64, 32), torch.randn(2, 3, 64, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 4:] = True
    with torch.no_grad():
        assert torch.equal(plain(images, targets, mask), extra(images, targets, mask))
        assert torch.equal(
            plain(images, targets, mask, query_only=True), extra(images, targets, mask, query_only=True)
        )
        for parameter in getattr(extra, module).parameters():
            torch.nn.init.normal_(parameter, std=0.3)
        full, query = extra(images, targets, mask), extra(images, targets, mask, query_only=True)
        assert not torch.equal(full, plain(images, targets, mask))
        torch.testing.assert_close(full[..., 32:, :], query)  # query-only decoding sees the same pixels


def test_a_refiner_deeper_than_query_only_decoding_has_context_for_is_refused():
    with pytest.raises(ValueError, match="refine_layers 15 must lie in"):
        config_for("tiny", refine_layers=15)


def _denoise_only_refiner(checkpoint) -> tuple[MVGModel, MVGModel]:
    """The suite's model, and the same weights plus a denoising-only refiner that is not a no-op."""
    plain = load_model(checkpoint)[0].eval()
    config = plain.config.replace(refine_layers=2, refine_tasks=("denoise",))
    refined = MVGModel(config).eval()
    refined.load_state_dict(plain.state_dict(), strict=False)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in refined.decoder_refine.parameters():
            torch.nn.init.normal_(parameter, std=0.3)
    return plain, refined


def test_a_refiner_corrects_only_the_canvases_of_its_refine_tasks(checkpoint):
    plain, refined = _denoise_only_refiner(checkpoint)
    images, targets = torch.randn(3, 3, 64, 32), torch.randn(3, 3, 64, 32)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, 4:] = True
    tasks = ["segment", "denoise", "inpaint"]
    with torch.no_grad():
        before = plain(images, targets, mask, query_only=True)
        after = refined(images, targets, mask, query_only=True, tasks=tasks)
        assert torch.equal(after[0], before[0]) and torch.equal(after[2], before[2])
        assert not torch.equal(after[1], before[1])
        with pytest.raises(ValueError, match="refines only \\['denoise'\\] canvases; pass each canvas' task"):
            refined(images, targets, mask)
        with pytest.raises(ValueError, match="tasks names 2 canvases, the batch has 3"):
            refined(images, targets, mask, tasks=tasks[:2])


def test_the_predictor_tells_the_model_its_task_so_a_denoising_refiner_leaves_other_tasks_alone(checkpoint):
    plain, refined = (Predictor(model, device="cpu") for model in _denoise_only_refiner(checkpoint))
    rng = np.random.default_rng(4)
    volume = rng.normal(0, 1, (4, 32, 32)).astype(np.float32)
    label = np.zeros((4, 32, 32), np.uint8)
    label[:, 8:20, 10:24] = 1
    prompts = [Prompt.from_volume(volume, k, label[k]) for k in (0, 3)]
    assert np.array_equal(plain.segment(volume, prompts), refined.segment(volume, prompts))
    hole = np.zeros(volume.shape, bool)
    hole[:, 12:20, 12:20] = True
    clean = [Prompt.from_volume(volume, k, volume[k]) for k in (0, 3)]
    assert np.array_equal(plain.inpaint(volume, hole, clean), refined.inpaint(volume, hole, clean))
    noisy = volume + rng.normal(0, 0.3, volume.shape).astype(np.float32)
    pairs = [Prompt.from_volume(noisy, k, volume[k]) for k in (0, 3)]
    assert not np.array_equal(
        plain.denoise(noisy, pairs, calibrate="off"), refined.denoise(noisy, pairs, calibrate="off")
    )


def test_refine_tasks_outside_the_four_tasks_are_refused():
    with pytest.raises(ValueError, match="refine_tasks \\['denoising'\\] must be a non-empty subset"):
        config_for("tiny", refine_layers=2, refine_tasks=["denoising"])


def test_copy_gates_return_the_query_image_or_the_prompt_label_exactly_and_never_read_the_query_target(
    checkpoint,
):
    config = load_model(checkpoint)[0].config.replace(copy_gates=True)
    model = MVGModel(config).eval()
    images, targets = torch.randn(1, 3, 64, 32), torch.randn(1, 3, 64, 32)
    carried = MVGModel.carried_prompt(targets)
    assert torch.equal(carried[..., 32:, :], targets[..., :32, :]) and not carried[..., :32, :].any()
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[:, 4:] = True  # the query tile hidden, as at inference
    other = targets.clone()
    other[..., 32:, :] = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.decoder_pred[-1].weight.zero_()
        model.decoder_pred[-1].bias.zero_()
        gates = model.decoder_gates
        gates.weight.zero_()
        gates.bias.copy_(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))  # copy the query image
        assert torch.equal(model(images, targets, mask, query_only=True), images[..., 32:, :])
        gates.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))  # copy the prompt's label
        query = model(images, targets, mask, query_only=True)
        assert torch.equal(query, targets[..., :32, :])
        assert torch.equal(query, model(images, other, mask, query_only=True))
