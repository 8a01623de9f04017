"""Train the ``small`` MVG for about 8 minutes on one borrowed H200, evaluate it on held-out whole
volumes, and bring its weights back as safetensors shards.

The device machine receives at most 64 MiB (code and data together), has no SimpleITK (it reads no
NRRD/NIfTI) and returns at most 8 files of 16 MiB, 64 MiB in all. Hence three steps on two machines:

1. here: ``pack`` writes a compact pack (``runs/gpu_pack``, git-ignored): a slice store of the open
   samples and phantoms at the 224-pixel tiles of MVGCore/configs/small_h200_8min.yaml, images
   quantised to 8 bits and compressed (training draws augmented crops; 1/255 is below its noise),
   without any case the default model holds out (recipes/tiny_default/default_tiny_stage3.yaml); and
   the held-out validation volumes as compressed arrays with their 2 prompt slices (as
   ``MVGCore.evaluate`` chooses them) and the Dice of the classical baselines on them.
2. on the device: ``train`` unpacks the store, measures the step rate in a short probe, trains
   through ``MVGCore.train`` for the steps that fit the time (so the learning-rate schedule ends
   where the time does), writes the weights as fp16 shards of at most 15 MiB plus ``shards.json``
   (config, checksums), then segments the held-out volumes from their prompt slices, with and
   without test-time adaptation, into ``results.json``. Everything finishes before ``--deadline-s``.
3. here: ``merge`` joins the shards into one MVGCore checkpoint (safetensors + JSON sidecar).

``train --smoke`` runs all of it on a CPU in about a minute: a pack of a few phantoms, the tiny
preset at 32 px for a few steps, 96 KiB shards (so tensors really get split), then the merge,
checked against the trained weights. Commands (docs/training.md, "A short run on a borrowed GPU")::

    python -m benchmarks.gpu_train_small pack                     # here: runs/gpu_pack, ~24 MiB
    python -m benchmarks.gpu_train_small train --pack runs/gpu_pack --out "$OUT"   # on the H200
    python -m benchmarks.gpu_train_small merge <returned folder> --out runs/small_h200.safetensors
    python -m benchmarks.gpu_train_small train --smoke --out /tmp/gpu_smoke        # CPU check
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file as well as with python -m from the repository root
    sys.path.insert(0, str(REPO))

from benchmarks.common import environment, resolve_device, write_json  # noqa: E402
from MVGCore import cli  # noqa: E402
from MVGCore.checkpoint import (  # noqa: E402
    atomic_write,
    load_model,
    save_tensors,
    sha256_of,
    sidecar_path,
)
from MVGCore.data.store import ARRAYS, MANIFEST  # noqa: E402
from MVGCore.metrics import dice_per_class  # noqa: E402
from MVGCore.model import MVGModel  # noqa: E402
from MVGCore.slicewise import take_slice  # noqa: E402
from MVGCore.train.config import TrainConfig, load_config  # noqa: E402
from MVGCore.types import Prompt  # noqa: E402

if TYPE_CHECKING:  # the device machine cannot import it: MVGCore.data.sources reads files with SimpleITK
    from MVGCore.data.sources import Case

log = logging.getLogger("benchmarks.gpu_train_small")

PROG = "python -m benchmarks.gpu_train_small"
CONFIG = REPO / "MVGCore" / "configs" / "small_h200_8min.yaml"
HELD_OUT_FROM = REPO / "recipes" / "tiny_default" / "default_tiny_stage3.yaml"
DEFAULT_PACK = REPO / "runs" / "gpu_pack"
PACK_FORMAT, SHARDS_FORMAT = "mvg-gpu-pack/1", "mvgcore-shards/1"
PACK_FILE, STORE_ARCHIVE, STORE_MANIFEST = "pack.json", "store.npz", "store_manifest.json"
SHARDS_FILE, RESULTS_FILE = "shards.json", "results.json"
MIB = 1 << 20
RETURN_FILES, RETURN_BYTES = 8, 64 * MIB
"""What the device sends back: at most 8 files, 64 MiB together (16 MiB each)."""
PIECE_HEADER = 160
"""Bytes a tensor piece may take in its shard's safetensors header (JSON: name, dtype, shape,
offsets) beyond the length of its name; with 8 bytes of length and padding per file."""
N_PROMPTS = 2
"""Prompt slices per held-out volume, as the default model's validation uses them."""
EVAL_SLICE_MARGIN, EVAL_PLANE = 8, 256
"""A held-out volume is packed cropped to its labelled slices +- 8 and to 256 pixels in-plane
around its labels (never cutting them): the 512 x 512 lung CT would take 17 MiB whole."""
PROBE_STEPS, PROBE_WARM = 150, 50
"""Steps of the throughput probe, and how many of its first ones are not timed (start-up)."""
EVAL_RESERVE_S = 60.0
"""Seconds kept after training for the shards and the evaluation (a few seconds on an H200)."""
SMOKE = {
    "phantoms": 5,
    "phantom_shape": (8, 40, 40),
    "size": 32,
    "held_out": 2,
    "max_steps": 4,
    "shard_kib": 96,
    "adapt_steps": 2,
    "config": {
        "model": "tiny",
        "model_overrides": {
            "tile_size": 32,
            "depth": 2,
            "embed_dim": 48,
            "num_heads": 2,
            "merge_index": 0,
            "feature_blocks": [1],
            "decoder_dim": 8,
            "pixel_skip": True,
        },
        "batch_size": 2,
        "num_workers": 0,
        "amp": "fp32",
        "warmup_steps": 1,
        "log_every": 1,
    },
}
"""The ``--smoke`` run: sizes that take about a minute on a CPU."""


