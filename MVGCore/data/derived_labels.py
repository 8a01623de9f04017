"""Label maps derived from open images that ship without the labels a user would paint: four
structures of a chest CT by thresholds, and seven brain structures grouped from the AAL atlas.

Kept apart from :mod:`MVGCore.data.open_samples`, which downloads the images and calls these once
when it builds its cache: they are image processing, with no download or registry in them.
"""

from __future__ import annotations

import numpy as np

CT_STRUCTURES = {1: "soft tissue", 2: "lung (lower column index)", 3: "lung (higher column index)", 4: "bone"}
"""Labels of :func:`ct_structures`."""


def ct_structures(ct: np.ndarray) -> np.ndarray:
    """A uint8 map of :data:`CT_STRUCTURES` in a chest CT (HU, (k, j, i)), slice by slice by
    thresholds: the body is the largest component above -500 HU with its holes filled; a lung is
    one of its two largest air components (below -400 HU, opened, at least 2000 pixels, holes
    filled), named by the side of the body's centre column it lies on; bone is above 250 HU."""
    from scipy import ndimage

    labels = np.zeros(ct.shape, np.uint8)
    for k, plane in enumerate(ct):
        body = _components(plane > -500, 1, 1)
        if not body:
            continue
        body = ndimage.binary_fill_holes(body[0])
        centre = np.flatnonzero(body.any(0)).mean()
        labels[k][body] = 1
        for lung in _components(ndimage.binary_opening(body & (plane < -400), iterations=2), 2, 2000):
            labels[k][ndimage.binary_fill_holes(lung)] = (
                2 if np.flatnonzero(lung.any(0)).mean() < centre else 3
            )
        labels[k][ndimage.binary_opening(body & (plane > 250))] = 4
    return labels


def _components(mask: np.ndarray, count: int, min_size: int) -> list[np.ndarray]:
    """The ``count`` largest connected components of ``mask`` with at least ``min_size`` pixels."""
    from scipy import ndimage

    labelled, found = ndimage.label(mask)
    if not found:
        return []
    sizes = ndimage.sum(mask, labelled, range(1, found + 1))
    order = np.argsort(sizes)[::-1][:count]
    return [labelled == o + 1 for o in order if sizes[o] >= min_size]


AAL_LOBES = {
    1: ("frontal", 1, 28),
    2: ("insula, cingulate and medial temporal", 29, 42),
    3: ("occipital", 43, 56),
    4: ("parietal", 57, 70),
    5: ("deep grey matter", 71, 78),
    6: ("temporal", 79, 90),
    7: ("cerebellum", 91, 116),
}
"""AAL (116 regions, the atlas's own index order) grouped into seven structures: label -> (name,
first AAL index, last AAL index)."""


def aal_lobes(aal: np.ndarray) -> np.ndarray:
    """A uint8 map of the seven :data:`AAL_LOBES` structures from an AAL label map (0 elsewhere)."""
    lobes = np.zeros(aal.shape, np.uint8)
    for label, (_, first, last) in AAL_LOBES.items():
        lobes[(aal >= first) & (aal <= last)] = label
    return lobes
