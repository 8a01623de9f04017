"""Test-time adaptation: a tuned copy, never the loaded model; repeatable with a seed; cancellable."""

import numpy as np
import pytest
import torch

from MVGCore.predict import Predictor
from MVGCore.types import Cancelled, CancelToken, Prompt


def _scene():
    rng = np.random.default_rng(0)
    volume = rng.normal(0.0, 1.0, (6, 32, 32)).astype(np.float32)
    label = np.zeros(volume.shape, np.uint8)
    for k in range(6):
        label[k, 8 + k : 20 + k, 10:22] = 1
        volume[k][label[k] > 0] += 3.0
    return volume, label, [Prompt.from_volume(volume, k, label[k]) for k in (1, 4)]


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(before: dict, model) -> bool:
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _cancel_after_first_step(token: CancelToken):
    """A progress callback that cancels ``token`` once the first step is done."""

    def progress(done, total):
        if done == 1:
            token.cancel()

    return progress


def test_adaptation_tunes_a_copy_and_repeats_with_its_seed(checkpoint):
    volume, _, prompts = _scene()
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    before = _weights(predictor.model)
    plain = predictor.segment(volume, prompts)
    first = predictor.segment(volume, prompts, adapt_steps=3, seed=5)
    again = predictor.segment(volume, prompts, adapt_steps=3, seed=5)
    other = predictor.segment(volume, prompts, adapt_steps=3, seed=6)
    assert _same_weights(before, predictor.model)
    assert not predictor.model.training  # the loaded model's mode is left as it was
    assert np.array_equal(first, again)
    assert np.array_equal(predictor.segment(volume, prompts), plain)  # adaptation left nothing behind
    assert not (np.array_equal(first, plain) and np.array_equal(other, plain))  # it did train


def test_adaptation_reports_progress_and_cancels(checkpoint):
    volume, _, prompts = _scene()
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    before = _weights(predictor.model)
    seen = []
    predictor.segment(volume, prompts, adapt_steps=2, progress=lambda done, total: seen.append((done, total)))
    assert {total for _, total in seen} == {8}  # 2 steps and 6 slices in one count
    assert seen[-1] == (8, 8) and [d for d, _ in seen] == sorted(d for d, _ in seen)

    token = CancelToken()
    with pytest.raises(Cancelled):
        predictor.segment(
            volume, prompts, adapt_steps=5, progress=_cancel_after_first_step(token), cancel=token
        )
    assert _same_weights(before, predictor.model)


def test_adaptation_options_are_checked(checkpoint):
    volume, _, prompts = _scene()
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="adaptation steps must be a whole number"):
        predictor.segment(volume, prompts, adapt_steps=-1)
    with pytest.raises(ValueError, match="adaptation lr"):
        predictor.segment(volume, prompts, adapt_steps=2, adapt_lr=5.0)
    with pytest.raises(ValueError, match="applies to segment and denoise, not to inpaint"):
        predictor.inpaint(volume, np.zeros(volume.shape, bool), adapt_steps=2)
    with pytest.raises(ValueError, match="applies to segment and denoise, not to synthesize"):
        predictor.synthesize(volume, prompts, adapt_steps=2)
    with pytest.raises(ValueError, match="needs \\(noisy, clean\\) prompt pairs"):
        predictor.denoise(volume, adapt_steps=2)
    with pytest.raises(ValueError, match="native scale"):
        predictor.denoise(volume, [Prompt(volume[0], volume[0])], adapt_steps=2, image_scale="fit")


def test_cli_takes_adaptation_for_segment_and_denoise_only(checkpoint, tmp_path):
    from MVGCore.predict import main

    with pytest.raises(ValueError, match="--adapt-steps is only used by --task segment and denoise"):
        args = ["--checkpoint", str(checkpoint), "--task", "inpaint", "--adapt-steps", "3"]
        main([*args, "--input", str(tmp_path / "x.nrrd"), "--output", str(tmp_path / "y.nrrd")])
    assert not list(tmp_path.iterdir())


def _noisy_scene():
    rng = np.random.default_rng(1)
    clean = np.tile(np.linspace(0.0, 1.0, 45, dtype=np.float32), (5, 37, 1))  # odd: 2 x 2 tiles
    noisy = np.clip(clean + rng.normal(0.0, 0.1, clean.shape), 0, 1).astype(np.float32)
    return noisy, [Prompt(noisy[k], clean[k], k) for k in (1, 3)]


