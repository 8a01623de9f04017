"""Datasets as researchers keep them on disk: nnU-Net v2 raw, Medical Segmentation Decathlon, manifest.

Each loader turns a layout into a list of :class:`Case` records (paths only, nothing is read), so
that listing a large dataset is instant. :func:`validate_cases` then opens every file once and
stops with an error naming the file and the problem before any training starts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..intensity import MODALITIES, check_modality
from ..io import read_channels, read_geometry, read_labels, write_volume
from ..types import TASKS

log = logging.getLogger(__name__)

IMAGE_TASKS = ("denoise", "inpaint")
"""Tasks every clean image supports: the degraded input is made on the fly."""

MANIFEST_KEYS = ("cases", "license", "modality", "name")
"""Keys a manifest may hold at its top level (docs/data.md); any other is refused, not skipped."""
CASE_KEYS = ("dataset", "id", "image", "label", "license", "modality", "target", "task", "tasks")
"""Keys a manifest case may hold: a misspelt ``lable`` dropped silently would cost the case its
label and its segment task, so an unknown key is an error naming the file and the known keys."""

_MR_CHANNELS = re.compile(r"^(mri?|t1|t2|flair|pd|adc|dwi|swi|t1c|t1ce|t1gd|t1w|t2w|dce|hbv|perfusion)", re.I)


@dataclass(frozen=True)
class Case:
    """One training case: paths to its channels and, where it has them, a label or target image."""

    case_id: str
    dataset: str
    images: tuple[Path, ...]
    modalities: tuple[str, ...]
    label: Path | None = None
    target: Path | None = None
    tasks: tuple[str, ...] = ("segment",)
    license: str = ""

    def __post_init__(self) -> None:
        where = f"case {self.case_id!r} of dataset {self.dataset!r}"
        if not self.images:
            raise ValueError(f"{where} has no image")
        if len(self.modalities) != len(self.images):
            raise ValueError(
                f"{where}: {len(self.images)} image channels but {len(self.modalities)} modalities"
            )
        for modality in self.modalities:
            if modality not in MODALITIES:
                raise ValueError(f"{where}: modality {modality!r} is not one of {MODALITIES}")
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"{where}: tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if "segment" in self.tasks and self.label is None:
            raise ValueError(f"{where}: task 'segment' needs a label")
        if "synthesize" in self.tasks and self.target is None and len(self.images) < 2:
            raise ValueError(f"{where}: task 'synthesize' needs a target image or two image channels")


def modality_of(channel_name: str) -> str:
    """MVG modality of an nnU-Net/MSD channel name ('CT', 'T2', 'FLAIR', 'ADC', 'zscore'...)."""
    try:
        return check_modality(channel_name)
    except ValueError:
        return "MR" if _MR_CHANNELS.match(channel_name.strip()) else "OTHER"


def default_tasks(has_label: bool, channels: int) -> tuple[str, ...]:
    """What a case supports when the layout does not say: labels segment, channel pairs synthesize."""
    tasks = (("segment",) if has_label else ()) + IMAGE_TASKS
    return tasks + (("synthesize",) if channels > 1 else ())


def load_cases(path: str | Path) -> list[Case]:
    """Cases of a dataset folder (nnU-Net v2 or MSD, told apart by dataset.json) or a manifest file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix.lower() in (".json", ".yaml", ".yml") and path.name != "dataset.json":
            return load_manifest(path)
        if path.name == "dataset.json":
            return load_cases(path.parent)
        raise ValueError(f"{path}: expected a dataset folder or a .json/.yaml manifest")
    description = _read_dataset_json(path)
    return load_msd(path) if "training" in description else load_nnunet(path)


def load_nnunet(root: str | Path) -> list[Case]:
    """nnU-Net v2 raw dataset: imagesTr/{case}_{XXXX}{ending}, labelsTr/{case}{ending}, dataset.json.

    Only the training split is listed; imagesTs is the user's held-out set and stays untouched.
    A dataset without any label is image-only; once labelsTr holds labels, every case needs one.
    """
    root = Path(root)
    description = _read_dataset_json(root)
    channels = description.get("channel_names") or description.get("modality")
    names = _channel_names(channels, root / "dataset.json", "channel_names")
    ending = description.get("file_ending", ".nii.gz")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise FileNotFoundError(f"nnU-Net dataset {root} has no imagesTr folder")
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(ending)}$")
    channel_files: dict[str, dict[int, Path]] = {}
    for file in sorted(images_dir.iterdir()):
        match = pattern.match(file.name)
        if match is None:
            if not file.name.startswith("."):
                log.warning("skipping %s: not named {case}_{XXXX}%s", file, ending)
            continue
        channel_files.setdefault(match.group(1), {})[int(match.group(2))] = file
    dataset = description.get("name") or root.name
    license = str(description.get("license") or description.get("licence") or "")
    labelled = labels_dir.is_dir() and any(labels_dir.glob(f"*{ending}"))
    cases = []
    for case_id, files in channel_files.items():
        if sorted(files) != list(range(len(names))):
            raise ValueError(
                f"nnU-Net case {case_id!r} in {images_dir}: expected channels 0..{len(names) - 1} "
                f"({', '.join(names)}), found {sorted(files)}"
            )
        label = labels_dir / f"{case_id}{ending}"
        if labelled and not label.exists():
            raise FileNotFoundError(f"nnU-Net case {case_id!r} has images but no label {label}")
        has_label = labelled
        cases.append(
            Case(
                case_id=case_id,
                dataset=dataset,
                images=tuple(files[c] for c in range(len(names))),
                modalities=tuple(modality_of(name) for name in names),
                label=label if has_label else None,
                tasks=default_tasks(has_label, len(names)),
                license=license,
            )
        )
    if not cases:
        raise ValueError(f"nnU-Net dataset {root}: no images named {{case}}_{{XXXX}}{ending} in {images_dir}")
    return cases


