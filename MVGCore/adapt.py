"""Test-time adaptation: fine-tune a copy of the model on pairs made only from the user's prompts.

The paper adapts MVG to a new dataset with a few labelled examples; SegGPT tunes on the prompts of
one task. Here the examples are the prompts a user gave for *this* scan:

- segmentation: every ordered pair of painted prompt slices (prompt i shown, prompt j predicted)
  and every prompt with itself, each drawn with the training augmentations (shared flips and
  intensity jitter, a small independent motion of the prompt half), so the model learns how this
  scan's structures look and move between slices. Every weight trains; a few dozen AdamW steps on
  a CPU take seconds for the tiny model.
- denoising: pairs of tile-sized crops at 1:1 pixels, anywhere in the (noisy, clean) prompt images
  (one crop shown, another predicted, shared flips), so the model learns this scan's noise and how
  smooth its anatomy is at native resolution. Only the decoder trains (:data:`IMAGE_MODULES`):
  tuning the encoder as well scored lower on the X-ray case of the model card.

The caller's model is never changed: a deep copy is trained and returned. A seed makes the run
repeatable; progress and cancel work as in inference (:class:`MVGCore.slicewise.SliceLoop`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .checks import is_whole
from .data.sampler_config import AugmentConfig, PropagationConfig
from .data.views import apply_flips, move_half, shared_augment
from .loss import mvg_loss
from .model import MVGModel
from .train.batch import collate_canvases

DEFAULT_LR = 3e-4
DEFAULT_BATCH = 4
ADAPT_TASKS = ("segment", "denoise")
IMAGE_MODULES = ("decoder",)
"""Name prefixes of the weights image-task adaptation tunes: every decoder module."""


@dataclass(frozen=True)
class AdaptSettings:
    """How a copy of the model is tuned: ``steps`` AdamW steps of ``batch_size`` pairs at ``lr``,
    for ``task``; ``modules`` are the name prefixes of the weights that train (empty: all)."""

    steps: int
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH
    seed: int = 0
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(crop_prob=0.0, vflip_prob=0.0))
    motion: PropagationConfig = field(default_factory=PropagationConfig)
    task: str = "segment"
    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in ADAPT_TASKS:
            raise ValueError(
                f"test-time adaptation applies to {' and '.join(ADAPT_TASKS)}, not to {self.task}"
            )
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not is_whole(value):
                raise ValueError(f"adaptation {name} must be a whole number >= 0, got {value!r}")
        if self.batch_size < 1:
            raise ValueError(f"adaptation batch_size must be at least 1, got {self.batch_size}")
        if not (isinstance(self.lr, (int, float)) and 0.0 < self.lr < 1.0):
            raise ValueError(f"adaptation lr must be a number in (0, 1), got {self.lr!r}")


def prompt_pairs(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], settings: AdaptSettings, rng: np.random.Generator
) -> dict:
    """One augmented segmentation sample from (image tile, label tile) prompts: a random ordered
    pair, possibly a prompt with itself."""
    prompt, query = (examples[i] for i in rng.integers(len(examples), size=2))
    flips, jitter = shared_augment(rng, settings.augment)
    prompt_image, prompt_label = move_half(
        rng, settings.motion, apply_flips(prompt[0], flips), apply_flips(prompt[1], flips)
    )
    return {
        "task": "segment",
        "prompt_image": jitter(prompt_image),
        "prompt_target": prompt_label.astype(np.int64),
        "query_image": jitter(apply_flips(query[0], flips)),
        "query_target": apply_flips(query[1], flips).astype(np.int64),
        "hole": np.zeros(query[0].shape, dtype=bool),
    }


def crop_pairs(
    examples: Sequence[tuple[np.ndarray, np.ndarray]], size: int, rng: np.random.Generator
) -> dict:
    """One denoising sample from (noisy, clean) [0, 1] prompt images of any size: a ``size`` px
    crop of a random prompt shown, another of a random prompt predicted (either may be the same),
    both flipped alike. Images smaller than a crop are padded with 0, as tiled inference pads."""
    halves = {}
    flips = tuple(bool(f) for f in rng.random(2) < 0.5)
    for half, number in zip(("prompt", "query"), rng.integers(len(examples), size=2)):
        noisy, clean = examples[number]
        top = int(rng.integers(max(1, noisy.shape[0] - size + 1)))
        left = int(rng.integers(max(1, noisy.shape[1] - size + 1)))
        for name, image in (("image", noisy), ("target", clean)):
            tile = np.zeros((size, size), dtype=np.float32)
            part = image[top : top + size, left : left + size]
            tile[: part.shape[0], : part.shape[1]] = part
            halves[f"{half}_{name}"] = np.ascontiguousarray(apply_flips(tile, flips))
    return {"task": "denoise", **halves, "hole": np.zeros((size, size), dtype=bool)}


def adapt(
    model: MVGModel,
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    settings: AdaptSettings,
    device: torch.device | str = "cpu",
    on_step: Callable[[], None] | None = None,
) -> MVGModel:
    """A copy of ``model`` tuned on pairs of ``examples``: for segmentation (image, label) tiles
    of the model's size, for denoising (noisy, clean) [0, 1] images of any size.

    ``on_step`` runs after every step (for progress; raise there to cancel: the copy is then
    discarded and ``model`` is untouched). The copy is returned in eval mode.
    """
    if not examples:
        raise ValueError("adaptation needs at least one prompt")
    tuned = copy.deepcopy(model).to(device).train()
    if settings.steps == 0:
        return tuned.eval()
    if settings.modules:
        for name, parameter in tuned.named_parameters():
            parameter.requires_grad_(name.startswith(settings.modules))
    trained = [p for p in tuned.parameters() if p.requires_grad]
    if not trained:
        raise ValueError(f"the model has no weights under {list(settings.modules)} to adapt")
    optimizer = torch.optim.AdamW(trained, lr=settings.lr, weight_decay=0.0)
    grid, patch = tuned.config.grid, tuned.config.patch_size
    with torch.random.fork_rng(devices=[]):  # drop-path draws must not move the caller's RNG
        torch.manual_seed(settings.seed)
        for step in range(settings.steps):
            rngs = [np.random.default_rng([settings.seed, step, b]) for b in range(settings.batch_size)]
            if settings.task == "segment":
                samples = [prompt_pairs(examples, settings, rng) for rng in rngs]
            else:
                samples = [crop_pairs(examples, tuned.config.tile_size, rng) for rng in rngs]
            batch = collate_canvases(samples, rngs, grid).to(device)
            pred = tuned(batch.images, batch.targets, batch.mask, tasks=batch.tasks)
            loss = mvg_loss(pred, batch.targets, batch.targets01, batch.mask, batch.weights, grid, patch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            if on_step is not None:
                on_step()
    return tuned.eval()
