import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from MVGCore.checkpoint import load_model, load_state_dict_file, load_tensors, save_model, sidecar_path
from MVGCore.config import config_for
from MVGCore.model import MVGModel


def _tiny():
    return MVGModel(config_for("tiny", tile_size=32, depth=2, merge_index=0, feature_blocks=(1,)))


def test_save_load_round_trip_restores_config_and_weights(tmp_path):
    model = _tiny()
    path = save_model(tmp_path / "m.safetensors", model, extra={"steps": 7})
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["config"]["depth"] == 2 and meta["steps"] == 7 and len(meta["sha256"]) == 64
    loaded, loaded_meta = load_model(path)
    assert loaded_meta["steps"] == 7
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_half_precision_export_loads_as_float32(tmp_path):
    model = _tiny()
    path = save_model(tmp_path / "m16.safetensors", model, half=True)
    loaded, _ = load_model(path)
    w = loaded.blocks[0].attn.qkv.weight
    assert w.dtype == torch.float32
    assert torch.allclose(w, model.blocks[0].attn.qkv.weight, atol=1e-3)


def test_a_modified_weights_file_is_detected(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _tiny())
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or was replaced"):
        load_tensors(path)


def test_missing_files_and_pickles_are_refused_with_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "absent.safetensors")
    pickle_file = tmp_path / "mae.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1, 197, 8)}}, pickle_file)
    with pytest.raises(ValueError, match="pickle-based"):
        load_model(pickle_file)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_state_dict_file(pickle_file)
    state = load_state_dict_file(pickle_file, allow_pickle=True)
    assert state["pos_embed"].shape == (1, 197, 8)


def test_no_temporary_files_are_left_behind(tmp_path):
    save_model(tmp_path / "m.safetensors", _tiny())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_a_sidecar_naming_the_retired_carry_prompt_loads_when_off_and_is_refused_when_on(tmp_path, caplog):
    """The bundled sidecar still names ``carry_prompt: false`` (the weights are never rewritten)."""
    bundled = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "mvg_tiny_default.safetensors"
    assert json.loads(sidecar_path(bundled).read_text())["config"]["carry_prompt"] is False
    with caplog.at_level(logging.INFO, logger="MVGCore.retired"):
        model, _ = load_model(bundled)
    assert "mvg_tiny_default.json: dropped the retired setting carry_prompt=False" in caplog.text
    assert not hasattr(model.config, "carry_prompt")
    on = tmp_path / "on.safetensors"
    shutil.copy(bundled, on)
    meta = json.loads(sidecar_path(bundled).read_text())
    meta["config"]["carry_prompt"] = True
    sidecar_path(on).write_text(json.dumps(meta))
    with pytest.raises(ValueError) as refused:
        load_model(on)
    message = str(refused.value)
    assert "carry_prompt=True was retired (only carry_prompt=False remains)" in message
    assert len(message.splitlines()) == 1


def test_a_sidecar_or_a_folder_given_for_the_weights_says_what_is_expected(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _tiny())
    with pytest.raises(
        ValueError, match=r"m\.json is the JSON sidecar; give the weights it describes, m\.safetensors"
    ):
        load_model(sidecar_path(path))
    with pytest.raises(
        IsADirectoryError, match=r"is a folder; give a \.safetensors file with its \.json sidecar"
    ):
        load_model(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_state_dict_file(tmp_path)
