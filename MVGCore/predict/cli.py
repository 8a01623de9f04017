"""``python -m MVGCore.predict``: read the files, check every flag, run a task, write the outputs.

Bad input raises (naming the file or flag) before the model is loaded; :func:`MVGCore.cli.run`
reports it as one line. Example::

    python -m MVGCore.predict --checkpoint mvg.safetensors --task segment \\
        --input ct.nii.gz --prompts sparse_labels.nii.gz --output ct_seg.nii.gz
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli
from ..adapt import ADAPT_TASKS
from ..calibration import CALIBRATIONS
from ..cli import attach_dash_values
from ..coloring import check_labels
from ..intensity import DEFAULT_CT_WINDOW, parse_window
from ..registration import ALIGNMENTS
from ..slicewise import take_slice
from ..types import TASKS, Prompt
from ..zoom import DEFAULT_MARGIN as ZOOM_MARGIN
from .inputs import check_volume
from .options import ANSWERS, DEFAULT_ALIGNMENT, ENSEMBLES, IMAGE_SCALES, TASK_CT_WINDOWS, ZOOMS
from .predictor import Predictor
from .progress import FORMATS as PROGRESS_FORMATS
from .progress import emit_event, json_progress, log_progress

log = logging.getLogger("MVGCore.predict")

DESCRIPTION = "Apply an MVG model to whole volumes: the ``Predictor`` and ``python -m MVGCore.predict``."


def _parse_slices(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"slice lists are comma-separated integers, got {text!r}") from None


def _same_grid(path: Path, volume, reference, reference_name: str) -> None:
    """Files that describe the input's own slices must lie on its grid."""
    if volume.array.shape != reference.array.shape:
        shapes = f"shape {volume.array.shape} (k, j, i) but {reference_name} has {reference.array.shape}"
        raise ValueError(f"{path} has {shapes}")
    ours, theirs = volume.geometry, reference.geometry
    for name in ("spacing", "origin", "direction"):
        mine, expected = getattr(ours, name), getattr(theirs, name)
        if not np.allclose(mine, expected, atol=1e-3):
            raise ValueError(f"{path} {name} {mine} differs from {reference_name}'s {expected}")


def _prompt_slices(
    path: Path, target: np.ndarray, axis: int, chosen: list[int] | None, flag: str
) -> list[int]:
    """Explicit slice indices, or every slice of the sparse target file with a non-zero voxel."""
    n = target.shape[axis]
    if chosen is None:
        other = tuple(a for a in range(3) if a != axis)
        chosen = np.flatnonzero(np.any(target != 0, axis=other)).tolist()
        if not chosen:
            raise ValueError(
                f"{path} has no non-zero slice along axis {axis}; label some slices or pass {flag}"
            )
    for index in chosen:
        if not 0 <= index < n:
            raise ValueError(
                f"{flag}: slice {index} is out of range; {path} has {n} slices along axis {axis}"
            )
    return sorted(set(chosen))


INPUT_FLAGS = ("checkpoint", "input", "prompts", "prompt_image", "prompt_target", "hole")
OUTPUT_FLAGS = ("output", "disagreement")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_paths(args: argparse.Namespace) -> None:
    """What can be known about the paths before anything is read: every output has a volume
    suffix, lies in an existing writable folder, is new (or --overwrite), and is neither an input
    nor another output; no name is one SimpleITK would abort on."""
    from ..io import WRITE_SUFFIXES, check_path_encoding

    inputs = {_flag(n): getattr(args, n) for n in INPUT_FLAGS if getattr(args, n) is not None}
    outputs = {_flag(n): getattr(args, n) for n in OUTPUT_FLAGS if getattr(args, n) is not None}
    for flag, path in {**inputs, **outputs}.items():
        check_path_encoding(path, flag)
    if args.hole is not None and args.task != "inpaint":
        raise ValueError(f"--hole is only used by --task inpaint, not by --task {args.task}; leave it out")
    if args.adapt_steps and args.task not in ADAPT_TASKS:
        raise ValueError(
            f"--adapt-steps is only used by --task {' and '.join(ADAPT_TASKS)}, not by --task {args.task}"
        )
    if args.adapt_steps < 0:
        raise ValueError(
            f"--adapt-steps must be 0 (off) or a positive number of steps, got {args.adapt_steps}"
        )
    checked: dict[str, Path] = {}
    for flag, path in outputs.items():
        for other_flag, other in {**inputs, **checked}.items():
            if _same_file(path, other):
                what = other_flag.lstrip("-").replace("-", " ")
                raise ValueError(f"{flag} {path} is the {what} file ({other_flag}); choose a new file")
        if not path.name.lower().endswith(WRITE_SUFFIXES):
            raise ValueError(f"{flag} {path}: the name must end with one of {', '.join(WRITE_SUFFIXES)}")
        cli.check_output_folder(path, f"{flag} {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{flag} {path} is a folder; give a file name")
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{flag} {path} exists; choose a new file or pass --overwrite")
        checked[flag] = path


