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
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import cli
from ..checkpoint import atomic_write
from ..data.sources import Case
from ..degrade import HOLE_MODELS, NOISE_MODELS
from ..figures import Panel, montage
from ..intensity import IntensityRange, intensity_range
from ..metrics import summarize
from ..predict import ENSEMBLES
from ..slicewise import take_slice
from ..types import TASKS, CancelToken
from .methods import BASELINES, PEERS, Method, build_methods, run_method
from .scoring import METRICS, score
from .trials import SINGLE_IMAGES, Settings, Trial, check_prompt_count, donors_of, make_trial

log = logging.getLogger(__name__)

_DEFAULT_SETTINGS = Settings()
"""What an evaluation asks when given no settings (frozen, so one instance serves every call)."""


# ---------------------------------------------------------------- running and scoring


def evaluate(
    cases: Sequence[Case],
    methods: Sequence[Method],
    out: str | Path,
    settings: Settings = _DEFAULT_SETTINGS,
    cancel: CancelToken | None = None,
) -> list[dict[str, Any]]:
    """Run every method on every (case, task) trial; write the report into the new folder ``out``.

    Returns the per-trial records (as written to ``cases/*.json``).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder for the report")
    if not methods:
        raise ValueError("evaluate needs at least one method")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    check_prompt_count(cases, settings)
    records = []
    for number, case in enumerate(cases):
        for task in (t for t in settings.tasks if t in case.tasks):
            trial = make_trial(case, task, settings, number, donors_of(cases, number, task))
            if trial is None:
                continue
            outputs, record = {}, _record(trial, settings)
            for method in (m for m in methods if m.answers(trial)):
                start = time.perf_counter()
                outputs[method.name] = run_method(method, trial, settings.axis, cancel)
                seconds = time.perf_counter() - start
                record["methods"][method.name] = {
                    **score(trial, outputs[method.name], settings.axis),
                    "seconds": seconds,
                }
            log.info("%s: %s", trial.name, _one_line(record))
            _write_json(out / "cases" / f"{trial.name}.json", record)
            montage([_panels(trial, outputs, settings.axis)], out / "figures" / f"{trial.name}.png")
            records.append(record)
    if not records:
        raise ValueError("no case could pose any of the tasks asked for; nothing was evaluated")
    table = summary_table(records, names)
    _write_json(out / "summary.json", {"settings": asdict(settings), "summary": _summary(records, names)})
    # UTF-8 whatever the locale: the table holds "±", and an ASCII locale must not lose the report.
    atomic_write(out / "summary.md", lambda temp: Path(temp).write_text(table + "\n", encoding="utf-8"))
    return records


def _record(trial: Trial, settings: Settings) -> dict[str, Any]:
    return {
        "case": trial.case.case_id,
        "dataset": trial.case.dataset,
        "task": trial.task,
        "axis": settings.axis,
        "seed": settings.seed,
        "prompt_slices": trial.prompt_slices,
        "prompt_source": trial.prompt_source,
        "methods": {},
    }


def _one_line(record: dict[str, Any]) -> str:
    parts = []
    for name, values in record["methods"].items():
        parts.append(name + " " + " ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "seconds"))
    return "; ".join(parts)


def _summary(records: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {method: {metric: Summary as dict}}} over the cases of each task a method answered."""
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for task in TASKS:
        rows = [r for r in records if r["task"] == task]
        if not rows:
            continue
        result[task] = {
            name: {
                metric: asdict(summarize(r["methods"][name][metric] for r in rows if name in r["methods"]))
                for metric in (*METRICS[task], "seconds")
            }
            for name in names
            if any(name in r["methods"] for r in rows)
        }
    return result


def summary_table(records: list[dict[str, Any]], names: Sequence[str]) -> str:
    """Markdown: one table per task, one row per method, mean ± std (n cases) per metric.

    Non-finite values are not averaged but counted: "+2 inf" means two cases had an infinite HD95
    (a structure missed or invented) and "+1 nan" one case with nothing to score.
    """
    lines = []
    for task, methods in _summary(records, names).items():
        metrics = (*METRICS[task], "seconds")
        lines += [
            f"### {task}",
            "",
            "| method | " + " | ".join(metrics) + " |",
            "|---" * (len(metrics) + 1) + "|",
        ]
        for name, values in methods.items():
            cells = [_cell(values[m]) for m in metrics]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def _cell(summary: dict[str, Any]) -> str:
    text = "n/a" if summary["n"] == 0 else f"{summary['mean']:.4g} ± {summary['std']:.2g} (n={summary['n']})"
    extra = [f"+{summary[key]} {key[2:]}" for key in ("n_inf", "n_nan") if summary[key]]
    return " ".join([text, *extra])


def _jsonable(value: Any) -> Any:
    """JSON has no NaN/inf: NaN becomes null and ±inf the strings "inf"/"-inf"."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(_jsonable(data), indent=2, allow_nan=False)
    atomic_write(path, lambda temp: Path(temp).write_text(text))


def _panels(trial: Trial, outputs: dict[str, np.ndarray], axis: int) -> list[Panel]:
    """Prompt, query, each method's answer and the truth on the most telling scored slice."""
    scored = [i for i in range(trial.volume.shape[axis]) if i not in trial.prompt_slices]
    if trial.task == "segment":
        query = max(scored, key=lambda i: int(np.count_nonzero(take_slice(trial.truth, axis, i))))
    elif trial.task == "inpaint":
        query = max(scored, key=lambda i: int(np.count_nonzero(take_slice(trial.hole, axis, i))))
    else:
        query = scored[len(scored) // 2]
    prompt = min(trial.prompts, key=lambda p: 0 if p.index is None else abs(p.index - query))
    display = _display_range(trial)
    query_image = display.normalize(take_slice(trial.volume, axis, query))
    if trial.task == "segment":
        panels = [
            Panel("prompt", display.normalize(prompt.image), np.asarray(prompt.target)),
            Panel("query", query_image),
        ]
        panels += [Panel(n, query_image, take_slice(o, axis, query)) for n, o in outputs.items()]
        return [*panels, Panel("truth", query_image, take_slice(trial.truth, axis, query))]
    panels = [
        Panel("prompt in", display.normalize(prompt.image)),
        Panel("prompt out", trial.scale.normalize(prompt.target)),
        Panel("query", query_image),
    ]
    panels += [Panel(n, trial.scale.normalize(take_slice(o, axis, query))) for n, o in outputs.items()]
    return [*panels, Panel("truth", take_slice(trial.truth, axis, query))]


def _display_range(trial: Trial) -> IntensityRange:
    if trial.scale is not None and trial.task != "synthesize":
        return trial.scale
    return intensity_range(trial.volume, trial.modality)


# ---------------------------------------------------------------- CLI


def _options_json(text: str) -> dict[str, Any]:
    """A ``--model-options`` value: a JSON object of Predictor options."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of Predictor options, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    from ..data.sources import load_cases, validate_cases
    from ..predict import Predictor

    parser = argparse.ArgumentParser(prog="python -m MVGCore.evaluate", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--prompts", type=int, default=3, help="prompt slices per case (default 3)")
    parser.add_argument("--k-prompts", type=int, default=1, help="prompts the model sees per query slice")
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and holes")
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
    parser.add_argument("--max-cases", type=int, help="evaluate only the first N cases")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--allow-pickle", action="store_true", help="allow a trusted pickle checkpoint")
    parser.add_argument("--quiet", action="store_true")
    cli.add_debug_flag(parser)
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
