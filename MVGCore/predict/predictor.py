"""The ``Predictor``: a model on a device, and the four tasks on 3D arrays.

Its methods check nothing themselves and hold no loop: each runs on the model resampled to the
task's tile (:meth:`Predictor.task_tile_size`) and hands over to the task's module
(:mod:`MVGCore.predict.segmentation`, :mod:`MVGCore.predict.images`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import PICKLE_SUFFIXES, check_weights_path, load_model, load_state_dict_file
from ..checks import is_whole
from ..config import MVGConfig
from ..model import MVGModel
from ..resample_weights import at_tile_size
from ..types import CancelToken, ProgressFn, Prompt
from . import images, memory, segmentation
from .inputs import check_batch_size, resolve_device, sidecar_config, task_tile


def _at_task_tile(task: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator of the public tasks: when the task's tile size (:meth:`Predictor.task_tile_size`)
    is not the model's own, the task runs on a Predictor of a copy of the model resampled to that
    tile; the loaded model is never changed."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def run(self: Predictor, *args: Any, **kwargs: Any) -> Any:
            size = self.task_tile_size(task, kwargs.get("tile_size"))
            k = kwargs.get("k_prompts", 1)  # checked with the other options by the task
            memory.check_tile_fits(self.config, size, k if is_whole(k, 1) else 1, self.device)
            if size == self.config.tile_size:
                return method(self, *args, **kwargs)
            other = Predictor(at_tile_size(self.model, size), self.device, self.batch_size)
            other.timings = self.timings
            try:
                return method(other, *args, **{**kwargs, "tile_size": size})
            finally:
                self.batch_size = min(self.batch_size, other.batch_size)  # an out-of-memory retry

        return run

    return decorate


class Predictor:
    """The one inference entry point: a model on a device, and the four tasks on 3D arrays.

    Arrays are (k, j, i); a 2D image is a one-slice volume (``image[None]``, axis 0). All outputs
    lie on the exact input grid. ``batch_size`` is the number of canvases per forward pass
    (query slices x prompts each); on GPU out-of-memory it is halved, the batch retried, and the
    smaller size kept for later calls. With ``return_disagreement=True`` a task returns
    ``(output, disagreement)``; otherwise the output alone. See :class:`Options` for the options
    and which task takes which; an option a task does not take is refused.
    """

    def __init__(self, model: MVGModel, device: str = "auto", batch_size: int = 8) -> None:
        if not isinstance(model, MVGModel):
            raise TypeError(f"model must be an MVGModel, got {type(model).__name__}")
        self.batch_size = check_batch_size(batch_size)
        self.device = resolve_device(device)
        self.model = model.to(self.device)  # its train/eval mode is the caller's (engine.forward)
        self.config: MVGConfig = model.config
        self.timings: dict[str, float] | None = None
        """Set it to a dict to have the seconds spent decoding answers added under "decode"
        (benchmarks/segment_e2e.py times the model itself with forward hooks)."""

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        allow_pickle: bool = False,
        config: MVGConfig | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """Load an MVGCore checkpoint (.safetensors + .json sidecar).

        Pickle files (.pt, .pth, ...) can run code when loaded, so they are refused unless
        ``allow_pickle=True``; they then need ``config`` or a sidecar JSON holding one.
        """
        path = check_weights_path(path, sidecar=False)  # a pickle's sidecar is optional
        resolve_device(device)  # a wrong device is found before the weights are read
        if path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ValueError(
                    f"refusing to load pickle checkpoint {path}: pickle files can run code. Use the "
                    ".safetensors checkpoint, or pass allow_pickle=True if you trust its source."
                )
            model = MVGModel(config or sidecar_config(path))
            state = load_state_dict_file(path, allow_pickle=True)
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        else:
            model, _ = load_model(path)
        return cls(model.eval(), device=device, **kwargs)

    def task_tile_size(self, task: str, tile_size: int | None = None) -> int:
        """The tile in pixels ``task`` runs at: ``tile_size`` (checked as the option), else for
        segmentation the config's ``segment_tile_size`` when set, else the model's own tile."""
        return task_tile(self.config, task, tile_size)

    @_at_task_tile("segment")
    def segment(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label volume (the prompt targets' integer dtype; bool -> uint8) on the grid of ``image``.

        Prompts are label slices of ``image`` itself (``Prompt.index`` set; returned unchanged)
        and/or (image, label) pairs from other volumes. The prompts' classes are colored in
        order, whatever their label values, and decoded back to those values. With
        ``zoom="prompts"`` (the default) the model runs on the in-plane region around the prompt
        labels (:mod:`MVGCore.zoom`), grown wave by wave to take in the propagated labels when
        propagating; everything outside it is background.
        """
        return segmentation.segment(self, image, prompts, axis, progress, cancel, options)

    @_at_task_tile("denoise")
    def denoise(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Denoised float32 volume in input units.

        Prompts are (noisy, clean) pairs. Without prompts, ``auto_prompts`` evenly spaced slices of
        the volume itself become prompts: the slice with extra Gaussian noise of the level
        estimated on that slice (skimage ``estimate_sigma``) -> the slice. Those slices are
        denoised like any other.
        """
        return images.denoise(self, image, prompts, axis, progress, cancel, options)

    @_at_task_tile("inpaint")
    def inpaint(
        self,
        image: np.ndarray,
        hole_mask: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Float32 volume in input units with the voxels of ``hole_mask`` filled in; all other voxels
        are the input's. Slices without hole are copied.

        Prompts are (image with a hole, complete image) pairs; the hole of an indexed prompt slice
        is read from ``hole_mask``. Without prompts, the ``auto_prompts`` slices without hole that
        lie nearest to the holes become prompts: the slice with the hole of the nearest holed slice
        cut into it -> the slice.
        """
        return images.inpaint(self, image, hole_mask, prompts, axis, progress, cancel, options)

    @_at_task_tile("synthesize")
    def synthesize(
        self,
        source: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Float32 volume in the units of the prompt targets (e.g. T2 from T1 given T1->T2 pairs).

        Targets are normalised with one range taken over all prompt targets together
        (``target_modality`` / ``target_window``), and the output is mapped back through it.
        """
        return images.synthesize(self, source, prompts, axis, progress, cancel, options)
