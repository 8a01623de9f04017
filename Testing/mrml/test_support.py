"""Engine cache, model registry / offline import and the consented installer."""

from __future__ import annotations

import hashlib
import json

import pytest
from MVGSlicerLib import engine, install, models
from MVGSlicerLib.simple_engine import SimpleEngine


def test_engine_cache_loads_once_per_model_and_device(tmp_path):
    loads = []

    def loader(path, device):
        loads.append((path, device))
        return SimpleEngine()

    cache = engine.EngineCache(loader)
    first = cache.get(tmp_path / "a.safetensors", "cpu")
    assert cache.get(tmp_path / "a.safetensors", "cpu") is first
    cache.get(tmp_path / "a.safetensors", "cuda")
    assert len(loads) == 2
    with pytest.raises(ValueError, match="device must be one of"):
        cache.get(tmp_path / "a.safetensors", "tpu")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        engine.load_engine(tmp_path / "missing.safetensors")
    assert engine.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not engine.is_out_of_memory(RuntimeError("shape mismatch"))


def _registry(tmp_path, content: bytes) -> tuple:
    sha = hashlib.sha256(content).hexdigest()
    entry = {
        "name": "MVG small",
        "file": "mvg_small.safetensors",
        "sha256": sha,
        "preset": "small",
        "description": "test",
        "tasks": ["Segment", "Denoise"],
    }
    path = tmp_path / "Models.json"
    path.write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    return models.load_registry(path), sha


def test_shipped_registry_names_the_bundled_default_and_says_so(tmp_path):
    registry = models.load_registry()  # the repository's Resources/Models/Models.json
    assert registry and all(isinstance(e, models.ModelEntry) for e in registry)
    assert models.resolve_model("", registry, tmp_path).name == registry[0].file  # found and SHA-checked
    description = json.loads(models.default_registry_path().read_text())["description"]
    assert "no bundled model" not in description.lower()
    with pytest.raises(FileNotFoundError, match="no bundled MVG model"):
        models.resolve_model("", [], tmp_path)  # what an installation without weights says


def test_registry_rejects_bad_entries(tmp_path):
    path = tmp_path / "Models.json"
    path.write_text(json.dumps({"schema_version": 1, "models": [{"name": "x"}]}))
    with pytest.raises(ValueError, match=r"models\[0\] lacks"):
        models.load_registry(path)
    _registry(tmp_path, b"w")  # a valid registry, then broken below
    data = json.loads(path.read_text())
    data["models"][0]["sha256"] = "abc"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="64 hex digits"):
        models.load_registry(path)


def test_import_weights_offline_checks_sha_and_never_overwrites(tmp_path):
    registry, sha = _registry(tmp_path, b"weights v1")
    models_dir, bundled = tmp_path / "models", tmp_path / "bundled"
    with pytest.raises(FileNotFoundError, match="Import weights"):
        models.resolve_model("MVG small", registry, models_dir, bundled)
    download = tmp_path / "download.safetensors"
    download.write_bytes(b"weights v1")
    with pytest.raises(FileNotFoundError, match=r"comes without download\.json"):
        models.import_weights(download, registry, models_dir)
    (tmp_path / "download.json").write_text('{"config": {}}')
    stored = models.import_weights(download, registry, models_dir)
    assert stored == models_dir / "mvg_small.safetensors" and models.file_sha256(stored) == sha
    assert (models_dir / "mvg_small.json").read_text() == '{"config": {}}'
    assert models.resolve_model("", registry, models_dir, bundled) == stored
    assert not list(models_dir.glob("*.partial"))

    other = tmp_path / "mvg_small.safetensors"
    other.write_bytes(b"my own fine-tuned weights")
    (tmp_path / "mvg_small.json").write_text('{"config": {"depth": 2}}')
    kept = models.import_weights(other, registry, models_dir)
    assert kept != stored and stored.read_bytes() == b"weights v1" and kept.read_bytes() == other.read_bytes()
    assert models.sidecar(kept).read_text() == '{"config": {"depth": 2}}'
    assert (models_dir / "mvg_small.json").read_text() == '{"config": {}}'  # the first import is untouched

    stored.write_bytes(b"corrupted")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        models.resolve_model("MVG small", registry, models_dir, bundled)
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"must be a \.safetensors file"):
        models.resolve_model(str(pickle), registry, models_dir, bundled)


def test_install_puts_torch_and_torchvision_first_through_pytorchutils_and_verifies():
    installed: set[str] = {"numpy"}
    calls = []

    def find_spec(module):
        return object() if module in installed else None

    def pip_install(spec):
        calls.append(("pip", spec))
        installed.add(next(r.module for r in install.REQUIREMENTS if r.spec == spec))

    def install_torch(torch_spec, torchvision_spec):
        calls.append(("pytorchutils", torch_spec, torchvision_spec))
        installed.update({"torch", "torchvision"})

    missing = install.missing_requirements(find_spec=find_spec)
    assert [r.module for r in missing] == [
        "torch",
        "torchvision",
        "timm",
        "safetensors",
        "scipy",
        "skimage",
        "pywt",  # Denoise's noise estimate (skimage.restoration.estimate_sigma) imports it
        "yaml",
    ]
    assert "PyTorch Utils" in install.consent_message(missing, torch_via_pytorchutils=True)
    install.install_missing(
        missing[::-1], pip_install, install_torch, log=lambda _m: None, find_spec=find_spec
    )
    assert calls[0] == ("pytorchutils", "torch>=2.4,<3", "torchvision>=0.19,<1")
    assert [c[1] for c in calls[1:]] == [r.spec for r in missing[:1:-1]]  # the rest by pip, torch never
    assert all("==" not in spec and ",<" in spec for call in calls for spec in call[1:])  # bounds + ceilings
    assert install.missing_requirements(find_spec=find_spec) == []


def test_install_without_pytorchutils_pips_torch_with_torchvision():
    installed: set[str] = set()
    calls = []

    def pip_install(spec):
        calls.append(spec)
        installed.update(name.split(">")[0] for name in spec.split())

    install.install_missing(
        [install.TORCHVISION],
        pip_install,
        None,
        log=lambda _m: None,
        find_spec=lambda m: m in installed or None,
    )
    assert calls == ["torch>=2.4,<3 torchvision>=0.19,<1"]


def test_install_reports_packages_that_stay_missing():
    def find_spec(module):
        return None

    with pytest.raises(RuntimeError, match="still cannot be imported: timm"):
        install.install_missing(
            [install.Requirement("timm", "timm>=1.0,<2")],
            lambda s: None,
            log=lambda m: None,
            find_spec=find_spec,
        )


def test_installer_covers_every_runtime_dependency_of_the_model():
    """What the model process imports must be installable from the module (PyWavelets was missing)."""
    import re
    from pathlib import Path

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    names = {
        re.split(r"[<>=!~ ]", dep, maxsplit=1)[0].lower() for dep in pyproject["project"]["dependencies"]
    }
    shipped_by_slicer = {"numpy", "simpleitk"}
    training_only = {"tensorboard", "tqdm"}
    # Slicer's own Fill between slices effect does this in the module; only evaluate's baseline needs it.
    evaluation_only = {"itk-morphologicalcontourinterpolation"}
    installable = {re.split(r"[<>=!~ ]", r.spec, maxsplit=1)[0].lower() for r in install.REQUIREMENTS}
    assert names - shipped_by_slicer - training_only - evaluation_only == installable - {"torchvision"}
