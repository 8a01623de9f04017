"""Write Resources/SampleData: a small real CT case with its tumour label, cut from pyradiomics' lung2.

Reproducible: `python scripts/make_sample_data.py` obtains pyradiomics 3.0.1's sample data through
MVGCore's open-samples recipe and crops the same box every time. The box holds all 11 labelled
slices of the tumour plus 5 unlabelled slices on each side, and 160 x 160 voxels around it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from MVGCore.data import open_samples
from MVGCore.io import write_volume

OUT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
NAME = "MVGSampleLungCT"
MARGIN_SLICES = 5
SIDE = 160


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    image, label = open_samples.load("pyradiomics/lung2")
    k, j, i = np.nonzero(label.array)
    start = [max(0, k.min() - MARGIN_SLICES)]
    stop = [min(label.array.shape[0], k.max() + 1 + MARGIN_SLICES)]
    for axis, coords in ((1, j), (2, i)):
        centre = (coords.min() + coords.max()) // 2
        low = int(np.clip(centre - SIDE // 2, 0, label.array.shape[axis] - SIDE))
        start.append(low)
        stop.append(low + SIDE)
    image = image.crop(tuple(start), tuple(stop))
    label = label.crop(tuple(start), tuple(stop))
    image.array = image.array.astype(np.int16)
    label.array = (label.array > 0).astype(np.uint8)
    args.out.mkdir(parents=True, exist_ok=True)
    for volume, suffix in ((image, ""), (label, "_label")):
        path = write_volume(args.out / f"{NAME}{suffix}.nrrd", volume, overwrite=args.overwrite)
        print(f"wrote {path} {volume.array.shape} spacing {volume.geometry.spacing}")
    print(f"labelled slices (k): {sorted(set(np.nonzero(label.array)[0].tolist()))}")


if __name__ == "__main__":
    main()
