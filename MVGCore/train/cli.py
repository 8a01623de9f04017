"""``python -m MVGCore.train``: headless MVG training on a CPU, one GPU, or many under torchrun.

Examples::

    python -m MVGCore.train --config MVGCore/configs/quickstart.yaml --out runs/quickstart
    torchrun --nproc_per_node=8 -m MVGCore.train --config MVGCore/configs/large_8gpu.yaml --out runs/large
    python -m MVGCore.train --out runs/large --resume

The command line resolves one config (the file, then ``--set`` and the shortcut flags on top; on
``--resume`` the run folder's own ``config.yaml``) and hands it to :func:`MVGCore.train.train`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from MVGCore.cli import add_debug_flag
from MVGCore.train.config import TrainConfig, load_config, parse_override
from MVGCore.train.loop import train

log = logging.getLogger(__name__)

PROG = "python -m MVGCore.train"
SHORTCUTS = ("data", "phantoms", "steps", "seed", "init")
"""Config keys that have a flag of their own besides ``--set``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="YAML training config (see MVGCore/configs)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created; never reused silently)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)"
    )
    parser.add_argument("--data", action="append", help="slice store or dataset folder/manifest (repeatable)")
    parser.add_argument("--phantoms", type=int, help="generate this many phantom cases as training data")
    parser.add_argument("--steps", type=int, help="number of optimizer steps")
    parser.add_argument("--seed", type=int, help="random seed of data, colors, masks and init")
    parser.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tuning)")
    add_debug_flag(parser)
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` items, then the shortcut flags, as config overrides (paths as strings, as YAML
    has them)."""
    overrides = dict(parse_override(item) for item in args.set)
    for key in SHORTCUTS:
        value = getattr(args, key)
        if value is not None:
            overrides[key] = (
                [str(v) for v in value] if key == "data" else (str(value) if key == "init" else value)
            )
    return overrides


def resolve_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TrainConfig:
    """The run's config: on ``--resume`` the run folder's (which ``--config``, if given, must equal),
    otherwise ``--config`` with the overrides, its paths made absolute."""
    overrides = overrides_from(args)
    if args.resume:
        base = args.out / "config.yaml"
        if not base.is_file():
            raise FileNotFoundError(f"cannot resume: {base} not found (is {args.out} a run folder?)")
        config = load_config(base, overrides)
        if args.config is not None and load_config(args.config, overrides).to_dict() != config.to_dict():
            raise ValueError(f"--config {args.config} differs from the run's {base}; resume without --config")
        return config
    if args.config is None and not overrides:
        parser.error("give --config FILE (or settings with --set/--data/--phantoms)")
    config = load_config(args.config, overrides)
    # Absolute paths, so that the saved config still works from another directory.
    config.data = [str(Path(p).resolve()) for p in config.data]
    for key in ("init", "init_encoder"):
        if getattr(config, key):
            setattr(config, key, str(Path(getattr(config, key)).resolve()))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(levelname)s %(message)s"
    )
    summary = train(resolve_config(args, parser), args.out, resume=args.resume)
    log.info("finished at step %d; last checkpoint %s", summary["step"], summary["checkpoint"])
    return 0
