"""Propagation (``Options.propagate``): slices answered outward from the prompt slices, in waves.

Each wave holds the query slices at one distance from their nearest prompt slice; a slice is shown
its already answered neighbour one step towards that prompt slice first, then its ``k_prompts``
nearest prompts (the neighbour alone drifts: answers shrink slice by slice). In segmentation a
structure the neighbour's answer has lost stays lost further out (a connected structure spans one
run of slices), so the model cannot find a look-alike beyond where it ended.
"""

from __future__ import annotations

import numpy as np

from ..slicewise import take_slice
from .job import Example, Job, nearest_first


def waves(todo: list[int], sources: list[int], propagate: bool) -> list[list[int]]:
    """Groups of query slices that can run together: all at once, or by distance from the prompts."""
    if not todo:
        return []
    if not propagate:
        return [todo]
    distance = {q: min(abs(q - s) for s in sources) for q in todo}
    return [[q for q in todo if distance[q] == d] for d in sorted(set(distance.values()))]


def neighbour_position(job: Job, query: int) -> int:
    """The slice one step from ``query`` towards its nearest prompt slice."""
    source = min(job.kept, key=lambda p: (abs(p - query), p))
    return query - (1 if query > source else -1)


def choose(job: Job, query: int, out: np.ndarray) -> list[Example]:
    """The K prompts for ``query``: nearest by index first, other volumes' prompts after; when
    propagating, its predicted neighbour first and then those K."""
    k = min(job.options.k_prompts, len(job.examples))
    ranked = nearest_first(job.examples, query)
    if job.options.propagate:
        neighbour = _neighbour(job, query, out)
        if neighbour is not None:
            return [neighbour, *ranked[:k]]
    return ranked[:k]


def _neighbour(job: Job, query: int, out: np.ndarray) -> Example | None:
    """The already predicted slice one step towards the nearest prompt slice, as a prompt."""
    position = neighbour_position(job, query)
    if position in job.kept:
        return None  # the real prompt slice is the nearest prompt already
    plane = job.view(take_slice(job.volume, job.axis, position))
    image = job.tile(job.in_range.normalize(plane), False)
    target, classes = job.kind.neighbour_target(job, job.view(take_slice(out, job.axis, position)))
    return Example(image, target, position, classes)


def leads_with_neighbour(job: Job, chosen: list[Example]) -> bool:
    """Whether ``chosen`` leads with an already predicted neighbour."""
    position = chosen[0].position
    return bool(job.options.propagate) and position is not None and position not in job.kept


def lost_everything(job: Job, chosen: list[Example]) -> bool:
    """Whether the propagated neighbour of a segmentation query shows no structure any more."""
    return leads_with_neighbour(job, chosen) and not chosen[0].classes
