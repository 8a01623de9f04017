"""``python -m MVGCore.prepare``: volumes -> normalised 2D tiles in a slice store, once.

Each volume is decoded once, normalised per modality (CT window, MR/X-ray/ultrasound robust
percentiles), cut into slices along one axis and fitted into square tiles (honouring anisotropic
pixels), so that training never touches NIfTI again. Which slices are kept, and why the others
were not, is written to the store's manifest:

- a slice with no contrast in any channel (air, zero padding) is useless for every task;
- a slice without label foreground cannot be a segmentation prompt or query, as in the MVG
  reference; it is kept only when the case also serves an image task (denoise, inpaint,
  synthesize), and flagged so the segmentation sampler skips it.

Example::

    python -m MVGCore.prepare --data /data/nnUNet_raw/Dataset027_ACDC --out /data/stores/acdc --size 256
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import capacity, cli
from .canvas import fit_to_tile
from .data.sources import Case, load_cases, validate_cases
from .data.store import StoreWriter
from .intensity import IntensityRange, intensity_range, parse_window
from .io import read_geometry, read_labels, read_volume
from .types import CancelToken, ProgressFn

log = logging.getLogger(__name__)

BLANK_CONTRAST = 0.01
"""A slice whose normalised values span less than this in every channel counts as blank."""


def prepare(
    cases: Sequence[Case],
    out: str | Path,
    size: int = 256,
    axis: int = 0,
    window: str | tuple[float, float] | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> Path:
    """Write the slice store ``out`` (a new folder) from ``cases``; return its path.

    ``window`` overrides the CT window (a preset name or (low, high)) for every CT channel.
    Nothing is left at ``out`` if this raises or is cancelled.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("prepare needs at least one case")
    check_store_room(cases, out, size, axis, "tile size")
    info = {"created_by": "MVGCore.prepare", "window": window, "blank_contrast": BLANK_CONTRAST}
    with StoreWriter(out, size, axis, info) as writer:
        for done, case in enumerate(cases):
            if cancel is not None:
                cancel.raise_if_cancelled()
            _add_case(writer, case, window)
            if progress is not None:
                progress(done + 1, len(cases))
    return Path(out)


def check_store_room(cases: Sequence[Case], out: str | Path, size: int, axis: int, option: str) -> None:
    """Refuse, from the volumes' headers alone, a store the machine cannot hold (``option`` names
    the setting that sizes it, e.g. ``--size``, in the message).

    A tile is S x S whatever the volume's size, so a large ``size`` multiplies everything: the
    store's rows on disk, and in memory the largest case's tiles while it is fitted (each built as
    float32, stacked once more, then converted to float16 to be written). Without this check a
    too-large size ran for minutes before failing inside numpy with "can't allocate memory".
    """
    if size < 8:
        return  # StoreWriter refuses it, naming the tile size
    pixels = size * size
    slices = disk = memory = 0
    for case in cases:
        count = read_geometry(case.images[0])[0][axis]
        channels = len(case.images)
        has_label, has_target = case.label is not None, case.target is not None
        slices += count
        disk += count * pixels * (2 * channels + has_label + 2 * has_target)
        memory = max(memory, count * pixels * (10 * (channels + has_target) + 3 * has_label))
    capacity.check_room(
        f"{option} {size} ({slices} slices of {size} x {size} pixels)",
        memory,
        disk,
        Path(out).parent,
        f"choose a smaller {option}",
    )


def _normalized(intensity: IntensityRange, array: np.ndarray) -> np.ndarray:
    """``array`` in [0, 1], with its NaN and infinite voxels left NaN.

    Clipping maps an infinite voxel to a plain 1.0 (or 0.0); kept NaN, it reaches the store's
    finite check (:meth:`StoreWriter.add_case`), which names the file and the slice.
    """
    normalized = intensity.normalize(array)
    if np.issubdtype(array.dtype, np.inexact):
        normalized[~np.isfinite(array)] = np.nan
    return normalized


