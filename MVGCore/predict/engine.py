"""The slice loop every task runs: batching, out-of-memory retry, progress and cancel, adaptation.

Slices are streamed in batches into one preallocated output, so memory beyond the input and the
output stays at a few batches of tiles, whatever the volume size. Prompt slices that belong to the
query volume return the user's target unchanged. What differs between tasks is asked of the job's
``kind`` (:class:`MVGCore.predict.job.TaskKind`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..adapt import AdaptSettings, adapt
from ..canvas import imagenet_denormalize
from ..masking import ar_mask
from ..model import MVGModel
from ..slicewise import SliceLoop, plane_shape, put_slice, take_slice
from ..types import CancelToken, ProgressFn
from . import memory, propagation
from .inputs import check_finite
from .job import Example, Job

if TYPE_CHECKING:
    from .predictor import Predictor

log = logging.getLogger(__name__)

Result = Any
"""A task's output volume, or (output, disagreement) with ``return_disagreement``."""


def run(
    predictor: Predictor,
    job: Job,
    progress: ProgressFn | None,
    cancel: CancelToken | None,
    adaptation: AdaptSettings | None = None,
) -> Result:
    """Every slice of ``job``: the output volume (and the disagreement volume when asked for).

    With ``adaptation``, a copy of the model is first tuned on the job's examples; its steps and
    the slices make one progress count, so a caller sees one bar.
    """
    volume, axis, opts = job.volume, job.axis, job.options
    n_slices = volume.shape[axis]
    if opts.propagate and not job.kept:
        raise ValueError("propagate needs prompts that are slices of the volume itself (Prompt.index set)")
    out = np.empty(volume.shape, dtype=job.out_dtype)
    disagreement = np.zeros(volume.shape, dtype=np.float32) if opts.return_disagreement else None
    steps = adaptation.steps if adaptation is not None else 0
    loop = SliceLoop(n_slices + steps, progress, cancel)
    if steps:
        job.model = adapted(predictor, [(e.image, e.target) for e in job.examples], adaptation, loop)
    done = 0
    for index, target in job.kept.items():
        put_slice(out, axis, index, np.asarray(target).astype(job.out_dtype, copy=False))
        done += 1
    todo = [q for q in range(n_slices) if q not in job.kept]
    copied = set(job.kind.answered_by_input(job, todo))
    for q in sorted(copied):
        put_slice(out, axis, q, take_slice(volume, axis, q))
    done += len(copied)
    todo = [q for q in todo if q not in copied]
    if done:
        loop.advance(done)
    if todo and not job.examples:
        raise ValueError("no prompts to run the model with")
    for wave in propagation.waves(todo, sorted(job.kept), opts.propagate):
        job = job.kind.next_wave(job, wave, out)
        plans = [(q, propagation.choose(job, q, out)) for q in wave]
        ended = [q for q, chosen in plans if job.kind.has_ended(job, chosen)]
        for q in ended:  # every structure ended before this slice: nothing to run
            put_slice(out, axis, q, np.zeros(plane_shape(volume.shape, axis), dtype=job.out_dtype))
        if ended:
            loop.advance(len(ended))
            plans = [(q, chosen) for q, chosen in plans if q not in ended]
        if plans:
            _run_batches(predictor, job, plans, out, disagreement, loop)
    return out if disagreement is None else (out, disagreement)


def _run_batches(
    predictor: Predictor,
    job: Job,
    plans: list[tuple[int, list[Example]]],
    out: np.ndarray,
    disagreement: np.ndarray | None,
    loop: SliceLoop,
) -> None:
    """``plans`` (query, prompts) in batches of ``predictor.batch_size`` canvases; on GPU
    out-of-memory the batch size is halved and the batch retried (the smaller size is kept)."""
    k = len(plans[0][1])
    memory.fit_batch(predictor, k, len(plans))
    start = 0
    while start < len(plans):
        loop.check()
        per_batch = max(1, predictor.batch_size // k)
        chunk = plans[start : start + per_batch]
        try:
            results = _infer(predictor, job, chunk)
        except torch.OutOfMemoryError:
            if per_batch == 1:
                raise
            predictor.batch_size = max(1, predictor.batch_size // 2)
            log.warning("out of memory; retrying with batch_size %d", predictor.batch_size)
            if predictor.device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        for (q, _), (plane, spread) in zip(chunk, results):
            put_slice(out, job.axis, q, plane)
            if disagreement is not None:
                put_slice(disagreement, job.axis, q, spread)
        loop.advance(len(chunk))
        start += len(chunk)


def adapted(
    predictor: Predictor,
    examples: list[tuple[np.ndarray, np.ndarray]],
    settings: AdaptSettings,
    loop: SliceLoop,
) -> MVGModel:
    """A copy of the model adapted on ``examples``, each step counted in ``loop`` (whose
    ``cancel`` is checked before the first step and after every one)."""
    loop.check()

    def step_done() -> None:
        loop.advance()
        loop.check()

    return adapt(predictor.model, examples, settings, predictor.device, on_step=step_done)


def _query_tile(job: Job, query: int) -> np.ndarray:
    plane = job.view(take_slice(job.volume, job.axis, query))
    check_finite(plane, f"image slice {query} along axis {job.axis}")
    return job.kind.query_tile(job, query, job.tile(job.in_range.normalize(plane), False))


def _infer(
    predictor: Predictor, job: Job, chunk: list[tuple[int, list[Example]]]
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Run one batch of query slices; return each slice's output plane and disagreement plane."""
    k = len(chunk[0][1])
    query_tiles = [_query_tile(job, q) for q, _ in chunk]
    chunk = [(q, job.kind.shown(job, q, tile, chosen)) for (q, chosen), tile in zip(chunk, query_tiles)]
    prompts = [e for _, chosen in chunk for e in chosen]
    canvases = job.kind.canvases(
        job,
        np.stack([e.image for e in prompts]),
        np.stack([e.target for e in prompts]),
        np.repeat(np.stack(query_tiles), k, axis=0),
    )
    feature = job.options.ensemble == "feature" and k > 1
    answers = forward(predictor, canvases, k if feature else 1, job.task, job.model)
    singles = answers
    if feature and job.options.return_disagreement:
        singles = forward(predictor, canvases, 1, job.task, job.model)
    started = time.perf_counter()
    results = []
    for number, (query, chosen) in enumerate(chunk):
        group = answers[number * k : (number + 1) * k]
        single = singles[number * k : (number + 1) * k]
        results.append(job.kind.decode(job, query, chosen, group, single))
    if predictor.timings is not None:
        predictor.timings["decode"] = predictor.timings.get("decode", 0.0) + time.perf_counter() - started
    return results


def forward(
    predictor: Predictor, canvases: Any, ensemble_k: int, task: str, model: MVGModel | None = None
) -> torch.Tensor:
    """Query halves of the predicted target canvases as [0, 1] RGB on the CPU, (B, 3, S, S).

    The model runs in eval mode and is put back in the mode the caller left it in."""
    batch = canvases.images.shape[0]
    mask = torch.from_numpy(ar_mask(predictor.config.grid)).expand(batch, -1)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if predictor.device.startswith("cuda")
        else contextlib.nullcontext()
    )
    model = predictor.model if model is None else model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast:
            pred = model(
                canvases.images.to(predictor.device),
                canvases.targets.to(predictor.device),
                mask.to(predictor.device),
                ensemble_k=ensemble_k,
                query_only=True,
                tasks=[task] * batch,
            )
    finally:
        model.train(was_training)
    return imagenet_denormalize(pred.float()).clamp(0.0, 1.0).cpu()