def load_msd(root: str | Path, split_dir: str | Path | None = None) -> list[Case]:
    """Medical Segmentation Decathlon folder: dataset.json lists 'training' image/label pairs.

    Multi-modal MSD images are 4D files; their channels are written once as separate 3D files
    into ``split_dir`` (default: a folder in the MVG cache), never next to the user's data.
    """
    root = Path(root)
    description = _read_dataset_json(root)
    entries = description.get("training")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{root / 'dataset.json'}: 'training' must be a non-empty list of image/label pairs")
    channels = description.get("modality") or description.get("channel_names") or {"0": "OTHER"}
    names = _channel_names(channels, root / "dataset.json", "modality")
    dataset = description.get("name") or root.name
    license = str(description.get("licence") or description.get("license") or "")
    cases = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{root / 'dataset.json'}: training entry {number} has no 'image'")
        image = (root / entry["image"]).resolve()
        if image.name.startswith("._"):  # macOS resource forks shipped in some MSD archives
            continue
        label = (root / entry["label"]).resolve() if entry.get("label") else None
        case_id = _strip_ending(image.name)
        images = (image,)
        if len(names) > 1:
            images = _split_channels(image, len(names), Path(split_dir) if split_dir else None, dataset)
        cases.append(
            Case(
                case_id=case_id,
                dataset=dataset,
                images=images,
                modalities=tuple(modality_of(name) for name in names),
                label=label,
                tasks=default_tasks(label is not None, len(names)),
                license=license,
            )
        )
    return cases


