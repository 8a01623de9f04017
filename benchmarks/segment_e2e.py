"""End-to-end prompted segmentation of a volume, split into IO, preprocessing, model, postprocessing
and writing: where does a clinician's wait go?

Default: a CT-like 48 x 512 x 512 int16 volume made in memory, two labelled prompt slices (at 1/3
and 2/3 of the stack), a randomly initialised ``--preset`` model (speed does not depend on the
weights). ``--sample``: the bundled lung CT sample and two of its tumour slices, as the demo does,
with the bundled default model when it exists. Phases:

- io: reading the image and the prompt labels from NRRD files (written beforehand, untimed);
- preprocessing: everything the Predictor does besides the model and decoding (intensity range,
  tiles, prompt coloring, canvases, host/device copies);
- model: the forward passes (measured by hooks on the model; GPU work is waited for), including
  those of test-time adaptation (``--adapt-steps``), whose backward passes count as preprocessing;
- postprocessing: decoding colors to labels and resizing tiles back onto the slice grid;
- writing: the label volume to a new NRRD file.
A two-slice warm-up runs first (lazy imports, kernel set-up) and is reported apart. Without
SimpleITK (or with ``--no-io``) the volume stays in memory and io/writing are not measured.

    python -m benchmarks.segment_e2e --json benchmarks/segment_e2e_cpu.json
    python -m benchmarks.segment_e2e --sample --json benchmarks/segment_sample_cpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import environment, has_simpleitk, print_table, synchronize, write_json
from benchmarks.predict_memory import ct_like_volume
from MVGCore.config import config_for
from MVGCore.model import MVGModel
from MVGCore.predict import Predictor
from MVGCore.resample_weights import at_tile_size
from MVGCore.types import Prompt

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = REPO / "Resources" / "SampleData" / "MVGSampleLungCT.nrrd"
SAMPLE_LABEL = REPO / "Resources" / "SampleData" / "MVGSampleLungCT_label.nrrd"
DEFAULT_MODEL = REPO / "Resources" / "Models" / "mvg_tiny_default.safetensors"
PHASES = ("io", "preprocessing", "model", "postprocessing", "writing")


class PhaseClock:
    """Seconds spent in the model (forward hooks) and in the Predictor's decoding, during a run."""

    def __init__(self, predictor: Predictor) -> None:
        self.model = 0.0
        device = torch.device(predictor.device)
        started: list[float] = []

        def before(_module: Any, _inputs: Any) -> None:
            synchronize(device)
            started.append(time.perf_counter())

        def after(_module: Any, _inputs: Any, _output: Any) -> None:
            synchronize(device)
            self.model += time.perf_counter() - started.pop()

        predictor.model.register_forward_pre_hook(before)
        predictor.model.register_forward_hook(after)
        self.timings: dict[str, float] = {}
        predictor.timings = self.timings  # the Predictor adds its decoding time under "decode"

    @property
    def postprocessing(self) -> float:
        return self.timings.get("decode", 0.0)

    def reset(self) -> None:
        self.model = 0.0
        self.timings.clear()


def synthetic_case(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, tuple, list[int]]:
    """A CT-like volume, a sparse label with two labelled slices, spacing (k, j, i) and the slices."""
    volume = ct_like_volume(shape)
    picks = [shape[0] // 3, 2 * shape[0] // 3]
    sparse = np.zeros(shape, dtype=np.uint8)
    for k in picks:
        sparse[k] = volume[k] > 80  # the brighter organ
    return volume, sparse, (2.5, 0.7, 0.7), picks


def sample_case() -> tuple[np.ndarray, np.ndarray, tuple, list[int]]:
    from MVGCore.demo import prompt_slices
    from MVGCore.io import read_volume

    image, label = read_volume(SAMPLE_IMAGE), read_volume(SAMPLE_LABEL)
    picks = prompt_slices(label.array)
    sparse = np.zeros_like(label.array)
    sparse[picks] = label.array[picks]
    return image.array, sparse, image.geometry.spacing_kji, picks


def make_predictor(args: argparse.Namespace) -> tuple[Predictor, str]:
    checkpoint = args.checkpoint
    if checkpoint is None and args.sample and DEFAULT_MODEL.is_file():
        checkpoint = DEFAULT_MODEL
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint} does not exist")
        loaded = Predictor.from_checkpoint(checkpoint, device=args.device, batch_size=args.batch_size)
        # The model resampled to the tile segmentation runs at (its config's segment_tile_size),
        # so that the phase clock's hooks sit on the model whose forwards run.
        model = at_tile_size(loaded.model, loaded.task_tile_size("segment"))
        return Predictor(model, device=args.device, batch_size=args.batch_size), str(checkpoint)
    torch.manual_seed(0)
    model = MVGModel(config_for(args.preset))
    return Predictor(model, device=args.device, batch_size=args.batch_size), f"random {args.preset}"


