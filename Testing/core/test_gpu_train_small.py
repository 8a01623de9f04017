"""benchmarks/gpu_train_small.py, the prepared H200 run: its --smoke mode goes through the pack,
the throughput probe, training, shards and evaluation on a CPU; the shards keep to their size
limit and merge into a checkpoint that holds the trained weights; nothing held out is packed."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root: python -m benchmarks.X
    sys.path.insert(0, str(REPO))

from benchmarks import gpu_train_small as gpu  # noqa: E402
from MVGCore.checkpoint import load_model  # noqa: E402
from MVGCore.config import config_for  # noqa: E402
from MVGCore.data.sources import Case  # noqa: E402
from MVGCore.model import MVGModel  # noqa: E402


@pytest.mark.slow
def test_smoke_run_returns_shards_that_merge_into_the_trained_weights(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert gpu.main(["train", "--smoke", "--out", str(out), "--work", str(work)]) == 0
    results = json.loads((out / gpu.RESULTS_FILE).read_text())
    manifest = json.loads((out / gpu.SHARDS_FILE).read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert [p.name for p in shards] == results["shards"] == [s["file"] for s in manifest["shards"]]
    limit = gpu.SMOKE["shard_kib"] * 1024
    assert len(shards) >= 3 and all(p.stat().st_size <= limit for p in shards)
    assert any(len(t["pieces"]) > 1 for t in manifest["tensors"].values())  # tensors were cut
    assert results["training"]["steps"] == gpu.SMOKE["max_steps"] and results["training"]["probe"]["steps"]
    assert [v["case"] for v in results["volumes"]] == ["Phantom/phantom_003", "Phantom/phantom_004"]
    for row in results["volumes"]:
        assert all(
            math.isfinite(row[k]) for k in ("dice_mvg", "dice_mvg_adapt2", "dice_copy", "dice_register")
        )

    merged = gpu.merge_shards(out, tmp_path / "merged.safetensors")
    model, meta = load_model(merged)
    trained, _ = load_model(results["training"]["checkpoint"])
    assert meta["config"] == trained.config.to_dict() and meta["trained"]["steps"] == gpu.SMOKE["max_steps"]
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value.half().float()), name
    with pytest.raises(FileExistsError, match="not overwriting"):
        gpu.merge_shards(out, merged)

    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    with open(damaged / shards[1].name, "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    with pytest.raises(ValueError, match=f"shard .*{shards[1].name} is damaged"):
        gpu.merge_shards(damaged, tmp_path / "from_damaged.safetensors")
    assert not (tmp_path / "from_damaged.safetensors").exists()


@pytest.mark.slow
def test_the_device_part_runs_without_simpleitk(tmp_path):
    """The GPU machine has no SimpleITK: given a pack, train to results and shards without it."""
    work = tmp_path / "work"
    pack = gpu.smoke_pack(work / "smoke")
    blocked = (
        "import runpy, sys; sys.modules['SimpleITK'] = None; "  # every 'import SimpleITK' now fails
        "sys.argv = ['gpu_train_small', *sys.argv[1:]]; "
        "runpy.run_module('benchmarks.gpu_train_small', run_name='__main__')"
    )
    args = [
        "train",
        "--smoke",
        "--pack",
        str(pack),
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(work / "device"),
    ]
    done = subprocess.run(
        [sys.executable, "-c", blocked, *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "equal to the trained weights" in done.stdout
    assert json.loads((tmp_path / "out" / gpu.RESULTS_FILE).read_text())["volumes"]


def test_shards_keep_to_the_limit_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MVGModel(
        config_for(
            "tiny",
            tile_size=32,
            depth=2,
            embed_dim=48,
            num_heads=2,
            merge_index=0,
            feature_blocks=(1,),
            decoder_dim=8,
        )
    )
    paths = gpu.write_shards(model, tmp_path / "shards", 20_000)
    assert len(paths) > 10 and all(p.stat().st_size <= 20_000 for p in paths)
    merged, _ = load_model(gpu.merge_shards(tmp_path / "shards", tmp_path / "one.safetensors"))
    for name, value in model.state_dict().items():
        assert torch.equal(merged.state_dict()[name], value.half().float()), name
    with pytest.raises(ValueError, match="no room"):
        gpu.write_shards(model, tmp_path / "tiny", 1000)


def test_the_device_config_comes_back_and_the_plain_preset_would_not():
    config = gpu.run_config(smoke=False, store=Path("store"))
    assert config.model == "small" and config.model_config().tile_size == 224
    gpu.check_returnable(config, 15 * gpu.MIB)  # 53.5 MiB of fp16 weights: 4 shards + 2 JSON files
    assert gpu.fp16_bytes(config) < 56 * gpu.MIB
    plain = gpu._with(config, model_overrides={"tile_size": 224})
    with pytest.raises(ValueError, match="the device returns at most 8 files, 64 MiB"):
        gpu.check_returnable(plain, 15 * gpu.MIB)


def test_the_pack_leaves_out_every_case_the_default_model_holds_out():
    names, volumes = gpu.held_out_names()
    assert volumes == ["pyradiomics/lung2", "pyradiomics/brain1", "mricron/ch2_lobes"]
    assert {"lung2", "brain1", "ch2_lobes", "ch2_aal", "ch2better", "chest_xr"} <= set(names)

    def case(dataset, case_id):
        return Case(case_id, dataset, (Path("x.nrrd"),), ("MR",), tasks=("denoise",))

    assert gpu.is_held_out(case("mricron", "ch2_brodmann"), names)
    assert gpu.is_held_out(case("pyradiomics", "lung2"), names)
    assert not gpu.is_held_out(case("pyradiomics", "lung1"), names)
    assert not gpu.is_held_out(case("nilearn", "mni152_tissue"), names)
