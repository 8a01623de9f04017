"""The module's Run path: the model in a child process, its progress protocol, cancel and cleanup.

One real ``python -m MVGCore.predict`` run on a tiny random checkpoint checks the whole protocol;
small fake children (plain Python one-liners) crash, fail, run out of memory, hang, ignore
SIGTERM and start children of their own, as a PythonSlicer launcher does. After every outcome
no process and no temporary folder may be left.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from MVGSlicerLib import engine, mrml_io, pipeline, runner
from MVGSlicerLib.runner import CANCELLED, DONE, FAILED, RUNNING, ModelRun

from MVGCore.io import read_volume
from MVGCore.predict import main as predict_main

POSIX = os.name == "posix"
IJK_TO_RAS = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, 5.0], [0, 0, 2.5, -3.0], [0, 0, 0, 1]])


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a container's init may be slow to reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _gone_within(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _fake(tmp_path: Path, code: str, **kwargs) -> ModelRun:
    """A ModelRun whose child is the Python snippet ``code`` instead of the model."""
    folder = tmp_path / "run"
    folder.mkdir()
    command = [sys.executable, "-c", textwrap.dedent(code)]
    return ModelRun(command, folder, folder / runner.RESULT_FILE, **kwargs)


def _segment_job(mrml, shape=(6, 24, 20)):
    image = np.random.default_rng(0).normal(100, 20, size=shape).astype(np.float32)
    volume = mrml_io.add_volume_from_array(mrml.scene, image, IJK_TO_RAS, "mr")
    prompts = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "prompts")
    lesion = prompts.GetSegmentation().AddEmptySegment("lesion", "lesion", [1, 0, 0])
    painted = np.zeros(shape, bool)
    painted[1, 5:15, 4:12] = True
    painted[4, 6:14, 5:11] = True
    mrml.paint(prompts, lesion, painted, volume)
    return pipeline.segment_job(volume, prompts, [1, 4]), painted


def test_real_model_process_segments_with_progress_and_leaves_nothing(mrml, checkpoint, tmp_path):
    job, painted = _segment_job(mrml)
    geometry = mrml_io.geometry_from_volume(job.volume_node)
    run = ModelRun.start(job, geometry, checkpoint, device="cpu", temp_root=tmp_path)
    assert run.folder.parent == tmp_path and run.poll() == RUNNING  # poll returns at once
    assert run.wait(timeout=180) == DONE, (run.error, run.log_lines)
    assert (run.done, run.total) == (6, 6) and run.device == "cpu"
    assert run.result.shape == painted.shape and run.result.dtype == np.uint16
    assert np.array_equal(run.result[[1, 4]] > 0, painted[[1, 4]])  # prompt slices exactly as painted
    assert not run.folder.exists() and list(tmp_path.iterdir()) == []
    assert not _alive(run.pid)
    out = pipeline.write_result(mrml.scene, job, run.result)
    assert np.array_equal(mrml_io.segment_mask(out, job.segment_ids[0], job.volume_node)[1], painted[1])


def test_adapt_to_the_scan_reaches_the_model_process_and_its_steps_come_first(mrml, checkpoint, tmp_path):
    """With adapt_steps the child tunes its copy first: its progress counts those steps, then the
    slices (the run above, without them, counts slices only: no --adapt-steps unless asked)."""
    job, painted = _segment_job(mrml)
    job = dataclasses.replace(job, adapt_steps=2)
    geometry = mrml_io.geometry_from_volume(job.volume_node)
    run = ModelRun.start(job, geometry, checkpoint, device="cpu", temp_root=tmp_path)
    assert (run.total, run.stage()) == (8, ("adapt", 0, 2))
    assert run.wait(timeout=180) == DONE, (run.error, run.log_lines)
    assert (run.done, run.total) == (8, 8) and run.stage() == ("slices", 6, 6)
    assert np.array_equal(run.result[[1, 4]] > 0, painted[[1, 4]])
    assert not run.folder.exists()


def test_stage_tells_adaptation_steps_from_slices(tmp_path):
    run = _fake(tmp_path, "pass", total=9, adapt_steps=3)
    run.wait(timeout=30)
    for done, stage in (
        (0, ("adapt", 0, 3)),
        (2, ("adapt", 2, 3)),
        (3, ("slices", 0, 6)),
        (9, ("slices", 6, 6)),
    ):
        run.done = done
        assert run.stage() == stage
    run.adapt_steps = 0
    assert run.stage() == ("slices", 9, 9)


def test_predict_cli_prints_one_json_event_per_line(checkpoint, tmp_path, capsys):
    from MVGCore.io import write_volume
    from MVGCore.types import Volume

    image = write_volume(tmp_path / "in.nrrd", Volume(np.random.default_rng(1).random((3, 16, 16))))
    output = tmp_path / "out.nrrd"
    args = ["--checkpoint", str(checkpoint), "--task", "denoise", "--input", str(image)]
    assert predict_main([*args, "--output", str(output), "--device", "cpu", "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0] == {"event": "started", "device": "cpu"}
    assert events[-1] == {"event": "done", "output": str(output)}
    progress = [(e["done"], e["total"]) for e in events[1:-1]]
    assert progress and all(e["event"] == "progress" for e in events[1:-1]) and progress[-1] == (3, 3)


@pytest.mark.parametrize("task", ["Segment", "Inpaint", "Synthesize", "Denoise"])
def test_inputs_and_command_line_carry_the_job(mrml, tmp_path, task):
    job, painted = _segment_job(mrml)
    volume = job.volume_node
    if task == "Inpaint":
        job = pipeline.inpaint_job(volume, job.segmentation_node, job.segment_ids[0])
    elif task == "Synthesize":
        target = mrml_io.add_volume_from_array(mrml.scene, 2 * job.image, IJK_TO_RAS, "t2")
        job = pipeline.synthesize_job(volume, target, [2, 3])
    elif task == "Denoise":
        job = pipeline.denoise_job(volume, axis=1)
    geometry = mrml_io.geometry_from_volume(volume)
    args = runner.write_inputs(job, geometry, tmp_path)
    command = runner.predict_command("py", "m.safetensors", args, tmp_path / "o.nrrd", "cuda:1", 3)
    assert command[:5] == ["py", "-m", "MVGCore.predict", "--checkpoint", "m.safetensors"]
    assert command[-6:] == ["--device", "cuda:1", "--progress", "json", "--adapt-steps", "3"]
    assert "--adapt-steps" not in runner.predict_command("py", "m", args, "o.nrrd")
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["--task"] == task.lower() and flags["--axis"] == str(job.axis)
    written = read_volume(flags["--input"])
    assert np.array_equal(written.array, job.image) and written.geometry == geometry
    if task == "Segment":
        assert flags["--slices"] == "1,4"
        assert np.array_equal(read_volume(flags["--prompts"]).array > 0, painted)
    if task == "Synthesize":
        assert flags["--slices"] == "2,3"
        assert np.allclose(read_volume(flags["--prompts"]).array[[2, 3]], 2 * job.image[[2, 3]])
    if task == "Inpaint":
        assert np.array_equal(read_volume(flags["--hole"]).array > 0, painted)
    with pytest.raises(ValueError, match="adapt_steps must be 0"):
        runner.predict_command("py", "m", args, "o.nrrd", adapt_steps=-1)
    with pytest.raises(ValueError, match="device must be one of"):
        runner.predict_command("py", "m", args, "o.nrrd", device="gpu")


def test_child_environment_makes_mvgcore_importable():
    env = runner.child_environment({"PYTHONPATH": "/elsewhere"})
    core_root = str(Path(runner.MVGCore.__file__).resolve().parent.parent)
    assert env["PYTHONPATH"] == os.pathsep.join([core_root, "/elsewhere"])
    assert env["PYTHONUNBUFFERED"] == "1"


def test_progress_lines_are_parsed_as_they_come_and_poll_never_waits(tmp_path):
    run = _fake(
        tmp_path,
        """
        import json, sys, time
        print('{"event": "started", "device": "cpu"}', flush=True)
        print("a log line that is not an event", file=sys.stderr, flush=True)
        sys.stdout.write('{"event": "progress", "done": 1, "tot'); sys.stdout.flush(); time.sleep(0.3)
        print('al": 4}', flush=True)
        time.sleep(30)
        """,
    )
    try:
        deadline = time.monotonic() + 10
        while run.done == 0 and time.monotonic() < deadline:
            started = time.monotonic()
            assert run.poll() == RUNNING
            assert time.monotonic() - started < 0.2
            time.sleep(0.02)
        assert (run.done, run.total, run.device) == (1, 4, "cpu")
        assert run.log_lines == ["a log line that is not an event"]
    finally:
        run.close()
    assert run.state == CANCELLED and not run.folder.exists() and not _alive(run.pid)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "raise RuntimeError('weights are corrupt')",
            r"exited with code 1: RuntimeError: weights are corrupt",
        ),
        (
            "import sys; print('error: --input x.nrrd: file not found', file=sys.stderr); sys.exit(2)",
            r"exited with code 2: --input x\.nrrd: file not found$",
        ),
        (
            "raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')",
            r"exited with code 1: out of memory\. Close other programs",
        ),
        ('print(\'{"event": "started", "device": "cpu"}\')', r"exited without writing a result"),
        pytest.param(
            "import os; os.abort()",
            r"stopped by signal 6",
            marks=pytest.mark.skipif(not POSIX, reason="signals are POSIX"),
        ),
    ],
    ids=["exception", "error-line", "cuda-oom", "no-result", "crash"],
)
def test_a_failing_child_becomes_one_clear_message(tmp_path, code, message):
    run = _fake(tmp_path, code)
    assert run.wait(timeout=30) == FAILED
    assert run.result is None
    assert re.search(message, run.error), run.error
    assert not run.folder.exists() and not _alive(run.pid)
    if "out of memory" in message:
        assert engine.is_out_of_memory(RuntimeError(run.error))  # the Widget then offers the CPU


def test_cancel_stops_the_child_and_its_children_and_removes_the_folder(tmp_path):
    run = _fake(
        tmp_path,
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(child.pid, flush=True)
        time.sleep(600)
        """,
    )
    deadline = time.monotonic() + 20
    while not run.log_lines and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.02)
    grandchild = int(run.log_lines[0])
    run.cancel()
    assert run.wait(timeout=10) == CANCELLED and run.error is None and run.result is None
    assert _gone_within(run.pid) and _gone_within(grandchild)
    assert not run.folder.exists()


