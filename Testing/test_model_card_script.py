"""scripts/make_model_card.py's summaries of the training stages: the card must list every task
the bundled model was taught, and describe a stage that validated on image tasks only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_model_card.py"
spec = importlib.util.spec_from_file_location("make_model_card", SCRIPT)
make_model_card = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_model_card)


def _stage(tasks, history) -> dict:
    return {
        "command": "python -m MVGCore.train ...",
        "steps": 1000,
        "run_steps": 1000,
        "schedule_steps": 1000,
        "stopped_early": False,
        "batch_size": 8,
        "samples_seen": 8000,
        "wall_time_s": 1620.0,
        "date": "2026-12-02",
        "config": {"tasks": tasks},
        "validation_history": history,
    }


def test_card_tasks_are_those_of_every_stage_not_only_the_last():
    stages = [
        _stage(["segment", "denoise", "inpaint", "synthesize"], []),
        _stage({"segment": 1.0, "inpaint": 0.0}, []),
        _stage({"denoise": 1.0}, []),
    ]
    assert make_model_card.trained_tasks(stages) == ["denoise", "inpaint", "segment", "synthesize"]
    assert make_model_card.trained_tasks(stages[1:2]) == ["segment"]


def test_a_denoising_only_stage_reports_its_psnr_not_a_missing_dice():
    history = [
        {"step": 0, "kind": "val", "psnr/denoise": 24.22, "val_loss": 0.22},
        {"step": 1000, "kind": "val", "psnr/denoise": 34.66, "val_loss": 0.07},
    ]
    line = make_model_card.stage_line(6, _stage({"denoise": 1.0}, history))
    assert "psnr/denoise 24.22 at step 0 -> 34.66 at step 1000" in line
    assert "nan" not in line and "Dice" not in line


def test_a_segmentation_stage_still_reports_its_dice():
    history = [{"step": 0, "dice/segment": 0.01}, {"step": 500, "dice/segment": 0.019}]
    line = make_model_card.stage_line(2, _stage(["segment"], history))
    assert "last validation Dice during training 0.019" in line


def test_weights_picked_among_arms_say_so_even_when_they_are_a_run_s_last_checkpoint():
    stage = _stage({"denoise": 1.0}, [])
    picked = make_model_card.shipped_line(7, stage, "comparing two arms on the validation cases")
    assert "picked by comparing two arms on the validation cases" in picked
    assert "flatter" in picked
    assert "none was picked" in make_model_card.shipped_line(7, stage, "")


def test_verdicts_cover_the_cases_a_variant_answered_and_name_the_baselines_ahead():
    records = [
        {
            "dataset": "d",
            "case": "xr",
            "task": "denoise",
            "methods": {
                "mvg": {"psnr": 35.0},
                "mvg[adapt_steps=9]": {"psnr": 40.5},
                "classical": {"psnr": 39.9},
                "noisy-input": {"psnr": 26.4},
            },
        },
        {
            "dataset": "d",
            "case": "xr",
            "task": "inpaint",
            "methods": {"mvg": {"psnr_hole": 14.0}, "classical": {"psnr_hole": 8.0}},
        },
    ]
    assert make_model_card.verdicts(records, "mvg") == [
        "- denoise d/xr: 35.000 does NOT beat classical (ahead of noisy-input)",
        "- inpaint d/xr: 14.000 beats every baseline",
    ]
    assert make_model_card.verdicts(records, "mvg[adapt_steps=9]") == [
        "- denoise d/xr: 40.500 beats every baseline"
    ]


def test_tasks_no_case_scores_are_named_as_unmeasured():
    records = [{"task": "segment"}, {"task": "denoise"}, {"task": "inpaint"}]
    lines = make_model_card.unmeasured_lines(["denoise", "inpaint", "segment", "synthesize"], records)
    assert len(lines) == 1 and lines[0].startswith("- Synthesize is not measured")
    assert make_model_card.unmeasured_lines(["segment"], records) == []


def _evaluation() -> dict:
    """A previous card's evaluation: one segmentation command, one of two image tasks."""
    return {
        "commands": ["evaluate --tasks segment", "evaluate --tasks denoise inpaint"],
        "settings": [{"tasks": ["segment"]}, {"tasks": ["denoise", "inpaint"]}],
        "summary": {"segment": {"mvg": {}}, "denoise": {"mvg": {}}, "inpaint": {"mvg": {}}},
        "per_case": {
            "pydicom-data/chest_xr/segment": {"mvg": {"dice": 0.4}},
            "pydicom-data/chest_xr/denoise": {"mvg": {"psnr": 30.0, "ssim": 0.8, "seconds": 1.0}},
            "pyradiomics/lung2/inpaint": {
                "mvg": {"psnr": 20.0, "ssim": 0.7, "psnr_hole": 15.0, "ssim_hole": 0.3, "seconds": 1.0},
                "classical": {"psnr": 21.0, "ssim": 0.7, "psnr_hole": 16.0, "ssim_hole": 0.3, "seconds": 2.0},
            },
        },
    }


