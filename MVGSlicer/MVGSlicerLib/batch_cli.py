"""Batch processing from the command line, inside Slicer but without its window::

    Slicer --no-main-window --python-script <extension>/MVGSlicerLib/batch_cli.py \\
        --task Segment --input ct.nrrd --prompts labels.seg.nrrd --output ct_mvg.seg.nrrd

Segment uses every slice of --prompts that holds a label (along --axis) unless --slices is given.
A mistake (missing file, output that exists or does not fit its node, bad model) is reported as one
line, ``MVGSlicer batch: error: ...``, with exit status 2, as every MVGCore command line does
(:mod:`MVGCore.cli`); ``--debug`` or ``MVG_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "MVGSlicerLib"

from MVGCore import cli
from MVGSlicerLib import batch, engine, models, pipeline
from MVGSlicerLib.simple_engine import SimpleEngine

PROG = "MVGSlicer batch"
FLAGS = {
    "prompts_path": "--prompts",
    "prompt_indices": "--slices",
    "target_path": "--target",
    "hole_segment_id": "--hole-segment",
}
"""The flag of each optional input of :func:`batch.process_file`, so its errors name what was typed."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_cli.py", description="MVGSlicer batch processing")
    parser.add_argument("--task", required=True, choices=pipeline.TASKS)
    parser.add_argument("--input", required=True, help="input volume file")
    parser.add_argument("--output", required=True, help="new output file (.nrrd, .nii.gz or .seg.nrrd)")
    parser.add_argument("--prompts", help="segmentation file: prompt labels (Segment) or the hole (Inpaint)")
    parser.add_argument("--target", help="co-registered target-modality volume (Synthesize)")
    parser.add_argument("--slices", type=int, nargs="+", help="prompt slice indices along --axis")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="array axis: 0=k, 1=j, 2=i")
    parser.add_argument("--hole-segment", help="segment id of the hole (Inpaint; default: the first segment)")
    parser.add_argument("--model", default="", help="registry name or .safetensors file (default: bundled)")
    parser.add_argument("--device", default="auto", choices=engine.DEVICES)
    parser.add_argument(
        "--engine",
        default="mvg",
        choices=("mvg", "simple"),
        help="'simple' = numpy stand-in to check a setup",
    )
    cli.add_debug_flag(parser)
    return parser.parse_args(argv)


def make_engine(args: argparse.Namespace) -> engine.Engine:
    if args.engine == "simple":
        return SimpleEngine()
    path = models.resolve_model(args.model, models.load_registry())
    return engine.load_engine(path, args.device)


def main(
    argv: Sequence[str],
    scene: Any,
    volumes_logic: Any,
    segmentations_logic: Any,
    engine_factory: Callable[[argparse.Namespace], engine.Engine] = make_engine,
) -> int:
    """Process one file; a user error is one line on stderr and exit status 2 (MVGCore.cli)."""

    def process(argv: list[str]) -> int:
        args = parse_args(argv)
        given = {name: getattr(args, flag[2:].replace("-", "_")) for name, flag in FLAGS.items()}
        batch.check_task_arguments(args.task, given, FLAGS)  # a flag the task ignores, before any work
        batch.check_output(args.output, batch.output_kind(args.task))  # before the model is loaded
        runner = engine_factory(args)
        output = batch.process_file(
            scene,
            volumes_logic,
            segmentations_logic,
            runner,
            args.task,
            args.input,
            args.output,
            prompts_path=args.prompts,
            target_path=args.target,
            prompt_indices=args.slices,
            axis=args.axis,
            hole_segment_id=args.hole_segment,
        )
        print(f"{PROG}: wrote {output} (device: {runner.device})")
        return 0

    return cli.run(process, PROG, argv)


if __name__ == "__main__":
    parse_args(sys.argv[1:])  # answer --help and usage errors before Slicer's scene is touched
    import slicer

    status = main(
        sys.argv[1:], slicer.mrmlScene, slicer.modules.volumes.logic(), slicer.modules.segmentations.logic()
    )
    slicer.util.exit(status)
