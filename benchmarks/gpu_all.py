"""Every GPU benchmark in one process, within a time budget, into one JSON file.

Device time is scarce, so this runs the stages most important first and skips a stage (saying so)
when its estimated cost no longer fits the budget; a failing stage is recorded and the next one
runs. The JSON is rewritten after every stage, so a run cut short keeps what it measured.
Stages: the bf16 matmul peak; inference forward throughput of every preset (reference vs folded
rel-pos attention vs no rel-pos); training-step throughput with model-FLOP utilisation; end-to-end
segmentation of a 48 x 512 x 512 CT (in memory); ``torch.compile`` of the large preset; peak
memory of a 300 x 512 x 512 volume; the data loader (needs SimpleITK, absent on the GPU machine).
No stage reads files or needs SimpleITK, so it runs with torch, timm, numpy and scikit-image.

    python -m benchmarks.gpu_all --out "$OUT"            # on the GPU machine, about 6-8 minutes
    python -m benchmarks.gpu_all --smoke --out /tmp/gpu   # tiny sizes: checks the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks import model_throughput, segment_e2e
from benchmarks.common import (
    environment,
    has_simpleitk,
    matmul_peak,
    print_table,
    resolve_device,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_BATCH = {"tiny": 64, "small": 32, "base": 16, "large": 8}
"""Training batch per preset on the GPU, without activation checkpointing; halved on out-of-memory."""


class Plan:
    """Sizes of every stage: the real ones on a GPU, tiny ones for ``--smoke``."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.presets = ["tiny"] if smoke else ["tiny", "small", "base", "large"]
        self.tile = 32 if smoke else None  # None: each preset's own tile size
        self.batches = [1, 2] if smoke else [1, 8, 32]
        self.min_seconds = 0.05 if smoke else 0.5
        self.peak_size = 256 if smoke else 8192
        self.train_steps = 1 if smoke else 5
        self.e2e_shape = (6, 64, 64) if smoke else (48, 512, 512)
        self.memory_shape = (4, 32, 32) if smoke else (300, 512, 512)
        # seconds each stage is expected to take on an H200 (the budget check uses them)
        self.estimates = {
            "matmul_peak": 10,
            "model_throughput": 150,
            "train_step": 60,
            "segment_e2e": 40,
            "compile": 120,
            "predict_memory": 90,
            "loader_throughput": 40,
        }


def stage_peak(plan: Plan, device: torch.device, state: dict) -> dict:
    peak = matmul_peak(device, torch.bfloat16, plan.peak_size, plan.min_seconds)
    state["peak_tflops"] = peak["tflops"]
    print(f"bf16 matmul peak: {peak['tflops']:.3g} TFLOP/s")
    return peak


def _throughput_args(plan: Plan, device: torch.device, **changes: Any) -> SimpleNamespace:
    args = {
        "presets": plan.presets,
        "tile": plan.tile,
        "batch_sizes": plan.batches,
        "device": str(device),
        "dtype": "bf16",
        "attention": ["bias", "folded"],
        "decode": ["query"],
        "no_rel_pos": True,
        "compile": False,
        "min_seconds": plan.min_seconds,
        "peak_size": plan.peak_size,
    }
    args.update(changes)
    return SimpleNamespace(**args)


def stage_model_throughput(plan: Plan, device: torch.device, state: dict) -> dict:
    return model_throughput.run(_throughput_args(plan, device))


def stage_compile(plan: Plan, device: torch.device, state: dict) -> dict:
    """The largest preset and batch, eager and compiled, with the folded (flash-eligible) attention."""
    changes = {"presets": plan.presets[-1:], "batch_sizes": plan.batches[-1:], "attention": ["folded"]}
    changes.update(no_rel_pos=False, compile=True)
    return model_throughput.run(_throughput_args(plan, device, **changes))


def stage_train_step(plan: Plan, device: torch.device, state: dict) -> dict:
    """benchmarks/train_step.py per preset at its own tile, with model-FLOP utilisation added."""
    from benchmarks import train_step
    from MVGCore.config import config_for

    rows = []
    for preset in plan.presets:
        config = config_for(preset)
        tile = plan.tile or config.tile_size
        batch = 2 if plan.smoke else TRAIN_BATCH[preset]
        while True:
            try:
                row = train_step.measure(preset, tile, batch, plan.train_steps, 1, device)
                break
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise
                batch //= 2
                torch.cuda.empty_cache()
        flops = model_throughput.flops_per_canvas(config.replace(tile_size=tile), backward=True)
        row["train_gflop_per_sample"] = flops / 1e9
        row["tflops"] = flops * row["samples_per_s"] / 1e12
        row["mfu"] = row["tflops"] / state["peak_tflops"]
        rows.append(row)
    columns = ["preset", "tile", "batch", "step_s", "samples_per_s", "tflops", "mfu"]
    print_table(rows, columns, "training step (forward, loss, backward, AdamW), bf16 autocast")
    return {"rows": rows}


