"""Every option a task does not take is refused with a one-line error, per task, before any work."""

import dataclasses

import numpy as np
import pytest

from MVGCore.predict import TASK_OPTIONS, Options, Predictor, task_options
from MVGCore.predict.options import COMMON_OPTIONS
from MVGCore.types import TASKS, Prompt

VOLUME = np.zeros((3, 16, 16), dtype=np.float32)
LABEL = np.pad(np.ones((4, 4), dtype=np.uint8), 6)
SAMPLE_VALUES = {
    "zoom": "whole",
    "zoom_margin": 0.5,
    "align_prompts": "off",
    "answer": "model",
    "adapt_steps": 1,
    "adapt_lr": 1e-4,
    "auto_prompts": 2,
    "calibrate": "off",
    "image_scale": "fit",
    "tile_overlap": 4,
    "target_modality": "MR",
    "target_window": (0.0, 1.0),
}


def test_the_table_names_every_option_once():
    fields = {f.name for f in dataclasses.fields(Options)}
    assert set(COMMON_OPTIONS) | set(TASK_OPTIONS) == fields
    assert not set(COMMON_OPTIONS) & set(TASK_OPTIONS)
    assert set(SAMPLE_VALUES) == set(TASK_OPTIONS)
    assert all(set(tasks) <= set(TASKS) for tasks in TASK_OPTIONS.values())


def _calls(predictor):
    prompt = [Prompt.from_volume(VOLUME, 1, LABEL)]
    return {
        "segment": lambda **kw: predictor.segment(VOLUME, prompt, **kw),
        "denoise": lambda **kw: predictor.denoise(VOLUME, **kw),
        "inpaint": lambda **kw: predictor.inpaint(VOLUME, VOLUME > 1, **kw),
        "synthesize": lambda **kw: predictor.synthesize(
            VOLUME, [Prompt.from_volume(VOLUME, 1, VOLUME[1])], **kw
        ),
    }


@pytest.mark.parametrize("task", TASKS)
def test_each_task_refuses_the_options_it_does_not_take(checkpoint, task):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    run = _calls(predictor)[task]
    refused = [name for name in TASK_OPTIONS if name not in task_options(task)]
    assert refused, "every task has options it does not take"
    for name in refused:
        with pytest.raises(ValueError) as error:
            run(**{name: SAMPLE_VALUES[name]})
        message = str(error.value)
        assert "\n" not in message
        assert message.startswith(f"option {name}") and message.endswith(f"not to {task}"), message
        assert all(t in message for t in TASK_OPTIONS[name])


def test_options_parse_refuses_per_task_and_accepts_common_options():
    with pytest.raises(ValueError, match=r"^option calibrate applies to denoise, not to segment$"):
        Options.parse({"calibrate": "off"}, "segment")
    with pytest.raises(ValueError, match=r"^option answer applies to segment, not to denoise$"):
        Options.parse({"answer": "model"}, "denoise")
    with pytest.raises(ValueError, match=r"^option image_scale applies to denoise, inpaint and synthesize"):
        Options.parse({"image_scale": "fit"}, "segment")
    for task in TASKS:
        assert Options.parse({name: None for name in ("window", "ct_window", "tile_size")}, task)
    assert Options.parse({"calibrate": "off"}).calibrate == "off"  # without a task: checked, not refused
