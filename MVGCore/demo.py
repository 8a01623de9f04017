"""``python -m MVGCore.demo``: the main job on the bundled model and the bundled real CT sample.

1. Segment the lung tumour of the sample CT from two labelled prompt slices, and report Dice on
   the slices the model had to predict (the prompt slices are copied, so they are not counted),
   beside the registration-based label propagation baseline given the same prompts.
2. Denoise real CT slices carrying added Gaussian noise, beside non-local means.
3. Inpaint a square hole in real CT slices, beside biharmonic inpainting (PSNR inside the hole).
Outputs (NRRD volumes, a PNG figure, ``results.json``) go to a new folder that the demo names.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from MVGCore import cli
from MVGCore.types import Prompt, Volume

if TYPE_CHECKING:
    from MVGCore.predict import Predictor

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "Resources" / "Models" / "mvg_tiny_default.safetensors"
SAMPLE_IMAGE = REPO / "Resources" / "SampleData" / "MVGSampleLungCT.nrrd"
SAMPLE_LABEL = REPO / "Resources" / "SampleData" / "MVGSampleLungCT_label.nrrd"
NOISE_HU = 30.0  # 0.1 of the paper's CT window, the range the model and the metrics work in
IMAGE_SLICES = 5  # the middle slices used for the image tasks
HOLE = 24  # pixels
OUTPUT_FILES = (
    "segmentation_model.nrrd",
    "segmentation_baseline.nrrd",
    "noisy.nrrd",
    "denoised_model.nrrd",
    "inpainted_model.nrrd",
    "demo.png",
    "results.json",
)
"""Every file :func:`run_demo` writes; a run of the command that does not finish removes these
(and the folders it made), so neither an empty nor a half-made result folder is left behind."""


@dataclass
class DemoResult:
    """What the demo measured; every number is computed in this run."""

    prompt_slices: list[int]
    dice_model: float
    dice_baseline: float
    psnr_noisy: float
    psnr_denoised_model: float
    psnr_denoised_baseline: float
    psnr_hole_model: float
    psnr_hole_baseline: float
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    output: str = ""


def prompt_slices(label: np.ndarray, count: int = 2) -> list[int]:
    """Labelled slices spread over the lesion (at 30% and 70% of its extent for two prompts)."""
    labelled = np.flatnonzero(label.reshape(label.shape[0], -1).any(1))
    if labelled.size < count:
        raise ValueError(f"the label marks {labelled.size} slices; {count} prompt slices are needed")
    picks = np.linspace(0.3, 0.7, count) if count > 1 else np.array([0.5])
    return sorted({int(labelled[round(p * (labelled.size - 1))]) for p in picks})


def dice_on_queries(pred: np.ndarray, truth: np.ndarray, prompts: Sequence[int]) -> float:
    """Dice of the foreground over the slices that were not prompts (1.0 when both are empty)."""
    keep = np.ones(truth.shape[0], dtype=bool)
    keep[list(prompts)] = False
    p, t = pred[keep] > 0, truth[keep] > 0
    denominator = p.sum() + t.sum()
    return 1.0 if denominator == 0 else float(2 * (p & t).sum() / denominator)


def new_output_folder(base: Path) -> Path:
    """``base`` if free, else ``base_2``, ``base_3`` ...: earlier results are never overwritten."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}_{n}")
    candidate.mkdir(parents=True)
    return candidate


def missing_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first: the folders a
    ``mkdir(parents=True)`` of ``path`` would make, so only those are ever removed again."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def remove_unfinished(out: Path, made: list[Path]) -> None:
    """Remove what an unfinished run left in ``out``: the demo's own files, then each folder of
    ``made`` (deepest first) that is empty by then. A file the demo did not write keeps its folder."""
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty: something else is in it, so it stays with its parents
            return


