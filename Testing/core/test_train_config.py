"""Training configs: typos and bad values stop the run with the key named; overrides; examples load."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from MVGCore import cli
from MVGCore.train import main
from MVGCore.train.config import TrainConfig, load_config, parse_override, save_config
from MVGCore.train.state import LAST

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "MVGCore" / "configs"
RECORDED = sorted((REPO / "recipes").rglob("*.yaml")) + sorted((REPO / "research" / "configs").glob("*.yaml"))
"""The recipe of the shipped weights and the probes: not package data, but rerun from the docs."""


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("phantoms: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"c\.yaml.*\['learning_rate'\]"):
        load_config(path)
    with pytest.raises(ValueError, match="not all MVGConfig fields"):
        TrainConfig(phantoms=2, model_overrides={"widht": 3})
    with pytest.raises(ValueError, match=r"sampler.*unknown keys"):
        TrainConfig(phantoms=2, sampler={"flip": 1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"phantoms": 0}, "no training data"),
        ({"model": "huge"}, "not a preset"),
        ({"tasks": ["segment", "paint"]}, "tasks must be"),
        ({"tasks": {"segment": 0}}, "tasks must be"),
        ({"steps": 0}, "steps must be at least 1"),
        ({"steps": "ten"}, "steps must be an integer"),
        ({"tasks": 5}, "tasks must be a list or dict"),
        ({"data": "store"}, "data must be a list"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"amp": "fp16"}, "amp must be one of"),
        ({"layer_decay": 0}, "layer_decay"),
        ({"inpaint_outside_weight": 2.0}, "inpaint_outside_weight must lie in"),
        ({"model_overrides": {"tile_size": 30}}, "multiple of patch_size"),
        ({"val_volume_options": {"ct_window": "lungs"}}, "val_volume_options: option ct_window: unknown CT"),
        ({"val_volume_options": {"k_prompt": 2}}, "val_volume_options: .*unexpected keyword.*k_prompt"),
        ({"val_volume_options": ["wide"]}, "val_volume_options must be a mapping"),
    ],
)
def test_bad_values_are_explained(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"phantoms": 2, **changes})


def test_overrides_and_round_trip(tmp_path):
    assert parse_override("steps=10") == ("steps", 10)
    assert parse_override("tasks=[segment, denoise]") == ("tasks", ["segment", "denoise"])
    assert parse_override("init=null") == ("init", None)
    with pytest.raises(ValueError, match="key=value"):
        parse_override("steps")
    path = tmp_path / "c.yaml"
    path.write_text("phantoms: 2\nlr: 1e-3\nmodel_overrides: {tile_size: 64, patch_size: 16}\n")
    config = load_config(path, {"model_overrides.patch_size": 8, "steps": 7})
    assert config.lr == 0.001 and config.steps == 7
    assert config.model_overrides == {"tile_size": 64, "patch_size": 8}
    assert config.model_config().grid == (16, 8) and config.task_weights()["segment"] == 1.0
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config
    from_python = TrainConfig(
        phantoms=2, phantom_shape=(8, 16, 16), model_overrides={"feature_blocks": (5, 7)}
    )
    save_config(from_python, tmp_path / "tuples.yaml")  # tuples are saved (as lists) and compare equal
    assert load_config(tmp_path / "tuples.yaml") == from_python
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_dotted_overrides_set_one_entry_of_nested_mappings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("phantoms: 2\nsampler: {binary_prob: 0.4, ct_windows: {segment: wide, denoise: paper}}\n")
    config = load_config(path, {"sampler.ct_windows.segment": "paper", "sampler.zoom_prob": 0.5})
    assert config.sampler == {
        "binary_prob": 0.4,
        "ct_windows": {"segment": "paper", "denoise": "paper"},
        "zoom_prob": 0.5,
    }
    assert config.sampler_config().ct_windows == {"segment": (-100.0, 200.0), "denoise": (-100.0, 200.0)}
    assert load_config(path).sampler["ct_windows"]["segment"] == "wide"  # the file's mapping is not changed
    with pytest.raises(
        ValueError, match=r"--set sampler.binary_prob.x: sampler.binary_prob is 0.4, not a mapping"
    ):
        load_config(path, {"sampler.binary_prob.x": 1})
    with pytest.raises(ValueError, match=r"unknown keys.*ct_window"):
        load_config(path, {"sampler.ct_window": "wide"})


@pytest.mark.parametrize("name", ["quickstart.yaml", "tiny_cpu.yaml", "large_8gpu.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name, {"data": ["x"]} if name == "large_8gpu.yaml" else None)
    assert config.model_config().tile_size % config.model_config().patch_size == 0


@pytest.mark.parametrize("path", RECORDED, ids=lambda path: path.relative_to(REPO).as_posix())
def test_recipe_and_research_configs_load(path):
    config = load_config(path, {"data": ["x"]})  # they name their store on the command line
    assert config.model_config().tile_size % config.model_config().patch_size == 0


def test_a_config_naming_the_retired_segment_change_weight_loads_only_with_its_surviving_value(
    tmp_path, caplog
):
    path = tmp_path / "c.yaml"
    path.write_text("phantoms: 2\nsegment_change_weight: 1.0\n")
    with caplog.at_level(logging.INFO, logger="MVGCore.retired"):
        assert load_config(path) == TrainConfig(phantoms=2)
    assert "c.yaml: dropped the retired setting segment_change_weight=1.0" in caplog.text
    path.write_text("phantoms: 2\nsegment_change_weight: 5\n")
    with pytest.raises(ValueError, match=r"c\.yaml: segment_change_weight=5 was retired"):
        load_config(path)


def test_model_overrides_naming_the_retired_carry_prompt_load_only_with_its_surviving_value(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text("phantoms: 2\nmodel_overrides: {carry_prompt: false, depth: 2, feature_blocks: [1]}\n")
    with caplog.at_level(logging.INFO, logger="MVGCore.retired"):
        assert load_config(path).model_config().depth == 2
    assert "model_overrides: dropped the retired setting carry_prompt=False" in caplog.text
    path.write_text("phantoms: 2\nmodel_overrides: {carry_prompt: true}\n")
    with pytest.raises(ValueError, match=r"c\.yaml: model_overrides: carry_prompt=True was retired"):
        load_config(path)


@pytest.mark.parametrize("weight", [1.0, 5.0])
def test_resuming_a_run_whose_config_names_segment_change_weight(tmp_path, capsys, weight):
    """A run folder keeps the config it started with: with the surviving value it resumes as the
    same run (here it gets as far as the check of its step count), with another it is refused."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_config(load_config(None, {"data": [str(tmp_path / "data")], "steps": 3}), run / "config.yaml")
    with open(run / "config.yaml", "a", encoding="utf-8") as saved:
        saved.write(f"segment_change_weight: {weight}\n")
    (run / "checkpoints" / LAST).write_text('{"step": 5, "model": "step_000005.safetensors"}')
    assert cli.run(main, "python -m MVGCore.train", ["--out", str(run), "--resume"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    if weight == 1.0:
        assert "reached step 5 and --steps is 3" in error
    else:
        assert "config.yaml: segment_change_weight=5.0 was retired" in error


def test_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "run"), "--phantoms", "2", "--set", "stepz=3"]
    assert cli.run(main, "python -m MVGCore.train", argv) == 2
    error = capsys.readouterr().err
    assert "stepz" in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
