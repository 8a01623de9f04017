"""Prompt alignment (``Options.align_prompts``): each segmentation prompt is warped onto its query
slice by 2D registration before the model sees it, so the model corrects a registered label
rather than finding the structure from afar (measured: docs/inference.md, "Prompt alignment")."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..registration import Registration, require_simpleitk
from .job import Example, Job


def require_registration(alignment: str) -> None:
    """A one-line error before any work when ``alignment`` needs SimpleITK and it is missing."""
    if alignment != "off":
        require_simpleitk(f"option align_prompts={alignment!r} (pass 'off' to segment without it)")


def aligned(job: Job, query: int, query_tile: np.ndarray, chosen: list[Example]) -> list[Example]:
    """``chosen`` warped onto the query tile; a prompt whose label the warp pushes out of the tile
    stays as it lies. The classes decoded stay the prompts' own."""
    registration = Registration(job.options.align_prompts)
    result = []
    for example in chosen:
        image, target = registration.align(
            query_tile, example.image, example.target, f"image slice {query} along axis {job.axis}"
        )
        result.append(dataclasses.replace(example, image=image, target=target))
    return result
