"""prepare: volumes -> slice store; what is kept and dropped, exact tiles, atomic writes, the CLI."""

import json

import numpy as np
import pytest

from MVGCore.canvas import fit_to_tile
from MVGCore.data import phantoms
from MVGCore.data.sources import Case, load_cases
from MVGCore.data.store import SliceStore, StoreWriter
from MVGCore.intensity import normalize
from MVGCore.io import read_volume, write_volume
from MVGCore.prepare import main, prepare
from MVGCore.types import Cancelled, CancelToken, Geometry, Volume


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return phantoms.write_nnunet_dataset(root, 2, (10, 40, 30), 2, seed=11, spacing=(1.0, 1.0, 2.5))


def _ct_case(tmp_path, label_values=None, target=False, tasks=("segment",)) -> Case:
    """A CT volume whose first two slices are air (blank) and with a label on slices 5..7 only."""
    array = np.full((10, 24, 24), -1000.0, np.float32)
    array[2:, 4:20, 4:20] = 40.0
    array[2:, 8:12, 8:12] = 150.0
    label = np.zeros(array.shape, np.uint16)
    label[5:8, 8:12, 8:12] = 1 if label_values is None else label_values
    geometry = Geometry(spacing=(0.7, 0.7, 3.0))
    image_path = write_volume(tmp_path / "ct.nii.gz", Volume(array, geometry))
    label_path = write_volume(tmp_path / "ct_label.nii.gz", Volume(label, geometry))
    target_path = None
    if target:
        target_path = write_volume(tmp_path / "ct_clean.nii.gz", Volume(array - 20.0, geometry))
    return Case("ct1", "CTset", (image_path,), ("CT",), label=label_path, target=target_path, tasks=tasks)


def test_cli_stores_every_slice_of_phantoms_exactly(phantom_root, tmp_path):
    out = tmp_path / "store"
    assert main(["--data", str(phantom_root), "--out", str(out), "--size", "32", "--quiet"]) == 0
    store = SliceStore(out)
    assert store.tile_size == 32 and store.axis == 0 and len(store.cases) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_slices"] == 20 and manifest["dropped_slices"] == 0
    assert manifest["rows"] == {"images": 40, "labels": 20, "targets": 0}
    case = store.cases[1]
    assert (
        case.case_id == "phantom_001" and case.modalities == ("MR", "MR") and case.slices == tuple(range(10))
    )
    image = read_volume(case.source["images"][1])
    label = read_volume(case.source["label"]).array
    normalised = normalize(image.array, "MR")
    for position, index in enumerate(case.slices):
        expected = fit_to_tile(normalised[index], 32, False, spacing=(1.0, 1.0))[0]
        np.testing.assert_allclose(store.image(case, position, 1), expected, atol=1e-3)  # float16
        expected_label = fit_to_tile(label[index], 32, True, spacing=(1.0, 1.0))[0]
        np.testing.assert_array_equal(store.label(case, position), expected_label)
        assert case.foreground[position] == bool(expected_label.any())
    assert case.source["fit"]["content"] == [32, 24]  # 40x30 slice, aspect kept
    assert any(case.foreground) and not all(case.foreground)  # phantom end slices have no classes


def test_cli_takes_open_samples_from_the_open_samples_module(phantom_root, tmp_path, monkeypatch):
    from MVGCore.data import open_samples
    from MVGCore.data.sources import load_cases

    asked = []

    def fake_cases(sources=open_samples.DEFAULT_SOURCES):
        asked.append(tuple(sources))
        return load_cases(phantom_root)[:1]

    monkeypatch.setattr(open_samples, "cases", fake_cases)
    assert (
        main(["--open-samples", "pyradiomics", "--out", str(tmp_path / "store"), "--size", "16", "--quiet"])
        == 0
    )
    assert asked == [("pyradiomics",)]
    assert [c.case_id for c in SliceStore(tmp_path / "store").cases] == ["phantom_000"]


def test_segment_only_case_drops_blank_and_unlabelled_slices_with_reasons(tmp_path):
    out = prepare([_ct_case(tmp_path)], tmp_path / "store", size=16)
    store = SliceStore(out)
    (case,) = store.cases
    assert case.slices == (5, 6, 7) and all(case.foreground)
    reasons = {d["slice"]: d["reason"] for d in store.manifest["dropped"]}
    assert set(reasons) == {0, 1, 2, 3, 4, 8, 9}
    assert reasons[0].startswith("blank") and reasons[1].startswith("blank")
    assert reasons[3] == "no label foreground; case only segments"
    # CT is windowed with the paper's [-100, 200] HU: 40 HU -> 0.4667, 150 HU -> 0.8333
    tile = store.image(case, 1)
    assert tile.max() == pytest.approx(250 / 300, abs=2e-3)
    assert np.any(np.isclose(tile, 140 / 300, atol=2e-3))


def test_image_tasks_keep_unlabelled_slices_and_store_targets(tmp_path):
    case = _ct_case(tmp_path, target=True, tasks=("segment", "denoise"))
    store = SliceStore(prepare([case], tmp_path / "store", size=16))
    (stored,) = store.cases
    assert stored.slices == tuple(range(2, 10))  # only the two blank slices go
    assert stored.foreground == tuple(i in (5, 6, 7) for i in range(2, 10))
    assert store.manifest["rows"]["targets"] == 8
    # the clean target is 20 HU darker: its 130 HU core -> 230 / 300 vs 250 / 300 in the image
    assert store.target(stored, 0).max() == pytest.approx(230 / 300, abs=2e-3)
    assert store.image(stored, 0).max() == pytest.approx(250 / 300, abs=2e-3)


