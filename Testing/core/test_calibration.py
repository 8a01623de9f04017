"""Denoising calibrated on the prompts: the fitted blend of the model's answer and the noisy input."""

import numpy as np
import pytest
import torch
from test_predict import CopyPrompt

from MVGCore.calibration import MIN_HALF, calibration_pairs, fit_blend, leave_one_out_blend
from MVGCore.intensity import IntensityRange
from MVGCore.predict import Predictor
from MVGCore.types import Prompt

WINDOW = {"modality": "CT", "window": (-1000.0, 1000.0)}


def test_fit_blend_recovers_known_weights():
    rng = np.random.default_rng(0)
    outs = [rng.normal(size=(16, 16)) for _ in range(2)]
    inputs = [rng.normal(size=(16, 16)) for _ in range(2)]
    truths = [0.7 * o + 0.2 * i + 3.0 for o, i in zip(outs, inputs)]
    blend = fit_blend(outs, inputs, truths)
    assert blend.model_weight == pytest.approx(0.7) and blend.input_weight == pytest.approx(0.2)
    assert blend.offset == pytest.approx(3.0)
    assert np.allclose(blend.apply(outs[0], inputs[0]), truths[0], atol=1e-5)


def test_fit_blend_ignores_a_useless_model():
    rng = np.random.default_rng(1)
    truths = [rng.normal(size=(32, 32)) for _ in range(2)]
    inputs = [t + rng.normal(0, 0.1, t.shape) for t in truths]
    outs = [rng.normal(size=t.shape) for t in truths]  # unrelated to the truth
    blend = fit_blend(outs, inputs, truths)
    assert abs(blend.model_weight) < 0.05 and blend.input_weight == pytest.approx(1.0, abs=0.05)


def test_fit_blend_refuses_mismatched_pairs():
    with pytest.raises(ValueError, match="differ in shape"):
        fit_blend([np.zeros((2, 2))], [np.zeros((2, 3))], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="at least one pair"):
        fit_blend([], [], [])


def test_leave_one_out_never_shows_a_prompt_its_own_target():
    rng = np.random.default_rng(2)
    prompts = [Prompt(rng.normal(size=(8, 8)), rng.normal(size=(8, 8)), index) for index in (0, 3, 5)]
    seen = []

    def denoise_one(image, others):
        seen.append((image, others))
        return others[0].target

    leave_one_out_blend(denoise_one, prompts)
    assert len(seen) == 3
    for prompt, (image, others) in zip(prompts, seen):
        assert image is prompt.image and len(others) == 2
        assert all(o.target is not prompt.target and o.index is None for o in others)
    with pytest.raises(ValueError, match="at least two pairs"):
        leave_one_out_blend(denoise_one, prompts[:1])


def test_one_prompt_is_cut_in_halves_along_its_longer_side():
    image, target = np.arange(40 * 33).reshape(40, 33), -np.arange(40 * 33).reshape(40, 33)
    first, second = calibration_pairs([Prompt(image, target, 3)])
    assert np.array_equal(np.concatenate([first.image, second.image]), image)
    assert np.array_equal(np.concatenate([first.target, second.target]), target)
    assert first.index is None and second.index is None
    small = np.zeros((2 * MIN_HALF - 1, 10))
    assert calibration_pairs([Prompt(small, small)]) is None
    assert calibration_pairs([]) is None


def _noisy_scene(seed: int = 0):
    """A smooth volume that changes from slice to slice, and its noisy copy."""
    rng = np.random.default_rng(seed)
    j, i = np.mgrid[:32, :32]
    clean = np.stack([300 * np.sin(j / 5 + k / 3) + 200 * np.cos(i / 7 - k / 4) for k in range(8)])
    noisy = clean + rng.normal(0, 60, clean.shape)
    return clean.astype(np.float32), noisy.astype(np.float32)


