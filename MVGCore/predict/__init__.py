"""Apply an MVG model to whole volumes: the ``Predictor`` and ``python -m MVGCore.predict``.

Every task runs slice by slice along one axis. For each query slice the nearest prompt slices (by
index) are put above it on a canvas, the query half of the target canvas is hidden, and the
model's answer is decoded (colors -> classes for segmentation, gray -> input units for images)
and resized back onto the slice's own grid. One module per job (docs/architecture.md):

- :mod:`.predictor`: the public ``Predictor`` (a model on a device; the four tasks)
- :mod:`.options`: the options and the table of which task takes which
- :mod:`.inputs`: checks of arrays and devices, intensity ranges
- :mod:`.engine`: the slice loop (batching, out-of-memory retry, progress, cancel, adaptation)
- :mod:`.memory`: the memory of one forward pass, estimated before it is allocated
- :mod:`.propagation`: slices answered outward from the prompt slices, in waves
- :mod:`.alignment`: prompts warped onto each query slice by registration
- :mod:`.segmentation`, :mod:`.images`, :mod:`.self_made`: the tasks' own parts
- :mod:`.cli` and :mod:`.progress`: ``python -m MVGCore.predict`` and its JSON event protocol;
  :mod:`.cli_checks`: the checks of its flags that need no volume

Tiling (:mod:`MVGCore.tiling`), calibration (:mod:`MVGCore.calibration`), adaptation
(:mod:`MVGCore.adapt`) and the zoom region (:mod:`MVGCore.zoom`) live beside this package.

Example::

    python -m MVGCore.predict --checkpoint mvg.safetensors --task segment \\
        --input ct.nii.gz --prompts sparse_labels.nii.gz --output ct_seg.nii.gz
"""

from .cli import build_parser, main
from .options import ANSWERS, ENSEMBLES, TASK_OPTIONS, Options, task_options
from .predictor import Predictor
from .progress import emit_event

__all__ = [
    "ANSWERS",
    "ENSEMBLES",
    "TASK_OPTIONS",
    "Options",
    "Predictor",
    "build_parser",
    "emit_event",
    "main",
    "task_options",
]