def test_prepare_along_another_axis_honours_anisotropic_spacing(tmp_path):
    store = SliceStore(prepare([_ct_case(tmp_path, tasks=("denoise",))], tmp_path / "store", size=16, axis=2))
    (case,) = store.cases
    assert store.axis == 2 and case.slices == tuple(range(4, 20))  # i < 4 and i >= 20 are all air
    # an i-slice is (k, j) = 10 x 24 voxels of 3.0 x 0.7 mm: 30 mm by 16.8 mm -> 16 x 9 pixels
    assert case.source["fit"]["content"] == [16, 9]


def test_bad_labels_and_cancellation_leave_nothing_behind(tmp_path):
    (tmp_path / "bad").mkdir()
    with pytest.raises(ValueError, match="class ids"):
        prepare([_ct_case(tmp_path / "bad", label_values=300)], tmp_path / "store")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        prepare([_ct_case(tmp_path)], tmp_path / "store", cancel=token)
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]


def test_existing_output_is_never_overwritten(tmp_path, phantom_root):
    out = tmp_path / "store"
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        main(["--data", str(phantom_root), "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "other")])  # no data given


def test_store_refuses_a_foreign_or_damaged_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        SliceStore(tmp_path)
    with StoreWriter(tmp_path / "s", 8, 0) as writer:
        writer.add_case("a", "d", ("MR",), ("denoise",), np.zeros((1, 1, 8, 8)), (0,), (False,))
    (tmp_path / "s" / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.npy"):
        SliceStore(tmp_path / "s")
    with pytest.raises(ValueError, match="images"), StoreWriter(tmp_path / "t", 8, 0) as writer:
        writer.add_case("a", "d", ("MR", "CT"), ("denoise",), np.zeros((1, 1, 8, 8)), (0,), (False,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the failed store left no folder


def test_a_store_writer_used_outside_a_with_block_says_how_to_use_it(tmp_path):
    writer = StoreWriter(tmp_path / "s", 8, 0)
    with pytest.raises(RuntimeError, match="is not open: use it as a context manager"):
        writer.add_case("a", "d", ("MR",), ("denoise",), np.zeros((1, 1, 8, 8)), (0,), (False,))
    with pytest.raises(RuntimeError, match="is not open"):
        writer.commit()
    assert not any(tmp_path.iterdir())  # nothing was made


# -- issue 37: non-finite voxels and a store too big for the machine ---------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_voxels_are_refused_naming_the_file_and_the_slice(tmp_path, bad):
    """An infinite voxel used to be clipped to 1.0 and a NaN stored as it is (predict refuses both)."""
    case = _ct_case(tmp_path, tasks=("denoise",))
    array = read_volume(case.images[0]).array.astype(np.float32)
    array[6, 10, 10] = bad
    # NRRD: ITK's NIfTI reader turns NaN and inf into 0 before MVGCore sees them.
    image = write_volume(tmp_path / "ct.nrrd", Volume(array, Geometry(spacing=(0.7, 0.7, 3.0))))
    case = Case("ct1", "CTset", (image,), ("CT",), label=case.label, tasks=case.tasks)
    with pytest.raises(ValueError, match=r"ct\.nrrd: slice 6 .*NaN or infinite") as error:
        prepare([case], tmp_path / "store", size=16)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]


def test_the_store_writer_refuses_non_finite_rows_from_any_writer(tmp_path):
    images = np.zeros((3, 1, 8, 8), np.float32)
    images[2, 0, 1, 1] = np.nan
    with (
        pytest.raises(ValueError, match=r"case 'a' of dataset 'd': slice 7 .*NaN"),
        StoreWriter(tmp_path / "s", 8, 0) as writer,
    ):
        writer.add_case("a", "d", ("MR",), ("denoise",), images, (5, 6, 7), (False,) * 3)
    target = np.zeros((1, 8, 8), np.float32)
    target[0, 0, 0] = -np.inf
    source = {"images": ["img.nii"], "target": "clean.nii"}
    with (
        pytest.raises(ValueError, match=r"clean\.nii: slice 4 .*NaN or infinite"),
        StoreWriter(tmp_path / "t", 8, 0) as writer,
    ):
        writer.add_case(
            "a", "d", ("MR",), ("denoise",), images[:1], (4,), (False,), target=target, source=source
        )
    assert not any(tmp_path.iterdir())


def test_a_store_too_big_for_memory_or_disk_is_refused_before_any_volume_is_read(
    phantom_root, tmp_path, monkeypatch
):
    from MVGCore import capacity
    from MVGCore import prepare as prepare_module

    def unread(path):
        raise AssertionError(f"{path} was read before the size was checked")

    monkeypatch.setattr(prepare_module, "read_volume", unread)
    out = tmp_path / "store"
    expected = r"--size 100000 \(20 slices of 100000 x 100000 pixels\): needs about .* GB"
    with pytest.raises(ValueError, match=expected) as error:
        main(["--data", str(phantom_root), "--out", str(out), "--size", "100000", "--quiet"])
    assert "\n" not in str(error.value)
    monkeypatch.setattr(capacity, "available_memory", lambda: 10_000)
    with pytest.raises(ValueError, match=r"--size 32 .*: needs about .* GB of memory, and 1e-05 GB is avail"):
        main(["--data", str(phantom_root), "--out", str(out), "--size", "32", "--quiet"])
    monkeypatch.setattr(capacity, "available_memory", lambda: None)  # unknown: not checked
    monkeypatch.setattr(capacity, "free_disk", lambda folder: 10_000)
    with pytest.raises(ValueError, match=r"tile size 32 .*about .* GB of disk in .*, and 1e-05 GB is free"):
        prepare(load_cases(phantom_root), out, size=32)
    assert not any(tmp_path.iterdir())
