"""Suite-wide settings: deterministic, single-threaded-friendly torch on a small CPU machine."""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A small randomly initialised MVG checkpoint (safetensors + sidecar) for pipeline tests."""
    from MVGCore.checkpoint import save_model
    from MVGCore.config import config_for
    from MVGCore.model import MVGModel

    torch.manual_seed(0)
    config = config_for(
        "tiny",
        tile_size=32,
        depth=2,
        embed_dim=48,
        num_heads=2,
        merge_index=0,
        feature_blocks=(1,),
        decoder_dim=8,
    )
    return save_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", MVGModel(config))


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
