"""``python -m MVGCore.predict``: read the files, check every flag, run a task, write the outputs.

Bad input raises (naming the file or flag) before the model is loaded; :func:`MVGCore.cli.run`
reports it as one line. Example::

    python -m MVGCore.predict --checkpoint mvg.safetensors --task segment \\
        --input ct.nii.gz --prompts sparse_labels.nii.gz --output ct_seg.nii.gz
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli
from ..calibration import CALIBRATIONS
from ..cli import attach_dash_values
from ..coloring import check_labels
from ..intensity import DEFAULT_CT_WINDOW, parse_window
from ..registration import ALIGNMENTS
from ..slicewise import take_slice
from ..types import TASKS, Prompt
from ..zoom import DEFAULT_MARGIN as ZOOM_MARGIN
from . import cli_checks as checks
from .cli_checks import option_value
from .inputs import check_slices_fit, check_volume
from .options import ANSWERS, DEFAULT_ALIGNMENT, ENSEMBLES, IMAGE_SCALES, TASK_CT_WINDOWS, ZOOMS
from .predictor import Predictor
from .progress import FORMATS as PROGRESS_FORMATS
from .progress import emit_event, json_progress, log_progress

log = logging.getLogger("MVGCore.predict")

DESCRIPTION = "Apply an MVG model to whole volumes: the ``Predictor`` and ``python -m MVGCore.predict``."


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
        "--slices", type=checks.slice_list, help="prompt slice indices of --prompts, e.g. 10,40,70"
    )
    parser.add_argument("--prompt-image", type=Path, help="another volume to take prompt slices from")
    parser.add_argument("--prompt-target", type=Path, help="the target of --prompt-image, on its grid")
    parser.add_argument("--prompt-slices", type=checks.slice_list, help="slices of --prompt-image to use")
    parser.add_argument("--hole", type=Path, help="inpaint: mask of the voxels to fill, on the input's grid")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="slice axis in (k, j, i)")
    parser.add_argument(
        "--modality", type=option_value("modality"), default="auto", help="auto, CT, MR, XR, US or OTHER"
    )
    parser.add_argument(
        "--window", type=option_value("window", parse_window), help="CT window: preset name or LOW,HIGH"
    )
    parser.add_argument(
        "--ct-window",
        type=option_value("ct_window", parse_window),
        help="window of CT inputs when --window is not given: preset name or LOW,HIGH (default: "
        f"{TASK_CT_WINDOWS['segment']} to segment, {DEFAULT_CT_WINDOW} for the image tasks)",
    )
    parser.add_argument(
        "--k-prompts",
        type=option_value("k_prompts", int),
        default=1,
        help="prompts per query slice (default 1)",
    )
    parser.add_argument("--ensemble", choices=ENSEMBLES, default="average", help="how K prompts combine")
    parser.add_argument(
        "--propagate",
        action=argparse.BooleanOptionalAction,
        help="propagate outward from the prompt slices (default: on to segment from the input's own slices)",
    )
    parser.add_argument(
        "--zoom",
        choices=ZOOMS,
        help="segment: run on the region around the prompt labels (default) or on whole slices",
    )
    parser.add_argument(
        "--zoom-margin",
        type=option_value("zoom_margin", float),
        help=f"segment: margin of that region ({ZOOM_MARGIN})",
    )
    parser.add_argument(
        "--align-prompts",
        choices=ALIGNMENTS,
        help=f"segment: warp each prompt onto its query slice by 2D registration first ({DEFAULT_ALIGNMENT})",
    )
    parser.add_argument(
        "--answer",
        choices=ANSWERS,
        help="segment with aligned prompts: the aligned prompt label where the model answers foreground "
        "(trim, the default), or the model's own classes",
    )
    parser.add_argument(
        "--tile-size",
        type=option_value("tile_size", int),
        help="tile in pixels the model runs at, its weights resampled (default: the model's tile; "
        "to segment, its config's segment_tile_size when set)",
    )
    parser.add_argument(
        "--image-scale",
        choices=IMAGE_SCALES,
        help="denoise/inpaint/synthesize: 1:1 overlapping tiles (default) or each slice fitted into one tile",
    )
    parser.add_argument(
        "--calibrate",
        choices=CALIBRATIONS,
        help="denoise: blend the answer with the input by weights fitted on the prompts (default; "
        "needs 2+ prompts) or return the model's answer",
    )
    parser.add_argument(
        "--adapt-steps",
        type=option_value("adapt_steps", int),
        help="segment, denoise: tune a copy of the model on the prompts for this many steps first "
        "(0 = off; denoise: needs prompt pairs and replaces --calibrate blend)",
    )
    parser.add_argument("--disagreement", type=Path, help="also write the per-voxel disagreement map here")
    parser.add_argument(
        "--seed",
        type=option_value("seed", int),
        default=0,
        help="seed of self-made prompts (denoise/inpaint)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--batch-size", type=checks.batch_size_value, default=8, help="canvases per forward pass"
    )
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
    from ..io import read_volume
    from ..types import Volume

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(attach_dash_values(argv, ("--window", "--ct-window")))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    checks.check_flags(args)
    checks.check_paths(args)
    options = checks.task_options(args)
    tile = checks.model_tile(args)
    image = read_volume(args.input)
    check_volume(image.array, f"--input {args.input}")
    options["spacing"] = image.geometry.spacing_kji
    if tile is not None:
        native = args.task != "segment" and args.image_scale == "native"
        where = f"--input {args.input}"
        advice = "its header's spacing is likely wrong: fix it there"
        check_slices_fit(image.array.shape, args.axis, options["spacing"], tile, native, where, advice)
    prompts = _collect_prompts(args, image)
    hole = _read_hole(args, image) if args.task == "inpaint" else None
    predictor = Predictor.from_checkpoint(
        args.checkpoint, device=args.device, allow_pickle=args.allow_pickle, batch_size=args.batch_size
    )
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
    for path in _write(args, items):
        log.info("wrote %s", path)
    if json_events:
        emit_event("done", output=str(args.output))
    return 0


def _write(args: argparse.Namespace, items: list) -> list[Path]:
    """Write every output or none. An output that did not exist when the flags were checked but
    does now (another run writing the same name) is named with its flag and ``--overwrite``, not
    with the Python API's ``overwrite=True``."""
    from ..io import write_volumes

    try:
        return write_volumes(items, overwrite=args.overwrite)
    except FileExistsError:
        flags = dict(zip((path for path, _ in items), ("--output", "--disagreement")))
        taken = ", ".join(f"{flags[path]} {path}" for path, _ in items if path.exists())
        raise FileExistsError(
            f"{taken or args.output} appeared while predict ran (another run?) and was kept; "
            "choose a new file or pass --overwrite"
        ) from None
