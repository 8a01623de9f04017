"""End-to-end training on generated phantoms: it learns, resumes exactly, stops cleanly, runs DDP,
and refuses bad data before the first step."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from MVGCore.checkpoint import load_model
from MVGCore.data.phantoms import write_nnunet_dataset
from MVGCore.data.samplers import InContextDataset
from MVGCore.data.sources import load_cases
from MVGCore.data.store import SliceStore
from MVGCore.io import write_volume
from MVGCore.prepare import prepare
from MVGCore.train import case_key, split_cases, store_view, train, weights_digest
from MVGCore.train.config import TrainConfig
from MVGCore.types import Geometry, Volume

REPO = Path(__file__).resolve().parents[2]
MODEL = {
    "tile_size": 32,
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "merge_index": 0,
    "feature_blocks": [0, 1],
    "decoder_dim": 8,
}
PHANTOM_SHAPE = (10, 32, 32)


def small_config(**changes) -> TrainConfig:
    settings = {
        "model": "tiny",
        "model_overrides": MODEL,
        "steps": 8,
        "batch_size": 4,
        "warmup_steps": 2,
        "lr": 2e-3,
        "num_workers": 0,
        "val_samples": 4,
        "val_every": 1000,
        "ckpt_every": 4,
        "deterministic": True,
        "progress": False,
        "seed": 3,
    }
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    dataset = write_nnunet_dataset(root, n_cases=5, shape=PHANTOM_SHAPE, n_classes=2, seed=0)
    return prepare(load_cases(dataset), root / "store", size=MODEL["tile_size"])


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}


@pytest.mark.slow
def test_training_lowers_validation_loss(store, tmp_path):
    run = tmp_path / "run"
    summary = train(small_config(data=[str(store)], steps=40, val_every=20, ckpt_every=20), run)
    val = records(run, "val")
    assert [r["step"] for r in val] == [0, 20, 40]
    assert val[-1]["val_loss"] < 0.85 * val[0]["val_loss"]
    assert [r["step"] for r in records(run, "train")] == list(range(1, 41))
    assert summary["step"] == 40 and not summary["stopped_early"]
    split = json.loads((run / "split.json").read_text())
    assert split["val"] and not set(split["val"]) & set(split["train"])
    for task in ("segment", "denoise", "inpaint", "synthesize"):
        assert (run / "val" / f"step_000040_{task}.png").stat().st_size > 0
    assert {"dice/segment", "psnr/denoise", "psnr_hole/inpaint"} <= set(val[-1])
    model, meta = load_model(run / "checkpoints" / "step_000040.safetensors")
    assert meta["step"] == 40 and weights_digest(model) == summary["weights_sha256"][0]
    assert list((run / "tb").iterdir())


@pytest.mark.slow
def test_init_starts_from_the_checkpoint_weights(store, tmp_path):
    first = train(small_config(data=[str(store)], steps=6), tmp_path / "a")
    second = tmp_path / "b"
    train(small_config(data=[str(store)], steps=2, init=first["checkpoint"], lr=1e-4), second)
    # Same seed, store and split: the fine-tuning run validates on the same samples first.
    assert records(second, "val")[0]["val_loss"] == pytest.approx(first["val"]["val_loss"], rel=1e-6)


def test_a_checkpoint_of_another_tile_size_initialises_by_resampling_its_rel_pos_tables(tmp_path):
    """Tile 32 -> 48 (patch 8): the relative-position tables of the two-tile canvas grow from
    15 x 7 to 23 x 11 positions by linear resampling, everything else loads as it is, a constant
    table stays constant; a mismatch in any other tensor is still refused."""
    from MVGCore.checkpoint import save_model
    from MVGCore.config import config_for
    from MVGCore.model import MVGModel
    from MVGCore.resample_weights import resize_rel_pos_tables
    from MVGCore.train.weights import initialise

    small = MVGModel(config_for("tiny", **MODEL))
    with torch.no_grad():
        small.blocks[0].attn.rel_pos_h.fill_(0.25)
    path = save_model(tmp_path / "small.safetensors", small)
    large = MVGModel(config_for("tiny", **{**MODEL, "tile_size": 48}))
    initialise(
        large, small_config(data=["unused"], init=str(path), model_overrides={**MODEL, "tile_size": 48})
    )
    assert small.blocks[0].attn.rel_pos_h.shape[0] == 15 and large.blocks[0].attn.rel_pos_h.shape[0] == 23
    assert large.blocks[0].attn.rel_pos_w.shape[0] == 11
    assert torch.allclose(
        large.blocks[0].attn.rel_pos_h, torch.full_like(large.blocks[0].attn.rel_pos_h, 0.25)
    )
    assert torch.equal(large.blocks[1].mlp.fc1.weight, small.blocks[1].mlp.fc1.weight)
    weights = small.state_dict()
    weights["blocks.1.mlp.fc1.weight"] = weights["blocks.1.mlp.fc1.weight"][:, :4]
    resized = resize_rel_pos_tables(weights, large.state_dict())
    assert resized["blocks.1.mlp.fc1.weight"].shape[1] == 4  # left for load_state_dict to refuse


@pytest.mark.slow
def test_train_modules_trains_only_them_on_top_of_init_weights(store, tmp_path):
    first = train(small_config(data=[str(store)], steps=2), tmp_path / "a")
    overrides = {**MODEL, "refine_layers": 2}
    config = small_config(
        data=[str(store)],
        steps=4,
        init=first["checkpoint"],
        model_overrides=overrides,
        train_modules=["decoder_refine"],
    )
    summary = train(config, tmp_path / "b")
    before = load_model(first["checkpoint"])[0].state_dict()
    after = load_model(summary["checkpoint"])[0].state_dict()
    moved = sorted(
        {
            name.split(".")[0]
            for name in after
            if name not in before or not torch.equal(after[name], before[name])
        }
    )
    assert moved == ["decoder_refine"]
    # The refiner's last convolution starts at zero: non-zero now means it really trained.
    assert after["decoder_refine.out.weight"].abs().sum() > 0


@pytest.mark.parametrize("tasks, trains", [(["segment", "inpaint"], False), (["denoise"], True)])
def test_a_denoising_refiner_learns_only_from_denoising_samples(store, tmp_path, tasks, trains):
    overrides = {**MODEL, "refine_layers": 2, "refine_tasks": ["denoise"]}
    config = small_config(data=[str(store)], steps=3, tasks=tasks, model_overrides=overrides)
    after = load_model(train(config, tmp_path / "run")["checkpoint"])[0].state_dict()
    # Its last convolution starts at zero and moves only with a gradient from a refined canvas.
    assert bool(after["decoder_refine.out.weight"].abs().sum() > 0) is trains


@pytest.mark.slow
def test_hard_kill_then_resume_continues_the_loss_sequence_exactly(store, tmp_path):
    n = 4
    config = small_config(data=[str(store)], steps=2 * n, ckpt_every=n, val_every=n)
    uninterrupted = tmp_path / "a"
    train(config, uninterrupted)

    killed = tmp_path / "b"
    driver = (
        "import os, signal, sys\n"
        "from MVGCore.train import train\n"
        "from MVGCore.train.config import TrainConfig\n"
        f"config = TrainConfig(**{config.to_dict()!r})\n"
        f"def kill(record):\n    if record['step'] == {n + 2}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"train(config, {str(killed)!r}, on_step=kill)\n"
    )
    result = subprocess.run([sys.executable, "-c", driver], env=subprocess_env(), capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert json.loads((killed / "checkpoints" / "last.json").read_text())["step"] == n
    assert [r["step"] for r in records(killed, "train")][-1] == n + 2  # logged past the checkpoint

    resumed = subprocess.run(
        [sys.executable, "-m", "MVGCore.train", "--out", str(killed), "--resume"],
        env=subprocess_env(),
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    expected = [(r["step"], r["loss"]) for r in records(uninterrupted, "train")]
    got = [(r["step"], r["loss"]) for r in records(killed, "train")]
    assert got == expected  # every step once, bit-identical losses after the resume
    val = [(r["step"], r["val_loss"]) for r in records(killed, "val")]
    assert val == [(r["step"], r["val_loss"]) for r in records(uninterrupted, "val")]
    assert [step for step, _ in val] == [0, n, 2 * n]
    a = json.loads((uninterrupted / "summary.json").read_text())["weights_sha256"]
    b = json.loads((killed / "summary.json").read_text())["weights_sha256"]
    assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("whole_group", [False, True], ids=["process", "process-group"])
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(store, tmp_path, whole_group):
    """Also when the signal reaches the data loader's worker too (``kill -- -PGID``, a scheduler)."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "MVGCore.train", "--out", str(run), "--data", str(store)]
    config = small_config(
        data=[str(store)], steps=100_000, ckpt_every=100_000, val_fraction=0, num_workers=int(whole_group)
    )
    for key, value in config.to_dict().items():
        if key not in ("data", "model_overrides"):
            command += ["--set", f"{key}={json.dumps(value)}"]
    command += ["--set", f"model_overrides={json.dumps(MODEL)}"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, env=subprocess_env(), stderr=stderr, start_new_session=True)
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").is_file() and records(run, "train")):
            started = process.poll() is None and time.monotonic() < deadline
            assert started, f"training did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        if whole_group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    assert process.returncode == 0, log.read_text()[-2000:]
    assert "received SIGTERM" in log.read_text()
    assert "Traceback" not in log.read_text()  # e.g. "DataLoader worker ... is killed by signal"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_early"] and 1 <= summary["step"] < 100_000
    assert Path(summary["checkpoint"]).name == f"step_{summary['step']:06d}.safetensors"
    assert records(run, "train")[-1]["step"] == summary["step"]


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_hold_identical_weights(tmp_path):
    run = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    # Raw phantoms: rank 0 generates and prepares them while rank 1 waits for the store.
    phantoms = {"phantoms": 4, "phantom_shape": list(PHANTOM_SHAPE), "phantom_classes": 2}
    config.write_text(
        json.dumps(
            small_config(
                steps=3, ckpt_every=3, batch_size=2, grad_accum=2, clip_grad=1.0, **phantoms
            ).to_dict()
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "MVGCore.train",
        "--config",
        str(config),
        "--out",
        str(run),
    ]
    # A session of its own, so that a hang kills the workers too and not only the launcher.
    process = subprocess.Popen(
        command, env=subprocess_env(), stderr=subprocess.PIPE, cwd=REPO, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, stderr.decode()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    rank0, rank1 = summary["weights_sha256"]
    assert rank0 == rank1
    model, _ = load_model(run / "checkpoints" / "step_000003.safetensors")
    assert weights_digest(model) == rank0
    assert all(r["samples_per_s"] > 0 for r in records(run, "train"))


def test_a_new_run_never_reuses_a_folder_with_checkpoints(store, tmp_path):
    run = tmp_path / "run"
    train(small_config(data=[str(store)], steps=1, val_fraction=0), run)
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(data=[str(store)], steps=1, val_fraction=0), run)
    with pytest.raises(ValueError, match=r"\['lr'\] differ"):
        train(small_config(data=[str(store)], steps=2, val_fraction=0, lr=0.5), run, resume=True)


# -- bad data is refused before training starts ----------------------------------------------------


@pytest.fixture
def phantom_dataset(tmp_path) -> Path:
    return write_nnunet_dataset(tmp_path / "raw", n_cases=3, shape=PHANTOM_SHAPE, n_classes=2, seed=1)


def _write(path: Path, array: np.ndarray) -> None:
    path.unlink()
    write_volume(path, Volume(array, Geometry()))


def _break(dataset: Path, problem: str) -> tuple[type[Exception], str]:
    images, labels = dataset / "imagesTr", dataset / "labelsTr"
    if problem == "missing file":
        (images / "phantom_001_0001.nii.gz").unlink()
        return ValueError, r"phantom_001.*expected channels 0\.\.1"
    if problem == "label off the image grid":
        _write(labels / "phantom_001.nii.gz", np.ones((PHANTOM_SHAPE[0], 16, 16), np.uint8))
        return ValueError, r"labelsTr/phantom_001\.nii\.gz"
    if problem == "non-integer labels":
        _write(labels / "phantom_001.nii.gz", np.full(PHANTOM_SHAPE, 0.5, np.float32))
        return ValueError, r"labelsTr/phantom_001\.nii\.gz.*integer"
    if problem == "empty dataset":
        shutil.rmtree(images)
        images.mkdir()
        return ValueError, "no images"
    if problem == "unreadable file":
        (images / "phantom_002_0000.nii.gz").write_bytes(b"not a nifti file")
        return ValueError, r"cannot read .*phantom_002_0000\.nii\.gz"
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem",
    ["missing file", "label off the image grid", "non-integer labels", "empty dataset", "unreadable file"],
)
def test_bad_data_stops_before_training_naming_the_file(phantom_dataset, tmp_path, problem):
    error, message = _break(phantom_dataset, problem)
    run = tmp_path / "run"
    with pytest.raises(error, match=message):
        train(small_config(data=[str(phantom_dataset)]), run)
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "data" / "store").exists()


