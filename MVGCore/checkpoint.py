"""Checkpoints as safetensors weights + a JSON sidecar (config, metadata, sha256 of the weights).

Nothing here unpickles unless the caller passes ``allow_pickle=True``: a pickle can run code, and
model files travel between people. Every write goes to a temporary file in the target folder and
is moved into place with ``os.replace``, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from MVGCore.config import MVGConfig
from MVGCore.model import MVGModel

FORMAT = "mvgcore-checkpoint/1"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_path(weights: str | Path) -> Path:
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".json")


def check_weights_path(path: str | Path, what: str = "checkpoint", sidecar: bool = True) -> Path:
    """``path`` when it names a weights file (and, with ``sidecar``, its JSON sidecar lies beside
    it); otherwise a one-line error saying what was given and what is expected.

    The sidecar is found from the weights' name, so a sidecar given in their place was looked up as
    ``X.json.json``, and a folder was reported as "not found"; checked here, before anything is
    read, the error says which of the two files the name should be. ``what`` names the path in the
    message (``--checkpoint`` on a command line)."""
    path = Path(path)
    expected = "a .safetensors file" + (" with its .json sidecar beside it" if sidecar else "")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder; give {expected}")
    if path.suffix.lower() == ".json":
        raise ValueError(
            f"{what} {path} is the JSON sidecar; give the weights it describes, "
            f"{path.with_suffix('.safetensors').name}, beside it"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found; expected {expected}")
    side = sidecar_path(path)
    if sidecar and not side.is_file():
        raise FileNotFoundError(
            f"{what} {path} has no JSON sidecar {side.name} beside it (config and sha256)"
        )
    return path


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` then move the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` as safetensors and ``meta`` (+ format, sha256) as the JSON sidecar."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda temp: save_file(plain, temp))
    record = {"format": FORMAT, **meta, "weights": path.name, "sha256": sha256_of(path)}
    atomic_write(sidecar_path(path), lambda temp: Path(temp).write_text(json.dumps(record, indent=2)))
    return path


def load_tensors(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_tensors`, checking the sha256 recorded beside it."""
    path = check_weights_path(path)
    side = sidecar_path(path)
    meta = read_sidecar(side)
    if verify:
        recorded = meta.get("sha256")
        if not isinstance(recorded, str) or not recorded.strip():
            raise ValueError(f"checkpoint sidecar {side} records no sha256 of {path.name} to verify it")
        actual = sha256_of(path)
        if recorded.strip().lower() != actual:
            raise ValueError(
                f"checkpoint {path} is corrupt or was replaced: sha256 {actual} differs from "
                f"{recorded} recorded in {side.name}"
            )
    return _load_safetensors(path), meta


def read_sidecar(side: Path) -> dict[str, Any]:
    """The JSON object of a checkpoint sidecar; an unparsable or non-object file is named."""
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot parse checkpoint sidecar {side}: {error}") from error
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint sidecar {side} must hold a JSON object, got {type(meta).__name__}")
    return meta


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except SafetensorError as error:
        raise ValueError(f"cannot read weights {path}: not a complete safetensors file ({error})") from error


def save_model(
    path: str | Path, model: MVGModel, extra: dict[str, Any] | None = None, half: bool = False
) -> Path:
    """Weights (optionally fp16, for shipping) + config + ``extra`` metadata."""
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return save_tensors(path, state, {"config": model.config.to_dict(), **(extra or {})})


def load_model(path: str | Path, allow_pickle: bool = False) -> tuple[MVGModel, dict[str, Any]]:
    """Build the model described by the sidecar's config and load its weights (as float32)."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path} is a pickle-based file; MVGCore checkpoints are .safetensors with a .json sidecar. "
            "To import foreign weights use load_state_dict_file(..., allow_pickle=True) knowingly."
        )
    tensors, meta = load_tensors(path)
    model = MVGModel(config_of(meta, sidecar_path(path)))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except RuntimeError as error:
        first = str(error).strip().splitlines()[:2]
        raise ValueError(
            f"weights {path} do not fit the model config in {sidecar_path(path).name}: {' '.join(first)}"
        ) from error
    return model, meta


def model_config(path: str | Path, what: str = "checkpoint") -> MVGConfig:
    """The model config in the sidecar of the checkpoint ``path``, read without its weights: a
    command checks its options against the model (patch size, memory of a tile) before it spends
    the time to load it."""
    side = sidecar_path(check_weights_path(path, what))
    return config_of(read_sidecar(side), side)


def config_of(meta: dict[str, Any], side: Path) -> MVGConfig:
    """The model config a sidecar's ``meta`` holds; an absent or invalid one names ``side``."""
    if "config" not in meta:
        raise ValueError(f"{side} has no 'config'; it is not an MVGCore model checkpoint")
    try:
        return MVGConfig.from_dict(meta["config"], side.name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{side}: invalid model config: {error}") from error


def load_state_dict_file(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """A foreign state dict (e.g. MAE or timm ViT weights): safetensors always, pickles only on request.

    Even with ``allow_pickle`` the file is read with ``weights_only=True`` (tensors and plain
    containers only). MAE-style ``{"model": state_dict}`` wrappers are unwrapped.
    """
    path = check_weights_path(path, "weights file", sidecar=False)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if not allow_pickle:
        raise ValueError(
            f"refusing to unpickle {path}: pickle files can run code. Convert it to .safetensors, "
            "or pass allow_pickle=True (--allow-pickle) if you trust its source."
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "module"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(data).__name__})")
    return data
