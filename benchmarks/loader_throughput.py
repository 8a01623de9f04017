"""Loader throughput: in-context samples per second from a slice store, per task mix and worker count.

The model must never wait for data; this measures what the loader can deliver on this machine so
it can be compared with the model's step time. Without ``--store`` it writes phantom volumes as an
nnU-Net dataset, prepares a store from them (both in a temporary folder) and measures that.

    python benchmarks/loader_throughput.py --workers 0 2 --json loader_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from MVGCore.data.samplers import TASKS, InContextDataset, collate
from MVGCore.data.store import SliceStore

MIXES = {"mixed": dict.fromkeys(TASKS, 1.0), **{task: {t: float(t == task) for t in TASKS} for task in TASKS}}


def measure(store: SliceStore, mix: str, workers: int, batch_size: int, batches: int, seed: int) -> dict:
    """Samples/s over ``batches`` batches after the first one (which includes worker start-up)."""
    dataset = InContextDataset(store, {"tasks": MIXES[mix]}, length=batch_size * (batches + 1), seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    count = sum(len(batch["task"]) for batch in iterator)
    elapsed = time.perf_counter() - first
    return {
        "mix": mix,
        "workers": workers,
        "batch_size": batch_size,
        "samples": count,
        "seconds": round(elapsed, 3),
        "samples_per_s": round(count / elapsed, 1),
        "first_batch_s": round(first - start, 3),
    }


def phantom_store(folder: Path, cases: int, shape: tuple[int, int, int], size: int) -> Path:
    from MVGCore.data.phantoms import write_nnunet_dataset
    from MVGCore.data.sources import load_cases
    from MVGCore.prepare import prepare

    root = write_nnunet_dataset(folder, cases, shape, n_classes=4, seed=0, channels=2)
    return prepare(load_cases(root), folder / "store", size=size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="an existing slice store (default: phantoms)")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 160, 160), help="phantom (k, j, i)")
    parser.add_argument("--size", type=int, default=256, help="tile size of the phantom store")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--mixes", nargs="+", default=list(MIXES), choices=list(MIXES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--json", type=Path, default=Path("loader_throughput.json"), help="results file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mvg-loader-") as scratch:
        path = args.store or phantom_store(Path(scratch), args.cases, tuple(args.shape), args.size)
        store = SliceStore(path)
        rows = [
            measure(store, mix, workers, args.batch_size, args.batches, seed=0)
            for mix in args.mixes
            for workers in args.workers
        ]
    print(f"store: {args.store or 'phantoms'}  tile {store.tile_size}  batch {args.batch_size}")
    print(f"{'mix':<12}{'workers':>8}{'samples/s':>12}{'first batch s':>15}")
    for row in rows:
        print(
            f"{row['mix']:<12}{row['workers']:>8}{row['samples_per_s']:>12.1f}{row['first_batch_s']:>15.3f}"
        )
    result = {
        "store": str(args.store) if args.store else f"phantoms {args.cases} x {list(args.shape)}",
        "tile_size": store.tile_size,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "results": rows,
    }
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
