"""The evaluation loop: every method answers every (case, task) trial, and the report is written.

A trial is made once and shared, so the methods' scores differ only by the method; each answer is
timed, scored and written as it comes, so a long run that stops leaves the cases done so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.sources import Case
from ..types import CancelToken
from .methods import Method, run_method
from .report import new_record, one_line, write_case, write_summary
from .scoring import score
from .trials import Settings, check_prompt_count, donors_of, make_trial

log = logging.getLogger(__package__)  # one logger for the package, named as when it was one module

_DEFAULT_SETTINGS = Settings()
"""What an evaluation asks when given no settings (frozen, so one instance serves every call)."""


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
            outputs, record = {}, new_record(trial, settings)
            for method in (m for m in methods if m.answers(trial)):
                start = time.perf_counter()
                outputs[method.name] = run_method(method, trial, settings.axis, cancel)
                seconds = time.perf_counter() - start
                record["methods"][method.name] = {
                    **score(trial, outputs[method.name], settings.axis),
                    "seconds": seconds,
                }
            log.info("%s: %s", trial.name, one_line(record))
            write_case(out, trial, record, outputs, settings.axis)
            records.append(record)
    if not records:
        raise ValueError("no case could pose any of the tasks asked for; nothing was evaluated")
    write_summary(out, records, names, settings)
    return records