def load_manifest(path: str | Path) -> list[Case]:
    """Cases listed in a YAML or JSON manifest (format in docs/data.md); paths are relative to it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    text = _read_text(path, "manifest ")
    try:
        if path.suffix.lower() == ".json":
            manifest = json.loads(text)
        else:
            manifest = yaml.safe_load(text)
    except ValueError as error:  # yaml.YAMLError and JSONDecodeError are ValueErrors
        raise ValueError(f"cannot parse manifest {path}: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases"), list) or not manifest["cases"]:
        raise ValueError(f"manifest {path}: expected a mapping with a non-empty 'cases' list")
    _check_keys(manifest, MANIFEST_KEYS, f"manifest {path}")
    dataset = str(manifest.get("name") or path.stem)
    cases = []
    for number, entry in enumerate(manifest["cases"]):
        where = f"manifest {path}, case {number}"
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{where}: each case needs an 'image'")
        _check_keys(entry, CASE_KEYS, where)
        images = tuple(_manifest_path(path, p) for p in _as_list(entry["image"]))
        modalities = _as_list(entry.get("modality", manifest.get("modality")))
        if modalities == [None]:
            raise ValueError(f"{where}: no 'modality' given for the case or the manifest")
        if len(modalities) == 1:
            modalities = modalities * len(images)
        label = _manifest_path(path, entry["label"]) if entry.get("label") else None
        target = _manifest_path(path, entry["target"]) if entry.get("target") else None
        tasks = entry.get("tasks", entry.get("task"))
        if tasks is None and target is not None:
            raise ValueError(f"{where}: a case with a 'target' must say its task ({', '.join(TASKS[1:])})")
        try:
            cases.append(
                Case(
                    case_id=str(entry.get("id") or _strip_ending(images[0].name)),
                    dataset=str(entry.get("dataset", dataset)),
                    images=images,
                    modalities=tuple(check_modality(str(m)) for m in modalities),
                    label=label,
                    target=target,
                    tasks=tuple(_as_list(tasks)) if tasks else default_tasks(label is not None, len(images)),
                    license=str(entry.get("license", manifest.get("license", ""))),
                )
            )
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
    return cases


def validate_cases(cases: Iterable[Case], require_foreground: bool = True) -> list[Case]:
    """Open every file once and check it is fit for training; return the usable cases.

    Raises FileNotFoundError/ValueError naming the file for a missing or unreadable file, a label
    or target or channel off the image grid, non-integer or negative labels, duplicate case ids,
    or an empty dataset. The one documented skip: with ``require_foreground`` a case whose label
    has no foreground is dropped with a logged warning (it cannot serve as a segmentation prompt).
    """
    cases = list(cases)
    if not cases:
        raise ValueError("the dataset has no cases")
    seen: dict[tuple[str, str], Case] = {}
    usable = []
    for case in cases:
        key = (case.dataset, case.case_id)
        if key in seen:
            raise ValueError(
                f"case id {case.case_id!r} appears twice in dataset {case.dataset!r} "
                f"({seen[key].images[0]} and {case.images[0]})"
            )
        seen[key] = case
        shape, geometry = read_geometry(case.images[0])
        for other in (*case.images[1:], case.target):
            if other is not None:
                _check_same_grid(other, read_geometry(other), case.images[0], (shape, geometry))
        if case.label is not None:
            label = read_labels(case.label)  # the one label rule, shared with predict
            grid = (label.array.shape, label.geometry)
            _check_same_grid(case.label, grid, case.images[0], (shape, geometry))
            if require_foreground and not label.array.any():
                log.warning("skipping case %r: label %s has no foreground", case.case_id, case.label)
                continue
        usable.append(case)
    if not usable:
        raise ValueError(f"no usable cases among {len(cases)}: every label is empty")
    return usable


def _check_same_grid(path: Path, grid: tuple, reference: Path, expected: tuple) -> None:
    """Same voxel count and the same physical placement, up to header round-off."""
    (shape, geometry), (expected_shape, expected_geometry) = grid, expected
    if tuple(shape) != tuple(expected_shape):
        raise ValueError(
            f"{path} has shape {tuple(shape)} (k, j, i) but image {reference} has {tuple(expected_shape)}"
        )
    voxel = min(expected_geometry.spacing)
    tolerances = {"spacing": 1e-3 * voxel, "origin": 1e-2 * voxel, "direction": 1e-3}
    for name, tolerance in tolerances.items():
        got, want = np.array(getattr(geometry, name)), np.array(getattr(expected_geometry, name))
        if np.abs(got - want).max() > tolerance:
            raise ValueError(
                f"{path} is not on the grid of image {reference}: {name} {tuple(got)} vs {tuple(want)}"
            )


def _channel_names(channels: object, file: Path, key: str) -> list[str]:
    """Channel names in channel order from a dataset.json mapping {"0": "CT", "1": "T2", ...}."""
    if not isinstance(channels, dict) or not channels:
        raise ValueError(f'{file}: {key!r} must map channel numbers to names, e.g. {{"0": "CT"}}')
    bad = [k for k in channels if not str(k).strip().isdigit()]
    if bad:
        raise ValueError(f'{file}: {key!r} keys must be channel numbers ("0", "1", ...), got {bad}')
    return [str(channels[k]) for k in sorted(channels, key=lambda k: int(str(k)))]


def _read_dataset_json(root: Path) -> dict:
    file = root / "dataset.json"
    if not file.is_file():
        raise FileNotFoundError(f"{root} is not a dataset folder: it has no dataset.json")
    try:
        description = json.loads(_read_text(file))
    except ValueError as error:
        raise ValueError(f"cannot parse {file}: {error}") from error
    if not isinstance(description, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return description


def _read_text(file: Path, what: str = "") -> str:
    """The UTF-8 text of ``file``; a binary or wrongly encoded file is named (a bare
    UnicodeDecodeError says which byte failed, not in which file)."""
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what}{file} is not UTF-8 text (byte {error.start} cannot be decoded); is it the right file?"
        ) from None


def _check_keys(mapping: dict, known: tuple[str, ...], where: str) -> None:
    """Refuse keys of ``mapping`` not in ``known`` (``where`` names the file and case)."""
    unknown = [str(key) for key in mapping if key not in known]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise ValueError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}; "
            f"known keys are {', '.join(repr(key) for key in known)}"
        )


def _split_channels(image: Path, channels: int, split_dir: Path | None, dataset: str) -> tuple[Path, ...]:
    """Per-channel 3D files of a 4D MSD image, written once, so every Case channel is one file."""
    if split_dir is None:
        from .open_samples import cache_dir  # here, because open_samples imports this module

        split_dir = cache_dir() / "msd_channels" / dataset
    case_id = _strip_ending(image.name)
    outputs = tuple(split_dir / f"{case_id}_{c:04d}.nii.gz" for c in range(channels))
    if all(output.exists() for output in outputs):
        return outputs
    volumes = read_channels(image)
    if len(volumes) != channels:
        raise ValueError(f"{image}: dataset.json lists {channels} modalities, the image has {len(volumes)}")
    split_dir.mkdir(parents=True, exist_ok=True)
    for volume, output in zip(volumes, outputs):
        if not output.exists():
            write_volume(output, volume)
    return outputs


def _manifest_path(manifest: Path, value: object) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (manifest.parent / path).resolve()


def _as_list(value: object) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _strip_ending(name: str) -> str:
    for ending in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".png"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name
