import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage

from MVGCore.checkpoint import save_model
from MVGCore.config import config_for
from MVGCore.metrics import dice_per_class
from MVGCore.model import MVGModel
from MVGCore.predict import ANSWERS, Predictor
from MVGCore.types import Cancelled, CancelToken, Prompt

TILE = 32


def tiny_config():
    return config_for(
        "tiny",
        tile_size=TILE,
        depth=2,
        embed_dim=48,
        num_heads=2,
        merge_index=0,
        feature_blocks=(1,),
        decoder_dim=8,
    )


class CopyPrompt(MVGModel):
    """A stand-in model whose answer is known: the query output is the prompt's target, rolled
    ``shift`` pixels along i. It records every call and can fake GPU out-of-memory."""

    def __init__(self, shift: int = 0, fail_above: int | None = None) -> None:
        super().__init__(tiny_config())
        self.shift, self.fail_above, self.calls = shift, fail_above, []

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        self.check_inputs(images, targets, mask)
        self.calls.append((images.shape[0], ensemble_k))
        if self.fail_above is not None and images.shape[0] > self.fail_above:
            raise torch.OutOfMemoryError("fake out of memory")
        top = targets[..., : targets.shape[-2] // 2, :]
        query = torch.roll(top, self.shift, dims=-1)
        return query if query_only else torch.cat([top, query], dim=-2)


AS_GIVEN = {"align_prompts": "off", "propagate": False}
"""The stand-in models' known answers hold for prompts as they lie (not warped onto the query),
each query answered from its nearest prompt (not chained through predicted neighbours)."""


def _shape(axis: int, n: int = 8) -> tuple[int, int, int]:
    return tuple(n if a == axis else TILE for a in range(3))


def _scene(axis: int = 0, n: int = 8, seed: int = 0):
    """A volume of ``n`` slices along ``axis`` (32x32 planes, so tiles hold them 1:1) and a label
    whose slices differ: class 1 in the first half, class 2 in the second, shapes moving."""
    rng = np.random.default_rng(seed)
    shape = _shape(axis, n)
    volume = rng.normal(0.0, 50.0, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    for q in range(n):
        plane = np.zeros((TILE, TILE), dtype=np.uint8)
        plane[4 + q : 12 + q, 6:20] = 1 if q < n // 2 else 2
        index = [slice(None)] * 3
        index[axis] = q
        label[tuple(index)] = plane
    return volume, label


def _prompts(volume, label, slices, axis=0):
    return [Prompt.from_volume(volume, q, np.take(label, q, axis=axis), axis) for q in slices]


# ------------------------------------------------------------------ the pipeline, with a known model


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_segment_returns_nearest_prompt_labels_on_the_input_grid(axis):
    volume, label = _scene(axis)
    result = Predictor(CopyPrompt(), device="cpu").segment(
        volume, _prompts(volume, label, [1, 6], axis), axis, **AS_GIVEN
    )
    assert result.shape == volume.shape and result.dtype == np.uint8
    for q in range(8):
        nearest = 1 if q <= 3 else 6
        assert np.array_equal(np.take(result, q, axis=axis), np.take(label, nearest, axis=axis)), q


def test_prompt_slices_keep_the_users_labels_exactly():
    volume, label = _scene()
    label = label.astype(np.int16) * 7  # classes 7 and 14; any integer dtype is kept
    prompts = _prompts(volume, label, [0, 5])
    result = Predictor(CopyPrompt(shift=3), device="cpu").segment(volume, prompts, **AS_GIVEN)
    assert result.dtype == np.int16
    assert np.array_equal(result[0], label[0]) and np.array_equal(result[5], label[5])
    assert np.array_equal(result[2], np.roll(label[0], 3, axis=-1))  # the rest comes from the model


def test_k_prompt_average_and_feature_ensemble_and_disagreement():
    volume, label = _scene()
    prompts = _prompts(volume, label, [2, 5])
    model = CopyPrompt()
    predictor = Predictor(model, device="cpu", batch_size=4)
    labels, spread = predictor.segment(volume, prompts, k_prompts=2, return_disagreement=True, **AS_GIVEN)
    # each single-prompt answer is that prompt's label; the spread is the share disagreeing with the final
    expected = ((labels[3] != label[2]).astype(np.float32) + (labels[3] != label[5])) / 2
    assert np.array_equal(spread[3], expected) and np.all(spread[3][label[2] == label[5]] == 0)
    assert spread[3].max() > 0
    assert np.all(spread[2] == 0) and np.all(spread[5] == 0)  # prompt slices are given, not guessed
    assert set(np.unique(labels[3])) <= {0, 1, 2}
    assert all(k == 1 for _, k in model.calls) and model.calls[0][0] == 4  # 2 queries x 2 prompts

    model.calls.clear()
    predictor.segment(volume, prompts, k_prompts=2, ensemble="feature", return_disagreement=True, **AS_GIVEN)
    assert {k for _, k in model.calls} == {1, 2}  # feature pass + single-prompt pass for disagreement


def test_image_tasks_return_input_units():
    volume, _ = _scene()
    clean = volume[:, ::-1].copy()
    model_options = {"modality": "CT", "window": (-1000.0, 1000.0)}
    predictor = Predictor(CopyPrompt(), device="cpu")
    pairs = [Prompt(volume[q], clean[q], q) for q in (1, 6)]
    denoised = predictor.denoise(volume, pairs, calibrate="off", **model_options)
    assert denoised.dtype == np.float32
    assert np.allclose(denoised[2], clean[1], atol=0.05) and np.allclose(denoised[7], clean[6], atol=0.05)

    hole = np.zeros(volume.shape, dtype=bool)
    hole[:, 8:16, 8:16] = True
    filled = predictor.inpaint(volume, hole, [Prompt(volume[1], clean[1], 1)], **model_options)
    others = np.arange(8) != 1  # slice 1 is the prompt: it returns the user's target
    assert np.array_equal(filled[others][~hole[others]], volume[others][~hole[others]])  # bit for bit
    assert np.array_equal(filled[1], clean[1])
    assert np.allclose(filled[4][hole[4]], clean[1][hole[4]], atol=0.05)

    target = volume * -3.0 + 500.0  # another "modality" in other units
    synthesized = predictor.synthesize(volume, [Prompt(volume[0], target[0])], target_window=(-5000, 5000))
    assert np.allclose(synthesized[3], target[0], atol=0.5)


def test_align_prompts_warps_each_prompt_onto_its_query_slice():
    """The copying stand-in answers with the prompt label the model is shown: aligned, it follows
    a disc that moves 2 px per slice; as given, it stays where the prompt slice had it."""
    k, j, i = np.mgrid[:4, :TILE, :TILE]
    label = ((j - 16) ** 2 + (i - 10 - 2 * k) ** 2 <= 6**2).astype(np.uint8) * 3
    volume = ndimage.gaussian_filter(label.astype(np.float32) * 40 + 20, sigma=(0, 1.0, 1.0))
    prompts = _prompts(volume, label, [0])
    predictor = Predictor(CopyPrompt(), device="cpu")
    aligned = predictor.segment(volume, prompts, zoom="whole", modality="MR")
    as_given = predictor.segment(volume, prompts, zoom="whole", modality="MR", **AS_GIVEN)
    assert np.array_equal(aligned[0], label[0]) and np.array_equal(as_given[3], label[0])
    assert dice_per_class(aligned[1:], label[1:])[3] > 0.9
    assert dice_per_class(as_given[1:], label[1:])[3] < 0.7
    with pytest.raises(ValueError, match="option align_prompts must be one of"):
        predictor.segment(volume, prompts, align_prompts="rigid")


def test_ct_window_sets_the_ct_range_and_leaves_other_modalities_alone():
    """Lung at -850 HU lies below the paper window ([-100, 200]), so a model copying a lung-valued
    clean prompt returns its floor; in the wide window ([-1000, 400]) it returns the lung value."""
    volume, _ = _scene()
    lung = np.full_like(volume[1], -850.0)
    pairs = [Prompt(volume[q], lung, q) for q in (1, 6)]
    predictor = Predictor(CopyPrompt(), device="cpu")

    def denoised(**options):
        return predictor.denoise(volume, pairs, calibrate="off", **options)[3]

    assert np.allclose(denoised(modality="CT"), -100.0, atol=1.0)  # denoising's default is the paper's
    assert np.allclose(denoised(modality="CT", ct_window="wide"), -850.0, atol=2.0)
    assert np.allclose(denoised(modality="CT", ct_window=(-900, 0)), -850.0, atol=2.0)
    assert np.allclose(denoised(modality="CT", ct_window="wide", window="paper"), -100.0, atol=1.0)
    assert np.array_equal(denoised(modality="MR", ct_window="wide"), denoised(modality="MR"))
    with pytest.raises(ValueError, match="option ct_window: unknown CT window 'lungs'"):
        denoised(modality="CT", ct_window="lungs")
    with pytest.raises(ValueError, match=r"option ct_window: window \(400, -1000\) is inverted"):
        denoised(ct_window=(400, -1000))


class MirrorPrompt(CopyPrompt):
    """Answers with the prompt's target canvas mirrored left to right: the right extent for a
    mirror-symmetric scene, with every class on the wrong side."""

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        top = torch.flip(targets[..., : targets.shape[-2] // 2, :], dims=[-1])
        return top if query_only else torch.cat([top, top], dim=-2)


def test_trimmed_answer_takes_classes_from_the_aligned_prompt_and_extent_from_the_model():
    """Two discs, class 3 left and 7 right, mirror images of each other, moving 1 px per slice.
    The mirroring stand-in finds where foreground is but swaps the classes; the default answer
    ("trim") keeps its extent with the aligned prompt's classes, "model" keeps its swap, and
    without alignment the answer is the model's either way."""
    k, j, i = np.mgrid[:4, :TILE, :TILE]
    label = np.zeros((4, TILE, TILE), np.uint8)
    label[(j - 12 - k) ** 2 + (i - 9) ** 2 <= 25] = 3
    label[(j - 12 - k) ** 2 + (i - 22) ** 2 <= 25] = 7
    volume = ndimage.gaussian_filter(label.astype(np.float32) * 20 + 20, sigma=(0, 1.0, 1.0))
    prompts = _prompts(volume, label, [0])
    predictor = Predictor(MirrorPrompt(), device="cpu")
    aligned = dict(zoom="whole", modality="MR", propagate=False)  # each slice from the prompt
    trimmed = predictor.segment(volume, prompts, **aligned)
    own = predictor.segment(volume, prompts, answer="model", **aligned)
    assert min(dice_per_class(trimmed[1:], label[1:]).values()) > 0.85
    assert max(dice_per_class(own[1:], label[1:]).values()) < 0.1  # classes on the wrong side
    extent = [(answer[1:] > 0).astype(np.uint8) for answer in (own, trimmed)]
    assert dice_per_class(*extent)[1] > 0.9  # the model's extent either way
    as_given = [
        predictor.segment(volume, prompts, zoom="whole", modality="MR", answer=a, **AS_GIVEN) for a in ANSWERS
    ]
    assert np.array_equal(*as_given)
    with pytest.raises(ValueError, match="option answer must be one of"):
        predictor.segment(volume, prompts, answer="registered")


class SeenImages(CopyPrompt):
    """CopyPrompt that keeps the image canvases it is shown."""

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        self.seen.append(images.clone())
        return super().forward(images, targets, mask, ensemble_k, query_only, tasks)


def test_unset_ct_window_is_wide_to_segment_and_paper_for_image_tasks():
    volume, label = _scene()
    volume = volume - 600.0  # spans lung and soft tissue in HU, which the two windows show differently
    model = SeenImages()
    predictor = Predictor(model, device="cpu")

    def canvases(task, **options):
        model.seen = []
        if task == "segment":
            predictor.segment(volume, _prompts(volume, label, [2]), modality="CT", **AS_GIVEN, **options)
        else:
            predictor.denoise(
                volume, [Prompt(volume[2], volume[2], 2)], modality="CT", calibrate="off", **options
            )
        return torch.cat(model.seen)

    assert torch.equal(canvases("segment"), canvases("segment", ct_window="wide"))
    assert not torch.equal(canvases("segment"), canvases("segment", ct_window="paper"))
    assert torch.equal(canvases("denoise"), canvases("denoise", ct_window="paper"))
    assert not torch.equal(canvases("denoise"), canvases("denoise", ct_window="wide"))


def test_self_made_prompts_for_denoise_and_inpaint():
    volume, _ = _scene(n=6)
    model = CopyPrompt()
    predictor = Predictor(model, device="cpu")
    # calibrate="off": this tests which self-made prompt answers which slice, not the blend
    denoised = predictor.denoise(volume, modality="CT", window=(-1000.0, 1000.0), calibrate="off")
    # the self-made prompt's target is a clean slice of the volume itself: with the copying model
    # every slice becomes one of the prompt slices (all slices are denoised, none is kept)
    # self-made prompts sit at slices 1..4, so slice 0 is answered from slice 1's prompt
    assert np.allclose(denoised[0], volume[1], atol=0.05) and np.allclose(denoised[5], volume[4], atol=0.05)
    hole = np.zeros(volume.shape, dtype=bool)
    hole[4:, 10:20, 10:20] = True
    filled = predictor.inpaint(volume, hole, modality="CT", window=(-1000.0, 1000.0))
    assert np.array_equal(filled[:4], volume[:4])  # slices without hole are copied
    donors = [volume[q][10:20, 10:20] for q in range(4)]
    assert any(np.allclose(filled[5][10:20, 10:20], d, atol=0.05) for d in donors)
    with pytest.raises(ValueError, match="without hole"):
        predictor.inpaint(volume, np.ones(volume.shape, dtype=bool))


def test_self_made_inpainting_prompts_are_the_hole_free_slices_nearest_the_holes():
    volume, _ = _scene(n=12)
    hole = np.zeros(volume.shape, dtype=bool)
    hole[6:8, 10:20, 10:20] = True
    predictor = Predictor(CopyPrompt(), device="cpu")
    filled = predictor.inpaint(volume, hole, modality="CT", window=(-1000.0, 1000.0), auto_prompts=2)
    # prompts at slices 5 and 8 (evenly spaced ones would sit at 0 and 11); the copying model
    # fills each holed slice from its nearest prompt
    box = (slice(10, 20), slice(10, 20))
    assert np.allclose(filled[6][box], volume[5][box], atol=0.05)
    assert np.allclose(filled[7][box], volume[8][box], atol=0.05)


class CopyLeadPrompt(CopyPrompt):
    """CopyPrompt answering every canvas of an ensemble group from the group's first prompt (with
    ``ensemble="feature"``, the group's answer is then its first prompt's, rolled)."""

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        answers = super().forward(images, targets, mask, ensemble_k, query_only, tasks)
        return answers[::ensemble_k].repeat_interleave(ensemble_k, dim=0)


def test_propagation_chains_each_slice_from_its_neighbour():
    volume, label = _scene()
    predictor = Predictor(CopyLeadPrompt(shift=1), device="cpu")
    direct = predictor.segment(volume, _prompts(volume, label, [2]), **AS_GIVEN)
    lead = dict(align_prompts="off", ensemble="feature")  # the neighbour leads the prompts shown
    chained = predictor.segment(volume, _prompts(volume, label, [2]), propagate=True, **lead)
    assert predictor.model.calls[-1] == (2, 2)  # the neighbour besides the k_prompts=1 prompt
    for q in range(8):
        assert np.array_equal(direct[q], label[2] if q == 2 else np.roll(label[2], 1, -1))
        assert np.array_equal(chained[q], np.roll(label[2], abs(q - 2), -1)), q
    with pytest.raises(ValueError, match="propagate needs"):
        predictor.segment(volume, [Prompt(volume[2], label[2])], propagate=True)
    with pytest.raises(ValueError, match="option propagate must be true, false or None, got 'yes'"):
        predictor.segment(volume, _prompts(volume, label, [2]), propagate="yes")
    by_default = predictor.segment(volume, _prompts(volume, label, [2]), **lead)
    assert np.array_equal(by_default, chained)  # segmentation propagates from prompt slices ...
    unindexed = [Prompt(volume[2], label[2])]
    assert np.array_equal(  # ... and answers prompts from elsewhere directly
        predictor.segment(volume, unindexed, align_prompts="off"),
        predictor.segment(volume, unindexed, **AS_GIVEN),
    )


class CopyWhereBright(CopyPrompt):
    """A stand-in that copies the prompt's target only where the query image is bright (a
    structure is visible) and answers background elsewhere."""

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        self.check_inputs(images, targets, mask)
        self.calls.append((images.shape[0], ensemble_k))
        half = targets.shape[-2] // 2
        top, query_image = targets[..., :half, :], images[..., half:, :]
        background = top[..., :1, :1]  # the label planes leave the corner pixel background
        query = torch.where(query_image.mean(1, keepdim=True) > 0, top, background)
        return query if query_only else torch.cat([top, query], dim=-2)


@pytest.mark.parametrize("k_prompts", [1, 2])
def test_propagation_keeps_a_structure_that_ended_ended(k_prompts):
    """A connected structure spans one run of slices: once the propagated answer loses it, it
    stays lost further out, even where the image would let the model find it again."""
    label = np.zeros((8, TILE, TILE), dtype=np.uint8)
    label[:, 8:24, 4:14], label[:, 8:24, 18:28] = 1, 2
    volume = np.full(label.shape, 500.0, dtype=np.float32)
    volume[5, :, 16:] = -500.0  # on slice 5 class 2's side is dark: it ends there
    volume[1, :, :] = -500.0  # slice 1 is dark everywhere: both end below the prompt
    prompts = _prompts(volume, label, [2, 3])
    predictor = Predictor(CopyWhereBright(), device="cpu")
    options = dict(modality="CT", window=(-1000.0, 1000.0), k_prompts=k_prompts, align_prompts="off")
    direct = predictor.segment(volume, prompts, propagate=False, **options)
    chained = predictor.segment(volume, prompts, propagate=True, **options)
    assert set(np.unique(direct[0])) == {0, 1, 2}  # a model on its own finds both again
    assert not chained[:2].any()
    assert set(np.unique(chained[4])) == {0, 1, 2} and set(np.unique(chained[5])) == {0, 1}
    assert all(set(np.unique(chained[q])) == {0, 1} for q in (6, 7))  # class 2 ended at slice 5
    assert np.array_equal(chained[3], label[3])


def test_cancel_stops_within_one_batch_and_progress_reaches_total_once():
    volume, label = _scene(n=12)
    model = CopyPrompt()
    predictor = Predictor(model, device="cpu", batch_size=3)
    calls = []
    predictor.segment(volume, _prompts(volume, label, [0]), progress=lambda d, t: calls.append((d, t)))
    assert [c for c in calls if c[0] == c[1]] == [(12, 12)] and calls[0] == (1, 12)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    token, model.calls = CancelToken(), []

    def cancel_after_first_batch(done, total):
        if done > 1:
            token.cancel()

    with pytest.raises(Cancelled):
        predictor.segment(
            volume, _prompts(volume, label, [0]), progress=cancel_after_first_batch, cancel=token
        )
    assert len(model.calls) == 1


def test_out_of_memory_retries_with_smaller_batches():
    volume, label = _scene()
    reference = Predictor(CopyPrompt(), device="cpu", batch_size=8).segment(
        volume, _prompts(volume, label, [3]), **AS_GIVEN
    )
    model = CopyPrompt(fail_above=2)
    predictor = Predictor(model, device="cpu", batch_size=8)
    result = predictor.segment(volume, _prompts(volume, label, [3]), **AS_GIVEN)
    assert np.array_equal(result, reference) and predictor.batch_size == 2
    assert max(b for b, _ in model.calls) == 7 and model.calls[-1][0] <= 2
    with pytest.raises(torch.OutOfMemoryError):
        Predictor(CopyPrompt(fail_above=0), device="cpu").segment(volume, _prompts(volume, label, [3]))


# ------------------------------------------------------------------ a real (random) model


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return MVGModel(tiny_config())


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_random_model_anisotropic_grid_and_classes(random_model, axis):
    rng = np.random.default_rng(axis)
    shape = (5, 23, 37)
    volume = rng.integers(-1000, 1000, shape).astype(np.int16)
    label = (rng.random(shape) > 0.7).astype(np.uint8) * 3
    prompt = Prompt.from_volume(volume, 2, np.take(label, 2, axis=axis), axis)
    result = Predictor(random_model, device="cpu").segment(volume, [prompt], axis, spacing=(5.0, 0.7, 1.3))
    assert result.shape == shape and set(np.unique(result)) <= {0, 3}
    assert np.array_equal(np.take(result, 2, axis=axis), np.take(label, 2, axis=axis))


def test_2d_image_as_one_slice_volume(random_model):
    rng = np.random.default_rng(1)
    image = rng.random((1, 40, 30)).astype(np.float32)
    other = rng.random((50, 50)).astype(np.float32)
    label = np.zeros((50, 50), dtype=np.uint8)
    label[10:30, 10:30] = 1
    result = Predictor(random_model, device="cpu").segment(image, [Prompt(other, label)])
    assert result.shape == (1, 40, 30) and set(np.unique(result)) <= {0, 1}
    assert Predictor(random_model, device="cpu").denoise(image).shape == image.shape


def test_checkpoint_round_trip_and_pickle_refusal(random_model, tmp_path):
    path = save_model(tmp_path / "m.safetensors", random_model)
    volume, label = _scene(n=3)
    prompts = _prompts(volume, label, [1])
    loaded = Predictor.from_checkpoint(path, device="cpu", batch_size=2)
    assert loaded.device == "cpu" and loaded.batch_size == 2
    expected = Predictor(random_model, device="cpu").segment(volume, prompts)
    assert np.array_equal(loaded.segment(volume, prompts), expected)

    pickled = tmp_path / "m.pt"
    torch.save(random_model.state_dict(), pickled)
    with pytest.raises(ValueError, match="refusing to load pickle"):
        Predictor.from_checkpoint(pickled)
    trusted = Predictor.from_checkpoint(pickled, device="cpu", allow_pickle=True, config=tiny_config())
    assert np.array_equal(trusted.segment(volume, prompts), expected)
    with pytest.raises(FileNotFoundError):
        Predictor.from_checkpoint(tmp_path / "missing.safetensors")


def _traced_excess(predictor, slices: int) -> tuple[int, int]:
    """Peak traced numpy memory of a segmentation beyond its output, and one float32 volume's size."""
    volume = np.random.default_rng(0).integers(-1000, 1000, (slices, 160, 160)).astype(np.int16)
    label = np.zeros((160, 160), dtype=np.uint8)
    label[40:90, 50:100] = 1
    tracemalloc.start()
    try:
        result = predictor.segment(volume, [Prompt.from_volume(volume, 10, label)], modality="CT")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - result.nbytes, volume.size * 4


def test_memory_is_bounded_by_streaming(random_model):
    """Beyond the output, memory is a few batches of slices: it does not grow with the volume and
    stays far below one whole-volume float copy."""
    predictor = Predictor(random_model, device="cpu", batch_size=8)
    small, _ = _traced_excess(predictor, 24)
    large, float_copy = _traced_excess(predictor, 96)
    assert large < float_copy / 8, (large, float_copy)
    assert large < small + 100_000, (small, large)


# ------------------------------------------------------------------ bad input


def test_bad_input_gives_clear_errors(random_model):
    predictor = Predictor(random_model, device="cpu")
    volume, label = _scene(n=4)
    good = _prompts(volume, label, [1])
    with pytest.raises(ValueError, match="out of range: the volume has 4 slices along axis 0"):
        predictor.segment(volume, [Prompt(volume[1], label[1], 9)])
    with pytest.raises(ValueError, match=r"must have shape \(4, 32\).*wrong axis"):
        predictor.segment(volume, good, axis=1)
    with pytest.raises(ValueError, match="at least one prompt"):
        predictor.segment(volume, [])
    with pytest.raises(ValueError, match="every segmentation prompt label is empty"):
        predictor.segment(volume, [Prompt(volume[1], np.zeros_like(label[1]), 1)])
    with pytest.raises(ValueError, match="expected integer labels"):
        predictor.segment(volume, [Prompt(volume[1], label[1].astype(np.float32), 1)])
    nan_volume = volume.copy()
    nan_volume[2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"image slice 2.*NaN"):
        predictor.segment(nan_volume, good)
    inf_prompt = volume[0].copy()
    inf_prompt[0, 0] = np.inf
    with pytest.raises(ValueError, match="prompt 0 image contains NaN or infinite"):
        predictor.segment(volume, [Prompt(inf_prompt, label[0])])
    with pytest.raises(ValueError, match=r"must be a 3D .* got 4D"):
        predictor.segment(volume[None], good)
    with pytest.raises(ValueError, match="hole_mask shape"):
        predictor.inpaint(volume, np.zeros((4, 32, 31), dtype=bool))
    with pytest.raises(TypeError, match="unknown Predictor option"):
        predictor.segment(volume, good, k_prompt=2)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        predictor.segment(volume, good, ensemble="median")
    with pytest.raises(ValueError, match="device must be"):
        Predictor(random_model, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Predictor(random_model, device="cuda")
