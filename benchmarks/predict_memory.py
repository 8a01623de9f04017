"""Peak memory of ``Predictor`` on a 512 x 512 x 300 volume: does inference stream?

Each task runs in a fresh Python process (peak RSS only ever grows), after a two-slice warm-up
(lazy imports, one-time caches), on a CT-like int16 volume made slice by slice, with a randomly
initialised model (memory does not depend on the weights).
Reported per task: the input and output sizes, what one whole-volume float32 copy would cost,
the traced numpy peak beyond the output (tracemalloc; torch's own buffers are not traced) and
the growth of the process's peak RSS during the call (everything, torch included).

    python benchmarks/predict_memory.py --json benchmarks/predict_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

MB = 1024 * 1024
TASKS = ("segment", "denoise")


def ct_like_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """Air around a soft-tissue disc with a brighter organ, plus noise; built one slice at a time."""
    k, rows, cols = shape
    volume = np.empty(shape, dtype=np.int16)
    j, i = np.mgrid[:rows, :cols]
    body = (j - rows / 2) ** 2 + (i - cols / 2) ** 2 < (0.4 * rows) ** 2
    rng = np.random.default_rng(0)
    for index in range(k):
        organ = (j - rows / 2) ** 2 + (i - cols / 3) ** 2 < (0.1 * rows * (1 + index / k)) ** 2
        plane = np.where(body, 40, -1000) + np.where(organ, 60, 0) + rng.normal(0, 20, (rows, cols))
        volume[index] = plane.astype(np.int16)
    return volume


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(task: str, shape: tuple[int, int, int], preset: str, batch_size: int, device: str) -> dict:
    import torch

    from MVGCore.config import config_for
    from MVGCore.model import MVGModel
    from MVGCore.predict import Predictor
    from MVGCore.types import Prompt

    torch.manual_seed(0)
    predictor = Predictor(MVGModel(config_for(preset)), device=device, batch_size=batch_size)
    volume = ct_like_volume(shape)
    middle = shape[0] // 2
    label = (volume[middle] > 80).astype(np.uint8)
    prompts = [Prompt.from_volume(volume, middle, label)] if task == "segment" else None
    # warm-up on two slices: lazy imports and one-time caches are not what is measured
    warm = [Prompt.from_volume(volume[middle - 1 : middle + 1], 1, label)] if prompts else None
    getattr(predictor, task)(volume[middle - 1 : middle + 1], warm, 0)
    rss_before = _peak_rss_mb()
    tracemalloc.start()
    start = time.perf_counter()
    result = getattr(predictor, task)(volume, prompts, 0, spacing=(5.0, 0.7, 0.7))
    seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "task": task,
        "shape": list(shape),
        "device": predictor.device,
        "preset": preset,
        "tile_size": predictor.task_tile_size(task),
        "batch_size": batch_size,
        "seconds": round(seconds, 2),
        "input_mb": round(volume.nbytes / MB, 1),
        "output_mb": round(result.nbytes / MB, 1),
        "float32_copy_mb": round(volume.size * 4 / MB, 1),
        "traced_peak_beyond_output_mb": round((traced_peak - result.nbytes) / MB, 1),
        "peak_rss_growth_mb": round(_peak_rss_mb() - rss_before, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), help="k j i")
    parser.add_argument(
        "--preset", default="tiny", help="model preset (memory of the volume path does not depend on it)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", choices=TASKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    if args.worker:
        print(json.dumps(measure(args.worker, shape, args.preset, args.batch_size, args.device)))
        return 0
    rows = []
    for task in args.tasks:
        command = [sys.executable, __file__, "--worker", task, "--shape", *map(str, shape)]
        command += ["--preset", args.preset, "--batch-size", str(args.batch_size), "--device", args.device]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