@pytest.mark.skipif(not POSIX, reason="SIGTERM is POSIX; Windows cancel kills the tree at once")
def test_a_child_that_ignores_terminate_is_killed_after_the_grace_time(tmp_path):
    run = _fake(
        tmp_path,
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(600)
        """,
        grace_s=0.5,
    )
    while not run.log_lines:
        run.poll()
        time.sleep(0.02)
    started = time.monotonic()
    run.cancel()
    assert run.wait(timeout=10) == CANCELLED
    assert 0.4 < time.monotonic() - started < 5
    assert not _alive(run.pid) and not run.folder.exists()


def test_close_of_a_running_child_returns_and_cleans_up(tmp_path):
    run = _fake(tmp_path, "import time; time.sleep(600)", grace_s=2.0)
    with run:
        assert run.poll() == RUNNING
    assert run.state == CANCELLED and not _alive(run.pid) and not run.folder.exists()
    run.close()  # a second close is harmless


def test_a_python_that_cannot_start_is_named_and_leaves_no_folder(mrml, tmp_path):
    job, _ = _segment_job(mrml)
    geometry = mrml_io.geometry_from_volume(job.volume_node)
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(RuntimeError, match=r"could not start the model process .*no-such-python"):
        ModelRun.start(job, geometry, "m.safetensors", python=missing, temp_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_result_is_not_written_once_its_input_left_the_scene(mrml):
    job, _ = _segment_job(mrml)
    result = np.zeros(job.image.shape, np.uint16)
    mrml.scene.RemoveNode(job.segmentation_node)
    nodes = mrml.scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="'prompts' was removed from the scene while the model ran"):
        pipeline.write_result(mrml.scene, job, result)
    mrml.scene.Clear(False)  # what closing the scene does
    with pytest.raises(ValueError, match="'mr' was removed from the scene"):
        pipeline.write_result(mrml.scene, dataclasses.replace(job, segmentation_node=None), result)
    assert mrml.scene.GetNumberOfNodes() <= nodes
