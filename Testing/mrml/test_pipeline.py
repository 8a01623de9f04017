"""A run with the numpy SimpleEngine: new nodes, right segments and geometry, the user's data unchanged."""

from __future__ import annotations

import re

import numpy as np
import pytest
import slicer
import slicerio
import vtk
from MVGSlicerLib import batch, batch_cli, mrml_io, pipeline, prompts, resources
from MVGSlicerLib.simple_engine import SimpleEngine

from MVGCore.types import Cancelled, CancelToken

SHAPE = (6, 8, 9)
TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)


def _scene_with_prompts(mrml, grid, axis=0):
    """A volume, a prompt segmentation painted on slices 1 and 4 along ``axis``, and an extra segmentation."""
    rng = np.random.default_rng(1)
    volume = mrml_io.add_volume_from_array(mrml.scene, rng.normal(size=SHAPE).astype(np.float32), grid, "ct")
    seg = slicer.vtkMRMLSegmentationNode()
    mrml.scene.AddNode(seg)
    seg.SetName("prompts")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    liver = seg.GetSegmentation().AddEmptySegment("liver", "liver", [0.8, 0.3, 0.2])
    seg.GetSegmentation().GetSegment(liver).SetTag(
        slicer.vtkSegment.GetTerminologyEntryTagName(), TERMINOLOGY
    )
    spleen = seg.GetSegmentation().AddEmptySegment("spleen", "spleen", [0.1, 0.5, 0.9])
    painted = {liver: np.zeros(SHAPE, bool), spleen: np.zeros(SHAPE, bool)}
    for index in (1, 4):
        where = [slice(None)] * 3
        where[axis] = index
        liver_slice = rng.random(np.zeros(SHAPE)[tuple(where)].shape) < 0.4
        painted[liver][tuple(where)] = liver_slice
        painted[spleen][tuple(where)] = ~liver_slice & (rng.random(liver_slice.shape) < 0.3)
    for segment_id, mask in painted.items():
        mrml.paint(seg, segment_id, mask, volume)
    other = slicer.vtkMRMLSegmentationNode()
    mrml.scene.AddNode(other)
    other.SetName("other")
    mrml.paint(
        other, other.GetSegmentation().AddEmptySegment("kidney", "kidney", [0, 1, 0]), painted[liver], volume
    )
    return volume, seg, other, painted


def _snapshot(mrml, nodes):
    """What the user could see: node ids, and every segment's name, color, tags and voxels."""
    state = {"ids": sorted(mrml.scene.GetNodeByID(f"{n}").GetID() for n in _node_ids(mrml.scene))}
    volume = nodes[0]
    for seg in nodes[1:]:
        for n in range(seg.GetSegmentation().GetNumberOfSegments()):
            segment_id = seg.GetSegmentation().GetNthSegmentID(n)
            segment = seg.GetSegmentation().GetSegment(segment_id)
            state[(seg.GetID(), segment_id)] = (
                segment.GetName(),
                tuple(segment.GetColor()),
                _terminology(segment),
                mrml_io.segment_mask(seg, segment_id, volume).tobytes(),
            )
    state["voxels"] = mrml_io.array_from_volume(volume).tobytes()
    return state


def _terminology(segment) -> str:
    value = vtk.reference("")
    segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value)
    return str(value)