def test_a_republication_carries_over_only_the_kept_tasks_whole_commands_and_cases():
    kept = make_model_card.kept_evaluation(_evaluation(), ["denoise", "inpaint"])
    assert kept["commands"] == ["evaluate --tasks denoise inpaint"]
    assert kept["settings"] == [{"tasks": ["denoise", "inpaint"]}]
    assert kept["summaries"] == [{"denoise": {"mvg": {}}, "inpaint": {"mvg": {}}}]
    assert [(r["dataset"], r["case"], r["task"]) for r in kept["records"]] == [
        ("pydicom-data", "chest_xr", "denoise"),
        ("pyradiomics", "lung2", "inpaint"),
    ]
    text = "\n".join(make_model_card.kept_lines(kept))
    assert "- `evaluate --tasks denoise inpaint`" in text and "segment" not in text
    assert "| classical | 21 ± 0 (n=1)" in text
    assert make_model_card.verdicts(kept["records"], "mvg")[1] == (
        "- inpaint pyradiomics/lung2: 15.000 does NOT beat classical"
    )


def test_each_command_keeps_its_own_summary_when_two_evaluate_the_same_task():
    """Cards keep one summary per command: two segmentation reports used to collapse into the
    last one, keyed by task."""
    evaluation = _evaluation()
    evaluation["commands"].insert(1, "evaluate --tasks segment --open-samples more")
    evaluation["settings"].insert(1, {"tasks": ["segment"]})
    del evaluation["summary"]
    evaluation["summaries"] = [{"segment": {"a": {}}}, {"segment": {"b": {}}}, {"denoise": {"c": {}}}]
    assert make_model_card.kept_evaluation(evaluation, ["segment"])["summaries"] == [
        {"segment": {"a": {}}},
        {"segment": {"b": {}}},
    ]
    assert make_model_card.kept_evaluation(evaluation, ["denoise", "inpaint"])["summaries"] == [
        {"denoise": {"c": {}}}
    ]


def test_a_command_cannot_be_carried_over_half_nor_an_absent_task():
    with pytest.raises(ValueError, match="keep all or none"):
        make_model_card.kept_evaluation(_evaluation(), ["denoise"])
    evaluation = _evaluation()
    del evaluation["per_case"]["pydicom-data/chest_xr/segment"]
    evaluation["commands"], evaluation["settings"] = evaluation["commands"][1:], evaluation["settings"][1:]
    with pytest.raises(ValueError, match=r"no evaluation of \['segment'\]"):
        make_model_card.kept_evaluation(evaluation, ["segment"])


def test_per_case_tables_join_reports_that_ran_different_variants():
    records = [
        {
            "dataset": "d",
            "case": "a",
            "task": "segment",
            "methods": {"mvg": {"dice": 0.5}, "mvg[x=1]": {"dice": 0.4}},
        },
        {
            "dataset": "d",
            "case": "b",
            "task": "segment",
            "methods": {"mvg": {"dice": 0.6}, "classical": {"dice": 0.3}},
        },
    ]
    lines = make_model_card.per_case_table(records)
    assert "| case | mvg | mvg[x=1] | classical |" in lines
    assert "| d/a | 0.500 | 0.400 | - |" in lines and "| d/b | 0.600 | - | 0.300 |" in lines
