"""The model registry (Models.json), offline weight import and SHA-256 checks.

Clinical sites are often offline, so a model is a local safetensors file: either listed in the
registry (checked against its SHA-256 without any network) or chosen by the user. Imported weights
are copied atomically into a models folder; nothing already there is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .pipeline import TASKS
from .resources import shared_resource

SCHEMA_VERSION = 1
MODEL_SUFFIX = ".safetensors"
MODELS_DIR_ENV = "MVGSLICER_MODELS_DIR"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    file: str
    sha256: str
    preset: str
    description: str
    tasks: tuple[str, ...]


def default_registry_path() -> Path:
    return shared_resource("Models", "Models.json")


def default_models_dir() -> Path:
    """Where imported weights go: $MVGSLICER_MODELS_DIR, else ~/.mvgslicer/models."""
    return Path(os.environ.get(MODELS_DIR_ENV) or Path.home() / ".mvgslicer" / "models")


def load_registry(path: str | Path | None = None) -> list[ModelEntry]:
    path = Path(path) if path is not None else default_registry_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"model registry not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"model registry {path} is not valid JSON: {error}") from None
    if data.get("schema_version") != SCHEMA_VERSION or not isinstance(data.get("models"), list):
        raise ValueError(
            f"model registry {path} must have schema_version {SCHEMA_VERSION} and a 'models' list"
        )
    return [_entry(path, n, item) for n, item in enumerate(data["models"])]


def _entry(path: Path, n: int, item: dict) -> ModelEntry:
    where = f"model registry {path}, models[{n}]"
    fields = ("name", "file", "sha256", "preset", "description", "tasks")
    missing = [f for f in fields if f not in item]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    sha = str(item["sha256"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"{where}: sha256 must be 64 hex digits, got {item['sha256']!r}")
    if not str(item["file"]).endswith(MODEL_SUFFIX) or Path(item["file"]).name != item["file"]:
        raise ValueError(f"{where}: file must be a bare '*{MODEL_SUFFIX}' file name, got {item['file']!r}")
    unknown = [t for t in item["tasks"] if t not in TASKS]
    if unknown:
        raise ValueError(f"{where}: unknown tasks {unknown}; tasks are {TASKS}")
    return ModelEntry(
        str(item["name"]),
        str(item["file"]),
        sha,
        str(item["preset"]),
        str(item["description"]),
        tuple(item["tasks"]),
    )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model(
    choice: str,
    registry: list[ModelEntry],
    models_dir: str | Path | None = None,
    bundled_dir: str | Path | None = None,
) -> Path:
    """The checked weights file for a UI/console choice: '' (the default), a registry name, or a path."""
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    bundled_dir = Path(bundled_dir) if bundled_dir is not None else default_registry_path().parent
    if not choice:
        if not registry:
            raise FileNotFoundError(
                "no bundled MVG model is available in this version yet; use 'Import weights...' "
                f"to add a {MODEL_SUFFIX} file, or choose a model file directly"
            )
        choice = registry[0].name
    entry = next((e for e in registry if e.name == choice), None)
    if entry is None:
        return _user_file(Path(choice))
    for folder in (bundled_dir, models_dir):
        candidate = folder / entry.file
        if candidate.is_file():
            if file_sha256(candidate) != entry.sha256:
                raise ValueError(
                    f"{candidate} does not match the SHA-256 of model '{entry.name}'; re-import it"
                )
            return candidate
    raise FileNotFoundError(
        f"weights of model '{entry.name}' ({entry.file}) are in neither {bundled_dir} nor {models_dir}; "
        "use 'Import weights...' with the file you were given"
    )


def _user_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix != MODEL_SUFFIX:
        raise ValueError(
            f"model file {path} must be a {MODEL_SUFFIX} file (pickled checkpoints are not loaded)"
        )
    return path


def sidecar(weights: Path) -> Path:
    """The JSON (config + sha256) MVGCore writes beside every weights file (MVGCore.checkpoint naming,
    restated here because that module imports torch)."""
    return weights.with_name(weights.name.removesuffix(MODEL_SUFFIX) + ".json")


def import_weights(
    source: str | Path, registry: list[ModelEntry], models_dir: str | Path | None = None
) -> Path:
    """Copy a checkpoint (weights + JSON sidecar) into the models folder, offline.

    A file matching a registry entry's checksum is stored under that entry's file name; any other
    file keeps its name. An existing different file is never replaced: the copy gets a new name.
    """
    source = _user_file(Path(source))
    if not sidecar(source).is_file():
        raise FileNotFoundError(
            f"{source.name} comes without {sidecar(source).name}: an MVG checkpoint is the pair "
            f"X{MODEL_SUFFIX} + X.json (model configuration); put both in the same folder"
        )
    models_dir = Path(models_dir) if models_dir is not None else default_models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(source)
    entry = next((e for e in registry if e.sha256 == sha), None)
    target = models_dir / (entry.file if entry else source.name)
    if target.exists() or sidecar(target).exists():
        if target.exists() and file_sha256(target) == sha and sidecar(target).is_file():
            return target
        target = target.with_name(f"{target.stem}-{sha[:8]}{MODEL_SUFFIX}")
    _atomic_copy(sidecar(source), sidecar(target))
    _atomic_copy(source, target)
    return target


def _atomic_copy(source: Path, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    os.close(handle)
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
