"""Slicer's "Fill between slices" (ITK morphological contour interpolation), run in a child process.

The ITK Python wheels (``itk-morphologicalcontourinterpolation`` pulls in ``itk``) bring their own
copy of the ITK libraries. Loaded into one process with scikit-image they corrupt the heap at
interpreter exit (measured here: about half the runs aborted with ``malloc(): ... corrupted``
after correct results). So the interpolation runs in a fresh interpreter that imports only numpy
and itk; the labels travel through temporary .npy files. The child also keeps ITK's libraries
out of Slicer's own process.

``python -m MVGCore.contour_interpolation IN.npy OUT.npy ITK_AXIS`` is that child.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

DISTRIBUTION = "itk-morphologicalcontourinterpolation"
POLL_SECONDS = 0.2


def check_available() -> None:
    """A ValueError saying what to install when the ITK filter's package is missing."""
    try:
        metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ValueError(
            f"Fill between slices needs the '{DISTRIBUTION}' package, which is not installed in "
            f"{sys.executable}; pip install {DISTRIBUTION}"
        ) from None


def interpolate(labels: np.ndarray, axis: int, check: Callable[[], None] | None = None) -> np.ndarray:
    """Interpolate the labelled slices of ``labels`` (uint8/uint16, (k, j, i), unlabelled slices
    all zero) along numpy ``axis``; every label is filled between the slices that show it and
    nothing is extrapolated. ``check`` is called while the child runs (e.g. to raise on cancel;
    the child is then killed)."""
    check_available()
    labels = np.ascontiguousarray(labels)
    if labels.ndim != 3 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"labels must be a 3D uint8/uint16 array, got {labels.ndim}D {labels.dtype}")
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="mvg_fill_") as folder:
        source, result = Path(folder) / "in.npy", Path(folder) / "out.npy"
        np.save(source, labels)
        command = [sys.executable, "-W", "ignore", "-m", __name__, str(source), str(result), str(2 - axis)]
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while True:
                try:
                    _, stderr = child.communicate(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if check is not None:
                        check()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        if child.returncode != 0 or not result.is_file():
            lines = stderr.decode(errors="replace").strip().splitlines()
            raise ValueError(
                f"Fill between slices failed in its ITK child process (exit {child.returncode}): "
                + (lines[-1] if lines else "no message")
            )
        return np.load(result)


def _main(argv: list[str]) -> None:
    import itk

    source, result, itk_axis = argv
    labels = np.load(source)
    interpolator = itk.MorphologicalContourInterpolator.New(itk.image_from_array(labels))
    interpolator.SetAxis(int(itk_axis))  # ITK orders axes (i, j, k)
    interpolator.Update()
    filled = itk.array_from_image(interpolator.GetOutput())
    temporary = result + ".part"
    with open(temporary, "wb") as handle:
        np.save(handle, filled)
    os.replace(temporary, result)
    os._exit(0)  # the result is written: skip interpreter teardown, where the heap trouble above shows


if __name__ == "__main__":
    _main(sys.argv[1:])
