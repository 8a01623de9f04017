"""Dataset layouts become Cases, and bad data is caught, named, before training starts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from MVGCore.data.sources import (
    Case,
    load_cases,
    load_manifest,
    load_msd,
    load_nnunet,
    modality_of,
    validate_cases,
)
from MVGCore.io import write_volume
from MVGCore.types import Geometry, Volume

GRID = Geometry(spacing=(1.0, 1.0, 2.0))


def _image(path, value=1.0, shape=(3, 8, 8), geometry=GRID):
    return write_volume(path, Volume(np.full(shape, value, np.float32), geometry))


def _label(path, foreground=True, dtype=np.uint8, shape=(3, 8, 8), geometry=GRID):
    array = np.zeros(shape, dtype)
    if foreground:
        array[1, 2:5, 2:5] = 1
    return write_volume(path, Volume(array, geometry))


def _nnunet(root, cases=("c1", "c2"), channels=("CT",), labels=True):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    description = {
        "channel_names": {str(c): name for c, name in enumerate(channels)},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": "Dataset001_Test",
        "license": "CC-BY-4.0",
    }
    (root / "dataset.json").write_text(json.dumps(description))
    for case in cases:
        for c in range(len(channels)):
            _image(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", value=c)
        if labels:
            _label(root / "labelsTr" / f"{case}.nii.gz")
    return root


def test_nnunet_single_channel(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Test")
    cases = load_cases(root)
    assert [c.case_id for c in cases] == ["c1", "c2"]
    case = cases[0]
    assert case.dataset == "Dataset001_Test" and case.license == "CC-BY-4.0"
    assert case.images == (root / "imagesTr" / "c1_0000.nii.gz",)
    assert case.modalities == ("CT",)
    assert case.label == root / "labelsTr" / "c1.nii.gz"
    assert case.tasks == ("segment", "denoise", "inpaint")
    assert validate_cases(cases) == cases


def test_nnunet_multichannel_is_a_synthesis_pair(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=("p1",), channels=("T1", "FLAIR"), labels=False)
    (case,) = load_nnunet(root)
    assert [p.name for p in case.images] == ["p1_0000.nii.gz", "p1_0001.nii.gz"]
    assert case.modalities == ("MR", "MR")
    assert case.label is None
    assert "synthesize" in case.tasks and "segment" not in case.tasks
    assert validate_cases([case]) == [case]


def test_nnunet_missing_channel_names_the_case(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=("p1",), channels=("T1", "T2"))
    (root / "imagesTr" / "p1_0001.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"p1.*found \[0\]"):
        load_nnunet(root)


def test_nnunet_missing_label_names_the_file(tmp_path):
    root = _nnunet(tmp_path / "ds")
    (root / "labelsTr" / "c2.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"'c2' has images but no label .*labelsTr/c2\.nii\.gz"):
        load_nnunet(root)


def test_empty_and_unknown_layouts_are_errors(tmp_path):
    root = _nnunet(tmp_path / "ds", cases=())
    with pytest.raises(ValueError, match="no images named"):
        load_cases(root)
    with pytest.raises(FileNotFoundError, match=r"no dataset\.json"):
        load_cases(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cases(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no cases"):
        validate_cases([])


def test_msd_layout_and_4d_channels_split_outside_the_dataset(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    channels = [sitk.GetImageFromArray(np.full((3, 8, 8), c, np.float32)) for c in range(2)]
    four_d = sitk.JoinSeries(channels)
    four_d.SetSpacing((1.0, 1.0, 2.0, 1.0))
    sitk.WriteImage(four_d, str(root / "imagesTr" / "BRATS_001.nii.gz"))
    _label(root / "labelsTr" / "BRATS_001.nii.gz")
    description = {
        "name": "BRATS",
        "licence": "CC-BY-SA 4.0",
        "modality": {"0": "FLAIR", "1": "T1w"},
        "training": [{"image": "./imagesTr/BRATS_001.nii.gz", "label": "./labelsTr/BRATS_001.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(description))
    split = tmp_path / "cache"
    (case,) = load_msd(root, split_dir=split)
    assert case.case_id == "BRATS_001" and case.license == "CC-BY-SA 4.0"
    assert case.modalities == ("MR", "MR")
    assert all(p.parent == split for p in case.images)
    assert sorted(p.name for p in root.rglob("*.nii.gz")) == ["BRATS_001.nii.gz", "BRATS_001.nii.gz"]
    assert validate_cases([case]) == [case]
    assert load_msd(root, split_dir=split) == [case]  # reuses the split files


def test_manifest_yaml_with_all_case_kinds(tmp_path):
    _image(tmp_path / "ct.nrrd")
    _label(tmp_path / "ct_label.nrrd")
    _image(tmp_path / "noisy.nrrd")
    _image(tmp_path / "clean.nrrd", value=2.0)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        "name: mine\nlicense: CC0\nmodality: CT\ncases:\n"
        "  - {id: a, image: ct.nrrd, label: ct_label.nrrd}\n"
        "  - {id: b, image: noisy.nrrd, target: clean.nrrd, task: denoise, modality: XR}\n"
        "  - {image: clean.nrrd}\n"
    )
    a, b, c = load_cases(manifest)
    assert a.tasks == ("segment", "denoise", "inpaint") and a.label == tmp_path / "ct_label.nrrd"
    assert b.tasks == ("denoise",) and b.modalities == ("XR",) and b.target == tmp_path / "clean.nrrd"
    assert c.case_id == "clean" and c.label is None and c.tasks == ("denoise", "inpaint")
    assert {x.dataset for x in (a, b, c)} == {"mine"} and a.license == "CC0"
    assert validate_cases([a, b, c]) == [a, b, c]


def test_manifest_json_errors_name_the_case(tmp_path):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"cases": [{"image": "x.nrrd", "target": "y.nrrd", "modality": "CT"}]}))
    with pytest.raises(ValueError, match=r"case 0.*must say its task"):
        load_manifest(manifest)
    manifest.write_text(json.dumps({"cases": [{"image": "x.nrrd", "modality": "PET"}]}))
    with pytest.raises(ValueError, match="PET"):
        load_manifest(manifest)
    manifest.write_text(json.dumps({"cases": [{"image": "x.nrrd", "modality": "CT", "task": "segment"}]}))
    with pytest.raises(ValueError, match="needs a label"):
        load_manifest(manifest)
    manifest.write_text(json.dumps({"name": "empty", "cases": []}))
    with pytest.raises(ValueError, match=r"m\.json: expected a mapping with a non-empty 'cases'"):
        load_manifest(manifest)
    manifest.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot parse manifest .*m\.json"):
        load_manifest(manifest)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cases:\n  - {image: ct.nrrd, lable: ct_label.nrrd, modality: CT}\n",
            r"manifest\.yaml, case 0: unknown key 'lable'; known keys are .*'label'",
        ),
        (
            "modality: CT\nlicence: CC0\ncases:\n  - {image: ct.nrrd}\n",
            r"manifest\.yaml: unknown key 'licence'; known keys are .*'license'",
        ),
    ],
)
def test_manifest_refuses_a_misspelt_key_naming_the_file_and_the_known_keys(tmp_path, text, expected):
    """A misspelt 'label' used to be dropped silently: the case lost its label and its segment task."""
    _image(tmp_path / "ct.nrrd")
    _label(tmp_path / "ct_label.nrrd")
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    with pytest.raises(ValueError, match=rf"manifest .*{expected}"):
        load_manifest(manifest)


def test_a_manifest_or_dataset_json_that_is_not_text_is_named(tmp_path):
    manifest = tmp_path / "binary.yaml"
    manifest.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match=r"manifest .*binary\.yaml is not UTF-8 text"):
        load_cases(manifest)
    root = tmp_path / "Dataset001"
    root.mkdir()
    (root / "dataset.json").write_bytes(b'{"name": "\xff\xfe"}')
    with pytest.raises(ValueError, match=r"Dataset001.dataset\.json is not UTF-8 text"):
        load_cases(root)


def _case(tmp_path, label=None, target=None):
    image = _image(tmp_path / "img.nrrd") if not (tmp_path / "img.nrrd").exists() else tmp_path / "img.nrrd"
    tasks = ("segment",) if label else ("denoise",)
    return Case("c", "d", (image,), ("CT",), label=label, target=target, tasks=tasks)


def test_validation_missing_file(tmp_path):
    case = _case(tmp_path, label=tmp_path / "gone.nrrd")
    with pytest.raises(FileNotFoundError, match=r"gone\.nrrd"):
        validate_cases([case])


def test_validation_label_off_grid(tmp_path):
    wrong_shape = _label(tmp_path / "small.nrrd", shape=(3, 8, 7))
    with pytest.raises(ValueError, match=r"small\.nrrd has shape \(3, 8, 7\)"):
        validate_cases([_case(tmp_path, label=wrong_shape)])
    shifted = _label(tmp_path / "shifted.nrrd", geometry=Geometry(spacing=(1.0, 1.0, 2.0), origin=(0, 0, 5)))
    with pytest.raises(ValueError, match=r"shifted\.nrrd is not on the grid.*origin"):
        validate_cases([_case(tmp_path, label=shifted)])
    target = _image(tmp_path / "target.nrrd", geometry=Geometry(spacing=(1.0, 1.0, 3.0)))
    with pytest.raises(ValueError, match=r"target\.nrrd is not on the grid.*spacing"):
        validate_cases([_case(tmp_path, target=target)])


def test_validation_label_values(tmp_path):
    fractional = write_volume(tmp_path / "soft.nrrd", Volume(np.full((3, 8, 8), 0.5, np.float32), GRID))
    with pytest.raises(ValueError, match=r"soft\.nrrd holds non-integer"):
        validate_cases([_case(tmp_path, label=fractional)])
    negative = write_volume(tmp_path / "neg.nrrd", Volume(np.full((3, 8, 8), -1, np.int16), GRID))
    with pytest.raises(ValueError, match=r"neg\.nrrd holds negative"):
        validate_cases([_case(tmp_path, label=negative)])
    whole = write_volume(tmp_path / "float_ok.nrrd", Volume(np.full((3, 8, 8), 2.0, np.float32), GRID))
    assert len(validate_cases([_case(tmp_path, label=whole)])) == 1


def test_validation_unreadable_file(tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_text("NRRD0004\ngarbage")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.nrrd"):
        validate_cases([_case(tmp_path, label=broken)])


def test_validation_skips_empty_labels_with_a_log(tmp_path, caplog):
    good = _case(tmp_path, label=_label(tmp_path / "good.nrrd"))
    empty = Case("e", "d", good.images, ("CT",), label=_label(tmp_path / "empty.nrrd", foreground=False))
    with caplog.at_level(logging.WARNING):
        assert validate_cases([good, empty]) == [good]
    assert "empty.nrrd has no foreground" in caplog.text
    assert validate_cases([good, empty], require_foreground=False) == [good, empty]
    with pytest.raises(ValueError, match="every label is empty"):
        validate_cases([empty])


def test_validation_duplicate_ids(tmp_path):
    case = _case(tmp_path, label=_label(tmp_path / "l.nrrd"))
    with pytest.raises(ValueError, match="appears twice"):
        validate_cases([case, case])


def test_modality_names():
    assert [modality_of(n) for n in ("CT", "T2", "flair", "ADC", "MRI", "zscore", "US")] == [
        "CT",
        "MR",
        "MR",
        "MR",
        "MR",
        "OTHER",
        "US",
    ]
