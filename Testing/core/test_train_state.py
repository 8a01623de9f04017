"""Training checkpoints: exact continuation (weights, AdamW moments, RNG), pruning, no pickle."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from MVGCore.checkpoint import load_model
from MVGCore.config import config_for
from MVGCore.model import MVGModel
from MVGCore.optim import build_optimizer
from MVGCore.train.state import last_checkpoint, load_checkpoint, save_checkpoint

CONFIG = config_for(
    "tiny",
    tile_size=16,
    patch_size=8,
    embed_dim=16,
    depth=2,
    num_heads=2,
    merge_index=0,
    feature_blocks=(0, 1),
    decoder_dim=4,
    drop_path_rate=0.3,
)


def fresh() -> tuple[MVGModel, torch.optim.Optimizer]:
    model = MVGModel(CONFIG)
    return model, build_optimizer(model, lr=1e-2, weight_decay=0.05, layer_decay=0.8)


def step(model: MVGModel, optimizer: torch.optim.Optimizer) -> float:
    """A training step that draws from the torch RNG (inputs and drop-path), as real steps do."""
    images, targets = torch.randn(2, 3, 32, 16), torch.randn(2, 3, 32, 16)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 4:] = True
    optimizer.zero_grad()
    loss = (model(images, targets, mask) - targets).abs().mean()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def test_resume_continues_exactly(tmp_path):
    torch.manual_seed(0)
    model, optimizer = fresh()
    for _ in range(2):
        step(model, optimizer)
    save_checkpoint(tmp_path, 2, model, optimizer)
    expected = [step(model, optimizer) for _ in range(3)]
    python_draw, numpy_draw = random.random(), np.random.random()  # noqa: NPY002

    torch.manual_seed(123)  # a different process state, all of it overwritten by the resume
    other_model, other_optimizer = fresh()
    random.seed(5)
    resumed = load_checkpoint(last_checkpoint(tmp_path), other_model, other_optimizer)
    assert resumed.step == 2 and resumed.rng_restored
    assert [step(other_model, other_optimizer) for _ in range(3)] == expected
    assert (random.random(), np.random.random()) == (python_draw, numpy_draw)  # noqa: NPY002
    for a, b in zip(model.state_dict().values(), other_model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_files_are_safetensors_and_the_model_loads_alone(tmp_path):
    model, optimizer = fresh()
    step(model, optimizer)
    path = save_checkpoint(tmp_path, 1, model, optimizer, extra={"note": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.json",
        "step_000001.json",
        "step_000001.safetensors",
        "step_000001.state.json",
        "step_000001.state.safetensors",
    ]
    loaded, meta = load_model(path)
    assert meta["step"] == 1 and meta["note"] == "x"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    state_meta = json.loads((tmp_path / "step_000001.state.json").read_text())
    assert len(state_meta["optimizer"]["param_groups"]) == len(optimizer.param_groups)


def test_keeps_the_newest_checkpoints_only(tmp_path):
    model, optimizer = fresh()
    for s in (10, 20, 30, 40):
        save_checkpoint(tmp_path, s, model, optimizer, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "step_000030.safetensors",
        "step_000030.state.safetensors",
        "step_000040.safetensors",
        "step_000040.state.safetensors",
    ]
    assert last_checkpoint(tmp_path).name == "step_000040.safetensors"
    assert last_checkpoint(tmp_path / "none") is None


def test_rank_states_and_config_mismatch(tmp_path):
    model, optimizer = fresh()
    states = [{"torch_cpu": torch.get_rng_state()}, {"torch_cpu": torch.manual_seed(9).get_state()}]
    save_checkpoint(tmp_path, 1, model, optimizer, rank_rng=states)
    load_checkpoint(last_checkpoint(tmp_path), *fresh(), rank=1)
    assert torch.equal(torch.get_rng_state(), states[1]["torch_cpu"])
    assert not load_checkpoint(last_checkpoint(tmp_path), *fresh(), rank=2).rng_restored
    other = MVGModel(CONFIG.replace(embed_dim=32))
    with pytest.raises(ValueError, match="different model config"):
        load_checkpoint(last_checkpoint(tmp_path), other, build_optimizer(other, 1e-3, 0.0, 1.0))
