"""The report of an evaluation: one record per trial, the per-method summary and the figures.

Records are plain JSON (NaN written as null and infinities as "inf", since JSON has neither), so
``scripts/make_model_card.py`` and other readers can rebuild the summary table from the files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write
from ..figures import Panel, montage
from ..intensity import IntensityRange, intensity_range
from ..metrics import summarize
from ..slicewise import take_slice
from ..types import TASKS
from .scoring import METRICS
from .trials import Settings, Trial


def new_record(trial: Trial, settings: Settings) -> dict[str, Any]:
    """The record of ``trial`` before any method answers: what it asked, so a case file can be
    compared and rerun; ``methods`` is filled with each method's metrics and seconds."""
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


def one_line(record: dict[str, Any]) -> str:
    """Each method's metrics on one line, for the log while the evaluation runs."""
    parts = []
    for name, values in record["methods"].items():
        parts.append(name + " " + " ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "seconds"))
    return "; ".join(parts)


def write_case(
    out: Path, trial: Trial, record: dict[str, Any], outputs: dict[str, np.ndarray], axis: int
) -> None:
    """``cases/<trial>.json`` and ``figures/<trial>.png`` (prompt, query, each answer, truth) in ``out``."""
    _write_json(out / "cases" / f"{trial.name}.json", record)
    montage([_panels(trial, outputs, axis)], out / "figures" / f"{trial.name}.png")


def write_summary(out: Path, records: list[dict[str, Any]], names: Sequence[str], settings: Settings) -> None:
    """``summary.json`` (the settings and every method's summary per task) and ``summary.md``
    (:func:`summary_table`) in ``out``."""
    table = summary_table(records, names)
    _write_json(out / "summary.json", {"settings": asdict(settings), "summary": _summary(records, names)})
    # UTF-8 whatever the locale: the table holds "±", and an ASCII locale must not lose the report.
    atomic_write(out / "summary.md", lambda temp: Path(temp).write_text(table + "\n", encoding="utf-8"))


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
