"""Open samples: the cache machinery offline, then (slow) the real packages end to end."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from MVGCore.data import open_samples
from MVGCore.data.sources import validate_cases
from MVGCore.io import write_volume
from MVGCore.types import Volume


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MVG_CACHE", str(tmp_path / "c"))
    assert open_samples.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MVG_CACHE")
    assert open_samples.cache_dir() == Path.home() / ".cache" / "mvgslicer"


def test_every_source_has_terms_and_samples():
    assert set(open_samples.SOURCES) == set(open_samples._SAMPLES) == set(open_samples._FETCHERS)
    for info in open_samples.SOURCES.values():
        assert info.license and info.description and info.obtained


def test_unknown_names_are_rejected_before_any_download(tmp_path):
    with pytest.raises(ValueError, match="unknown open-sample source 'kaggle'"):
        open_samples.obtain("kaggle", tmp_path)
    with pytest.raises(ValueError, match="source/name"):
        open_samples.load("lung1", tmp_path)
    with pytest.raises(ValueError, match="pyradiomics has: lung1"):
        open_samples.load("pyradiomics/lung9", tmp_path)
    assert not any(tmp_path.iterdir())


def _fake_pydicom(work, out):
    for sample in open_samples._SAMPLES["pydicom"]:
        write_volume(out / sample.image, Volume(np.ones((1, 4, 4), np.int16)))


def test_obtain_builds_the_cache_once(monkeypatch, tmp_path):
    calls = []

    def fetch(work, out):
        calls.append(work)
        _fake_pydicom(work, out)

    monkeypatch.setitem(open_samples._FETCHERS, "pydicom", fetch)
    folder = open_samples.obtain("pydicom", tmp_path)
    assert folder == tmp_path / "open_samples" / "pydicom"
    assert open_samples.obtain("pydicom", tmp_path) == folder and len(calls) == 1
    cases = open_samples.cases(["pydicom"], tmp_path)
    assert [c.case_id for c in cases] == ["ct_small", "mr_small", "us_ybr_clip"]
    assert cases[0].images == (folder / "CT_small.nrrd",) and cases[0].modalities == ("CT",)
    assert cases[0].license.startswith("MIT") and cases[0].tasks == ("denoise", "inpaint")
    image, label = open_samples.load("pydicom/mr_small", tmp_path)
    assert image.array.shape == (1, 4, 4) and label is None
    picked = open_samples.select(["pydicom/us_ybr_clip", "pydicom/ct_small"], tmp_path)
    assert [c.case_id for c in picked] == ["us_ybr_clip", "ct_small"] and len(calls) == 1
    with pytest.raises(ValueError, match=r"unknown open sample\(s\) \['pydicom/ct_large'\]"):
        open_samples.select(["pydicom/ct_large"], tmp_path)


def test_failed_or_incomplete_download_leaves_nothing_that_looks_finished(monkeypatch, tmp_path):
    def broken(work, out):
        (out / "CT_small.nrrd").write_bytes(b"half")
        raise RuntimeError("network went away")

    monkeypatch.setitem(open_samples._FETCHERS, "pydicom", broken)
    with pytest.raises(RuntimeError, match="network went away"):
        open_samples.obtain("pydicom", tmp_path)
    monkeypatch.setitem(open_samples._FETCHERS, "pydicom", lambda work, out: None)
    with pytest.raises(RuntimeError, match=r"no longer holds CT_small\.nrrd"):
        open_samples.obtain("pydicom", tmp_path)
    assert list((tmp_path / "open_samples").iterdir()) == []


def test_missing_apt_get_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(open_samples.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="needs apt-get"):
        open_samples.obtain("mricron", tmp_path)


def test_pip_failure_is_reported_with_its_message(monkeypatch, tmp_path):
    def failing(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(open_samples.subprocess, "run", failing)
    with pytest.raises(RuntimeError, match=r"(?s)download pydicom==3\.0\.2.*No matching"):
        open_samples.obtain("pydicom", tmp_path)


@pytest.mark.slow
def test_real_open_samples_are_valid_training_data():
    """Really obtains every source (cached under $MVG_CACHE or ~/.cache/mvgslicer for reruns)."""
    cases = open_samples.cases()
    assert {c.dataset for c in cases} == set(open_samples.SOURCES)
    assert validate_cases(cases) == cases  # every file readable, labels on the grid, none empty
    for source in open_samples.SOURCES:
        folder = open_samples.obtain(source)
        assert any((folder / name).exists() for name in ("LICENSE", "LICENSE.txt", "copyright"))

    start = time.perf_counter()
    assert len(open_samples.cases()) == len(cases)
    assert time.perf_counter() - start < 2.0  # second call only lists the cache

    ct, tumour = open_samples.load("pyradiomics/lung1")
    assert ct.array.shape == (48, 512, 512) and ct.geometry.spacing[2] == pytest.approx(5.0)
    assert ct.array.min() <= -1000  # Hounsfield units: air
    assert set(np.unique(tumour.array)) == {0, 1}

    brain, tissue = open_samples.load("nilearn/mni152_tissue")
    assert set(np.unique(tissue.array)) == {0, 1, 2}
    assert brain.array[tissue.array == 2].mean() > brain.array[tissue.array == 1].mean()  # T1: WM > GM

    chest, _ = open_samples.load("pydicom-data/chest_xr")  # MONOCHROME1 on disk
    rows, columns = chest.array.shape[1:]
    middle = slice(int(rows * 0.45), int(rows * 0.6))
    mediastinum = chest.array[0, middle, int(columns * 0.47) : int(columns * 0.53)].mean()
    lung = chest.array[0, middle, int(columns * 0.25) : int(columns * 0.35)].mean()
    assert mediastinum > lung  # bright = dense after inversion

    degraded, clean = open_samples.load("pydicom-data/chest_xr_j2k")
    assert degraded.array.shape == clean.array.shape and not np.array_equal(degraded.array, clean.array)

    cine, _ = open_samples.load("pydicom-data/us_cardiac_cine")
    assert cine.array.shape == (120, 480, 640) and cine.array.dtype == np.float32  # colour -> luminance
