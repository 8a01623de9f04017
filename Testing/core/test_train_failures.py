"""Issue 37, training: a failing data worker ends the run at once in one line, a failed resume
changes nothing, and ``--init`` across architectures says what differs in a short line.

The runs are tiny (a 32-pixel model, a few steps, phantoms); the ones that must end within a time
run in a subprocess with a timeout, so that a hang fails the test instead of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_train import MODEL

from MVGCore.data.phantoms import write_nnunet_dataset
from MVGCore.data.sources import load_cases
from MVGCore.prepare import prepare
from MVGCore.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120
PROG = "python -m MVGCore.train: error: "


def config(store: Path, **changes) -> TrainConfig:
    settings = {
        "model": "tiny",
        "model_overrides": MODEL,
        "data": [str(store)],
        "tasks": ["denoise"],
        "steps": 40,
        "batch_size": 4,
        "warmup_steps": 2,
        "num_workers": 2,
        "val_fraction": 0,
        "ckpt_every": 100,
        "progress": False,
        "seed": 3,
    }
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    dataset = write_nnunet_dataset(root, n_cases=5, shape=(10, 32, 32), n_classes=2, seed=0)
    return prepare(load_cases(dataset), root / "store", size=MODEL["tile_size"])


def nan_store(store: Path, folder: Path, rows: slice) -> Path:
    """A copy of ``store`` with NaN written into image ``rows`` (prepare refuses NaN since issue 37,
    but a store written before, or edited, can still hold it)."""
    copy = Path(shutil.copytree(store, folder / "nan_store"))
    images = np.load(copy / "images.npy", mmap_mode="r+")
    images[rows] = np.nan
    images.flush()
    del images
    return copy


def env() -> dict[str, str]:
    variables = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    variables.pop("MVG_DEBUG", None)
    return variables


def run_within_timeout(command: list[str]) -> subprocess.CompletedProcess:
    """``command`` in a session of its own; a hang kills the whole session and fails the test."""
    process = subprocess.Popen(
        command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"still running after {TIMEOUT} s (hung); stderr ends: {stderr[-1500:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (a forked loader worker keeps its parent's)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def train_command(store: Path, run: Path) -> list[str]:
    command = [sys.executable, "-m", "MVGCore.train", "--out", str(run), "--data", str(store)]
    for key, value in config(store).to_dict().items():
        if key not in ("data", "model_overrides"):
            command += ["--set", f"{key}={json.dumps(value)}"]
    return [*command, "--set", f"model_overrides={json.dumps(MODEL)}"]


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="needs /proc to find leftover workers")
def test_a_failing_data_worker_ends_training_in_one_line_leaving_a_resumable_run(store, tmp_path):
    """The issue's run: NaN in the store, --steps 40, tasks [denoise], two loader workers. It printed
    the worker's ValueError with its traceback text and then hung; now it exits 2 at once with the
    reason on one line, the workers gone, and a checkpoint of the last step that completed."""
    bad = nan_store(store, tmp_path, slice(23, 24))  # one slice of one case: hit after a few steps
    run = tmp_path / "run"
    result = run_within_timeout(train_command(bad, run))
    errors = [line for line in result.stderr.splitlines() if line.startswith(PROG)]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    error = errors[0]
    assert "data loader worker" in error and "NaN" in error and str(bad) in error, error
    assert "slice" in error and len(error) < 500, error
    step = int(error.split("at step ")[1].split(":")[0])
    assert step > 1  # the case the test is about: steps were trained before the failure
    last = json.loads((run / "checkpoints" / "last.json").read_text())
    assert last["step"] == step - 1  # the last completed step is kept: --resume continues it
    assert (run / "config.yaml").is_file() and (run / "split.json").is_file()
    assert not processes_naming(str(run)), "a loader worker outlived the run"


def test_a_caller_holding_the_worker_error_does_not_keep_the_workers_alive(store, tmp_path):
    """A caller that keeps the error (a notebook, a GUI's last error) keeps the loader alive through
    its traceback; the workers ignored SIGTERM, so the process hung at exit waiting for them. A run
    that failed before any step leaves no run folder behind (it had split.json, metrics.jsonl, tb/)."""
    bad = nan_store(store, tmp_path, slice(None))
    run = tmp_path / "run"
    driver = (
        "import sys\n"
        "from MVGCore.train import train\n"
        "from MVGCore.train.config import TrainConfig\n"
        f"config = TrainConfig(**{config(bad).to_dict()!r})\n"
        "try:\n"
        f"    train(config, {str(run)!r})\n"
        "except ValueError as error:\n"
        "    kept = error\n"
        "    print('FAILED', error, file=sys.stderr)\n"
    )
    result = run_within_timeout([sys.executable, "-c", driver])
    assert result.returncode == 0 and "FAILED" in result.stderr, result.stderr[-3000:]
    failed = [line for line in result.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "at step 1:" in failed[0] and "NaN" in failed[0], result.stderr[-3000:]
    assert not run.exists(), sorted(p.name for p in run.iterdir())


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its bytes' digest (files) and modification time."""
    import hashlib

    state = {}
    for path in sorted([folder, *folder.rglob("*")]):
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(folder))] = (digest, path.stat().st_mtime_ns)
    return state


