"""The module's Run: ``python -m MVGCore.predict`` in a child process, followed without blocking.

Why a separate process: Slicer's main thread holds the Python GIL while idle, so a worker thread
inside Slicer only computes while the main thread happens to run Python (a stand-in took 112 s for
a 1.4 s job). A child process computes at full speed, a crash or CUDA out-of-memory there cannot
take Slicer down, and Cancel works at once (terminate, then kill).

How: the job's arrays are written into a private temporary folder, the child runs with
``--progress json`` (one JSON event per stdout line, see :mod:`MVGCore.predict.progress`), and its
stdout and stderr go to a log file in that folder. :meth:`ModelRun.poll` reads the lines added
since the last call and never waits, so the Widget can call it from a QTimer; a file, unlike a
pipe, never fills up and blocks the child, and needs no reader thread (which would starve like
the worker did). The folder is removed in every outcome: done, failed, cancelled or closed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import MVGCore
from MVGCore.io import read_volume, write_volume
from MVGCore.slicewise import put_slice
from MVGCore.types import Geometry, Volume

from .engine import check_device, is_out_of_memory
from .pipeline import Job

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
TEMP_PREFIX = "MVGSlicer-run-"
RESULT_FILE = "result.nrrd"
LOG_FILE = "log.txt"
GRACE_S = 5.0
"""How long a cancelled child may take to exit after terminate before it is killed."""
KEPT_LOG_LINES = 200


def write_inputs(job: Job, geometry: Geometry, folder: Path) -> list[str]:
    """Write the job's arrays as NRRD files in ``folder``; the predict CLI arguments that name them."""

    def write(name: str, array: np.ndarray) -> str:
        return str(write_volume(folder / name, Volume(array, geometry)))

    args = ["--task", job.task.lower(), "--input", write("input.nrrd", job.image), "--axis", str(job.axis)]
    if job.task in ("Segment", "Synthesize"):
        if any(p.index is None for p in job.prompts):
            raise ValueError("the model process takes prompts that are slices of the input volume only")
        targets = np.zeros(job.image.shape, np.uint16 if job.task == "Segment" else np.float32)
        for prompt in job.prompts:
            put_slice(targets, job.axis, prompt.index, prompt.target)
        slices = ",".join(str(p.index) for p in job.prompts)
        args += ["--prompts", write("prompts.nrrd", targets), "--slices", slices]
    if job.task == "Inpaint":
        args += ["--hole", write("hole.nrrd", job.hole_mask.astype(np.uint8))]
    return args


