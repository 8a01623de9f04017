"""The checks of ``python -m MVGCore.predict``'s command line that need no volume.

Every refusal here names the flag (or file) and what it expects, and comes before any volume is
read or the model is loaded: a flag's bounds are its option's own (:class:`Options` checks the
value as the argument is read), flags that only mean something together are refused apart, an
output name must suit what is written to it, and the task's tile is checked against the model's
config read from its sidecar alone (patch size, the memory of one forward pass). :mod:`.cli` reads
the files and runs the task.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import cli
from ..checkpoint import PICKLE_SUFFIXES, check_weights_path, model_config, sidecar_path
from . import memory
from .inputs import check_batch_size, resolve_device, sidecar_config, task_tile
from .options import TASK_OPTIONS, Options, listed

INPUT_FLAGS = ("checkpoint", "input", "prompts", "prompt_image", "prompt_target", "hole")
OUTPUT_FLAGS = ("output", "disagreement")
SEGMENTATION_SUFFIX = ".seg.nrrd"
"""A name Slicer and other readers take for a segmentation: only label volumes are written under it."""
CONVERSIONS = {int: "a whole number", float: "a number"}


def flag(name: str) -> str:
    """The flag of an ``argparse`` destination: ``prompt_image`` -> ``--prompt-image``."""
    return "--" + name.replace("_", "-")


def checked(check: Callable[[Any], Any], convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """An argparse type: the text ``convert``-ed, then passed to ``check``, whose ValueError or
    TypeError becomes argparse's one line naming the flag."""

    def value(text: str) -> Any:
        try:
            converted = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {CONVERSIONS[convert]}, got {text!r}") from None
        try:
            check(converted)
        except (TypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return converted

    value.__name__ = getattr(check, "__name__", "value")  # argparse names a type in a few errors
    return value


def option_value(name: str, convert: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """An argparse type for the flag of the Predictor option ``name``: checked by :class:`Options`
    itself, so the flag's bounds are the option's (one rule) and ``--seed -1`` is refused as the
    command line is read rather than deep in numpy, or not at all."""
    return checked(lambda value: Options(**{name: value}), convert)


batch_size_value = checked(check_batch_size, int)
"""The argparse type of ``--batch-size``: the Predictor's own rule."""


def slice_list(text: str) -> list[int]:
    """An argparse type: comma-separated slice indices, at least one (``,`` alone would otherwise
    become "no prompts" and be reported as a missing ``--prompts``)."""
    try:
        slices = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"slice lists are comma-separated integers, got {text!r}") from None
    if not slices:
        raise argparse.ArgumentTypeError(
            f"no slice index in {text!r}; give comma-separated indices, e.g. 10,40,70"
        )
    return slices


def check_flags(args: argparse.Namespace) -> None:
    """Flags that mean something only with another are refused without it, rather than ignored."""
    if args.hole is not None and args.task != "inpaint":
        raise ValueError(f"--hole is only used by --task inpaint, not by --task {args.task}; leave it out")
    for name in task_option_flags(args):
        tasks = TASK_OPTIONS[name]
        if getattr(args, name) is not None and args.task not in tasks:
            raise ValueError(
                f"{flag(name)} is only used by --task {listed(tasks)}, not by --task {args.task}"
            )
    if args.hole is None and args.task == "inpaint":
        raise ValueError("--task inpaint needs --hole MASK (non-zero = voxels to fill)")
    if args.slices is not None and args.prompts is None:
        raise ValueError(
            "--slices picks slices of --prompts, which is not given; pass --prompts FILE "
            "(--prompt-slices picks slices of --prompt-image)"
        )
    if args.prompt_slices is not None and args.prompt_image is None:
        raise ValueError(
            "--prompt-slices picks slices of --prompt-image, which is not given; pass --prompt-image "
            "and --prompt-target (--slices picks slices of --prompts)"
        )
    if (args.prompt_image is None) != (args.prompt_target is None):
        raise ValueError("--prompt-image and --prompt-target go together (another volume and its target)")
    given = args.prompts is not None or args.prompt_image is not None
    if args.task in ("segment", "synthesize") and not given:
        raise ValueError(
            f"--task {args.task} needs prompts: --prompts FILE and/or --prompt-image/--prompt-target"
        )
    if args.task == "denoise" and args.adapt_steps and not given:
        raise ValueError(
            "--adapt-steps tunes the model on (noisy, clean) prompt pairs: pass the clean slices with "
            "--prompts (or --prompt-image/--prompt-target)"
        )


def task_option_flags(args: argparse.Namespace) -> list[str]:
    """The flags of options only some tasks take (:data:`TASK_OPTIONS`). They default to None,
    so that one given to a task that does not take it is refused, as the Predictor refuses the
    option, instead of being dropped; the option's own default applies when it is not given."""
    return [name for name in TASK_OPTIONS if hasattr(args, name)]


def check_paths(args: argparse.Namespace) -> None:
    """What can be known about the paths before anything is read: the checkpoint names a weights
    file (with its sidecar); every output has a volume suffix that suits what is written to it,
    lies in an existing writable folder, is new (or --overwrite), and is neither an input nor
    another output; no name is one SimpleITK would abort on."""
    from ..io import WRITE_SUFFIXES, check_path_encoding

    inputs = {flag(n): getattr(args, n) for n in INPUT_FLAGS if getattr(args, n) is not None}
    outputs = {flag(n): getattr(args, n) for n in OUTPUT_FLAGS if getattr(args, n) is not None}
    for name, path in {**inputs, **outputs}.items():
        check_path_encoding(path, name)
    pickle = args.checkpoint.suffix in PICKLE_SUFFIXES
    check_weights_path(args.checkpoint, "--checkpoint", sidecar=not pickle)
    if pickle and not args.allow_pickle:
        raise ValueError(
            f"--checkpoint {args.checkpoint} is a pickle file, which can run code when loaded: use the "
            ".safetensors checkpoint, or pass --allow-pickle if you trust its source"
        )
    labels = {"--output": args.task == "segment", "--disagreement": False}
    checked_outputs: dict[str, Path] = {}
    for name, path in outputs.items():
        for other_name, other in {**inputs, **checked_outputs}.items():
            if same_file(path, other):
                what = other_name.lstrip("-").replace("-", " ")
                raise ValueError(f"{name} {path} is the {what} file ({other_name}); choose a new file")
        if not path.name.lower().endswith(WRITE_SUFFIXES):
            raise ValueError(f"{name} {path}: the name must end with one of {', '.join(WRITE_SUFFIXES)}")
        if path.name.lower().endswith(SEGMENTATION_SUFFIX) and not labels[name]:
            what = "the disagreement map" if name == "--disagreement" else f"--task {args.task}'s output"
            raise ValueError(
                f"{name} {path}: {SEGMENTATION_SUFFIX} names a segmentation, and {what} is an image; "
                "use .nrrd (or .nii.gz, .mha)"
            )
        cli.check_output_folder(path, f"{name} {path}")
        if path.is_dir():
            raise IsADirectoryError(f"{name} {path} is a folder; give a file name")
        if path.exists() and not args.overwrite:
            raise FileExistsError(f"{name} {path} exists; choose a new file or pass --overwrite")
        checked_outputs[name] = path


def same_file(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Predictor options the flags give ``--task`` (the input's spacing is added once it is
    read), checked together as the task will check them."""
    options: dict[str, Any] = {
        "modality": args.modality,
        "window": args.window,
        "ct_window": args.ct_window,
        "k_prompts": args.k_prompts,
        "ensemble": args.ensemble,
        "propagate": args.propagate,
        "return_disagreement": args.disagreement is not None,
        "seed": args.seed,
        "tile_size": args.tile_size,
    }
    for name in task_option_flags(args):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    Options.parse(options, args.task)
    return options


def model_tile(args: argparse.Namespace) -> int | None:
    """The tile ``--task`` will run at, checked against the model's config from its sidecar (the
    weights are read later): a multiple of its patch size, and one slice's forward pass fits in
    the device's free memory. None where no config is known before loading (a pickle without
    sidecar; the Predictor then checks the same)."""
    path, device = args.checkpoint, resolve_device(args.device)
    if path.suffix not in PICKLE_SUFFIXES:
        config = model_config(path, "--checkpoint")
    elif sidecar_path(path.with_suffix(".safetensors")).is_file():
        config = sidecar_config(path)
    else:
        return None
    tile = task_tile(config, args.task, args.tile_size, "--tile-size")
    memory.check_tile_fits(config, tile, args.k_prompts, device, "--tile-size")
    return tile