def _add_case(writer: StoreWriter, case: Case, window: str | tuple[float, float] | None) -> None:
    size, axis = writer.tile_size, writer.axis
    volumes = [read_volume(path) for path in case.images]
    label = _read_on_grid(case.label, volumes[0].array.shape, labels=True)
    target = _read_on_grid(case.target, volumes[0].array.shape)
    spacing = tuple(s for a, s in enumerate(volumes[0].geometry.spacing_kji) if a != axis)
    ranges = [intensity_range(v.array, m, window) for v, m in zip(volumes, case.modalities)]
    channels = [_normalized(r, v.array) for r, v in zip(ranges, volumes)]
    # A target shares channel 0's modality (a clean image for a degraded one, or its pair).
    target_range = None if target is None else intensity_range(target, case.modalities[0], window)
    if label is not None:
        label = _class_ids(label, case.label)
    image_only = any(task != "segment" for task in case.tasks)

    kept: dict[str, list] = {"slices": [], "images": [], "labels": [], "targets": [], "foreground": []}
    fit = None
    for index in range(channels[0].shape[axis]):
        tiles = []
        for channel in channels:
            tile, fit = fit_to_tile(np.take(channel, index, axis=axis), size, False, spacing)
            tiles.append(tile)
        if all(float(t.max() - t.min()) < BLANK_CONTRAST for t in tiles):
            writer.drop(case.case_id, case.dataset, index, f"blank: contrast below {BLANK_CONTRAST}")
            continue
        foreground = False
        if label is not None:
            label_tile = fit_to_tile(np.take(label, index, axis=axis), size, True, spacing)[0]
            foreground = bool(label_tile.any())
            if not foreground and not image_only:
                writer.drop(case.case_id, case.dataset, index, "no label foreground; case only segments")
                continue
            kept["labels"].append(label_tile)
        if target is not None:
            target_slice = _normalized(target_range, np.take(target, index, axis=axis))
            kept["targets"].append(fit_to_tile(target_slice, size, False, spacing)[0])
        kept["slices"].append(index)
        kept["images"].append(np.stack(tiles))
        kept["foreground"].append(foreground)

    if not kept["slices"]:
        writer.drop(case.case_id, case.dataset, None, "no slice kept")
        log.warning("case %r of %r: no slice kept", case.case_id, case.dataset)
        return
    source = {
        "images": [str(p) for p in case.images],
        "label": None if case.label is None else str(case.label),
        "target": None if case.target is None else str(case.target),
        "shape": list(channels[0].shape),
        "spacing_kji": list(volumes[0].geometry.spacing_kji),
        "intensity": [[r.low, r.high] for r in ranges],
        "target_intensity": None if target_range is None else [target_range.low, target_range.high],
        "fit": asdict(fit),
        "license": case.license,
    }
    writer.add_case(
        case_id=case.case_id,
        dataset=case.dataset,
        modalities=case.modalities,
        tasks=case.tasks,
        images=np.stack(kept["images"]),
        slices=tuple(kept["slices"]),
        foreground=tuple(kept["foreground"]),
        label=np.stack(kept["labels"]).astype(np.uint8) if label is not None else None,
        target=np.stack(kept["targets"]) if target is not None else None,
        source=source,
    )
    log.info("case %r of %r: kept %d slices", case.case_id, case.dataset, len(kept["slices"]))


def _read_on_grid(path: Path | None, shape: tuple[int, ...], labels: bool = False) -> np.ndarray | None:
    """The file's array, checked to be on the image grid; labels are read by the one label rule
    (:func:`MVGCore.io.read_labels`: whole-number floats accepted), as predict reads them."""
    if path is None:
        return None
    array = (read_labels(path) if labels else read_volume(path)).array
    if array.shape != shape:
        raise ValueError(f"{path} has shape {array.shape} (k, j, i) but its image has {shape}")
    return array


def _class_ids(label: np.ndarray, path: Path) -> np.ndarray:
    """Labels as uint8 class ids; the store keeps the user's ids, so they must fit 0..255."""
    if label.min() < 0 or label.max() > 255:
        raise ValueError(
            f"label {path} has class ids {label.min()}..{label.max()}; the store holds 0..255 "
            "(renumber the classes first)"
        )
    return label.astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m MVGCore.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", action="append", default=[], type=Path, help="dataset folder or manifest (repeatable)"
    )
    parser.add_argument(
        "--open-samples",
        nargs="*",
        metavar="SOURCE",
        help="also use the open sample images (all sources, or the ones named)",
    )
    parser.add_argument("--out", required=True, type=Path, help="new folder for the slice store")
    parser.add_argument("--size", type=int, default=256, help="tile size in pixels (default 256)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slice axis in (k, j, i)")
    parser.add_argument("--window", type=parse_window, help="CT window: preset name or LOW,HIGH in HU")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    cli.add_debug_flag(parser)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(cli.attach_dash_values(argv, ("--window",)))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if not args.data and args.open_samples is None:
        parser.error("give at least one --data PATH or --open-samples")
    if args.out.exists():  # before every file is read, not after
        raise FileExistsError(f"--out {args.out} already exists; choose a new folder for the store")

    cases: list[Case] = []
    for path in args.data:
        cases += load_cases(path)
    if args.open_samples is not None:
        from .data import open_samples

        cases += open_samples.cases(args.open_samples) if args.open_samples else open_samples.cases()
    if cases:  # before the labels are read in full, and named as the option the user gave
        check_store_room(cases, args.out, args.size, args.axis, "--size")
    cases = validate_cases(cases, require_foreground=False)
    out = prepare(
        cases,
        args.out,
        size=args.size,
        axis=args.axis,
        window=args.window,
        progress=lambda done, total: log.info("prepared %d/%d cases", done, total),
    )
    log.info("slice store written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, "python -m MVGCore.prepare"))
