"""The slice store: normalised 2D tiles in memory-mapped .npy files plus a manifest.

Training draws two random slices per sample; decoding a compressed NIfTI volume for each would
make the loader, not the GPU, the bottleneck. ``python -m MVGCore.prepare`` therefore decodes
every volume once and appends its kept slices, already normalised to [0, 1] and fitted to the
tile size, to three flat arrays that any number of loader workers can map without copying:

- ``images.npy``  float16 (rows, S, S): slice ``s`` of a case, channel ``c``, is row
  ``image_row + s * channels + c``;
- ``labels.npy``  uint8 (rows, S, S): slice ``s`` is row ``label_row + s``;
- ``targets.npy`` float16 (rows, S, S): explicit target images (e.g. clean for degraded), likewise;
- ``manifest.json``: every case with its kept slices (and which hold foreground), every dropped
  slice with the reason, and how each case was normalised and fitted.

The store is built in a hidden sibling folder and renamed into place when complete, so a
crashed, cancelled or killed (SIGTERM) prepare never leaves something that looks like a store,
nor the half-built hidden folder. This module imports neither SimpleITK nor ``MVGCore.io``:
training needs only numpy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..termination import sigterm_raises

STORE_FORMAT = "mvg-slice-store"
STORE_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = {"images": np.float16, "labels": np.uint8, "targets": np.float16}


@dataclass(frozen=True)
class StoredCase:
    """One case in the store: where its rows are and which of its slices were kept."""

    case_id: str
    dataset: str
    modalities: tuple[str, ...]
    tasks: tuple[str, ...]
    slices: tuple[int, ...]
    """Index along the store's axis, in the source volume, of each stored slice."""
    foreground: tuple[bool, ...]
    """Whether each stored slice has label foreground (only those serve segmentation)."""
    image_row: int
    label_row: int | None = None
    target_row: int | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def channels(self) -> int:
        return len(self.modalities)

    @property
    def foreground_positions(self) -> tuple[int, ...]:
        return tuple(p for p, fg in enumerate(self.foreground) if fg)

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> StoredCase:
        entry = dict(entry)
        for key in ("modalities", "tasks", "slices", "foreground"):
            entry[key] = tuple(entry[key])
        return cls(**entry)


class _NpyAppender:
    """An .npy file of (n, S, S) rows whose length is only known when the last row is in.

    numpy pads the header so that the leading dimension can grow without changing its length;
    the header is written for 0 rows first and rewritten in place for the final count.
    """

    def __init__(self, path: Path, dtype: np.dtype, size: int) -> None:
        self.path, self.dtype, self.size, self.rows = path, np.dtype(dtype), size, 0
        self._file = open(path, "wb")  # kept open across appends; closed by close()
        self._header_length = self._write_header()

    def _write_header(self) -> int:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, self.size, self.size),
        }
        start = self._file.tell()
        np.lib.format.write_array_header_1_0(self._file, header)
        return self._file.tell() - start

    def append(self, rows: np.ndarray) -> int:
        """Append (n, S, S) rows; return the index of the first."""
        if rows.ndim != 3 or rows.shape[1:] != (self.size, self.size):
            raise ValueError(
                f"{self.path.name}: rows must be (n, {self.size}, {self.size}), got {rows.shape}"
            )
        first = self.rows
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]
        return first

    def close(self) -> None:
        self._file.seek(0)
        if self._write_header() != self._header_length:
            raise RuntimeError(f"{self.path}: the .npy header changed length; the store is not usable")
        self._file.close()

    def discard(self) -> None:
        self._file.close()