def run_demo(model: str | Path | Predictor, out: Path, device: str = "auto") -> DemoResult:
    """Run the three demo tasks into the existing folder ``out``.

    ``model`` is a checkpoint path or a Predictor already loaded (the CLI loads it before it
    creates the output folder, so a bad model leaves no empty folder behind).
    """
    from MVGCore.baselines import ClassicalBaseline
    from MVGCore.figures import Panel, montage
    from MVGCore.intensity import intensity_range
    from MVGCore.io import read_volume, write_volume
    from MVGCore.metrics import psnr
    from MVGCore.predict import Predictor

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    predictor = model if isinstance(model, Predictor) else Predictor.from_checkpoint(model, device=device)
    image, truth = read_volume(SAMPLE_IMAGE), read_volume(SAMPLE_LABEL)
    seconds["load"] = time.perf_counter() - start
    volume = image.array.astype(np.float32)
    spacing = image.geometry.spacing_kji
    baseline = ClassicalBaseline()

    # 1. Segmentation from two labelled slices.
    picks = prompt_slices(truth.array)
    prompts = [Prompt.from_volume(volume, k, truth.array[k], axis=0) for k in picks]
    start = time.perf_counter()
    seg_model = predictor.segment(volume, prompts, axis=0, modality="CT", spacing=spacing)
    seconds["segment_model"] = time.perf_counter() - start
    start = time.perf_counter()
    seg_baseline = baseline.segment(volume, prompts, axis=0)
    seconds["segment_baseline"] = time.perf_counter() - start

    # 2. Denoising of the middle slices; 3. inpainting of a hole in the middle slices (the model
    # makes its own prompts from the slices without a hole).
    first = volume.shape[0] // 2 - IMAGE_SLICES // 2
    middle = slice(first, first + IMAGE_SLICES)
    chunk = volume[middle]
    noisy = chunk + np.random.default_rng(0).normal(0, NOISE_HU, chunk.shape).astype(np.float32)
    start = time.perf_counter()
    den_model = predictor.denoise(noisy, axis=0, modality="CT", spacing=spacing)
    seconds["denoise_model"] = time.perf_counter() - start
    den_baseline = baseline.denoise(noisy, axis=0)
    hole = np.zeros(volume.shape, dtype=bool)
    r, c = volume.shape[1] // 2 - HOLE // 2, volume.shape[2] // 3
    hole[middle, r : r + HOLE, c : c + HOLE] = True
    holed = np.where(hole, 0.0, volume).astype(np.float32)
    start = time.perf_counter()
    inp_model = predictor.inpaint(holed, hole, axis=0, modality="CT", spacing=spacing)
    seconds["inpaint_model"] = time.perf_counter() - start
    inp_baseline = baseline.inpaint(holed, hole, axis=0)

    window = intensity_range(volume, "CT")
    clean01 = window.normalize(chunk)
    result = DemoResult(
        prompt_slices=picks,
        dice_model=dice_on_queries(seg_model, truth.array, picks),
        dice_baseline=dice_on_queries(seg_baseline, truth.array, picks),
        psnr_noisy=psnr(window.normalize(noisy), clean01),
        psnr_denoised_model=psnr(window.normalize(den_model), clean01),
        psnr_denoised_baseline=psnr(window.normalize(den_baseline), clean01),
        psnr_hole_model=psnr(window.normalize(inp_model[middle]), clean01, mask=hole[middle]),
        psnr_hole_baseline=psnr(window.normalize(inp_baseline[middle]), clean01, mask=hole[middle]),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        device=predictor.device,
        output=str(out),
    )

    geometry = image.geometry
    write_volume(out / "segmentation_model.nrrd", Volume(seg_model.astype(np.uint8), geometry))
    write_volume(out / "segmentation_baseline.nrrd", Volume(seg_baseline.astype(np.uint8), geometry))
    chunk_geometry = image.crop((first, 0, 0), (first + IMAGE_SLICES, *volume.shape[1:])).geometry
    for name, array in (("noisy", noisy), ("denoised_model", den_model)):
        write_volume(out / f"{name}.nrrd", Volume(array.astype(np.float32), chunk_geometry))
    write_volume(out / "inpainted_model.nrrd", Volume(inp_model.astype(np.float32), geometry))
    query = next(k for k in range(volume.shape[0]) if k not in picks and truth.array[k].any())
    gray = window.normalize
    centre, hole_slice = IMAGE_SLICES // 2, first + IMAGE_SLICES // 2
    montage(
        [
            [
                Panel(f"prompt k={picks[0]}", gray(volume[picks[0]]), truth.array[picks[0]]),
                Panel(f"query k={query}", gray(volume[query])),
                Panel("MVG", gray(volume[query]), seg_model[query]),
                Panel("registration", gray(volume[query]), seg_baseline[query]),
                Panel("truth", gray(volume[query]), truth.array[query]),
            ],
            [
                Panel("noisy", gray(noisy[centre])),
                Panel("MVG denoised", gray(den_model[centre])),
                Panel("NLM", gray(den_baseline[centre])),
                Panel("clean", clean01[centre]),
            ],
            [
                Panel("hole", gray(holed[hole_slice])),
                Panel("MVG inpainted", gray(inp_model[hole_slice])),
                Panel("biharmonic", gray(inp_baseline[hole_slice])),
                Panel("clean", clean01[centre]),
            ],
        ],
        out / "demo.png",
        panel_size=160,
    )
    (out / "results.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def format_result(result: DemoResult) -> str:
    rows = [
        ("segmentation Dice (non-prompt slices)", result.dice_model, result.dice_baseline, "registration"),
        (
            f"denoising PSNR dB (noisy input: {result.psnr_noisy:.2f})",
            result.psnr_denoised_model,
            result.psnr_denoised_baseline,
            "non-local means",
        ),
        (
            "inpainting PSNR dB inside the hole",
            result.psnr_hole_model,
            result.psnr_hole_baseline,
            "biharmonic",
        ),
    ]
    lines = ["| task | MVG | baseline | baseline method |", "|---|---|---|---|"]
    lines += [f"| {name} | {m:.3f} | {b:.3f} | {method} |" for name, m, b, method in rows]
    lines.append(
        f"prompt slices {result.prompt_slices}; segmentation took {result.seconds['segment_model']:.2f} s "
        f"on {result.device}; outputs in {result.output}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MVGCore.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="MVGCore checkpoint (.safetensors)")
    parser.add_argument("--out", type=Path, default=Path("mvg_demo_output"), help="output folder (a new one)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    for path in (args.model, SAMPLE_IMAGE, SAMPLE_LABEL):
        if not path.is_file():
            parser.error(f"{path} not found (run from a checkout of MVGSlicer, or pass --model)")
    from MVGCore.predict import Predictor

    predictor = Predictor.from_checkpoint(args.model, device=args.device)  # before any folder is made
    made_parents = missing_folders(args.out.parent)
    out = new_output_folder(args.out)
    try:
        result = run_demo(predictor, out)
    except BaseException:  # an error, Ctrl-C or SIGTERM (SystemExit): leave nothing half-made
        remove_unfinished(out, [out, *made_parents])
        raise
    print(format_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m MVGCore.demo"))