def predict_command(
    python: str,
    checkpoint: str | Path,
    input_args: Sequence[str],
    output: str | Path,
    device: str = "auto",
    adapt_steps: int = 0,
) -> list[str]:
    """The child's command line: ``python -m MVGCore.predict`` speaking the JSON progress protocol."""
    if adapt_steps < 0:
        raise ValueError(f"adapt_steps must be 0 (off) or a positive number of steps, got {adapt_steps}")
    command = [python, "-m", "MVGCore.predict", "--checkpoint", str(checkpoint), *input_args]
    command += ["--output", str(output), "--device", check_device(device), "--progress", "json"]
    if adapt_steps:
        command += ["--adapt-steps", str(adapt_steps)]
    return command


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The parent's environment, with MVGCore importable and unbuffered UTF-8 output."""
    env = dict(os.environ if base is None else base)
    core_root = str(Path(MVGCore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (core_root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def failure_message(code: int, lines: Sequence[str]) -> str:
    """One sentence for the user from the child's exit status and output; names OOM plainly."""
    if code < 0:
        how = f"was stopped by signal {-code}" + (" (killed, often for lack of memory)" if code == -9 else "")
    elif code == 0:
        how = "exited without writing a result"
    else:
        how = f"exited with code {code}"
    if is_out_of_memory(RuntimeError("\n".join(lines))):
        return (
            f"the model process {how}: out of memory. Close other programs using the GPU, "
            "choose the CPU, or crop the volume"
        )
    errors = [line[len("error: ") :] for line in lines if line.startswith("error: ")]
    text = [line.strip() for line in lines if line.strip()]
    detail = errors[-1] if errors else (text[-1] if text else "it printed nothing")
    return f"the model process {how}: {detail}"


class ModelRun:
    """One child process: progress, cancel, result; :meth:`poll` never blocks.

    ``state`` is RUNNING until the child has exited, then DONE (``result`` holds the array,
    passed through ``finish``), FAILED (``error`` says why) or CANCELLED. ``log_lines`` keeps the
    child's last output lines (not the protocol events) for the Python console. ``done`` and
    ``total`` count the child's progress steps: its ``adapt_steps`` adaptation steps first, then
    the slices (:meth:`stage` tells them apart).
    """

    def __init__(
        self,
        command: Sequence[str],
        folder: str | Path,
        output: str | Path,
        *,
        total: int = 0,
        adapt_steps: int = 0,
        finish: Callable[[np.ndarray], np.ndarray] | None = None,
        env: dict[str, str] | None = None,
        grace_s: float = GRACE_S,
    ) -> None:
        self.folder, self.output = Path(folder), Path(output)
        self.state, self.done, self.total = RUNNING, 0, total
        self.adapt_steps = adapt_steps
        self.device: str | None = None
        self.result: np.ndarray | None = None
        self.error: str | None = None
        self.log_lines: list[str] = []
        self._finish, self._grace_s = finish, grace_s
        self._cancelled, self._kill_at, self._finished_event = False, None, False
        self._pending = ""
        log_path = self.folder / LOG_FILE
        try:
            with open(log_path, "wb") as log:  # the child keeps its own handle
                self._process = subprocess.Popen(
                    list(command),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(self.folder),
                    **_own_process_group(),
                )
        except OSError as error:
            self._remove_folder()
            raise RuntimeError(f"could not start the model process {command[0]!r}: {error}") from None
        self._reader = open(log_path, encoding="utf-8", errors="replace")

    @classmethod
    def start(
        cls,
        job: Job,
        geometry: Geometry,
        checkpoint: str | Path,
        *,
        python: str | None = None,
        device: str = "auto",
        temp_root: str | Path | None = None,
        grace_s: float = GRACE_S,
    ) -> ModelRun:
        """Write the job into a new private folder and start the model on it (adapted to the scan
        first when ``job.adapt_steps`` asks for it)."""
        folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=temp_root))
        try:
            output = folder / RESULT_FILE
            input_args = write_inputs(job, geometry, folder)
            command = predict_command(
                python or sys.executable, checkpoint, input_args, output, device, job.adapt_steps
            )
            return cls(
                command,
                folder,
                output,
                total=job.total_steps,
                adapt_steps=job.adapt_steps,
                finish=job.finish,
                env=child_environment(),
                grace_s=grace_s,
            )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def stage(self) -> tuple[str, int, int]:
        """What the child is at, for the status line: ("adapt", steps done, steps) while it tunes its
        copy of the model (those steps come first in its progress count), then ("slices", done, total)."""
        if self.done < self.adapt_steps:
            return "adapt", self.done, self.adapt_steps
        return "slices", self.done - self.adapt_steps, max(0, self.total - self.adapt_steps)

    @property
    def cancelling(self) -> bool:
        """Cancel was asked and the child has not exited yet."""
        return self._cancelled and self.state == RUNNING

    def poll(self) -> str:
        """Read new output, kill a cancelled child that outstays its grace, settle once it exited."""
        if self.state != RUNNING:
            return self.state
        self._read_output()
        code = self._process.poll()
        if code is None:
            if self._kill_at is not None and time.monotonic() >= self._kill_at:
                _signal_group(self._process, kill=True)
            return RUNNING
        self._read_output(final=True)
        self._settle(code)
        return self.state

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> str:
        """Poll until the child has exited (console and tests); TimeoutError leaves it running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == RUNNING:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the model process {self.pid} still runs after {timeout} s")
            time.sleep(interval)
        return self.state

    def cancel(self) -> None:
        """Ask the child (and anything it started) to stop; poll() kills it after the grace time."""
        if self.state == RUNNING and not self._cancelled:
            self._cancelled = True
            self._kill_at = time.monotonic() + self._grace_s
            _signal_group(self._process, kill=False)

    def close(self) -> None:
        """Stop the child if it still runs and remove the folder, waiting at most about the grace time."""
        if self.state != RUNNING:
            return
        self.cancel()
        try:
            self._process.wait(self._grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self._process, kill=True)
            self._process.wait()
        self.poll()

    def __enter__(self) -> ModelRun:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _read_output(self, final: bool = False) -> None:
        text = self._pending + self._reader.read()
        lines = text.split("\n")
        self._pending = "" if final else lines.pop()
        for line in lines:
            self._handle_line(line.rstrip("\r"))

    def _handle_line(self, line: str) -> None:
        event = _parse_event(line)
        if event is None:
            self.log_lines = [*self.log_lines[-(KEPT_LOG_LINES - 1) :], line]
        elif event["event"] == "progress":
            self.done, self.total = int(event["done"]), int(event["total"])
        elif event["event"] == "started":
            self.device = str(event.get("device", ""))
        elif event["event"] == "done":
            self._finished_event = True

    def _settle(self, code: int) -> None:
        try:
            if self._cancelled:
                self.state = CANCELLED
            elif code != 0:
                self.state, self.error = FAILED, failure_message(code, self.log_lines)
            elif not self._finished_event or not self.output.is_file():
                self.state, self.error = FAILED, failure_message(0, self.log_lines)
            else:
                array = read_volume(self.output).array
                self.result = self._finish(array) if self._finish is not None else array
                self.state = DONE
        except Exception as error:  # a result that cannot be read is a failed run, not a crash
            self.state, self.error = FAILED, f"the model's result could not be read: {error}"
        finally:
            self._reader.close()
            _signal_group(self._process, kill=True)  # anything the child left behind
            self._remove_folder()

    def _remove_folder(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _parse_event(line: str) -> dict | None:
    if not line.startswith('{"event"'):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _own_process_group() -> dict[str, Any]:
    """Start the child as the leader of its own group, so that cancel reaches its children too
    (PythonSlicer is a launcher that starts the real interpreter as its child)."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _signal_group(process: subprocess.Popen, kill: bool) -> None:
    """Terminate (or kill) the child's process group; a group already gone is fine."""
    if os.name == "nt":
        if process.poll() is None:  # taskkill /T reaches the tree; without /F console programs ignore it
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        return
    try:
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