class StoreWriter:
    """Builds a store in a temporary sibling of ``out``; :meth:`commit` renames it into place.

    Use as a context manager: leaving the block normally commits, an exception discards.
    """

    def __init__(
        self, out: str | Path, tile_size: int, axis: int, info: dict[str, Any] | None = None
    ) -> None:
        self.out = Path(out)
        if self.out.exists():
            raise FileExistsError(f"store {self.out} already exists; choose a new --out folder")
        if tile_size < 8:
            raise ValueError(f"tile size must be at least 8 pixels, got {tile_size}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2 (k, j, i), got {axis}")
        self.tile_size, self.axis, self.info = tile_size, axis, dict(info or {})
        self.cases: list[StoredCase] = []
        self.dropped: list[dict[str, Any]] = []

    def add_case(
        self,
        case_id: str,
        dataset: str,
        modalities: tuple[str, ...],
        tasks: tuple[str, ...],
        images: np.ndarray,
        slices: tuple[int, ...],
        foreground: tuple[bool, ...],
        label: np.ndarray | None = None,
        target: np.ndarray | None = None,
        source: dict[str, Any] | None = None,
    ) -> StoredCase:
        """Store kept slices: ``images`` (n, C, S, S) in [0, 1], ``label``/``target`` (n, S, S)."""
        self._check_open()
        n, channels = images.shape[:2]
        where = f"case {case_id!r} of dataset {dataset!r}"
        if n == 0:
            raise ValueError(f"{where}: no slices to store (record dropped slices with drop())")
        if channels != len(modalities) or len(slices) != n or len(foreground) != n:
            raise ValueError(
                f"{where}: images {images.shape} must be (slices, channels, S, S) for "
                f"{len(modalities)} modalities and {len(slices)} slices"
            )
        for name, extra in (("label", label), ("target", target)):
            if extra is not None and extra.shape != (n, self.tile_size, self.tile_size):
                raise ValueError(f"{where}: {name} rows {extra.shape} do not match the {n} image slices")
        if label is not None and (label.min() < 0 or label.max() > 255):
            raise ValueError(
                f"{where}: label values must be class ids 0..255 to fit uint8, got {label.max()}"
            )
        self._check_finite(where, slices, images, label, target, source or {})
        image_row = self._arrays["images"].append(images.reshape(n * channels, *images.shape[2:]))
        case = StoredCase(
            case_id=case_id,
            dataset=dataset,
            modalities=tuple(modalities),
            tasks=tuple(tasks),
            slices=tuple(int(s) for s in slices),
            foreground=tuple(bool(f) for f in foreground),
            image_row=image_row,
            label_row=None if label is None else self._arrays["labels"].append(label),
            target_row=None if target is None else self._arrays["targets"].append(target),
            source=dict(source or {}),
        )
        self.cases.append(case)
        return case

    def _check_finite(
        self,
        where: str,
        slices: tuple[int, ...],
        images: np.ndarray,
        label: np.ndarray | None,
        target: np.ndarray | None,
        source: dict[str, Any],
    ) -> None:
        """Refuse NaN/inf before a row is written, naming the source file and the slice.

        Every writer of a store comes through :meth:`add_case`, so this is the one gate: a
        non-finite value stored here would only surface later, as a loader worker's error in the
        middle of training, far from the file that holds it.
        """
        files = list(source.get("images") or [])
        files += [None] * (images.shape[1] - len(files))
        parts = [(images[:, c], files[c], f"channel {c}") for c in range(images.shape[1])]
        parts += [(rows, source.get(name), name) for name, rows in (("label", label), ("target", target))]
        for rows, file, part in parts:
            if rows is None or not np.issubdtype(rows.dtype, np.inexact):
                continue
            finite = np.isfinite(rows).reshape(rows.shape[0], -1).all(axis=1)
            if not finite.all():
                named = f"{file}: slice {{}}" if file else f"{where}: slice {{}} ({part})"
                raise ValueError(
                    f"{named.format(slices[int(np.argmin(finite))])} along axis {self.axis} holds NaN or "
                    "infinite values; a slice store takes finite values only (replace them first)"
                )

    def drop(self, case_id: str, dataset: str, slice_index: int | None, reason: str) -> None:
        """Record a slice (or, with ``slice_index=None``, a whole case) left out and why."""
        self.dropped.append({"case_id": case_id, "dataset": dataset, "slice": slice_index, "reason": reason})

    def _check_open(self) -> None:
        if not hasattr(self, "_arrays"):
            raise RuntimeError(
                f"StoreWriter for {self.out} is not open: use it as a context manager "
                "(with StoreWriter(...) as writer:), which builds the store and commits it"
            )

    def commit(self) -> Path:
        self._check_open()
        for array in self._arrays.values():
            array.close()
        if not self.cases:
            self.abort()
            raise ValueError("no slice was kept, so there is no store to write (see the dropped reasons)")
        manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "tile_size": self.tile_size,
            "axis": self.axis,
            "info": self.info,
            "rows": {name: array.rows for name, array in self._arrays.items()},
            "kept_slices": sum(len(case.slices) for case in self.cases),
            "dropped_slices": sum(1 for d in self.dropped if d["slice"] is not None),
            "cases": [asdict(case) for case in self.cases],
            "dropped": self.dropped,
        }
        (self._building / MANIFEST).write_text(json.dumps(manifest, indent=1))
        self._building.chmod(0o755)  # made private while it was being built
        os.replace(self._building, self.out)
        return self.out

    def abort(self) -> None:
        for array in self._arrays.values():
            array.discard()
        shutil.rmtree(self._building, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        """Make the hidden building folder, with SIGTERM raising from here to ``__exit__``.

        The folder is made here, not in ``__init__``: a SIGTERM between the constructor and the
        with-block would otherwise leave it behind. Its name is chosen before it exists, so a
        SIGTERM that lands just after ``mkdir`` still finds it to remove.
        """
        self._signals = ExitStack()
        self._signals.enter_context(sigterm_raises())
        self._building = self.out.parent / f".{self.out.name}.{secrets.token_hex(6)}"
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._building.mkdir(mode=0o700)
            self._arrays = {
                name: _NpyAppender(self._building / f"{name}.npy", dtype, self.tile_size)
                for name, dtype in ARRAYS.items()
            }
        except BaseException:
            shutil.rmtree(self._building, ignore_errors=True)
            self._signals.close()
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                self.commit()
            else:
                self.abort()
        finally:
            self._signals.close()


class SliceStore:
    """Read access to a store; arrays are memory-mapped lazily, once per process.

    Pickles without its maps, so DataLoader workers (fork or spawn) map the files themselves.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a slice store: {MANIFEST} is missing")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != STORE_FORMAT or manifest.get("version") != STORE_VERSION:
            raise ValueError(
                f"{manifest_path}: expected format {STORE_FORMAT!r} version {STORE_VERSION}, "
                f"got {manifest.get('format')!r} version {manifest.get('version')}"
            )
        self.manifest = manifest
        self.tile_size: int = manifest["tile_size"]
        self.axis: int = manifest["axis"]
        self.cases = [StoredCase.from_json(entry) for entry in manifest["cases"]]
        for name in ARRAYS:
            if not (self.path / f"{name}.npy").is_file():
                raise FileNotFoundError(f"slice store {self.path} is missing {name}.npy")
        self._maps: dict[str, np.ndarray] = {}

    def _rows(self, name: str) -> np.ndarray:
        if name not in self._maps:
            array = np.load(self.path / f"{name}.npy", mmap_mode="r")
            expected = (self.manifest["rows"][name], self.tile_size, self.tile_size)
            if array.shape != expected or array.dtype != ARRAYS[name]:
                raise ValueError(
                    f"{self.path / name}.npy is {array.shape} {array.dtype}, expected {expected}"
                )
            self._maps[name] = array
        return self._maps[name]

    def image(self, case: StoredCase, position: int, channel: int = 0) -> np.ndarray:
        """Stored slice ``position`` of ``case``, one channel, float32 (S, S) in [0, 1]."""
        if not 0 <= channel < case.channels:
            raise ValueError(
                f"case {case.case_id!r} has {case.channels} channels, asked for channel {channel}"
            )
        _check_position(case, position)
        row = case.image_row + position * case.channels + channel
        return self._finite(self._rows("images")[row].astype(np.float32), "images", row, case, position)

    def label(self, case: StoredCase, position: int) -> np.ndarray:
        if case.label_row is None:
            raise ValueError(f"case {case.case_id!r} has no label in store {self.path}")
        _check_position(case, position)
        return np.array(self._rows("labels")[case.label_row + position])

    def target(self, case: StoredCase, position: int) -> np.ndarray:
        if case.target_row is None:
            raise ValueError(f"case {case.case_id!r} has no target image in store {self.path}")
        _check_position(case, position)
        row = case.target_row + position
        return self._finite(self._rows("targets")[row].astype(np.float32), "targets", row, case, position)

    def _finite(self, tile: np.ndarray, name: str, row: int, case: StoredCase, position: int) -> np.ndarray:
        """``tile``, refused if it holds NaN or inf: a store written before prepare refused them (or
        edited since) would otherwise fail deep in a loader worker, naming neither store nor case."""
        if not np.isfinite(tile).all():
            raise ValueError(
                f"slice store {self.path}: case {case.case_id!r} of {case.dataset!r}, slice "
                f"{case.slices[position]}, holds NaN or infinite values ({name}.npy row {row}); "
                "prepare the store again"
            )
        return tile

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def _check_position(case: StoredCase, position: int) -> None:
    if not 0 <= position < len(case.slices):
        raise IndexError(f"case {case.case_id!r} has {len(case.slices)} stored slices, asked for {position}")
