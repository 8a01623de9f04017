"""Model forward throughput and latency per preset, batch size and fast path, against the matmul peak.

For each preset and batch size the inference forward pass (AR mask: the query half hidden) is
timed in the device's own precision (fp32 on CPU, bf16 autocast on GPU) for each variant:
``attention`` "bias" (the relative position bias as SDPA mask, the reference) or "folded" (the
same bias folded into extra channels, no mask: flash-eligible), ``decode`` "full" (the whole
canvas) or "query" (only the query tile, what inference reads), optionally the model without
relative position bias ("none", a different model: the cost of the bias) and ``torch.compile``.
FLOPs per canvas are counted with ``torch.utils.flop_counter`` on the meta device (the math of the
reference attention) and compared with the dense matmul peak measured in the same run.

    python -m benchmarks.model_throughput --json benchmarks/model_throughput_cpu.json
    python -m benchmarks.model_throughput --presets tiny small base large --batch-sizes 1 8 32
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    dtype_name,
    environment,
    matmul_peak,
    median,
    print_table,
    resolve_device,
    resolve_dtype,
    time_calls,
    write_json,
)
from MVGCore.config import MVGConfig, config_for
from MVGCore.masking import ar_mask
from MVGCore.model import MVGModel

COLUMNS = (
    "preset",
    "tile",
    "batch",
    "attention",
    "decode",
    "compiled",
    "first_call_s",
    "gflop_per_canvas",
    "latency_ms",
    "canvases_per_s",
    "tflops",
    "peak_fraction",
)


def inputs(config: MVGConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random canvases and the inference mask (query half of the target hidden)."""
    side = config.tile_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 2 * side, side, generator=generator).to(device)
    targets = torch.randn(batch, 3, 2 * side, side, generator=generator).to(device)
    mask = torch.from_numpy(ar_mask(config.grid)).expand(batch, -1).to(device)
    return images, targets, mask


@functools.cache
def flops_per_canvas(config: MVGConfig, query_only: bool = False, backward: bool = False) -> int:
    """FLOPs of one canvas' forward pass (plus the backward pass of training with ``backward``),
    counted on meta tensors: no compute, so even the large preset is counted in a moment."""
    with torch.device("meta"):
        model = MVGModel(config).train(backward)
        images, targets, mask = inputs(config, 1, torch.device("meta"))
    counter = FlopCounterMode(display=False)
    with torch.set_grad_enabled(backward), counter:
        out = model(images, targets, mask, query_only=query_only)
        if backward:
            out.square().mean().backward()
    return counter.get_total_flops()


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def measure(
    config: MVGConfig,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    attention: str,
    query_only: bool,
    compiled: bool,
    min_seconds: float,
    peak_tflops: float,
) -> dict:
    """One row: median latency of a batch, throughput and the fraction of the matmul peak."""
    torch.manual_seed(0)
    with device:  # initialised where it runs: the large preset initialises slowly on a CPU
        model = MVGModel(config).eval()
    if attention != "none":
        model.set_attention(attention)
    images, targets, mask = inputs(config, batch, device)
    run = torch.compile(model) if compiled else model

    def forward() -> torch.Tensor:
        with torch.inference_mode(), autocast(device, dtype):
            return run(images, targets, mask, query_only=query_only)

    start = time.perf_counter()
    forward()  # the first call pays for lazy initialisation and, when compiled, for compilation
    first = time.perf_counter() - start
    latency = median(time_calls(forward, device, min_seconds, warmup=1))
    flops = flops_per_canvas(config, query_only)
    tflops = flops * batch / latency / 1e12
    return {
        "preset": config.preset,
        "tile": config.tile_size,
        "batch": batch,
        "dtype": dtype_name(dtype),
        "attention": attention,
        "decode": "query" if query_only else "full",
        "compiled": compiled,
        "first_call_s": round(first, 3),
        "gflop_per_canvas": flops / 1e9,
        "latency_ms": latency * 1e3,
        "canvases_per_s": batch / latency,
        "tflops": tflops,
        "peak_fraction": tflops / peak_tflops,
    }


def variants(args: argparse.Namespace) -> list[tuple[str, bool, bool]]:
    """(attention, query_only, compiled) combinations to measure."""
    chosen = [(a, d == "query", False) for a in args.attention for d in args.decode]
    if args.no_rel_pos:
        chosen.append(("none", True, False))
    if args.compile:
        chosen.append((args.attention[0], True, True))
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", help="default: tiny on CPU, all four on GPU")
    parser.add_argument("--tile", type=int, help="override every preset's tile size")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 8 on CPU, 1 8 32 on GPU")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 CPU, bf16 GPU), fp32, bf16")
    parser.add_argument("--attention", nargs="+", default=["bias", "folded"], choices=["bias", "folded"])
    parser.add_argument("--decode", nargs="+", default=["full", "query"], choices=["full", "query"])
    parser.add_argument("--no-rel-pos", action="store_true", help="also time a model without rel-pos bias")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (query decode)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per row (default 2)")
    parser.add_argument("--peak-size", type=int, help="matmul size of the peak (default 2048 CPU, 8192 GPU)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    gpu = device.type == "cuda"
    presets = args.presets or (["tiny", "small", "base", "large"] if gpu else ["tiny"])
    batches = args.batch_sizes or ([1, 8, 32] if gpu else [1, 8])
    for batch in batches:
        if batch < 1:
            raise ValueError(f"--batch-sizes must be positive, got {batch}")
    peak = matmul_peak(device, dtype, args.peak_size or (8192 if gpu else 2048), args.min_seconds)
    rows = []
    for preset in presets:
        config = config_for(preset, drop_path_rate=0.0)
        if args.tile:
            config = config.replace(tile_size=args.tile)
        for attention, query_only, compiled in variants(args):
            variant = config.replace(use_rel_pos=False) if attention == "none" else config
            for batch in batches:
                row = measure(
                    variant,
                    batch,
                    device,
                    dtype,
                    attention,
                    query_only,
                    compiled,
                    args.min_seconds,
                    peak["tflops"],
                )
                rows.append(row)
    title = f"{device} {dtype_name(dtype)}: matmul peak {peak['tflops']:.3g} TFLOP/s ({peak['size']}^3)"
    print_table(rows, COLUMNS, title)
    return {"benchmark": "model_throughput", "environment": environment(device), "peak": peak, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    if args.json is not None:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