def stage_segment_e2e(plan: Plan, device: torch.device, state: dict) -> dict:
    """In memory (no SimpleITK here): a tiny model (CPU-side work dominates) and the largest preset."""
    runs = []
    for preset, batch in sorted({("tiny", 32), (plan.presets[-1], 16)}):
        shape = [str(n) for n in plan.e2e_shape]
        options = ["--preset", preset, "--batch-size", str(batch), "--device", str(device), "--no-io"]
        args = segment_e2e.build_parser().parse_args(["--shape", *shape, *options, "--repeats", "2"])
        runs.append(segment_e2e.run(args))
    return {"runs": runs}


def stage_predict_memory(plan: Plan, device: torch.device, state: dict, out: Path) -> dict:
    """benchmarks/predict_memory.py (fresh processes; the repository is put on their path)."""
    from benchmarks import predict_memory

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    path = out / "predict_memory.json"
    shape = [str(n) for n in plan.memory_shape]
    options = ["--tasks", "segment", "--device", str(device), "--json", str(path)]
    predict_memory.main(["--shape", *shape, *options])
    return {"rows": json.loads(path.read_text())}


def stage_loader(plan: Plan, device: torch.device, state: dict, out: Path) -> dict:
    if not has_simpleitk():  # the phantom store is written through MVGCore.io
        return {"skipped": "SimpleITK is not installed here; the loader is measured on the CPU machine"}
    from benchmarks import loader_throughput

    path = out / "loader_throughput.json"
    small = ["--cases", "1", "--shape", "6", "32", "32", "--size", "32", "--batches", "2"]
    sizes = small if plan.smoke else []
    workers = ["0"] if plan.smoke else ["0", "4", "8"]
    loader_throughput.main([*sizes, "--workers", *workers, "--mixes", "mixed", "--json", str(path)])
    return json.loads(path.read_text())


def run_all(plan: Plan, device: torch.device, out: Path, budget_s: float) -> dict:
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu_all",
        "smoke": plan.smoke,
        "budget_s": budget_s,
        "environment": environment(device),
        "command": " ".join(["python -m benchmarks.gpu_all", *sys.argv[1:]]),
        "stages": {},
    }
    state: dict[str, Any] = {}
    stages: list[tuple[str, Callable[[], dict]]] = [
        ("matmul_peak", lambda: stage_peak(plan, device, state)),
        ("model_throughput", lambda: stage_model_throughput(plan, device, state)),
        ("train_step", lambda: stage_train_step(plan, device, state)),
        ("segment_e2e", lambda: stage_segment_e2e(plan, device, state)),
        ("compile", lambda: stage_compile(plan, device, state)),
        ("predict_memory", lambda: stage_predict_memory(plan, device, state, out)),
        ("loader_throughput", lambda: stage_loader(plan, device, state, out)),
    ]
    path = out / "gpu_all.json"
    for name, stage in stages:
        elapsed = time.perf_counter() - started
        if plan.smoke and name == "compile":
            result["stages"][name] = {"skipped": "smoke: compiling takes about a minute on a CPU"}
            continue
        if not plan.smoke and elapsed + plan.estimates[name] > budget_s:
            result["stages"][name] = {"skipped": f"budget: {elapsed:.0f} s used of {budget_s:.0f} s"}
            continue
        print(f"\n== {name} ({elapsed:.0f} s elapsed)", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stage_start = time.perf_counter()
        try:
            record = stage()
        except Exception as error:  # one failed stage must not lose the others' results
            traceback.print_exc()
            record = {"error": f"{type(error).__name__}: {error}"}
        record["stage_s"] = round(time.perf_counter() - stage_start, 1)
        if device.type == "cuda":
            record["max_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        result["stages"][name] = record
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_json(path, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="results folder (default: $OUT, else ./gpu_results)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="time budget in seconds (default 450)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N (cpu only with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script end to end")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.smoke:
        raise ValueError("gpu_all needs a CUDA device; use --smoke to check it on a CPU")
    out = args.out or Path(os.environ.get("OUT") or "gpu_results")
    out.mkdir(parents=True, exist_ok=True)
    result = run_all(Plan(args.smoke), device, out, args.budget_s)
    failed = [name for name, record in result["stages"].items() if "error" in record]
    print(f"\ndone in {result.get('elapsed_s', 0)} s; failed stages: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
