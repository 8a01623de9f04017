"""The training run's settings: one YAML file, validated field by field, plus ``--set`` overrides.

A typo in a config key must stop the run before hours are spent on a default value, so unknown
keys are errors that name them. The resolved config is printed and saved in the run folder, and
``--resume`` reads it back from there, so a run is always described by one file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from MVGCore.config import PRESETS, MVGConfig, config_for
from MVGCore.config import RETIRED as RETIRED_MODEL_FIELDS
from MVGCore.retired import drop_retired
from MVGCore.types import TASKS

AMP_MODES = ("auto", "bf16", "fp32")
RETIRED = {"segment_change_weight": 1.0}
"""Keys a config may still name, with the value that is now the only behaviour (:mod:`MVGCore.retired`):
run folders keep the config they started with, and ``--resume`` reads it back."""


@dataclass
class TrainConfig:
    """Everything a run needs besides its output folder.

    Learning rates are absolute (not scaled by batch size). ``steps`` counts optimizer steps; one
    step consumes ``batch_size * grad_accum`` samples on every rank. ``model_overrides`` replaces
    fields of the ``model`` preset (e.g. ``tile_size``, ``depth``); the store's tile size must match.
    ``sampler`` holds :class:`MVGCore.data.samplers.SamplerConfig` fields (augment, noise, holes,
    datasets, cross_case_prob ...); ``tasks`` is a list (equal weights) or a task: weight mapping.
    """

    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: list[str] = field(default_factory=list)
    phantoms: int = 0
    phantom_shape: list[int] = field(default_factory=lambda: [24, 64, 64])
    phantom_classes: int = 3
    axis: int = 0
    tasks: list[str] | dict[str, float] = field(default_factory=lambda: list(TASKS))
    sampler: dict[str, Any] = field(default_factory=dict)
    val_cases: list[str] = field(default_factory=list)
    val_volumes: list[str] = field(default_factory=list)
    """Open-sample ids (``source/name``) of held-out labelled volumes segmented at every validation
    the way users run it (``val_volume_prompts`` prompt slices, Dice on all other slices)."""
    val_volume_prompts: int = 2
    val_volume_options: dict[str, Any] = field(default_factory=dict)
    """``MVGCore.predict.Options`` for those volumes (e.g. ``{ct_window: wide}`` for a model
    trained to segment CT in the wide window): validation runs the model as it will be run."""
    mask_ar: dict[str, float] = field(default_factory=dict)
    """Chance of the AR mask (the whole query half hidden) per task, over the reference's mix."""
    inpaint_outside_weight: float = 1.0
    """Loss weight of an inpainting query's pixels outside its hole (1: the reference's uniform
    weight). Inference returns the input there, so only the hole's answer is used."""
    val_fraction: float = 0.2
    val_samples: int = 8
    val_every: int = 100
    seed: int = 0
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 50
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    layer_decay: float = 0.8
    lr_scales: dict[str, float] = field(default_factory=dict)
    train_modules: list[str] = field(default_factory=list)
    clip_grad: float = 0.0
    amp: str = "auto"
    num_workers: int = 2
    log_every: int = 1
    ckpt_every: int = 100
    keep_checkpoints: int = 3
    init: str | None = None
    init_encoder: str | None = None
    deterministic: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):
            # Tuples become lists so that the config saved as YAML compares equal to this one.
            setattr(self, f.name, _plain(getattr(self, f.name)))
            # PyYAML reads "1e-3" (no dot) as a string; accept it as the number it means.
            value = getattr(self, f.name)
            if f.type == "float" and isinstance(value, (str, int)) and not isinstance(value, bool):
                try:
                    setattr(self, f.name, float(value))
                except ValueError:
                    problems.append(f"{f.name} must be a number, got {value!r}")
            elif f.type == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
                problems.append(f"{f.name} must be an integer, got {value!r}")
            elif kinds := [
                k for k in (list, dict) if f.type.startswith(k.__name__) or f"| {k.__name__}" in f.type
            ]:
                if not isinstance(value, tuple(kinds)):
                    names = " or ".join(k.__name__ for k in kinds)
                    problems.append(f"{f.name} must be a {names}, got {value!r}")
        problems += _option_problems(self.val_volume_options)
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        if self.model not in PRESETS:
            problems.append(f"model {self.model!r} is not a preset; choose one of {sorted(PRESETS)}")
        if not self.data and self.phantoms <= 0:
            problems.append("no training data: set data (store or dataset paths) or phantoms > 0")
        unknown_tasks = sorted(set(self.tasks) - set(TASKS))
        if unknown_tasks or not any(w > 0 for w in self.task_weights().values()):
            problems.append(
                f"tasks must be a non-empty list (or task: weight mapping) of {list(TASKS)}, got {self.tasks}"
            )
        if "tasks" in self.sampler:
            problems.append("set task weights with the top-level 'tasks' key, not sampler.tasks")
        if len(self.phantom_shape) != 3 or min(self.phantom_shape) < 4:
            problems.append(f"phantom_shape must be three sizes (k, j, i) >= 4, got {self.phantom_shape}")
        if self.axis not in (0, 1, 2):
            problems.append(f"axis must be 0, 1 or 2, got {self.axis}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "ckpt_every",
            "val_every",
            "val_volume_prompts",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("val_samples", "warmup_steps", "num_workers", "phantoms"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if not 0.0 < self.lr or not 0.0 <= self.min_lr <= self.lr:
            problems.append(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if not 0.0 < self.layer_decay <= 1.0:
            problems.append(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        for module, scale in self.lr_scales.items():
            if not isinstance(scale, (int, float)) or not scale > 0:
                problems.append(f"lr_scales[{module!r}] must be a positive number, got {scale!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0.0 <= self.inpaint_outside_weight <= 1.0:
            problems.append(f"inpaint_outside_weight must lie in [0, 1], got {self.inpaint_outside_weight}")
        if self.weight_decay < 0 or self.clip_grad < 0:
            problems.append("weight_decay and clip_grad must not be negative (clip_grad 0 = off)")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for task, chance in self.mask_ar.items():
            if task not in TASKS or not isinstance(chance, (int, float)) or not 0.0 <= chance <= 1.0:
                problems.append(
                    f"mask_ar maps tasks of {list(TASKS)} to chances in [0, 1], got {task}: {chance}"
                )
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        self.model_config()  # unknown or inconsistent model overrides fail here, not mid-run
        self.sampler_config()

    def sampler_config(self):
        """The validated :class:`MVGCore.data.samplers.SamplerConfig` of this run."""
        from MVGCore.data.samplers import SamplerConfig

        try:
            return SamplerConfig.from_dict({**self.sampler, "tasks": self.task_weights()})
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid training config 'sampler': {error}") from error

    def task_weights(self) -> dict[str, float]:
        """``tasks`` as the sampler's weights: a list means equal weights."""
        if isinstance(self.tasks, dict):
            return {task: float(weight) for task, weight in self.tasks.items()}
        return dict.fromkeys(self.tasks, 1.0)

    def model_config(self) -> MVGConfig:
        try:
            return config_for(self.model, **self.model_overrides)
        except TypeError as error:
            known = sorted(f.name for f in dataclasses.fields(MVGConfig))
            raise ValueError(
                f"model_overrides {sorted(self.model_overrides)} are not all MVGConfig fields ({known})"
            ) from error

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of training settings, got {type(data).__name__}")
        data = drop_retired(data, RETIRED, source)
        if isinstance(data.get("model_overrides"), dict):  # a model field retired since the file was written
            where = f"{source}: model_overrides"
            overrides = drop_retired(data["model_overrides"], RETIRED_MODEL_FIELDS, where)
            data = {**data, "model_overrides": overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"{source}: unknown training config keys {unknown}; known keys are {sorted(known)}"
            )
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``steps=10``, ``tasks=[segment]``, ``init=null``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({error})") from error


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config in the YAML file ``path`` (None: defaults) with ``overrides`` applied on top.

    A dotted key sets one entry of a nested mapping and keeps the rest of the file's
    (``--set model_overrides.depth=2``, ``--set sampler.ct_windows.segment=paper``).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"cannot parse training config {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"training config {path}: expected a mapping, got {type(data).__name__}")
        source = str(path)
    data = dict(data)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return TrainConfig.from_dict(data, source + (" with overrides" if overrides else ""))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for the key ``a.b.c``, copying the mappings on the way (the
    file's own stay as read) and creating the missing ones."""
    *parents, last = key.split(".")
    node = data
    for depth, name in enumerate(parents):
        child = node.get(name, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise ValueError(f"--set {key}: {where} is {child!r}, not a mapping to set {last!r} in")
        node[name] = node = dict(child)
    node[last] = value


def save_config(config: TrainConfig, path: str | Path) -> None:
    from MVGCore.checkpoint import atomic_write

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(Path(path), lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def _option_problems(options: Any) -> list[str]:
    """Why ``val_volume_options`` would fail at the first validation, checked before training."""
    from MVGCore.predict import Options

    if not isinstance(options, dict):
        return [f"val_volume_options must be a mapping of Predictor options, got {options!r}"]
    try:
        Options(**options)
    except (TypeError, ValueError) as error:
        return [f"val_volume_options: {error}"]
    return []
