"""Denoise a 48 x 512 x 512 CT on this machine: seconds and peak memory, native tiles vs fitted slices.

The volume is the CT-like phantom of ``predict_memory`` (int16 HU, noise included); the bundled
default model denoises it with self-made prompts (no prompts given, as a user would start), once
with ``image_scale="native"`` (the default: 1:1 overlapping tiles) and once with ``"fit"`` (each
slice shrunk into one tile), after a one-slice warm-up; then natively with two given prompt pairs,
which the default ``calibrate="blend"`` fits its blend on (one extra denoised slice per prompt; the
pairs' "clean" halves are smoothed slices, since only the time is measured). Peak memory is the
process's maximum resident set size (``ru_maxrss``) after each run, and the traced Python/numpy
peak beyond the input and output (``tracemalloc``).

    python -m benchmarks.denoise_volume --json benchmarks/denoise_volume_cpu.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import torch
from scipy import ndimage

from benchmarks.common import environment, print_table, write_json
from benchmarks.predict_memory import ct_like_volume
from MVGCore.predict import Predictor
from MVGCore.types import Prompt

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "Resources" / "Models" / "mvg_tiny_default.safetensors"


def run(args: argparse.Namespace) -> dict:
    volume = ct_like_volume(tuple(args.shape))
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, batch_size=args.batch_size)
    predictor.denoise(volume[:1], modality="CT")  # warm-up
    picked = (volume.shape[0] // 4, 3 * volume.shape[0] // 4)
    given = [Prompt(volume[k], ndimage.gaussian_filter(volume[k].astype("float32"), 1.5), k) for k in picked]
    rows = []
    for scale, prompts in (("native", None), ("fit", None), ("native", given)):
        tracemalloc.start()
        start = time.perf_counter()
        output = predictor.denoise(volume, prompts, modality="CT", image_scale=scale)
        seconds = time.perf_counter() - start
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            {
                "image_scale": scale,
                "prompts": "self-made" if prompts is None else f"{len(prompts)} given, calibrated",
                "seconds": seconds,
                "slices_per_s": volume.shape[0] / seconds,
                "traced_peak_beyond_output_mb": (traced - output.nbytes) / 2**20,
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    print_table(rows, list(rows[0]), f"denoise {list(volume.shape)} int16 CT, {args.checkpoint.name}")
    return {
        "benchmark": "denoise_volume",
        "environment": environment(torch.device(predictor.device)),
        "shape": list(volume.shape),
        "model": str(args.checkpoint),
        "batch_size": predictor.batch_size,
        "runs": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 512, 512), help="(k, j, i)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