def segment(
    predictor: Predictor, volume: np.ndarray, sparse: np.ndarray, picks, spacing, adapt_steps: int = 0
) -> np.ndarray:
    prompts = [Prompt.from_volume(volume, k, sparse[k], axis=0) for k in picks]
    return predictor.segment(volume, prompts, axis=0, modality="CT", spacing=spacing, adapt_steps=adapt_steps)


def run(args: argparse.Namespace) -> dict:
    with_io = not args.no_io and has_simpleitk()
    if args.sample and not with_io:
        raise ValueError("--sample reads the bundled NRRD files, which needs SimpleITK (and not --no-io)")
    volume, sparse, spacing, picks = sample_case() if args.sample else synthetic_case(tuple(args.shape))
    start = time.perf_counter()
    predictor, model_name = make_predictor(args)
    load_s = time.perf_counter() - start
    clock = PhaseClock(predictor)

    start = time.perf_counter()
    warm = slice(picks[0], picks[0] + 2)
    segment(predictor, volume[warm], sparse[warm], [0], spacing)
    warmup_s = time.perf_counter() - start

    runs = []
    with tempfile.TemporaryDirectory(prefix="mvg-e2e-") as scratch:
        if with_io:
            from MVGCore.io import read_volume, write_volume
            from MVGCore.types import Geometry, Volume

            geometry = Geometry(spacing=tuple(reversed(spacing)))
            files = [Path(scratch) / "image.nrrd", Path(scratch) / "prompts.nrrd"]
            for path, array in zip(files, (volume, sparse)):
                write_volume(path, Volume(array, geometry))
        for repeat in range(args.repeats):
            seconds = dict.fromkeys(PHASES, 0.0)
            if with_io:
                start = time.perf_counter()
                image, labels = (read_volume(path) for path in files)
                volume, sparse = image.array, labels.array
                seconds["io"] = time.perf_counter() - start
            clock.reset()
            start = time.perf_counter()
            result = segment(predictor, volume, sparse, picks, spacing, args.adapt_steps)
            predicted = time.perf_counter() - start
            seconds["model"] = clock.model
            seconds["postprocessing"] = clock.postprocessing
            seconds["preprocessing"] = predicted - clock.model - clock.postprocessing
            if with_io:
                start = time.perf_counter()
                write_volume(Path(scratch) / f"segmentation_{repeat}.nrrd", Volume(result, geometry))
                seconds["writing"] = time.perf_counter() - start
            total = sum(seconds.values())
            runs.append(
                {
                    "repeat": repeat,
                    **{f"{p}_s": seconds[p] for p in PHASES},
                    "total_s": total,
                    "outside_model_fraction": 1 - seconds["model"] / total,
                    "foreground_voxels": int(np.count_nonzero(result)),
                }
            )
    columns = ["repeat", *(f"{p}_s" for p in PHASES), "total_s", "outside_model_fraction"]
    title = (
        f"{'sample CT' if args.sample else 'synthetic CT'} {list(volume.shape)} (k, j, i), "
        f"{len(picks)} prompts, {model_name} on {predictor.device}, batch {predictor.batch_size}, "
        f"{args.adapt_steps} adaptation steps; "
        f"model load {load_s:.2f} s, warm-up {warmup_s:.2f} s"
    )
    print_table(runs, columns, title)
    if not with_io:
        print("io and writing not measured (no SimpleITK or --no-io): the volume stayed in memory")
    return {
        "benchmark": "segment_e2e",
        "environment": environment(torch.device(predictor.device)),
        "volume": "sample" if args.sample else "synthetic",
        "shape": list(volume.shape),
        "prompt_slices": picks,
        "model": model_name,
        "tile_size": predictor.task_tile_size("segment"),
        "batch_size": predictor.batch_size,
        "adapt_steps": args.adapt_steps,
        "io_measured": with_io,
        "load_model_s": load_s,
        "warmup_s": warmup_s,
        "runs": runs,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 512, 512), help="synthetic (k, j, i)")
    parser.add_argument("--sample", action="store_true", help="the bundled lung CT sample instead")
    parser.add_argument("--checkpoint", type=Path, help="model weights (default: bundled model for --sample)")
    parser.add_argument("--preset", default="tiny", help="preset of the random model (default tiny)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="canvases per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up")
    parser.add_argument(
        "--adapt-steps", type=int, default=0, help="test-time adaptation steps (counted in the model phase)"
    )
    parser.add_argument("--no-io", action="store_true", help="keep the volume in memory")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if min(args.shape) < 3:
        raise ValueError(f"--shape must be at least 3 voxels along each axis, got {args.shape}")
    result = run(args)
    if args.json is not None:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
