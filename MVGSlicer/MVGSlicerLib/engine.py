"""The small engine interface the module is written against, and lazy creation of the real one.

The module only needs MVGCore.predict.Predictor's four task methods and ``device``; depending on
this Protocol lets the Slicer layer be tested with a numpy engine and keeps torch out of import.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from MVGCore.types import CancelToken, ProgressFn, Prompt


class Engine(Protocol):
    """``options`` are the Predictor's keyword options; the module passes ``spacing`` ((k, j, i) mm)
    and, to segment with "Adapt to this scan", ``adapt_steps``."""

    device: str

    def segment(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray: ...

    def denoise(
        self,
        image: np.ndarray,
        prompts: Sequence[Prompt] | None = None,
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray: ...

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
    ) -> np.ndarray: ...

    def synthesize(
        self,
        source: np.ndarray,
        prompts: Sequence[Prompt],
        axis: int = 0,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> np.ndarray: ...


DEVICES = ("auto", "cuda", "cpu")


def check_device(device: str) -> str:
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}")
    return device


def load_engine(model_path: str | Path, device: str = "auto") -> Engine:
    """The MVG Predictor for a safetensors checkpoint; torch is imported only here, on first use."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    from MVGCore.predict import Predictor  # deferred: torch must not load when the module does

    return Predictor.from_checkpoint(path, device=check_device(device), allow_pickle=False)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA/CPU allocation failures, which the UI answers by offering the CPU."""
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


class EngineCache:
    """Keeps the last loaded engine so repeated runs skip the slow checkpoint load.

    The lock keeps two console calls (e.g. from a script's threads) from loading at the same time.
    """

    def __init__(self, loader=load_engine) -> None:
        self._loader = loader
        self._key: tuple[str, str] | None = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def get(self, model_path: str | Path, device: str = "auto") -> Engine:
        key = (str(Path(model_path).resolve()), check_device(device))
        with self._lock:
            if self._key != key:
                self._engine, self._key = None, None  # drop the old model before loading the next
                self._engine = self._loader(model_path, device)
                self._key = key
            return self._engine
