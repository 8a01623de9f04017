"""Publish a trained run as the bundled default model: fp16 weights, model card, registry entry.

    python scripts/make_model_card.py [--previous-card OLD/model_card.json] --stage RUN LOG "CMD" \
        [--stage ...] --eval EVAL_DIR "EVAL CMD" [--eval ...] --prepare-command "..." \
        [--default-method "mvg"] [--demo results.json]
    python scripts/make_model_card.py --republish --previous-card Resources/Models/model_card.json \
        --eval EVAL_DIR "EVAL CMD" [--keep-tasks denoise inpaint] --prepare-command "..." [--demo ...]

Reads each training stage's run folder (config, split, summary, metrics; the last stage is the
shipped model), its log (wall time) and an
``python -m MVGCore.evaluate`` report; writes Resources/Models/<name>.safetensors + .json (the
checkpoint), model_card.json, MODEL_CARD.md and the Models.json registry entry. Every number in
the card is copied from those files; nothing is typed in by hand.

``--republish`` re-measures the bundled weights after an inference change (a new default
option): the weights stay as they are (their sha256 must be the previous card's), the stages and
split come from the previous card, and ``--keep-tasks`` carries over its evaluations of the tasks
the change leaves alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from datetime import datetime
from pathlib import Path

import torch
import yaml

from MVGCore.checkpoint import load_model, save_model, sha256_of
from MVGCore.evaluate import summary_table

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "Resources" / "Models"
NAME = "mvg_tiny_default"
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def wall_seconds(log: Path) -> float:
    stamps = [m.group(1) for line in log.read_text().splitlines() if (m := TIMESTAMP.match(line))]
    if len(stamps) < 2:
        raise ValueError(f"{log}: need timestamped start and end lines to measure the wall time")
    first, last = (datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stage",
        nargs=3,
        action="append",
        default=[],
        metavar=("RUN", "LOG", "COMMAND"),
        help="a training stage: run folder, its log, the command that ran it (in order; last = shipped)",
    )
    parser.add_argument(
        "--eval",
        nargs=2,
        action="append",
        required=True,
        metavar=("FOLDER", "COMMAND"),
        help="a python -m MVGCore.evaluate report folder and its command line, recorded verbatim "
        "(repeatable, e.g. segmentation and image tasks with different model options)",
    )
    parser.add_argument(
        "--prepare-command", required=True, help="the prepare command line, recorded verbatim"
    )
    parser.add_argument(
        "--demo", type=Path, help="results.json of python -m MVGCore.demo on the bundled weights"
    )
    parser.add_argument(
        "--previous-card",
        type=Path,
        help="model_card.json of the model the first --stage started from (--init): its stages come first",
    )
    parser.add_argument(
        "--republish",
        action="store_true",
        help="the bundled weights unchanged (sha256 as in --previous-card), newly evaluated; stages "
        "and split from --previous-card, no --stage",
    )
    parser.add_argument(
        "--keep-tasks",
        nargs="+",
        default=[],
        choices=sorted(PRIMARY),
        help="with --republish: carry over the previous card's evaluations of these tasks (those the "
        "inference change does not touch) instead of re-running them",
    )
    parser.add_argument(
        "--caveat",
        action="append",
        default=[],
        help="a Limitations line recorded verbatim (repeatable), e.g. which inference defaults were "
        "chosen on the cases of this card",
    )
    parser.add_argument(
        "--ship-step",
        type=int,
        help="ship the last stage's checkpoint of this step instead of its final one (the card says "
        "it was picked, and on what)",
    )
    parser.add_argument(
        "--picked-by",
        default="",
        help="what the shipped weights were picked by (checkpoints or arms compared on which cases), "
        "recorded verbatim in the card; needed with --ship-step",
    )
    parser.add_argument(
        "--default-method",
        default="mvg",
        help="the evaluate method that is what users get by default (e.g. mvg or mvg[adapt_steps=20])",
    )
    parser.add_argument(
        "--verdict-method",
        action="append",
        default=[],
        help="also give the verdict per case of this model variant (e.g. mvg[adapt_steps=1000]), "
        "on the cases it answered (repeatable)",
    )
    args = parser.parse_args()

    if args.ship_step is not None and not args.picked_by:
        parser.error("--ship-step needs --picked-by (what the checkpoint was chosen on)")
    if args.republish and (args.stage or args.ship_step is not None or not args.previous_card):
        parser.error(
            "--republish takes its stages from --previous-card: give it, and no --stage or --ship-step"
        )
    if not args.republish and (not args.stage or args.keep_tasks):
        parser.error("give at least one --stage (or --republish); --keep-tasks needs --republish")
    previous = json.loads(args.previous_card.read_text()) if args.previous_card else None
    stages = [describe_stage(Path(run), Path(log), command) for run, log, command in args.stage[:-1]]
    if args.stage:
        stage = args.stage[-1]
        stages.append(describe_stage(Path(stage[0]), Path(stage[1]), stage[2], args.ship_step))
    if previous:
        earlier = [
            {"train_cases": previous["data"]["train_cases"], **stage}
            for stage in previous["training"]["stages"]
        ]
        stages = earlier + stages
    reports = [(Path(folder), command) for folder, command in args.eval]
    evaluations = [json.loads((folder / "summary.json").read_text()) for folder, _ in reports]
    tables = [(folder / "summary.md").read_text().strip() for folder, _ in reports]
    records = [
        json.loads(p.read_text()) for folder, _ in reports for p in sorted((folder / "cases").glob("*.json"))
    ]
    kept = kept_evaluation(previous["evaluation"], args.keep_tasks) if args.keep_tasks else None
    if kept:
        twice = sorted({r["task"] for r in records} & set(args.keep_tasks))
        if twice:
            parser.error(f"--keep-tasks {twice}: the new --eval reports evaluate them too")
        records += kept["records"]
    shared = shared_images(records, [stage["train_cases"] for stage in stages])

    if args.republish:
        shipped = MODELS / f"{NAME}.safetensors"
        if sha256_of(shipped) != previous["sha256"]:
            parser.error(
                f"--republish: {shipped} is not the weights of {args.previous_card} (sha256 differs)"
            )
        split = {"train": previous["data"]["train_cases"], "val": previous["data"]["validation_cases"]}
    else:
        final = Path(args.stage[-1][0])
        shipped = json.loads((final / "summary.json").read_text())["checkpoint"]
        split = json.loads((final / "split.json").read_text())
    if args.ship_step is not None:
        shipped = final / "checkpoints" / f"step_{args.ship_step:06d}.safetensors"
        if not shipped.is_file():
            parser.error(f"--ship-step {args.ship_step}: {shipped} does not exist")
    model, _ = load_model(shipped)
    card = {
        "name": NAME,
        "preset": model.config.preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tile_size": model.config.tile_size,
        "segment_tile_size": model.config.segment_tile_size or model.config.tile_size,
        "tasks": trained_tasks(stages),
        "data": {
            "store": "python -m MVGCore.prepare --open-samples (real images from pyradiomics, mricron-data, "
            "nilearn, pydicom-data, pydicom; licenses in docs/data.md)",
            "train_cases": split["train"],
            "validation_cases": split["val"],
        },
        "training": {
            "hardware": f"{cpu_name()}, 2 cores, no GPU",
            "torch": torch.__version__,
            "prepare_command": args.prepare_command,
            "stages": stages,
        },
        "evaluation": {
            "commands": [command for _, command in reports] + (kept["commands"] if kept else []),
            "default_method": args.default_method,
            # one per command (a task evaluated by two commands keeps both)
            "summaries": [e["summary"] for e in evaluations] + (kept["summaries"] if kept else []),
            "settings": [e["settings"] for e in evaluations] + (kept["settings"] if kept else []),
            "per_case": {f"{r['dataset']}/{r['case']}/{r['task']}": r["methods"] for r in records},
            "cases_sharing_a_training_image": shared,
            "caveats": args.caveat,
            "republished": bool(args.republish),
        },
    }
    if args.demo:
        card["demo"] = {"command": "python -m MVGCore.demo", **json.loads(args.demo.read_text())}
        card["demo"].pop("output", None)
    MODELS.mkdir(parents=True, exist_ok=True)
    if args.republish:
        weights = shipped  # bit for bit the weights the previous card describes
    else:
        weights = save_model(
            MODELS / f"{NAME}.safetensors", model, extra={"model_card": "model_card.json"}, half=True
        )
    card["sha256"] = sha256_of(weights)
    card["size_bytes"] = weights.stat().st_size
    (MODELS / "model_card.json").write_text(json.dumps(card, indent=2, allow_nan=True) + "\n")

    registry_path = MODELS / "Models.json"
    registry = json.loads(registry_path.read_text())
    entry = {
        "name": "MVG tiny (default)",
        "file": weights.name,
        "sha256": card["sha256"],
        "preset": card["preset"],
        "description": f"Bundled default: tiny preset, {sum(x['steps'] for x in stages)} steps on real "
        "open images (CPU). See MODEL_CARD.md for what it can and cannot do.",
        "tasks": [t.capitalize() for t in card["tasks"]],
    }
    registry["models"] = [entry] + [m for m in registry.get("models", []) if m.get("file") != weights.name]
    registry_path.write_text(json.dumps(registry, indent=2) + "\n")

    t = card["training"]
    lines = [
        f"# Model card: {NAME}",
        "",
        f"The bundled default MVG model: preset `{card['preset']}` ({card['parameters']:,} parameters, "
        f"{card['tile_size']} px tiles), stored as fp16 safetensors ({card['size_bytes'] / 1e6:.1f} MB, "
        f"sha256 `{card['sha256']}`).",
        "",
        "## Data",
        "",
        "Real images only, obtained by MVGCore's open-samples recipe and prepared with",
        f"`{t['prepare_command']}` (licenses and attribution: docs/data.md); the last stage adds",
        "generated phantoms (see its config). Whole cases are held out:",
        "",
        f"- training cases ({len(split['train'])}): " + ", ".join(split["train"]),
        f"- validation cases ({len(split['val'])}, never sampled in the last stage): "
        + ", ".join(split["val"]),
        *contamination_lines(shared),
        "",
        "The bundled sample (Resources/SampleData) is cut from the validation case pyradiomics/lung2.",
        "",
        "## Training",
        "",
        f"On {t['hardware']} (torch {t['torch']}), while other work shared the machine:",
        "",
        *(stage_line(number, stage) for number, stage in enumerate(stages, 1)),
        "",
        "## Measured quality (validation split)",
        "",
        *(line for (_, command), table in zip(reports, tables) for line in (f"`{command}`", "", table, "")),
        *(kept_lines(kept) if kept else []),
        "",
        "Segmentation: Dice on the non-prompt slices of each case; image tasks: PSNR in dB on [0, 1]",
        "scaled images (inpainting also inside the hole). The baselines are described in",
        "docs/metrics.md (`classical`: registration-based label propagation, non-local means,",
        "biharmonic inpainting).",
        "",
        f"Per case (primary metric; `{args.default_method}` is what users get by default):",
        "",
        *per_case_table(records),
        "",
        *demo_lines(card.get("demo")),
        f"## Verdict per case (`{args.default_method}`, primary metric)",
        "",
        *verdicts(records, args.default_method),
        "",
        *(
            line
            for method in args.verdict_method
            for line in (f"Not the default, `{method}`:", "", *verdicts(records, method), "")
        ),
        "## Limitations",
        "",
        f"Trained for {sum(x['wall_time_s'] for x in stages) / 3600:.1f} hours in all on a 2-core CPU on a",
        "few dozen real volumes plus phantoms: a working default that shows the whole pipeline, not a",
        "model for clinical use. Where a baseline is ahead, use it or train a larger model on your data",
        "(docs/training.md).",
        "",
        f"- Tiles are {card['tile_size']} px; segmentation runs at {card['segment_tile_size']} px"
        " (`segment_tile_size` in the sidecar's config; `tile_size` option) and zooms onto the"
        ' prompts\' region (`zoom="prompts"`), which grows with the propagated labels; a structure'
        " that moves out of it where no answer reaches is cut off.",
        shipped_line(len(stages), stages[-1], args.picked_by),
        *(
            [
                f"- Republished on {datetime.now():%Y-%m-%d} with the weights unchanged: the new evaluations "
                "measure the inference defaults of that date."
            ]
            if args.republish
            else []
        ),
        *(f"- {caveat}" for caveat in args.caveat),
        *unmeasured_lines(card["tasks"], records),
    ]
    (MODELS / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    action = "kept" if args.republish else "wrote"
    print(f"{action} {weights}; wrote model_card.json, MODEL_CARD.md and the Models.json entry")


def kept_evaluation(evaluation: dict, tasks: list[str]) -> dict:
    """The previous card's evaluations of ``tasks`` (commands, settings, per-case records and
    summaries), for a republication whose inference change leaves those tasks alone. A command
    that also evaluated another task cannot be carried over half, so it is refused."""
    commands, settings, summaries = [], [], []
    for number, (command, setting) in enumerate(zip(evaluation["commands"], evaluation["settings"])):
        covered = set(setting["tasks"]) & set(tasks)
        if covered and covered != set(setting["tasks"]):
            raise ValueError(
                f"the previous card's `{command}` evaluates {setting['tasks']}: keep all or none"
            )
        if covered:
            commands.append(command)
            settings.append(setting)
            summaries.append(_command_summary(evaluation, number, setting["tasks"]))
    records = []
    for key, methods in evaluation["per_case"].items():
        dataset, case, task = key.rsplit("/", 2)
        if task in tasks:
            records.append({"dataset": dataset, "case": case, "task": task, "methods": methods})
    if not records:
        raise ValueError(f"the previous card has no evaluation of {tasks} to keep")
    return {"commands": commands, "settings": settings, "records": records, "summaries": summaries}


def _command_summary(evaluation: dict, number: int, tasks: list[str]) -> dict:
    """The summary of a previous card's ``number``-th command. Cards before 2026-12-03 kept one
    summary keyed by task (the last command's per task), which is that command's when it is the
    only one to evaluate its tasks, as a kept command is."""
    if "summaries" in evaluation:
        return evaluation["summaries"][number]
    return {task: evaluation["summary"][task] for task in tasks if task in evaluation["summary"]}


def kept_lines(kept: dict) -> list[str]:
    """Markdown for carried-over evaluations: their commands, then one table over their cases."""
    names = list(dict.fromkeys(name for r in kept["records"] for name in r["methods"]))
    tasks = sorted({r["task"] for r in kept["records"]})
    return [
        f"Carried over from the previous card ({', '.join(tasks)}; the same weights, and the change",
        "this card republishes them for does not touch these tasks), measured by:",
        "",
        *(f"- `{command}`" for command in kept["commands"]),
        "",
        summary_table(kept["records"], names),
        "",
    ]


def unmeasured_lines(tasks: list[str], records: list[dict]) -> list[str]:
    """A Limitations line per task the model was trained for that no evaluated case scores."""
    scored = {r["task"] for r in records}
    return [
        f"- {task.capitalize()} is not measured on any validation case of this card: none of the cases"
        " it evaluates poses it (for synthesis, no open sample here has a paired second modality)."
        for task in tasks
        if task not in scored
    ]


def describe_stage(run: Path, log: Path, command: str, ship_step: int | None = None) -> dict:
    """A stage's record; with ``ship_step``, as of that checkpoint (the run itself went on to
    ``run_steps``, and its wall time is the whole run's)."""
    summary = json.loads((run / "summary.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = summary["step"] if ship_step is None else ship_step
    return {
        "command": command,
        "steps": steps,
        "run_steps": summary["step"],
        "schedule_steps": config["steps"],
        "stopped_early": summary["stopped_early"],
        "batch_size": config["batch_size"],
        "samples_seen": steps * config["batch_size"] * config.get("grad_accum", 1),
        "wall_time_s": wall_seconds(log),
        "date": datetime.fromtimestamp(log.stat().st_mtime).strftime("%Y-%m-%d"),
        "config": config,
        "validation_history": [r for r in records if r.get("kind") == "val" and r["step"] <= steps],
        "train_cases": json.loads((run / "split.json").read_text())["train"],
    }


def shipped_line(number: int, stage: dict, picked_by: str) -> str:
    flattered = (
        " Numbers measured on the cases a checkpoint was picked on flatter it by that choice. Each stage"
        " started from the previous one's weights."
    )
    if stage["steps"] != stage.get("run_steps", stage["steps"]):
        return (
            f"- The shipped weights are the step-{stage['steps']} checkpoint of stage {number}, whose run"
            f" went on to step {stage['run_steps']}; it was picked by {picked_by}.{flattered}"
        )
    if picked_by:
        last = f"- The shipped weights are the last checkpoint of stage {number}"
        return f"{last}; it was picked by {picked_by}.{flattered}"
    return (
        f"- The shipped weights are the last checkpoint of stage {number} (none was picked by its"
        " validation score); each stage started from the previous one's weights."
    )


def stage_line(number: int, stage: dict) -> str:
    stopped = (
        f"; stopped by SIGTERM at step {stage['steps']} of a {stage['schedule_steps']}-step schedule"
        if stage["stopped_early"]
        else ""
    )
    if stage["steps"] != stage.get("run_steps", stage["steps"]):
        stopped = f"; the step-{stage['steps']} checkpoint of a {stage['run_steps']}-step run, timed whole"
    history = stage["validation_history"]
    last_val = history[-1] if history else {}
    if "dice_volume" in last_val:

        def cases(record: dict) -> str:
            return ", ".join(
                f"{k.split('/', 1)[1]} {v:.3f}" for k, v in record.items() if k.startswith("dice_volume/")
            )

        dice = (
            f"Dice on the whole validation volumes (2 prompt slices) at step {history[0]['step']}, the "
            f"weights it started from: {cases(history[0])}; at step {last_val['step']}: {cases(last_val)}"
        )
    elif "dice/segment" in last_val or not history:
        dice = f"last validation Dice during training {last_val.get('dice/segment', float('nan')):.3f}"
    else:
        dice = "training-style validation " + "; ".join(
            f"{key} {history[0][key]:.2f} at step {history[0]['step']} -> {last_val[key]:.2f} at step "
            f"{last_val['step']}"
            for key in sorted(last_val)
            if key.startswith("psnr/") and key in history[0]
        )
    return (
        f"{number}. `{stage['command']}`: {stage['steps']} steps of batch {stage['batch_size']} "
        f"({stage['samples_seen']:,} samples{stopped}), {stage['wall_time_s'] / 60:.0f} min, "
        f"{stage['date']}; {dice}."
    )


def demo_lines(demo: dict | None) -> list[str]:
    if demo is None:
        return []
    return [
        f"## The demo (`python -m MVGCore.demo`, bundled sample, prompts on slices {demo['prompt_slices']})",
        "",
        "| task | MVG | classical baseline |",
        "|---|---|---|",
        f"| segmentation Dice (non-prompt slices) | {demo['dice_model']:.3f} | {demo['dice_baseline']:.3f} |",
        f"| denoising PSNR dB (noisy {demo['psnr_noisy']:.2f}) | {demo['psnr_denoised_model']:.2f} | "
        f"{demo['psnr_denoised_baseline']:.2f} |",
        f"| inpainting PSNR dB in the hole | {demo['psnr_hole_model']:.2f} | "
        f"{demo['psnr_hole_baseline']:.2f} |",
        "",
        f"Segmentation took {demo['seconds']['segment_model']:.2f} s on {demo['device']}.",
        "",
    ]


PRIMARY = {"segment": "dice", "denoise": "psnr", "inpaint": "psnr_hole", "synthesize": "psnr"}


def per_case_table(records: list[dict]) -> list[str]:
    """Markdown, one table per task: a row per case, a column per method, the primary metric."""
    lines: list[str] = []
    for task in PRIMARY:
        rows = [r for r in records if r["task"] == task]
        if not rows:
            continue
        names = list(dict.fromkeys(n for r in rows for n in r["methods"]))  # reports may differ
        lines += [
            f"**{task}** ({PRIMARY[task]})",
            "",
            "| case | " + " | ".join(names) + " |",
            "|---" * (len(names) + 1) + "|",
        ]
        for r in rows:
            cells = [f"{r['methods'][n][PRIMARY[task]]:.3f}" if n in r["methods"] else "-" for n in names]
            lines.append(f"| {r['dataset']}/{r['case']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def verdicts(records: list[dict], default: str) -> list[str]:
    """One line per case: does ``default`` beat every other non-model method on the primary metric?"""
    lines = []
    for r in records:
        methods, metric = r["methods"], PRIMARY[r["task"]]
        if default not in methods:
            continue
        ours = methods[default][metric]
        behind = [n for n in methods if not n.startswith("mvg") and methods[n][metric] >= ours]
        ahead = [n for n in methods if not n.startswith("mvg") and n not in behind]
        verdict = "beats every baseline" if not behind else "does NOT beat " + ", ".join(behind)
        lines.append(
            f"- {r['task']} {r['dataset']}/{r['case']}: {ours:.3f} {verdict}"
            + (f" (ahead of {', '.join(ahead)})" if behind and ahead else "")
        )
    return lines


def shared_images(records: list[dict], train_lists: list[list[str]]) -> dict[str, list[str]]:
    """Evaluated open-sample cases whose image file is also the image of a training case of any
    stage (e.g. one scan with several atlases): such a case is not held out from the model's history."""
    from MVGCore.data import open_samples

    known = set(open_samples.all_case_ids())
    trained = sorted({c for cases in train_lists for c in cases if c in known})
    image_of = {f"{c.dataset}/{c.case_id}": c.images[0] for c in open_samples.select(trained)}
    result = {}
    for r in records:
        key = f"{r['dataset']}/{r['case']}"
        if key not in known:
            continue
        (image,) = [c.images[0] for c in open_samples.select([key])]
        overlap = sorted(c for c, path in image_of.items() if path == image)
        if overlap:
            result[key] = overlap
    return result


def contamination_lines(shared: dict[str, list[str]]) -> list[str]:
    return [
        f"- **{case} is not a clean held-out case**: its image was trained on in an earlier stage as "
        + ", ".join(others)
        + "; its numbers are reported apart from the verdict's meaning."
        for case, others in shared.items()
    ]


def trained_tasks(stages: list[dict]) -> list[str]:
    """The tasks any stage trained with a positive weight: a later stage that trains one part of
    the model on one task (a denoising refiner) leaves the others as the earlier stages taught them."""
    weights = [_task_weights(stage["config"]["tasks"]) for stage in stages]
    return sorted({task for stage in weights for task, weight in stage.items() if weight > 0})


def _task_weights(tasks) -> dict[str, float]:
    return {t: float(w) for t, w in tasks.items()} if isinstance(tasks, dict) else dict.fromkeys(tasks, 1.0)


if __name__ == "__main__":
    main()