def test_a_failed_resume_leaves_the_run_folder_exactly_as_it_was(store, tmp_path):
    from MVGCore.train import train

    data = Path(shutil.copytree(store, tmp_path / "store"))
    run = tmp_path / "run"
    first = config(data, steps=2, ckpt_every=2, num_workers=0)
    train(first, run)
    longer = config(data, steps=4, ckpt_every=2, num_workers=0)

    before = snapshot(run)
    data.rename(tmp_path / "moved")  # the store is gone: found after the checks of the folder
    with pytest.raises(FileNotFoundError, match="training data not found"):
        train(longer, run, resume=True)
    assert snapshot(run) == before  # config.yaml kept steps 2, split.json untouched
    (tmp_path / "moved").rename(data)

    state = run / "checkpoints" / "step_000002.state.safetensors"
    state.write_bytes(state.read_bytes()[:-100])  # found only when the checkpoint is loaded
    before = snapshot(run)
    with pytest.raises(ValueError, match=r"step_000002\.state"):
        train(longer, run, resume=True)
    assert snapshot(run) == before


def test_init_across_architectures_says_what_differs_in_one_short_line(tmp_path):
    from MVGCore.checkpoint import save_model
    from MVGCore.config import config_for
    from MVGCore.model import MVGModel
    from MVGCore.train.weights import initialise

    path = save_model(tmp_path / "small.safetensors", MVGModel(config_for("tiny", **MODEL)))
    wider = {**MODEL, "embed_dim": 48, "depth": 3, "feature_blocks": [0, 2]}
    run_config = config(tmp_path, init=str(path), model_overrides=wider)
    with pytest.raises(ValueError) as error:
        initialise(MVGModel(run_config.model_config()), run_config)
    message = str(error.value)
    assert "\n" not in message and len(message) < 600, (len(message), message[:1000])
    assert str(path) in message
    assert "embed_dim 32" in message and "embed_dim 48" in message, message
    assert "depth 2" in message and "depth 3" in message, message
    assert "same architecture" in message and "tile" in message, message
    assert message.count("blocks.") <= 3, message  # a few tensors at most, never all of them


def test_the_checkpoint_a_data_failure_leaves_resumes_exactly(store, tmp_path):
    """The step that failed half-way (its second micro-batch) drew drop-path noise for its first;
    the checkpoint of the step before must not keep those draws, or the resumed run would differ
    from an uninterrupted one."""
    from MVGCore.train import train

    settings = {"steps": 12, "grad_accum": 2, "batch_size": 2, "num_workers": 0, "deterministic": True}
    settings["model_overrides"] = {**MODEL, "drop_path_rate": 0.2}
    uninterrupted = train(config(store, **settings), tmp_path / "a")
    bad = nan_store(store, tmp_path, slice(64, 68))  # first drawn by step 8's second micro-batch
    run = tmp_path / "b"
    with pytest.raises(ValueError, match=r"the training data failed at step (\d+): .*NaN") as error:
        train(config(bad, **settings), run)
    failed = int(str(error.value).split("at step ")[1].split(":")[0])
    assert 1 < failed <= 12
    assert json.loads((run / "checkpoints" / "last.json").read_text())["step"] == failed - 1
    shutil.copyfile(store / "images.npy", bad / "images.npy")  # the data fixed
    resumed = train(config(bad, **settings), run, resume=True)
    assert resumed["weights_sha256"] == uninterrupted["weights_sha256"]
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in losses] == [(r["step"], r["loss"]) for r in expected]
