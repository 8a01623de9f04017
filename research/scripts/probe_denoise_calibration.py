"""Why denoise calibration is fitted in the window and only on given prompts: two measurements on
the bundled sample CT (``python research/scripts/probe_denoise_calibration.py [--checkpoint PATH]``).

1. Two given prompts whose clean targets are raw HU (air at -1024, far below the CT window):
   PSNR of the model's answer, of the calibrated answer and of the noisy input.
2. No given prompts (the Slicer module's Denoise, the demo): PSNR of the model's answer, of the
   default (a blend fitted on recorrupted pairs of the self-made prompt slices: slice + n ->
   slice - n) and of a blend fitted on plain self-made pairs (slice + n -> slice), whose target
   carries the input's own noise.

PSNR on the CT window's [0, 1] scale, on the slices that are not prompts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.restoration import estimate_sigma

from MVGCore.calibration import leave_one_out_blend
from MVGCore.demo import DEFAULT_MODEL, IMAGE_SLICES, NOISE_HU, SAMPLE_IMAGE
from MVGCore.intensity import intensity_range
from MVGCore.io import read_volume
from MVGCore.metrics import psnr
from MVGCore.predict import Predictor
from MVGCore.slicewise import evenly_spaced
from MVGCore.types import Prompt

GIVEN_SLICES = (5, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL, help="model weights")
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.checkpoint)
    image = read_volume(SAMPLE_IMAGE)
    volume, spacing = image.array.astype(np.float32), image.geometry.spacing_kji
    window = intensity_range(volume, "CT")
    options = {"modality": "CT", "spacing": spacing}
    noisy = volume + np.random.default_rng(0).normal(0, NOISE_HU, volume.shape).astype(np.float32)

    def score(answer: np.ndarray, truth: np.ndarray) -> float:
        return psnr(window.normalize(answer), window.normalize(truth))

    prompts = [Prompt.from_volume(noisy, k, volume[k], 0) for k in GIVEN_SLICES]
    queries = [k for k in range(volume.shape[0]) if k not in GIVEN_SLICES]
    for calibrate in ("off", "blend"):
        answer = predictor.denoise(noisy, prompts, 0, calibrate=calibrate, **options)
        quality = score(answer[queries], volume[queries])
        print(f"given raw-HU prompts, calibrate={calibrate}: {quality:.2f} dB")
    print(f"given raw-HU prompts, noisy input: {score(noisy[queries], volume[queries]):.2f} dB")

    first = volume.shape[0] // 2 - IMAGE_SLICES // 2
    chunk, noisy = volume[first : first + IMAGE_SLICES], noisy[first : first + IMAGE_SLICES]
    answer = predictor.denoise(noisy, None, 0, calibrate="off", **options)
    print(f"self-made prompts, the model's answer: {score(answer, chunk):.2f} dB")
    recorrupted = predictor.denoise(noisy, None, 0, **options)
    print(f"self-made prompts, calibrated on recorrupted pairs (default): {score(recorrupted, chunk):.2f} dB")
    print(f"self-made prompts, noisy input: {score(noisy, chunk):.2f} dB")
    rng = np.random.default_rng(0)
    for count in (2, 4):
        pairs = []
        for k in evenly_spaced(list(range(len(noisy))), count):
            target = window.normalize(noisy[k])
            sigma = max(float(estimate_sigma(target)), 0.01)
            pairs.append(Prompt(np.clip(target + rng.normal(0, sigma, target.shape), 0, 1), target))

        def denoise_one(plane: np.ndarray, others: list[Prompt]) -> np.ndarray:
            return predictor.denoise(
                plane[None], others, 0, calibrate="off", modality="CT", window=(0.0, 1.0)
            )[0]

        blend = leave_one_out_blend(denoise_one, pairs)
        blended = blend.apply(window.normalize(answer), window.normalize(noisy))
        calibrated = window.denormalize(np.clip(blended, 0.0, 1.0))
        print(
            f"self-made prompts, blend fitted on {count} plain self-made pairs "
            f"({blend.model_weight:.2f} x model + {blend.input_weight:.2f} x input): "
            f"{score(calibrated, chunk):.2f} dB"
        )


if __name__ == "__main__":
    main()