def _same_file(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _read_target(path: Path, task: str, flag: str):
    """A prompt target file: label class ids for segmentation (whole-number floats accepted, by
    :func:`MVGCore.io.read_labels`), else a finite real image; errors name the flag and file."""
    from ..io import read_labels, read_volume

    if task != "segment":
        volume = read_volume(path)
        check_volume(volume.array, f"{flag} {path}")
        return volume
    volume = read_labels(path)
    if volume.array.dtype != np.bool_:
        check_labels(volume.array, f"{flag} {path}")
    return volume


def _read_hole(args: argparse.Namespace, image) -> np.ndarray:
    from ..io import read_volume

    if args.hole is None:
        raise ValueError("--task inpaint needs --hole MASK (non-zero = voxels to fill)")
    hole = read_volume(args.hole)
    _same_grid(args.hole, hole, image, f"--input {args.input}")
    mask = hole.array != 0
    if not mask.any():
        raise ValueError(f"--hole {args.hole} marks no voxel (it is all zero); mark the voxels to fill")
    return mask


def _collect_prompts(args: argparse.Namespace, image) -> list[Prompt]:
    from ..io import read_volume

    prompts: list[Prompt] = []
    if args.prompts is not None:
        sparse = _read_target(args.prompts, args.task, "--prompts")
        _same_grid(args.prompts, sparse, image, f"--input {args.input}")
        for index in _prompt_slices(args.prompts, sparse.array, args.axis, args.slices, "--slices"):
            prompts.append(
                Prompt.from_volume(image.array, index, take_slice(sparse.array, args.axis, index), args.axis)
            )
    if (args.prompt_image is None) != (args.prompt_target is None):
        raise ValueError("--prompt-image and --prompt-target go together (another volume and its target)")
    if args.prompt_image is not None:
        other = read_volume(args.prompt_image)
        check_volume(other.array, f"--prompt-image {args.prompt_image}")
        target = _read_target(args.prompt_target, args.task, "--prompt-target")
        _same_grid(args.prompt_target, target, other, f"--prompt-image {args.prompt_image}")
        slices = _prompt_slices(
            args.prompt_target, target.array, args.axis, args.prompt_slices, "--prompt-slices"
        )
        for index in slices:
            prompts.append(
                Prompt(take_slice(other.array, args.axis, index), take_slice(target.array, args.axis, index))
            )
    return prompts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m MVGCore.predict", description=DESCRIPTION)
    parser.add_argument("--checkpoint", required=True, type=Path, help="model .safetensors (with its .json)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument(
        "--input", required=True, type=Path, help="volume to process (NIfTI, NRRD, MHA, DICOM)"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="new file (.nii.gz, .nii, .nrrd, .seg.nrrd, .mha)"
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        help="targets on the input's grid (sparse labels / clean or target images); its non-zero slices "
        "are the prompts unless --slices names them",
    )
    parser.add_argument(
        "--slices", type=_parse_slices, help="prompt slice indices of --prompts, e.g. 10,40,70"
    )
    parser.add_argument("--prompt-image", type=Path, help="another volume to take prompt slices from")
    parser.add_argument("--prompt-target", type=Path, help="the target of --prompt-image, on its grid")
    parser.add_argument("--prompt-slices", type=_parse_slices, help="slices of --prompt-image to use")
    parser.add_argument("--hole", type=Path, help="inpaint: mask of the voxels to fill, on the input's grid")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slice axis in (k, j, i)")
    parser.add_argument("--modality", default="auto", help="auto, CT, MR, XR, US or OTHER")
    parser.add_argument("--window", type=parse_window, help="CT window: preset name or LOW,HIGH")
    parser.add_argument(
        "--ct-window",
        type=parse_window,
        help="window of CT inputs when --window is not given: preset name or LOW,HIGH (default: "
        f"{TASK_CT_WINDOWS['segment']} to segment, {DEFAULT_CT_WINDOW} for the image tasks)",
    )
    parser.add_argument("--k-prompts", type=int, default=1, help="prompts per query slice (default 1)")
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="average", help="how K prompts combine")
    parser.add_argument(
        "--propagate",
        action=argparse.BooleanOptionalAction,
        help="propagate outward from the prompt slices (default: on to segment from the input's own slices)",
    )
    parser.add_argument(
        "--zoom",
        choices=ZOOMS,
        default="prompts",
        help="segment: run on the region around the prompt labels (default) or on whole slices",
    )
    parser.add_argument(
        "--zoom-margin",
        type=float,
        default=ZOOM_MARGIN,
        help=f"segment: margin of that region ({ZOOM_MARGIN})",
    )
    parser.add_argument(
        "--align-prompts",
        choices=ALIGNMENTS,
        default=DEFAULT_ALIGNMENT,
        help=f"segment: warp each prompt onto its query slice by 2D registration first ({DEFAULT_ALIGNMENT})",
    )
    parser.add_argument(
        "--answer",
        choices=ANSWERS,
        default="trim",
        help="segment with aligned prompts: the aligned prompt label where the model answers foreground "
        "(trim, the default), or the model's own classes",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        help="tile in pixels the model runs at, its weights resampled (default: the model's tile; "
        "to segment, its config's segment_tile_size when set)",
    )
    parser.add_argument(
        "--image-scale",
        choices=IMAGE_SCALES,
        default="native",
        help="denoise/inpaint/synthesize: 1:1 overlapping tiles (default) or each slice fitted into one tile",
    )
    parser.add_argument(
        "--calibrate",
        choices=CALIBRATIONS,
        default="blend",
        help="denoise: blend the answer with the input by weights fitted on the prompts (default; "
        "needs 2+ prompts) or return the model's answer",
    )
    parser.add_argument(
        "--adapt-steps",
        type=int,
        default=0,
        help="segment, denoise: tune a copy of the model on the prompts for this many steps first "
        "(0 = off; denoise: needs prompt pairs and replaces --calibrate blend)",
    )
    parser.add_argument("--disagreement", type=Path, help="also write the per-voxel disagreement map here")
    parser.add_argument("--seed", type=int, default=0, help="seed of self-made prompts (denoise/inpaint)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="canvases per forward pass")
    parser.add_argument("--allow-pickle", action="store_true", help="allow a trusted pickle checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    parser.add_argument(
        "--progress",
        choices=PROGRESS_FORMATS,
        default="log",
        help="log: progress in the log; json: one JSON event per stdout line for programs driving this one",
    )
    cli.add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input raises (naming the file or flag) before the model is loaded.

    ``python -m MVGCore.predict`` reports those errors as one line (:mod:`MVGCore.cli`).
    """
    from ..io import read_volume, write_volumes
    from ..types import Volume

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(attach_dash_values(argv, ("--window",)))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    _check_paths(args)
    image = read_volume(args.input)
    check_volume(image.array, f"--input {args.input}")
    prompts = _collect_prompts(args, image)
    if args.task in ("segment", "synthesize") and not prompts:
        raise ValueError(
            f"--task {args.task} needs prompts: --prompts FILE and/or --prompt-image/--prompt-target"
        )
    hole = _read_hole(args, image) if args.task == "inpaint" else None
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, allow_pickle=args.allow_pickle, batch_size=args.batch_size
    )
    options = {
        "modality": args.modality,
        "window": args.window,
        "ct_window": args.ct_window,
        "spacing": image.geometry.spacing_kji,
        "k_prompts": args.k_prompts,
        "ensemble": args.ensemble,
        "propagate": args.propagate,
        "return_disagreement": args.disagreement is not None,
        "seed": args.seed,
        "tile_size": args.tile_size,
    }
    if args.task == "segment":
        options.update(
            zoom=args.zoom,
            zoom_margin=args.zoom_margin,
            align_prompts=args.align_prompts,
            answer=args.answer,
            adapt_steps=args.adapt_steps,
        )
    else:
        options.update(image_scale=args.image_scale)
    if args.task == "denoise":
        options.update(calibrate=args.calibrate, adapt_steps=args.adapt_steps)
    run: Callable[..., Any]
    if args.task == "inpaint":
        run = lambda **kw: predictor.inpaint(image.array, hole, prompts, args.axis, **kw)  # noqa: E731
    else:
        task = getattr(predictor, args.task)
        run = lambda **kw: task(image.array, prompts, args.axis, **kw)  # noqa: E731
    log.info("%s on %s (%s), %d prompt slice(s)", args.task, args.input, predictor.device, len(prompts))
    json_events = args.progress == "json"
    if json_events:
        emit_event("started", device=predictor.device)
    result = run(progress=json_progress() if json_events else log_progress(), **options)
    result, spread = result if isinstance(result, tuple) else (result, None)
    items = [(args.output, Volume(result, image.geometry))]
    if spread is not None:
        items.append((args.disagreement, Volume(spread, image.geometry)))
    for path in write_volumes(items, overwrite=args.overwrite):  # all outputs or none
        log.info("wrote %s", path)
    if json_events:
        emit_event("done", output=str(args.output))
    return 0