def test_missing_data_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train(small_config(data=[str(tmp_path / "nowhere")]), tmp_path / "run")


def test_case_without_foreground_is_skipped_with_a_log_when_segmenting_only(
    phantom_dataset, tmp_path, caplog
):
    _write(phantom_dataset / "labelsTr" / "phantom_001.nii.gz", np.zeros(PHANTOM_SHAPE, np.uint8))
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        train(small_config(data=[str(phantom_dataset)], tasks=["segment"], steps=1, val_fraction=0), run)
    assert any("phantom_001" in r.getMessage() and "no foreground" in r.getMessage() for r in caplog.records)
    stored = json.loads((run / "data" / "store" / "manifest.json").read_text())["cases"]
    assert sorted(c["case_id"] for c in stored) == ["phantom_000", "phantom_002"]


def test_validation_cases_are_never_sampled_in_training(store):
    cases = SliceStore(store).cases
    train_keys, val_keys = split_cases(cases, small_config(data=[str(store)], val_fraction=0.4))
    assert len(val_keys) == 2 and sorted(train_keys + val_keys) == sorted(case_key(c) for c in cases)
    config = small_config(data=[str(store)], sampler={"cross_case_prob": 1.0})
    sampler = InContextDataset(store_view(SliceStore(store), train_keys), config.sampler_config())
    drawn = {sampler.sample(np.random.default_rng(i))["case_id"] for i in range(60)}
    assert drawn == {key.split("/")[1] for key in train_keys}
    named = small_config(data=[str(store)], val_cases=["phantom_001", "Phantom/phantom_003"])
    assert split_cases(cases, named)[1] == ["Phantom/phantom_001", "Phantom/phantom_003"]
    with pytest.raises(ValueError, match=r"\['phantom_042'\] are not in the store"):
        split_cases(cases, small_config(data=[str(store)], val_cases=["phantom_042"]))


def test_init_encoder_loads_a_vit_state_dict(store, tmp_path):
    from safetensors.torch import save_file

    from MVGCore.model import MVGModel

    config = small_config(data=[str(store)], steps=1, lr=1e-9, min_lr=0.0, val_fraction=0)
    torch.manual_seed(42)
    donor = MVGModel(config.model_config()).state_dict()
    encoder = {f"module.{k}": v for k, v in donor.items() if k.startswith(("blocks.", "patch_embed."))}
    save_file(encoder, tmp_path / "vit.safetensors")
    config.init_encoder = str(tmp_path / "vit.safetensors")
    summary = train(config, tmp_path / "run")
    trained, _ = load_model(summary["checkpoint"])
    weights = trained.state_dict()
    for key in ("blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"):
        assert torch.allclose(weights[key], donor[key], atol=1e-6), key
    assert not torch.allclose(weights["decoder_embed.weight"], donor["decoder_embed.weight"], atol=1e-3)
