"""The random choices a training sample is made of: weighted picks (task, dataset, noise, hole),
the two slices of a pair, and the prompt classes kept.

Every function draws from the generator it is given, so a sample stays a pure function of its
``(seed, epoch, index)`` (:class:`~MVGCore.data.samplers.InContextDataset`).
"""

from __future__ import annotations

import numpy as np

from .sampler_config import PropagationConfig
from .store import StoredCase


def weighted_choice(rng: np.random.Generator, items: list, weights: list[float]):
    """One of ``items`` by relative weight (a config's weights need not sum to 1)."""
    weights = np.asarray(weights, dtype=float)
    if not items or weights.sum() <= 0:
        raise ValueError(f"nothing to choose from: items {items} with weights {list(weights)}")
    return items[rng.choice(len(items), p=weights / weights.sum())]


def two_positions(rng, prompt_case, query_case, prompt_pool, query_pool) -> tuple[int, int]:
    """Stored slice positions for prompt and query; two different slices when both are one case."""
    prompt_pool, query_pool = list(prompt_pool), list(query_pool)
    query = query_pool[rng.integers(len(query_pool))]
    if prompt_case is query_case and len(prompt_pool) > 1:
        prompt_pool = [p for p in prompt_pool if p != query]
    return prompt_pool[rng.integers(len(prompt_pool))], query


def propagation_positions(
    rng: np.random.Generator, case: StoredCase, config: PropagationConfig
) -> tuple[int, int]:
    """(prompt, query) stored positions of one case: the prompt a labelled slice, the query the
    slice nearest to a drawn number of source slices away from it, or any other slice with
    ``far_prob``."""
    labelled = list(case.foreground_positions)
    prompt = labelled[rng.integers(len(labelled))]
    others = [p for p in range(len(case.slices)) if p != prompt]
    if not others:
        return prompt, prompt
    if rng.random() < config.far_prob:
        return prompt, others[rng.integers(len(others))]
    distance = int(rng.integers(config.near[0], config.near[1] + 1)) * (1 if rng.random() < 0.5 else -1)
    wanted = case.slices[prompt] + distance
    query = min(others, key=lambda p: (abs(case.slices[p] - wanted), p))
    return prompt, query


def keep_classes(
    rng: np.random.Generator, labels: list[np.ndarray], binary_prob: float, max_classes: int
) -> list[np.ndarray]:
    """Keep one (with ``binary_prob``) or up to ``max_classes`` of the prompt's (``labels[0]``)
    classes; the others become background in every label."""
    present = np.unique(labels[0][labels[0] > 0])
    if not present.size:
        return labels
    count = 1 if rng.random() < binary_prob else min(max_classes, present.size)
    if count == present.size:
        return labels
    keep = rng.choice(present, size=count, replace=False)
    return [np.where(np.isin(label, keep), label, 0) for label in labels]
