"""Training-step throughput: samples/s of one optimizer step (forward, loss, backward, AdamW) per preset.

Compare it with ``benchmarks/loader_throughput.py`` on the same tile size: the loader must deliver
more samples per second than the step consumes, or the accelerator waits for data. The canvas
column measures the per-sample batch building (coloring, masks, canvases) that also runs in the
loader workers. Small tiles keep the large presets measurable on a CPU; on a GPU use the real
tile size (``--tile 448``).

    python benchmarks/train_step.py --presets tiny small base --tile 64 --json train_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from MVGCore.config import PRESETS, config_for
from MVGCore.loss import mvg_loss
from MVGCore.masking import MaskSampler
from MVGCore.model import MVGModel, count_parameters
from MVGCore.optim import build_optimizer
from MVGCore.train.batch import collate_canvases

TASKS = ("segment", "denoise", "inpaint", "synthesize")


def random_samples(count: int, size: int, rng: np.random.Generator) -> list[dict]:
    """Sampler-shaped dicts with random content, the four tasks in turn."""
    samples = []
    for index in range(count):
        task = TASKS[index % len(TASKS)]
        if task == "segment":
            targets = [rng.integers(0, 4, (size, size)) for _ in range(2)]
        else:
            targets = [rng.random((size, size), dtype=np.float32) for _ in range(2)]
        samples.append(
            {
                "prompt_image": rng.random((size, size), dtype=np.float32),
                "query_image": rng.random((size, size), dtype=np.float32),
                "prompt_target": targets[0],
                "query_target": targets[1],
                "hole": np.zeros((size, size), bool),
                "task": task,
            }
        )
    return samples


def measure(preset: str, tile: int, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    config = config_for(preset, tile_size=tile)
    rng = np.random.default_rng(0)
    samples = random_samples(batch, tile, rng)
    masks = MaskSampler(config.grid)
    rngs = [np.random.default_rng(i) for i in range(batch)]
    cpu_batch = collate_canvases(samples, rngs, config.grid, masks)  # first call: lazy set-up
    started = time.perf_counter()
    for _ in range(steps):
        cpu_batch = collate_canvases(samples, rngs, config.grid, masks)
    canvas_s = (time.perf_counter() - started) / steps
    data = cpu_batch.to(device)

    torch.manual_seed(0)
    model = MVGModel(config).to(device).train()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.05, layer_decay=0.8)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with amp:
            pred = model(data.images, data.targets, data.mask)
        loss = mvg_loss(
            pred.float(),
            data.targets,
            data.targets01,
            data.mask,
            data.weights,
            config.grid,
            config.patch_size,
        )
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "preset": preset,
        "tile": tile,
        "grid": list(config.grid),
        "parameters": count_parameters(model),
        "batch": batch,
        "step_s": round(elapsed / steps, 4),
        "samples_per_s": round(batch * steps / elapsed, 2),
        "canvas_samples_per_s": round(batch / canvas_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"], choices=sorted(PRESETS))
    parser.add_argument("--tile", type=int, default=64, help="tile size in pixels (multiple of 16)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=Path("train_step.json"), help="results file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    rows = [measure(p, args.tile, args.batch_size, args.steps, args.warmup, device) for p in args.presets]
    print(
        f"device {device}  tile {args.tile}  batch {args.batch_size}  torch threads {torch.get_num_threads()}"
    )
    print(f"{'preset':<8}{'params':>14}{'step s':>10}{'samples/s':>12}{'canvas samples/s':>18}")
    for row in rows:
        print(
            f"{row['preset']:<8}{row['parameters']:>14,}{row['step_s']:>10.3f}"
            f"{row['samples_per_s']:>12.2f}{row['canvas_samples_per_s']:>18.1f}"
        )
    result = {
        "device": str(device),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "results": rows,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