def test_blend_beats_both_the_model_and_the_input():
    clean, noisy = _noisy_scene()
    prompts = [Prompt(noisy[q], clean[q], q) for q in (1, 4, 6)]
    predictor = Predictor(CopyPrompt(), device="cpu")
    raw = predictor.denoise(noisy, prompts, calibrate="off", **WINDOW)
    blended = predictor.denoise(noisy, prompts, **WINDOW)
    queries = [q for q in range(8) if q not in (1, 4, 6)]

    def mse(volume):
        return float(np.mean((volume[queries] - clean[queries]) ** 2))

    assert mse(blended) < mse(noisy) and mse(blended) < mse(raw)
    for q in (1, 4, 6):  # the prompt slices keep the user's clean targets
        assert np.array_equal(blended[q], clean[q])


def test_blend_is_fitted_in_the_window_the_model_answers_in():
    """Raw targets far outside the window (air at -1000 HU under a soft-tissue window) must not
    pull the fit towards the input: the model's answer is clipped there, the blend too."""
    clean, noisy = _noisy_scene()
    clean[:, :, :12], noisy[:, :, :12] = -1000.0, -1000.0 + (noisy[:, :, :12] - clean[:, :, :12])
    window = IntensityRange(-300.0, 700.0)
    options = {"modality": "CT", "window": (window.low, window.high)}
    prompts = [Prompt(noisy[q], clean[q], q) for q in (1, 4, 6)]
    predictor = Predictor(CopyPrompt(), device="cpu")
    raw = predictor.denoise(noisy, prompts, calibrate="off", **options)
    blended = predictor.denoise(noisy, prompts, **options)
    queries = [q for q in range(8) if q not in (1, 4, 6)]

    def mse(volume):  # in the window's [0, 1] units, where the model and the metrics work
        return float(np.mean((window.normalize(volume[queries]) - window.normalize(clean[queries])) ** 2))

    assert mse(blended) < 0.95 * mse(noisy) and mse(blended) < mse(raw)
    assert blended[queries].min() >= window.low and blended[queries].max() <= window.high


class Flat(CopyPrompt):
    """Answers a flat grey whatever it is shown: a useless denoiser."""

    def forward(self, images, targets, mask, ensemble_k=1, query_only=False, tasks=None):
        return torch.zeros_like(super().forward(images, targets, mask, ensemble_k, query_only))


def test_without_prompts_the_blend_is_fitted_on_recorrupted_self_made_pairs():
    clean, noisy = _noisy_scene()
    predictor = Predictor(Flat(), device="cpu")
    raw = predictor.denoise(noisy, calibrate="off", **WINDOW)
    blended = predictor.denoise(noisy, **WINDOW)

    def mse(volume):
        return float(np.mean((volume - clean) ** 2))

    # the flat answer is useless: the fit must fall back on the input, not on the grey
    assert mse(blended) < 0.2 * mse(raw)
    assert mse(blended) < 1.1 * mse(noisy)
    again = predictor.denoise(noisy, **WINDOW)
    assert np.array_equal(blended, again)  # the recorrupting noise comes from the seed
    other = predictor.denoise(noisy, seed=1, **WINDOW)
    assert not np.array_equal(blended, other)


def test_one_prompt_is_calibrated_on_its_halves():
    clean, noisy = _noisy_scene(1)
    predictor = Predictor(CopyPrompt(), device="cpu")
    prompts = [Prompt(noisy[2], clean[2], 2)]
    raw = predictor.denoise(noisy, prompts, calibrate="off", **WINDOW)
    blended = predictor.denoise(noisy, prompts, **WINDOW)
    queries = [q for q in range(8) if q != 2]
    assert np.mean((blended[queries] - clean[queries]) ** 2) < np.mean((noisy[queries] - clean[queries]) ** 2)
    assert not np.array_equal(blended, raw) and np.array_equal(blended[2], clean[2])


def test_unknown_calibration_is_refused():
    clean, noisy = _noisy_scene()
    with pytest.raises(ValueError, match="option calibrate must be one of"):
        Predictor(CopyPrompt(), device="cpu").denoise(noisy, [Prompt(noisy[0], clean[0], 0)], calibrate="x")
