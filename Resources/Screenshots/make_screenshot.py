"""Draw MVGSlicer_segment.png, the extension's catalog picture, from a real run of the bundled model.

The sample CT's tumour is painted on slices 8 and 12 (the prompts); the bundled model segments
the other slices. Shown: both prompts, then two predicted slices with the model's result (red)
over the reference label (yellow outline). It is a figure of the module's output, not a picture
of the Slicer window. Run from the repository root: ``python Resources/Screenshots/make_screenshot.py``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from MVGCore.io import read_volume
from MVGCore.predict import Predictor
from MVGCore.types import Prompt

ROOT = Path(__file__).resolve().parents[2]
PROMPTS, SHOWN = (8, 12), (10, 14)


def main() -> None:
    image = read_volume(ROOT / "Resources/SampleData/MVGSampleLungCT.nrrd")
    label = read_volume(ROOT / "Resources/SampleData/MVGSampleLungCT_label.nrrd")
    predictor = Predictor.from_checkpoint(
        ROOT / "Resources/Models/mvg_tiny_default.safetensors", device="cpu"
    )
    prompts = [Prompt.from_volume(image.array, k, label.array[k], axis=0) for k in PROMPTS]
    result = predictor.segment(image.array, prompts, axis=0, spacing=image.geometry.spacing_kji)
    figure, axes = plt.subplots(1, 4, figsize=(12, 3.4), dpi=100)
    window = dict(cmap="gray", vmin=-1000, vmax=400)
    for ax, k in zip(axes, (*PROMPTS, *SHOWN)):
        ax.imshow(image.array[k], **window)
        if k in PROMPTS:
            ax.imshow(np.ma.masked_equal(label.array[k], 0), cmap="autumn", alpha=0.55)
            ax.set_title(f"prompt: painted slice {k}")
        else:
            ax.imshow(np.ma.masked_equal(result[k], 0), cmap="autumn", alpha=0.55)
            ax.contour(label.array[k] > 0, levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_title(f"MVG result, slice {k}")
        ax.axis("off")
    figure.suptitle("MVG Slicer: paint two slices, the bundled model segments the rest (sample lung CT)")
    figure.tight_layout()
    figure.savefig(Path(__file__).with_name("MVGSlicer_segment.png"))


if __name__ == "__main__":
    main()