# ---------------------------------------------------------------- pack (here, with SimpleITK)


def held_out_names(config_path: Path = HELD_OUT_FROM) -> tuple[list[str], list[str]]:
    """(case names never to train on, open-sample ids of the held-out volumes) of a training config."""
    config = load_config(config_path, {"phantoms": 1})  # its data is not needed, only its split
    volumes = list(config.val_volumes)
    return sorted({*config.val_cases, *volumes, *(v.partition("/")[2] for v in volumes)}), volumes


def is_held_out(case: Case, names: Sequence[str]) -> bool:
    """Named by id or ``dataset/id``, as ``MVGCore.train.split_cases`` reads ``val_cases``."""
    return case.case_id in names or f"{case.dataset}/{case.case_id}" in names


def build_pack(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    out: Path,
    size: int,
    max_mib: float,
    baselines: Sequence[str] = ("copy", "register"),
) -> dict[str, Any]:
    """Write the pack folder ``out`` (new; built beside it and renamed into place); return pack.json."""
    from MVGCore.prepare import prepare

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} exists already; remove it or choose another folder")
    if not train_cases:
        raise ValueError("the pack needs at least one training case")
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        store = prepare(train_cases, building / "store", size=size)
        manifest = json.loads((store / MANIFEST).read_text())
        arrays = {name: np.load(store / f"{name}.npy") for name in ARRAYS}
        np.savez_compressed(building / STORE_ARCHIVE, **{n: _quantise(n, a) for n, a in arrays.items()})
        shutil.copyfile(store / MANIFEST, building / STORE_MANIFEST)
        shutil.rmtree(store)
        volumes = [_pack_volume(case, n, building, baselines) for n, case in enumerate(val_cases)]
        info = {
            "format": PACK_FORMAT,
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "tile_size": size,
            "quantised": "images and targets as uint8 (round(255 x)); labels as they are",
            "train_cases": [f"{c['dataset']}/{c['case_id']}" for c in manifest["cases"]],
            "rows": manifest["rows"],
            "volumes": volumes,
        }
        (building / PACK_FILE).write_text(json.dumps(info, indent=2))
        info["mib"] = _folder_bytes(building) / MIB
        if info["mib"] > max_mib:
            raise ValueError(
                f"the pack takes {info['mib']:.1f} MiB, over --max-mib {max_mib:g}: with the code it must "
                "travel in 64 MiB; use fewer --phantoms or a smaller --size"
            )
        os.replace(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return info


def _quantise(name: str, rows: np.ndarray) -> np.ndarray:
    if ARRAYS[name] == np.uint8:
        return rows
    if rows.size and (np.nanmin(rows) < 0 or np.nanmax(rows) > 1):
        raise ValueError(f"store {name}.npy holds values outside [0, 1]; cannot quantise them")
    return np.round(rows.astype(np.float32) * 255).astype(np.uint8)


def _pack_volume(case: Case, number: int, folder: Path, baselines: Sequence[str]) -> dict[str, Any]:
    """One held-out volume, posed as ``MVGCore.volume_validation`` poses it (same prompt slices)
    then cropped (EVAL_PLANE), into ``folder``; its entry of pack.json with the baselines' Dice."""
    from MVGCore.baselines import ClassicalBaseline
    from MVGCore.evaluate import Method, Settings, make_trial, run_method, score

    trial = make_trial(case, "segment", Settings(tasks=("segment",), n_prompts=N_PROMPTS), number)
    if trial is None:
        raise ValueError(f"held-out case {case.dataset}/{case.case_id} cannot be segmented (see the log)")
    trial, box = _cropped(trial)
    volume = trial.volume
    exact = np.issubdtype(volume.dtype, np.floating) and np.array_equal(volume, np.round(volume))
    small = exact and volume.size and -32768 <= volume.min() and volume.max() <= 32767
    name = f"val_{case.dataset}__{case.case_id}.npz"
    np.savez_compressed(
        folder / name,
        volume=volume.astype(np.int16) if small else volume,
        truth=trial.truth.astype(np.uint8 if trial.truth.max() < 256 else np.uint16),
    )
    scores = {}
    for method in baselines:
        runner = Method(method, ClassicalBaseline(segmentation=method))
        scores[method] = score(trial, run_method(runner, trial, 0), 0)["dice"]
    return {
        "file": name,
        "case_id": case.case_id,
        "dataset": case.dataset,
        "modality": trial.modality,
        "dtype": str(volume.dtype),
        "spacing_kji": list(trial.spacing_kji),
        "crop_kji": [[b.start, b.stop] for b in box],
        "prompt_slices": trial.prompt_slices,
        "baseline_dice": scores,
    }


def _cropped(trial: Any) -> tuple[Any, list[slice]]:
    """``trial`` (an MVGCore.evaluate.Trial) on the box of its labels (see EVAL_PLANE), prompts
    kept on the same slices; and the box, in the volume's (k, j, i) indices."""
    from MVGCore.evaluate import Trial

    foreground = trial.truth != 0
    box = []
    for axis, size in enumerate(trial.volume.shape):
        present = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = int(present[0]), int(present[-1]) + 1
        if axis == 0:
            low, high = max(0, low - EVAL_SLICE_MARGIN), min(size, high + EVAL_SLICE_MARGIN)
        else:
            side = min(size, max(EVAL_PLANE, high - low))
            low = min(max(0, (low + high - side) // 2), size - side)
            high = low + side
        box.append(slice(low, high))
    volume, truth = trial.volume[tuple(box)], trial.truth[tuple(box)]
    shift = box[0].start
    prompts = [
        Prompt.from_volume(volume, p.index - shift, take_slice(truth, 0, p.index - shift), 0)
        for p in trial.prompts
    ]
    cropped = Trial(trial.case, "segment", volume, prompts, truth, trial.spacing_kji, trial.modality)
    return cropped, box


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def read_pack(pack: Path) -> dict[str, Any]:
    path = Path(pack) / PACK_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"--pack {pack}: no {PACK_FILE}; prepare it first with '{PROG} pack' (and carry it)"
        )
    info = json.loads(path.read_text())
    if info.get("format") != PACK_FORMAT:
        raise ValueError(f"{path}: expected format {PACK_FORMAT!r}, got {info.get('format')!r}")
    return info


def unpack_store(pack: Path, store: Path) -> Path:
    """The pack's slice store as MVGCore.train reads it (float16 tiles again), written to ``store``."""
    store = Path(store)
    store.mkdir(parents=True)
    with np.load(Path(pack) / STORE_ARCHIVE) as archive:
        for name, dtype in ARRAYS.items():
            rows = archive[name]
            rows = rows if dtype == np.uint8 else (rows.astype(np.float32) / 255).astype(dtype)
            np.save(store / f"{name}.npy", rows)
    shutil.copyfile(Path(pack) / STORE_MANIFEST, store / MANIFEST)
    return store


# ---------------------------------------------------------------- shards


def write_shards(
    model: MVGModel, folder: Path, limit_bytes: int, meta: dict[str, Any] | None = None
) -> list[Path]:
    """The model's weights in fp16 as safetensors files of at most ``limit_bytes`` each, and
    ``shards.json``: the config, which piece of which tensor lies in which file, their sha256.

    A tensor larger than what is left of a file is cut into flat pieces ``name#0``, ``name#1``...
    """
    if limit_bytes < 4096:
        raise ValueError(f"shard limit {limit_bytes} bytes leaves no room for a header and weights")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 16
    tensors: dict[str, Any] = {}
    for name, tensor in state.items():
        flat, start, pieces = tensor.reshape(-1), 0, []
        while start < flat.numel() or not pieces:
            key = f"{name}#{len(pieces)}"
            header = len(key.encode()) + PIECE_HEADER
            room = (limit_bytes - used - header) // tensor.element_size()
            sliver = room < flat.numel() - start and room * tensor.element_size() < 1024
            if shards[-1] and (room <= 0 or sliver):
                shards, used = [*shards, {}], 16  # a new file rather than a sliver of this tensor
                continue
            stop = min(flat.numel(), start + room)
            shards[-1][key] = flat[start:stop].clone()
            used += header + (stop - start) * tensor.element_size()
            pieces.append([len(shards) - 1, key])
            start = stop
        tensors[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype), "pieces": pieces}
    folder.mkdir(parents=True, exist_ok=True)
    count = len(shards)
    names = [f"model-{n + 1:05d}-of-{count:05d}.safetensors" for n in range(count)]
    paths = []
    for name, shard in zip(names, shards):
        path = folder / name
        atomic_write(path, lambda temp, shard=shard: save_file(shard, temp))
        if path.stat().st_size > limit_bytes:
            raise RuntimeError(f"shard {path} is {path.stat().st_size} bytes, over {limit_bytes}")
        paths.append(path)
    for entry in tensors.values():
        entry["pieces"] = [[names[index], key] for index, key in entry["pieces"]]
    record = {
        "format": SHARDS_FORMAT,
        "config": model.config.to_dict(),
        "dtype": "float16",
        "shards": [{"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in paths],
        "tensors": tensors,
        **(meta or {}),
    }
    write_json(folder / SHARDS_FILE, record)
    return paths


def merge_shards(folder: Path, out: Path) -> Path:
    """One MVGCore checkpoint (``out`` + sidecar) from the shards in ``folder``, checksums verified."""
    folder, out = Path(folder), Path(out)
    manifest_path = folder / SHARDS_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder}: no {SHARDS_FILE}; give the folder the device run returned")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != SHARDS_FORMAT:
        raise ValueError(
            f"{manifest_path}: expected format {SHARDS_FORMAT!r}, got {manifest.get('format')!r}"
        )
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out} must end in .safetensors")
    if out.exists():
        raise FileExistsError(f"--out {out} exists already; not overwriting it")
    loaded = {}
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            raise FileNotFoundError(f"shard {path} is missing (the device returns every shard it wrote)")
        if sha256_of(path) != shard["sha256"]:
            raise ValueError(f"shard {path} is damaged: its sha256 differs from {SHARDS_FILE}")
        loaded[shard["file"]] = load_file(path)
    tensors = {}
    for name, entry in manifest["tensors"].items():
        flat = torch.cat([loaded[file][key] for file, key in entry["pieces"]])
        if flat.numel() != math.prod(entry["shape"]):
            raise ValueError(f"{manifest_path}: the pieces of {name} do not make its shape {entry['shape']}")
        tensors[name] = flat.reshape(entry["shape"])
    meta = {k: v for k, v in manifest.items() if k not in ("format", "shards", "tensors", "dtype")}
    save_tensors(out, tensors, meta)
    try:
        load_model(out)  # a checkpoint that does not build its model is refused here, not later
    except BaseException:
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        raise
    return out


# ---------------------------------------------------------------- train (on the device)


def run_config(smoke: bool, store: Path, config_path: Path = CONFIG) -> TrainConfig:
    overrides: dict[str, Any] = {"data": [str(store)]}
    if smoke:
        overrides.update(SMOKE["config"])
    return load_config(config_path, overrides)


def fp16_bytes(config: TrainConfig) -> int:
    """Bytes of the model's weights in fp16, before it is built on the device."""
    model = MVGModel(config.model_config())
    return sum(
        t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values()
    )


def check_returnable(config: TrainConfig, shard_bytes: int) -> None:
    """Refuse, before any training, weights that could not come back from the device."""
    weights = fp16_bytes(config)
    files = math.ceil(weights / (shard_bytes - 64 * 1024)) + 2  # + shards.json, results.json
    if files > RETURN_FILES or weights + MIB > RETURN_BYTES:
        raise ValueError(
            f"model {config.model} {config.model_overrides} has {weights / MIB:.1f} MiB of fp16 weights "
            f"({files} files): the device returns at most {RETURN_FILES} files, "
            f"{RETURN_BYTES // MIB} MiB in all; lower decoder_dim or use a smaller preset"
        )


def train_with_probe(
    config: TrainConfig, work: Path, end_at: float, hard_stop_at: float, max_steps: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Measure the step rate on a short probe run, then train for the steps that fit until ``end_at``
    (``time.monotonic()``), so that the learning-rate schedule ends where the time does.

    Should the run outlast ``hard_stop_at`` after all, a SIGTERM makes MVGCore.train finish the
    step, checkpoint and stop. Returns (MVGCore.train's summary, a report for results.json).
    """
    from MVGCore.train import train

    probe_steps = min(PROBE_STEPS, max_steps or PROBE_STEPS)
    warm = min(PROBE_WARM, probe_steps // 3)
    stamps: list[float] = []
    probe = _with(config, steps=probe_steps, warmup_steps=min(config.warmup_steps, probe_steps // 10))
    started = time.monotonic()
    train(probe, work / "probe", on_step=lambda record: stamps.append(time.monotonic()))
    probe_s = time.monotonic() - started
    rate = (len(stamps) - 1 - warm) / max(stamps[-1] - stamps[warm], 1e-9)
    steps = max(1, int(rate * (end_at - time.monotonic()) * 0.97))  # 3% for start-up and the checkpoint
    steps = min(steps, max_steps) if max_steps else steps
    log.info("probe: %.2f steps/s (%.0f s with start-up); training %d steps", rate, probe_s, steps)
    run = _with(
        config,
        steps=steps,
        warmup_steps=min(config.warmup_steps, steps // 10),
        val_every=steps,
        ckpt_every=steps,
    )
    records: list[dict[str, Any]] = []
    shown = [time.monotonic()]

    def on_step(record: dict[str, Any]) -> None:
        records.append(record)
        if time.monotonic() - shown[0] > 30:
            shown[0] = time.monotonic()
            log.info("step %d/%d loss %.4f lr %.2e", record["step"], steps, record["loss"], record["lr"])

    wait = max(1.0, hard_stop_at - time.monotonic())
    timer = threading.Timer(wait, os.kill, (os.getpid(), signal.SIGTERM))
    timer.daemon = True
    began = time.monotonic()
    timer.start()
    try:
        summary = train(run, work / "run", on_step=on_step)
    finally:
        timer.cancel()
    seconds = time.monotonic() - began
    kept = records[:: max(1, len(records) // 100)]
    if records and kept[-1] is not records[-1]:
        kept.append(records[-1])
    report = {
        "probe": {"steps": probe_steps, "steps_per_s": rate, "seconds": probe_s},
        "planned_steps": steps,
        "steps": summary["step"],
        "stopped_early": summary["stopped_early"],
        "seconds": seconds,
        "samples_per_s": summary["step"] * run.batch_size / max(seconds, 1e-9),
        "loss": [[r["step"], r["loss"]] for r in kept],
        "checkpoint": summary["checkpoint"],
        "config": run.to_dict(),
    }
    return summary, report


def _with(config: TrainConfig, **changes: Any) -> TrainConfig:
    return TrainConfig.from_dict({**config.to_dict(), **changes})


def evaluate_volumes(
    model: MVGModel, pack: Path, info: dict[str, Any], device: str, adapt_steps: int
) -> list[dict]:
    """Segment each held-out volume of the pack from its prompt slices, with and without adaptation;
    Dice on the other slices. MVGCore.evaluate scores it so too, but imports SimpleITK."""
    from MVGCore.predict import Predictor

    predictor = Predictor(model, device=device)
    rows = []
    for entry in info["volumes"]:
        with np.load(Path(pack) / entry["file"]) as arrays:
            volume = arrays["volume"].astype(entry["dtype"])
            truth = arrays["truth"]
        indices = entry["prompt_slices"]
        prompts = [Prompt.from_volume(volume, i, take_slice(truth, 0, i), 0) for i in indices]
        others = [k for k in range(volume.shape[0]) if k not in indices]
        row = {"case": f"{entry['dataset']}/{entry['case_id']}"}
        row.update({f"dice_{name}": value for name, value in entry["baseline_dice"].items()})
        for name, steps in (("mvg", 0), (f"mvg_adapt{adapt_steps}", adapt_steps)):
            started = time.monotonic()
            output = predictor.segment(
                volume,
                prompts,
                0,
                spacing=tuple(entry["spacing_kji"]),
                modality=entry["modality"],
                adapt_steps=steps,
                align_prompts="off",  # the device image has no SimpleITK to register prompts with
            )
            dice = [d for d in dice_per_class(output[others], truth[others]).values() if math.isfinite(d)]
            row[f"dice_{name}"] = float(np.mean(dice)) if dice else float("nan")
            row[f"seconds_{name}"] = time.monotonic() - started
        log.info("%s", {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        rows.append(row)
    return rows


def train_on_device(
    pack: Path,
    out: Path,
    work: Path,
    minutes: float,
    deadline_s: float,
    smoke: bool = False,
    shard_mib: float = 15.0,
    adapt_steps: int = 30,
) -> dict[str, Any]:
    """Unpack, probe, train, shard, evaluate; ``results.json`` is rewritten after every stage, so a
    run cut short still returns what it did."""
    started = time.monotonic()
    out, work = Path(out), Path(work)
    info = read_pack(pack)
    if work.exists() and any(work.iterdir()):
        raise FileExistsError(f"--work {work} is not empty; give a new folder")
    if not 0 < minutes * 60 < deadline_s - EVAL_RESERVE_S:
        raise ValueError(
            f"--minutes {minutes:g} must leave {EVAL_RESERVE_S:.0f} s before --deadline-s {deadline_s:g}"
        )
    device = resolve_device("auto")
    shard_bytes = SMOKE["shard_kib"] * 1024 if smoke else int(shard_mib * MIB)
    config = run_config(smoke, work / "store")
    if not smoke:
        check_returnable(config, shard_bytes)
    results: dict[str, Any] = {
        "environment": environment(device),
        "pack": {key: info[key] for key in ("created_utc", "tile_size", "rows", "train_cases")},
    }
    write_json(out / RESULTS_FILE, results)
    unpack_store(pack, work / "store")
    results["unpack_seconds"] = time.monotonic() - started
    summary, results["training"] = train_with_probe(
        config,
        work,
        end_at=started + minutes * 60,
        hard_stop_at=started + deadline_s - EVAL_RESERVE_S / 2,
        max_steps=SMOKE["max_steps"] if smoke else None,
    )
    write_json(out / RESULTS_FILE, results)
    model, _ = load_model(summary["checkpoint"])
    trained = {"steps": summary["step"], "on": results["environment"].get("gpu", str(device)), "by": PROG}
    results["shards"] = [p.name for p in write_shards(model, out, shard_bytes, {"trained": trained})]
    write_json(out / RESULTS_FILE, results)
    steps = SMOKE["adapt_steps"] if smoke else adapt_steps
    results["volumes"] = evaluate_volumes(model.to(device), pack, info, str(device), steps)
    results["total_seconds"] = time.monotonic() - started
    write_json(out / RESULTS_FILE, results)
    return results


# ---------------------------------------------------------------- smoke (CPU)


def smoke_pack(work: Path) -> Path:
    """A pack of a few phantoms (the last ones held out as validation volumes), for ``--smoke``."""
    from MVGCore.data.phantoms import write_nnunet_dataset
    from MVGCore.data.sources import load_cases

    dataset = write_nnunet_dataset(work / "phantoms", SMOKE["phantoms"], SMOKE["phantom_shape"], 3, seed=5)
    cases = load_cases(dataset)
    split = len(cases) - SMOKE["held_out"]
    return _report_pack(
        build_pack(cases[:split], cases[split:], work / "pack", SMOKE["size"], 64.0), work / "pack"
    )


def _report_pack(info: dict[str, Any], out: Path) -> Path:
    print(
        f"pack {out}: {info['mib']:.1f} MiB, {info['rows']['images']} image rows of "
        f"{len(info['train_cases'])} cases at {info['tile_size']} px; held-out volumes "
        + ", ".join(f"{v['dataset']}/{v['case_id']} {v['baseline_dice']}" for v in info["volumes"])
    )
    return out


def check_merge(out: Path, work: Path, summary_checkpoint: Path) -> None:
    """The merged shards build the model and hold the trained weights (as fp16)."""
    merged = merge_shards(out, work / "merged.safetensors")
    model, _ = load_model(merged)
    trained, _ = load_model(summary_checkpoint)
    for name, value in trained.state_dict().items():
        if not torch.equal(model.state_dict()[name], value.half().float()):
            raise RuntimeError(f"merged tensor {name} differs from the trained weights")
    print(f"merged {merged}: equal to the trained weights (fp16)")


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser(
        "pack", help="here: build the compact pack of training store and held-out volumes"
    )
    pack.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_PACK,
        help=f"new pack folder (default {DEFAULT_PACK.relative_to(REPO)})",
    )
    pack.add_argument("--size", type=int, default=224, help="tile size of the store (the config's tile_size)")
    pack.add_argument(
        "--phantoms", type=int, default=6, help="phantom cases added to the open samples (1.7 MiB each)"
    )
    pack.add_argument(
        "--baselines", default="copy,register", help="classical methods scored on the held-out volumes"
    )
    pack.add_argument("--max-mib", type=float, default=36.0, help="refuse a pack larger than this")
    train_cmd = commands.add_parser("train", help="on the device: probe, train, shard, evaluate")
    train_cmd.add_argument(
        "--pack",
        type=Path,
        help=f"the carried pack (default {DEFAULT_PACK.relative_to(REPO)}; with --smoke a new one)",
    )
    train_cmd.add_argument("--out", type=Path, required=True, help="where shards and results.json go ($OUT)")
    train_cmd.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    train_cmd.add_argument("--minutes", type=float, default=8.0, help="training time, probe included")
    train_cmd.add_argument("--deadline-s", type=float, default=570.0, help="everything ends before this")
    train_cmd.add_argument("--adapt-steps", type=int, default=30, help="test-time adaptation steps evaluated")
    train_cmd.add_argument("--smoke", action="store_true", help="CPU check: phantoms, tiny model, few steps")
    merge = commands.add_parser("merge", help="here: join the returned shards into one checkpoint")
    merge.add_argument("folder", type=Path, help="the folder the device run returned")
    merge.add_argument("--out", type=Path, required=True, help="new .safetensors checkpoint")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    if args.command == "pack":
        from MVGCore.data import open_samples
        from MVGCore.data.phantoms import write_nnunet_dataset
        from MVGCore.data.sources import load_cases

        names, volumes = held_out_names()
        cases = [c for c in open_samples.cases() if not is_held_out(c, names)]
        with tempfile.TemporaryDirectory() as scratch:
            if args.phantoms:
                dataset = write_nnunet_dataset(Path(scratch), args.phantoms, (24, 256, 256), 6, seed=7)
                cases += load_cases(dataset)
            held_out = open_samples.select(volumes)
            baselines = [b for b in args.baselines.split(",") if b]
            info = build_pack(cases, held_out, args.out, args.size, args.max_mib, baselines)
        _report_pack(info, args.out)
        return 0
    if args.command == "merge":
        print(f"wrote {merge_shards(args.folder, args.out)}")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="mvg-gpu-train-"))
    pack_folder = args.pack or (smoke_pack(work / "smoke") if args.smoke else DEFAULT_PACK)
    results = train_on_device(
        pack_folder,
        args.out,
        work / "device",
        args.minutes,
        args.deadline_s,
        args.smoke,
        adapt_steps=args.adapt_steps,
    )
    if args.smoke:
        check_merge(args.out, work, Path(results["training"]["checkpoint"]))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, PROG))