def _node_ids(scene):
    return [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_segment_writes_new_segmentation_and_leaves_user_data(mrml, grid, axis):
    volume, seg, other, painted = _scene_with_prompts(mrml, grid, axis)
    before = _snapshot(mrml, (volume, seg, other))
    job = pipeline.segment_job(volume, seg, axis=axis)
    assert [p.index for p in job.prompts] == [1, 4]  # exactly the painted slices
    for prompt in job.prompts:
        where = [slice(None)] * 3
        where[axis] = prompt.index
        expected = np.where(painted["spleen"], 2, np.where(painted["liver"], 1, 0))[tuple(where)]
        assert np.array_equal(prompt.target, expected)  # exactly the painted voxels

    out = pipeline.run(mrml.scene, job, SimpleEngine())

    assert out.GetID() not in before["ids"] and out.GetName() == "ct MVG segment"
    after = _snapshot(mrml, (volume, seg, other))
    assert {k: v for k, v in after.items() if k != "ids"} == {k: v for k, v in before.items() if k != "ids"}
    segmentation = out.GetSegmentation()
    assert [segmentation.GetNthSegmentID(n) for n in range(2)] == ["liver", "spleen"]
    liver = segmentation.GetSegment("liver")
    assert liver.GetName() == "liver" and np.allclose(liver.GetColor(), (0.8, 0.3, 0.2))
    assert _terminology(liver) == TERMINOLOGY
    assert np.allclose(segmentation.GetSegment("spleen").GetColor(), (0.1, 0.5, 0.9))
    # SimpleEngine copies the nearest prompt's labels: slices 0..2 from slice 1, 3..5 from slice 4
    for segment_id in ("liver", "spleen"):
        got = mrml_io.segment_mask(out, segment_id, volume)
        for index in range(SHAPE[axis]):
            source = 1 if index <= 2 else 4
            assert np.array_equal(np.take(got, index, axis), np.take(painted[segment_id], source, axis))


def test_cancelled_run_leaves_scene_exactly_as_before(mrml):
    volume, seg, other, _ = _scene_with_prompts(mrml, np.eye(4))
    before = _snapshot(mrml, (volume, seg, other))
    job = pipeline.segment_job(volume, seg)
    cancel = CancelToken()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done == 2:
            cancel.cancel()

    with pytest.raises(Cancelled):
        pipeline.run(mrml.scene, job, SimpleEngine(), progress, cancel)
    assert seen == [(1, SHAPE[0]), (2, SHAPE[0])]
    assert _snapshot(mrml, (volume, seg, other)) == before


def test_image_tasks_write_new_volumes_on_the_input_grid(mrml, grid):
    volume, seg, _, painted = _scene_with_prompts(mrml, grid)
    image = mrml_io.array_from_volume(volume)
    processor = batch.SceneProcessor(mrml.scene, SimpleEngine())

    denoised = processor.denoise(volume)
    assert np.allclose(mrml_io.ijk_to_ras(denoised), grid)
    assert np.allclose(mrml_io.array_from_volume(denoised)[2], image[1:4].mean(axis=0), atol=1e-5)

    filled = processor.inpaint(volume, seg, "liver")
    result = mrml_io.array_from_volume(filled)
    hole = painted["liver"]
    assert np.array_equal(result[~hole], image[~hole]) and np.allclose(
        result[1][hole[1]], image[1][~hole[1]].mean()
    )

    target = mrml_io.add_volume_from_array(mrml.scene, 2 * image + 1, grid, "mr")
    synthesized = processor.synthesize(volume, target, [0, 3])
    assert np.allclose(mrml_io.array_from_volume(synthesized), 2 * image + 1, atol=1e-4)
    assert np.allclose(mrml_io.ijk_to_ras(synthesized), grid)
    assert np.array_equal(mrml_io.array_from_volume(volume), image)  # the input is never changed


def test_bad_inputs_are_named(mrml):
    volume, seg, _, _ = _scene_with_prompts(mrml, np.eye(4))
    empty = slicer.vtkMRMLSegmentationNode()
    mrml.scene.AddNode(empty)
    empty.SetName("empty")
    empty.GetSegmentation().AddEmptySegment("hole", "hole", [1, 0, 0])
    with pytest.raises(ValueError, match="none of the prompt slices"):
        pipeline.segment_job(volume, seg, prompt_indices=[0, 2])
    with pytest.raises(ValueError, match=r"outside 0\.\.5"):
        pipeline.segment_job(volume, seg, prompt_indices=[9])
    with pytest.raises(ValueError, match="hole segment 'hole' is empty"):
        pipeline.inpaint_job(volume, empty, "hole")
    shifted = mrml_io.add_volume_from_array(mrml.scene, np.zeros(SHAPE), np.diag([2.0, 1, 1, 1]), "mr")
    with pytest.raises(ValueError, match="not on the voxel grid"):
        pipeline.synthesize_job(volume, shifted, [1])


def test_saved_seg_nrrd_reads_back_with_slicerio(mrml, grid, tmp_path):
    volume, seg, _, painted = _scene_with_prompts(mrml, grid)
    out = pipeline.run(mrml.scene, pipeline.segment_job(volume, seg), SimpleEngine())
    # SimpleEngine copies the nearest prompt (slices 1 and 4) along k; expected from the paint, not from MRML
    expected = {sid: painted[sid][[1, 1, 1, 4, 4, 4]] for sid in ("liver", "spleen")}
    path = batch.save_node(out, tmp_path / "result.seg.nrrd")
    with pytest.raises(FileExistsError):
        batch.save_node(out, path)
    read = slicerio.read_segmentation(str(path))
    lps = np.asarray(read["ijkToLPS"])
    assert np.allclose(np.diag([-1, -1, 1, 1]) @ grid[:, :3], lps[:, :3])  # same axes (origin may be cropped)
    offset = np.rint(np.linalg.solve(grid, np.diag([-1, -1, 1, 1]) @ lps[:, 3])[:3]).astype(int)  # (i, j, k)
    for segment_id, mask in expected.items():
        segment = slicerio.segment_from_name(read, segment_id)
        assert segment["color"] == pytest.approx(
            seg.GetSegmentation().GetSegment(segment_id).GetColor(), abs=1e-4
        )
        ijk = slicerio.segment_mask(read, segment).astype(bool)  # slicerio: (i, j, k)
        full = np.zeros(SHAPE[::-1], bool)
        full[offset[0] : offset[0] + ijk.shape[0], offset[1] : offset[1] + ijk.shape[1], offset[2] :][
            :, :, : ijk.shape[2]
        ] = ijk
        assert np.array_equal(full.transpose(2, 1, 0), mask)


def test_batch_cli_processes_files(mrml, tmp_path):
    volume, seg, _, _ = _scene_with_prompts(mrml, np.diag([-0.8, -1.25, 3.0, 1.0]))
    input_path = batch.save_node(volume, tmp_path / "ct.nrrd")
    prompts_path = batch.save_node(seg, tmp_path / "prompts.seg.nrrd")
    output = tmp_path / "ct_mvg.seg.nrrd"
    argv = [
        "--task",
        "Segment",
        "--input",
        str(input_path),
        "--prompts",
        str(prompts_path),
        "--output",
        str(output),
    ]
    status = batch_cli.main(argv, mrml.scene, mrml.volumes, mrml.segmentations, lambda _args: SimpleEngine())
    assert status == 0 and output.is_file()
    read = slicerio.read_segmentation(str(output))
    assert slicerio.segment_names(read) == ["liver", "spleen"]
    assert np.allclose(np.asarray(read["ijkToLPS"])[:3, :3], np.diag([0.8, 1.25, 3.0]))
    assert batch_cli.main(argv, mrml.scene, mrml.volumes, mrml.segmentations, lambda _a: SimpleEngine()) == 2
    missing = [
        *argv[:3],
        str(tmp_path / "missing.nrrd"),
        *argv[4:6],
        "--output",
        str(tmp_path / "x.seg.nrrd"),
    ]
    assert (
        batch_cli.main(missing, mrml.scene, mrml.volumes, mrml.segmentations, lambda _a: SimpleEngine()) == 2
    )


@pytest.mark.parametrize(
    ("task", "name", "expected"),
    [
        ("Segment", "ct_mvg.png", r"a segmentation is written as \.seg\.nrrd or \.nrrd"),
        ("Segment", "ct_mvg.nii.gz", "a segmentation is written as"),
        ("Denoise", "ct_mvg.seg.png", r"a volume is written as \.nrrd or \.nii\.gz"),
    ],
)
def test_batch_refuses_an_output_name_that_does_not_fit_the_node(
    mrml, tmp_path, capsys, task, name, expected
):
    """Slicer would write NRRD bytes into a .png name; the batch refuses it before any work (issue 13)."""
    volume, seg, _, _ = _scene_with_prompts(mrml, np.diag([-0.8, -1.25, 3.0, 1.0]))
    input_path = batch.save_node(volume, tmp_path / "ct.nrrd")
    prompts_path = batch.save_node(seg, tmp_path / "prompts.seg.nrrd")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["--task", task, "--input", str(input_path), "--output", str(tmp_path / name)]
    argv += ["--prompts", str(prompts_path)] if task == "Segment" else []  # Denoise takes none
    engine_made = []
    status = batch_cli.main(
        argv, mrml.scene, mrml.volumes, mrml.segmentations, lambda _a: engine_made.append(1) or SimpleEngine()
    )
    error = capsys.readouterr().err
    assert status == 2 and len(error.strip().splitlines()) == 1 and not engine_made
    assert re.search(expected, error) and name in error
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left
    with pytest.raises(ValueError, match="a segmentation is written as"):
        batch.save_node(seg, tmp_path / "direct.png")


@pytest.mark.parametrize(
    ("task", "extra", "expected"),
    [
        ("Denoise", ["--prompts", "PROMPTS"], "--prompts is not used by task Denoise"),
        ("Denoise", ["--slices", "1", "4"], "--slices is not used by task Denoise"),
        ("Denoise", ["--target", "INPUT"], "--target is not used by task Denoise"),
        ("Segment", ["--hole-segment", "liver"], "--hole-segment is not used by task Segment"),
        ("Inpaint", ["--prompts", "PROMPTS", "--slices", "1"], "--slices is not used by task Inpaint"),
        ("Synthesize", ["--target", "INPUT", "--slices", "1", "--prompts", "PROMPTS"], "--prompts is not"),
        ("Segment", [], "task Segment needs --prompts"),
        ("Synthesize", ["--target", "INPUT"], "task Synthesize needs --slices"),
    ],
)
def test_batch_refuses_a_flag_its_task_does_not_use(mrml, tmp_path, capsys, task, extra, expected):
    """Denoise given --prompts used to ignore them silently (issue 37); refused before any work."""
    volume, seg, _, _ = _scene_with_prompts(mrml, np.diag([-0.8, -1.25, 3.0, 1.0]))
    input_path = batch.save_node(volume, tmp_path / "ct.nrrd")
    prompts_path = batch.save_node(seg, tmp_path / "prompts.seg.nrrd")
    named = {"PROMPTS": str(prompts_path), "INPUT": str(input_path)}
    before = sorted(p.name for p in tmp_path.iterdir())
    output = "out.seg.nrrd" if task == "Segment" else "out.nrrd"
    argv = ["--task", task, "--input", str(input_path), "--output", str(tmp_path / output)]
    argv += [named.get(item, item) for item in extra]
    engine_made = []
    status = batch_cli.main(
        argv, mrml.scene, mrml.volumes, mrml.segmentations, lambda _a: engine_made.append(1) or SimpleEngine()
    )
    error = capsys.readouterr().err
    assert status == 2 and len(error.strip().splitlines()) == 1 and not engine_made, error
    assert expected in error
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_image_output_under_a_segmentation_name_is_refused(mrml, tmp_path, capsys):
    """A float volume written as name.seg.nrrd looks like a segmentation it is not (issue 37)."""
    volume, _, _, _ = _scene_with_prompts(mrml, np.diag([-0.8, -1.25, 3.0, 1.0]))
    input_path = batch.save_node(volume, tmp_path / "ct.nrrd")
    argv = ["--task", "Denoise", "--input", str(input_path), "--output", str(tmp_path / "ct.seg.nrrd")]
    status = batch_cli.main(argv, mrml.scene, mrml.volumes, mrml.segmentations, lambda _a: SimpleEngine())
    error = capsys.readouterr().err
    assert status == 2 and "ct.seg.nrrd" in error and "a volume is written as" in error, error
    assert not (tmp_path / "ct.seg.nrrd").exists()
    with pytest.raises(ValueError, match=r"\.seg\.nrrd is a segmentation name"):
        batch.save_node(volume, tmp_path / "direct.seg.nrrd")


def test_bundled_sample_segments_end_to_end(mrml):
    """The Sample Data pair: CT + tumour label (read as a segmentation) -> a new segmentation."""
    folder = resources.shared_resource("SampleData")
    volume = batch.load_volume(mrml.volumes, folder / "MVGSampleLungCT.nrrd")
    label = batch.load_segmentation(mrml.segmentations, folder / "MVGSampleLungCT_label.nrrd")
    segment_ids = pipeline.prompt_segment_ids(label)
    assert len(segment_ids) == 1
    tumour = mrml_io.segment_mask(label, segment_ids[0], volume)
    assert tumour.shape == (21, 160, 160) and prompts.painted_indices(tumour, 0) == list(range(5, 16))
    out = batch.SceneProcessor(mrml.scene, SimpleEngine()).segment(volume, label, prompt_indices=[8, 12])
    result = mrml_io.segment_mask(out, segment_ids[0], volume)
    assert np.array_equal(result[8], tumour[8]) and np.array_equal(result[12], tumour[12])
    assert np.array_equal(result[0], tumour[8]) and np.array_equal(result[20], tumour[12])


def test_engine_gets_the_physical_spacing_in_array_order(mrml):
    """Anisotropic voxels: the engine fits slices by physical size, so spacing must arrive as (k, j, i)."""
    grid = np.array(
        [[0, 0, 2.0, 1.0], [-1.5, 0, 0, 2.0], [0, -0.9, 0, 3.0], [0, 0, 0, 1]]
    )  # permuted: i->P, j->I, k->R
    volume, seg, _, _ = _scene_with_prompts(mrml, grid)
    received = {}

    class Recording(SimpleEngine):
        def segment(self, image, prompts, axis=0, **options):
            received.update(options)
            return super().segment(image, prompts, axis, **options)

    pipeline.run(mrml.scene, pipeline.segment_job(volume, seg), Recording())
    assert received["spacing"] == pytest.approx((2.0, 0.9, 1.5))  # |k axis|, |j axis|, |i axis| in mm


def test_adapt_to_the_scan_reaches_the_engine_for_segment_only(mrml):
    volume, seg, _, _ = _scene_with_prompts(mrml, np.eye(4))
    received = {}

    class Recording(SimpleEngine):
        def segment(self, image, prompts, axis=0, **options):
            received.update(options)
            return super().segment(image, prompts, axis, **options)

    processor = batch.SceneProcessor(mrml.scene, Recording())
    processor.segment(volume, seg)
    assert "adapt_steps" not in received  # off unless asked
    job = pipeline.segment_job(volume, seg, adapt_steps=7)
    assert (job.adapt_steps, job.total_steps) == (7, 7 + SHAPE[0])
    processor.segment(volume, seg, adapt_steps=7)
    assert received["adapt_steps"] == 7
    for task in ("Denoise", "Inpaint", "Synthesize"):
        with pytest.raises(ValueError, match=f"applies to Segment only, not to {task}"):
            pipeline.Job(task, volume, job.image, adapt_steps=3)
    for steps in (-1, True, 2.5):
        with pytest.raises(ValueError, match="adapt_steps must be 0 \\(off\\) or a positive whole number"):
            pipeline.segment_job(volume, seg, adapt_steps=steps)
