"""``python -m MVGCore.evaluate``: the model and classical baselines on the same cases, prompts and seeds.

For every case and task a *trial* is made once: the prompt slices (evenly spaced among the slices
that can serve), the degraded input (noise / holes drawn from ``(seed, case number)``) and the
reference. Every method then answers that same trial. Prompt slices are returned unchanged by
every method, so they are left out of the scores. A single 2D image (one slice along the axis)
takes its prompts from other single images of its dataset that pose the same task, or from one
half of itself and is scored on the other half (``--single-images``).

Beside the model and the chosen ``--baselines``, the quick peers a user would try first always
answer too (unless ``--no-peers``): copying the nearest prompt's label and Slicer's "Fill between
slices" on segmentation volumes, histogram matching to the prompt targets on synthesis, and the
noisy input as it came on denoising (the floor a denoiser must clear).
Writes, into a new folder:

- ``cases/<dataset>__<case>__<task>.json``: prompts, seed and each method's metrics and seconds;
- ``figures/<dataset>__<case>__<task>.png``: prompt, query, each method's answer, truth;
- ``summary.json`` and ``summary.md`` (mean ± std over cases); the table is printed last.

Example::

    python -m MVGCore.evaluate --checkpoint mvg.safetensors --data /data/Dataset027_ACDC \\
        --baselines classical --out runs/eval_acdc --k-prompts 3 --ensemble average feature
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..cli import add_debug_flag
from ..degrade import HOLE_MODELS, NOISE_MODELS
from ..predict import ENSEMBLES, Options
from ..types import TASKS
from .harness import evaluate
from .methods import BASELINES, PEERS, build_methods
from .report import summary_table
from .trials import SINGLE_IMAGES, Settings

log = logging.getLogger(__package__)  # one logger for the package, named as when it was one module

PROG = "python -m MVGCore.evaluate"


def _options_json(text: str) -> dict[str, Any]:
    """A ``--model-options`` value: a JSON object of Predictor options, checked here.

    ``Options.parse`` refuses an unknown key with a ``TypeError`` (right for the Python API, a
    traceback on the command line); read here, the error names the flag and the key before any
    model or case is loaded.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of Predictor options, got {text!r}")
    try:
        Options.parse(value)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{text}: {error}") from None
    return value


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``.

    A count below it would not fail but quietly mean something else (``--max-cases -1`` cut the
    list to all cases but the last), or fail late without naming the flag (``--seed -1`` deep in
    numpy); read here, the error names the flag before anything is loaded.
    """

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="model .safetensors (omit to run baselines only)")
    parser.add_argument(
        "--data", action="append", default=[], type=Path, help="dataset or manifest (repeatable)"
    )
    parser.add_argument(
        "--open-samples",
        nargs="+",
        default=[],
        metavar="SOURCE/NAME",
        help="open sample cases, e.g. pyradiomics/lung2 (obtained into the cache if needed)",
    )
    parser.add_argument("--out", required=True, type=Path, help="new folder for the report")
    parser.add_argument(
        "--baselines", nargs="+", default=[], choices=sorted(BASELINES), help="baselines to run"
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--prompts", type=_count(1), default=3, help="prompt slices per case (default 3)")
    parser.add_argument(
        "--k-prompts", type=_count(1), default=1, help="prompts the model sees per query slice"
    )
    parser.add_argument(
        "--ensemble", nargs="+", default=["average"], choices=ENSEMBLES, help="give both to compare"
    )
    parser.add_argument(
        "--model-options",
        nargs="+",
        type=_options_json,
        default=[{}],
        metavar="JSON",
        help="extra Predictor options per model variant, e.g. '{}' '{\"adapt_steps\": 30}' to compare",
    )
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2))
    parser.add_argument("--seed", type=_count(0), default=0, help="seed of the noise and holes")
    parser.add_argument("--noise", default="gaussian", choices=sorted(NOISE_MODELS))
    parser.add_argument(
        "--noise-level", type=float, default=0.05, help="level of --noise (see MVGCore.degrade)"
    )
    parser.add_argument("--hole", default="box", choices=HOLE_MODELS)
    parser.add_argument(
        "--single-images",
        default="dataset",
        choices=SINGLE_IMAGES,
        help="prompts of a single 2D image: other images of its dataset (default), half of itself, or none",
    )
    parser.add_argument(
        "--no-peers", action="store_true", help=f"leave out the quick peers {', '.join(PEERS)}"
    )
    parser.add_argument("--max-cases", type=_count(1), help="evaluate only the first N cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=_count(1), default=8)
    parser.add_argument("--allow-pickle", action="store_true", help="allow a trusted pickle checkpoint")
    parser.add_argument("--quiet", action="store_true")
    add_debug_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate as the command line asks, print the summary table and return 0. A user's mistake
    raises ``ValueError``/``OSError`` (one line through :func:`MVGCore.cli.run`) or exits through
    argparse."""
    from ..data.sources import load_cases, validate_cases
    from ..predict import Predictor

    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.checkpoint is None and not args.baselines:
        parser.error("give --checkpoint and/or --baselines")
    if not args.data and not args.open_samples:
        parser.error("give --data and/or --open-samples")
    settings = Settings(
        tasks=tuple(args.tasks),
        n_prompts=args.prompts,
        axis=args.axis,
        seed=args.seed,
        noise=args.noise,
        noise_level=args.noise_level,
        hole=args.hole,
        single_images=args.single_images,
    )
    cases = [case for path in args.data for case in load_cases(path)]
    if args.open_samples:
        from ..data import open_samples

        cases += open_samples.select(args.open_samples)
    cases = validate_cases(cases, require_foreground=False)[: args.max_cases]
    predictor = None
    if args.checkpoint is not None:
        predictor = Predictor.from_checkpoint(
            args.checkpoint, device=args.device, allow_pickle=args.allow_pickle, batch_size=args.batch_size
        )
    methods = build_methods(
        predictor, args.baselines, args.k_prompts, args.ensemble, args.model_options, peers=not args.no_peers
    )
    records = evaluate(cases, methods, args.out, settings)
    log.info("report written to %s", args.out)
    print(summary_table(records, [m.name for m in methods]))
    return 0