def test_denoising_adaptation_tunes_a_copy_repeats_and_cancels(checkpoint):
    noisy, prompts = _noisy_scene()
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    before = _weights(predictor.model)
    plain = predictor.denoise(noisy, prompts, calibrate="off")
    seen = []
    first = predictor.denoise(
        noisy, prompts, adapt_steps=3, seed=5, progress=lambda done, total: seen.append((done, total))
    )
    again = predictor.denoise(noisy, prompts, adapt_steps=3, seed=5)
    assert _same_weights(before, predictor.model)
    assert np.array_equal(first, again) and not np.allclose(first, plain)
    assert np.array_equal(predictor.denoise(noisy, prompts, calibrate="off"), plain)
    assert {total for _, total in seen} == {3 + 4 * 5}  # 3 steps, then 4 tiles of 5 slices
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (23, 23)

    token = CancelToken()
    with pytest.raises(Cancelled):
        predictor.denoise(
            noisy, prompts, adapt_steps=5, progress=_cancel_after_first_step(token), cancel=token
        )
    assert _same_weights(before, predictor.model)


def test_denoising_adaptation_trains_only_the_decoder(checkpoint):
    from MVGCore.adapt import IMAGE_MODULES, AdaptSettings, adapt

    _, prompts = _noisy_scene()
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    examples = [(p.image, p.target) for p in prompts]
    settings = AdaptSettings(2, task="denoise", modules=IMAGE_MODULES)
    tuned = adapt(predictor.model, examples, settings)
    changed = {
        name.split(".")[0]
        for name, value in tuned.state_dict().items()
        if not torch.equal(value, predictor.model.state_dict()[name])
    }
    assert changed and all(name.startswith("decoder") for name in changed)
    with pytest.raises(ValueError, match="no weights under"):
        adapt(predictor.model, examples, AdaptSettings(1, task="denoise", modules=("nothing",)))
    with pytest.raises(ValueError, match="applies to segment and denoise, not to inpaint"):
        AdaptSettings(1, task="inpaint")


def test_crop_pairs_keep_noisy_and_clean_aligned_and_pad_small_images():
    from MVGCore.adapt import crop_pairs

    rng = np.random.default_rng(0)
    clean = rng.random((50, 70)).astype(np.float32)
    small = rng.random((10, 20)).astype(np.float32)
    for seed in range(20):
        sample = crop_pairs([(clean + 1.0, clean), (small + 1.0, small)], 32, np.random.default_rng(seed))
        assert sample["task"] == "denoise" and not sample["hole"].any()
        for half in ("prompt", "query"):
            image, target = sample[f"{half}_image"], sample[f"{half}_target"]
            assert image.shape == target.shape == (32, 32)
            inside = target > 0  # padding is 0 in both, content is offset by exactly 1
            assert np.allclose(image[inside], target[inside] + 1.0) and not image[~inside].any()


def test_evaluate_compares_model_variants_by_name(checkpoint):
    from MVGCore.evaluate import build_methods

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    methods = build_methods(predictor, [], variants=[{}, {"adapt_steps": 30}, {"zoom": "whole"}])
    assert [m.name for m in methods if m.model] == ["mvg", "mvg[adapt_steps=30]", "mvg[zoom=whole]"]
    assert methods[1].options["adapt_steps"] == 30 and methods[1].model
    assert methods[1].tasks == ("segment", "denoise") and "inpaint" in methods[0].tasks
    assert methods[2].tasks == ("segment",)  # only segmentation takes zoom; the others would refuse it
    with pytest.raises(TypeError, match="unknown Predictor option"):
        build_methods(predictor, [], variants=[{"adapt": 3}])


def test_validation_on_whole_volumes_scores_like_evaluate_and_keeps_the_training_mode(checkpoint, tmp_path):
    from MVGCore.checkpoint import load_model
    from MVGCore.data.phantoms import write_nnunet_dataset
    from MVGCore.data.sources import load_cases
    from MVGCore.volume_validation import validate_volumes

    cases = load_cases(write_nnunet_dataset(tmp_path, 2, (8, 32, 32), 2, seed=0, channels=1))
    model, _ = load_model(checkpoint)
    model.train()
    result = validate_volumes(model, cases, n_prompts=2)
    assert model.training
    scores = [result[f"dice_volume/{c.case_id}"] for c in cases]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert result["dice_volume"] == pytest.approx(np.mean(scores))
