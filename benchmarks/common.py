"""Shared pieces of the speed benchmarks: the machine record, the matmul peak, timing, tables, JSON.

Speed is only meaningful next to the machine it was measured on and that machine's own limit, so
every benchmark records :func:`environment` and compares against :func:`matmul_peak` measured in
the same run (not a datasheet number).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is the dtype each device is meant to run in: fp32 on CPU, bf16 (autocast) on GPU."""
    names = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValueError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    return names[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def has_simpleitk() -> bool:
    """Whether volume files can be read here (the GPU machine runs without SimpleITK)."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return False
    return True


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Date, hardware and software of this run, as recorded beside every result."""
    record = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any], device: torch.device, min_seconds: float, min_calls: int = 2, warmup: int = 1
) -> list[float]:
    """Seconds of each call of ``fn`` after ``warmup`` untimed calls, until both ``min_calls`` calls
    and ``min_seconds`` in total are reached. GPU work is waited for, so times are wall clock."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    while len(times) < min_calls or sum(times) < min_seconds:
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, min_seconds: float = 1.0) -> dict:
    """The machine's measured dense matmul throughput (FLOP/s) for ``dtype``: the best of repeated
    ``size`` x ``size`` products, the practical ceiling for the model's own matmuls."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1  # several products per wait, so waiting costs nothing

    def products() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    times = [t / inner for t in time_calls(products, device, min_seconds, min_calls=3)]
    flops = 2 * size**3
    return {
        "dtype": dtype_name(dtype),
        "size": size,
        "calls": len(times) * inner,
        "best_s": min(times),
        "tflops": flops / min(times) / 1e12,
    }


def print_table(rows: Sequence[dict], columns: Sequence[str], title: str = "") -> None:
    """A Markdown table of ``columns`` (floats shown with 3 significant digits)."""

    def cell(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    if title:
        print(f"\n{title}")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` atomically (temporary file, then rename): a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    print(f"written to {path}")
    return path
