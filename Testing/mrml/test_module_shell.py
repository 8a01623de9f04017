"""MVGSlicer.py's Logic facade and its in-Slicer self-test (MVGSlicerWidgets), run against slicer-core.

slicer-core has MRML but not Slicer's GUI framework, so the few GUI-side names the module imports
(qt, ScriptedLoadableModule bases, parameterNodeWrapper, i18n) are replaced by minimal stand-ins;
everything the Logic and MVGSlicerTest do on the scene is real, and the model process is a real
child process (a "PythonSlicer" on PATH that is this interpreter). The Widget needs the Slicer
application: its part of the self-test runs in Slicer only.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import unittest
from pathlib import Path

import numpy as np
import pytest
import slicer
from MVGSlicerLib import mrml_io
from MVGSlicerLib.simple_engine import SimpleEngine

MODULE_FILE = Path(__file__).resolve().parents[2] / "MVGSlicer" / "MVGSlicer.py"


def _gui_stand_ins() -> dict[str, types.ModuleType]:
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda _context, text: text

    wrapper = types.ModuleType("slicer.parameterNodeWrapper")

    class Choice:
        def __init__(self, choices):
            self.choices = choices

    wrapper.Choice = Choice
    wrapper.parameterNodeWrapper = lambda cls: cls

    scripted = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, *args, **kwargs):
            pass

    class Test(unittest.TestCase):
        def delayDisplay(self, message):
            pass

    scripted.ScriptedLoadableModule = Base
    scripted.ScriptedLoadableModuleWidget = Base
    scripted.ScriptedLoadableModuleLogic = Base
    scripted.ScriptedLoadableModuleTest = Test
    return {
        "qt": types.ModuleType("qt"),
        "slicer.i18n": i18n,
        "slicer.parameterNodeWrapper": wrapper,
        "slicer.ScriptedLoadableModule": scripted,
    }


@pytest.fixture
def mvgslicer(mrml, monkeypatch, tmp_path_factory):
    for name, stand_in in _gui_stand_ins().items():
        monkeypatch.setitem(sys.modules, name, stand_in)
    monkeypatch.setattr(slicer, "mrmlScene", mrml.scene, raising=False)
    modules = types.SimpleNamespace(
        volumes=types.SimpleNamespace(logic=lambda: mrml.volumes),
        segmentations=types.SimpleNamespace(logic=lambda: mrml.segmentations),
    )
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    bin_folder = tmp_path_factory.mktemp("slicer-bin")
    (bin_folder / "PythonSlicer").symlink_to(sys.executable)  # what Slicer puts on PATH
    monkeypatch.setenv("PATH", os.pathsep.join([str(bin_folder), os.environ.get("PATH", "")]))
    monkeypatch.syspath_prepend(str(MODULE_FILE.parent))
    for name in [m for m in sys.modules if m.split(".")[0] in ("MVGSlicer", "MVGSlicerWidgets")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh against this test's stand-ins
    return importlib.import_module("MVGSlicer")


def test_self_test_passes(mvgslicer, mrml):
    result = unittest.TextTestRunner(verbosity=0).run(
        unittest.TestSuite(
            [
                mvgslicer.MVGSlicerTest("test_SegmentFromPromptSlices"),
                mvgslicer.MVGSlicerTest("test_ModelProcessOnSample"),
            ]
        )
    )
    assert result.testsRun == 2 and result.wasSuccessful(), result.failures + result.errors
    assert mvgslicer.install.missing_requirements() == []  # so the model test did run, not just pass
    assert mrml.scene.GetFirstNodeByName("MVGSampleLungCT MVG segment") is not None


class _SampleData58:
    """SampleDataLogic of Slicer 5.6/5.8: no categories with titles, ``loadFileType`` only."""

    registered: list

    @classmethod
    def registerCustomSampleDataSource(
        cls,
        category="Custom",
        sampleName=None,
        uris=None,
        fileNames=None,
        nodeNames=None,
        customDownloader=None,
        thumbnailFileName=None,
        loadFileType="VolumeFile",
        loadFiles=None,
        loadFileProperties=None,
        checksums=None,
    ):
        cls.registered.append({name: value for name, value in locals().items() if name != "cls"})


class _SampleData512(_SampleData58):
    """5.12 adds categories with a title of their own."""

    categories: list

    @classmethod
    def registerCustomSampleDataCategory(cls, category, title=None):
        cls.categories.append((category, title))


@pytest.mark.parametrize("logic", [_SampleData58, _SampleData512], ids=["5.8", "5.12"])
def test_sample_data_registers_with_the_arguments_every_slicer_accepts(mvgslicer, logic):
    logic.registered, logic.categories = [], []
    mvgslicer.registerSampleData(logic)
    (source,) = logic.registered
    assert source["loadFileType"] == ["VolumeFile", "SegmentationFile"]
    assert source["nodeNames"] == ["MVGSampleLungCT", "MVGSampleLungCT tumour"]
    assert all(Path(uri.removeprefix("file://")).is_file() for uri in source["uris"])
    assert Path(source["thumbnailFileName"]).is_file()
    assert logic.categories == ([("MVG Slicer", "MVG Slicer")] if logic is _SampleData512 else [])


def test_module_run_path_refuses_a_missing_pythonslicer(mvgslicer, mrml, monkeypatch):
    logic = mvgslicer.MVGSlicerLogic()
    volume = mrml_io.add_volume_from_array(mrml.scene, np.zeros((2, 3, 4), np.float32), np.eye(4), "v")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="PythonSlicer"):
        logic.startRun(mvgslicer.pipeline.denoise_job(volume))


def test_logic_console_api_and_files(mvgslicer, mrml, tmp_path):
    logic = mvgslicer.MVGSlicerLogic(engine=SimpleEngine())
    grid = np.diag([-0.8, -1.0, 2.0, 1.0])
    image = np.random.default_rng(2).normal(size=(5, 7, 8)).astype(np.float32)
    volume = mrml_io.add_volume_from_array(mrml.scene, image, grid, "ct")
    prompts = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "prompts")
    prompts.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    organ = prompts.GetSegmentation().AddEmptySegment("organ", "organ", [0.2, 0.9, 0.3])
    painted = np.zeros(image.shape, np.uint8)
    painted[3, 2:5, 1:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, prompts, organ, volume)

    seg = logic.segment(volume, prompts)  # every painted slice (just k = 3) is a prompt
    assert np.array_equal(mrml_io.segment_mask(seg, organ, volume), np.repeat(painted[3:4] > 0, 5, axis=0))
    assert logic.denoise(volume).GetName() == "ct MVG denoise"
    assert logic.inpaint(volume, prompts, organ).GetName() == "ct MVG inpaint"
    target = mrml_io.add_volume_from_array(mrml.scene, 3 * image, grid, "t2")
    assert np.allclose(
        mrml_io.array_from_volume(logic.synthesize(volume, target, [0, 4])), 3 * image, atol=1e-4
    )

    from MVGSlicerLib import batch

    input_path = batch.save_node(volume, tmp_path / "ct.nrrd")
    prompts_path = batch.save_node(prompts, tmp_path / "prompts.seg.nrrd")
    out = logic.processFile("Segment", input_path, tmp_path / "out.seg.nrrd", promptsPath=prompts_path)
    assert out.is_file()


def test_logic_without_model_explains_what_is_missing(mvgslicer, monkeypatch):
    logic = mvgslicer.MVGSlicerLogic()
    monkeypatch.setattr(mvgslicer.install, "missing_requirements", lambda: [])
    assert logic.engine("", "cpu").device == "cpu"  # the shipped registry names the bundled default
    logic.registry = []  # an installation without bundled weights
    with pytest.raises(FileNotFoundError, match="no bundled MVG model"):
        logic.engine("", "cpu")
    monkeypatch.setattr(mvgslicer.install, "missing_requirements", lambda: [mvgslicer.install.TORCH])
    with pytest.raises(RuntimeError, match=r"missing Python packages: torch>=2\.4,<3"):
        logic.engine("", "cpu")


def test_adapt_to_this_scan_from_the_parameter_node_and_the_console(mvgslicer, mrml):
    received = []

    class Recording(SimpleEngine):
        def segment(self, image, prompts, axis=0, **options):
            received.append(options.get("adapt_steps"))
            return super().segment(image, prompts, axis, **options)

    logic = mvgslicer.MVGSlicerLogic(engine=Recording())
    image = np.random.default_rng(3).normal(size=(5, 7, 8)).astype(np.float32)
    volume = mrml_io.add_volume_from_array(mrml.scene, image, np.eye(4), "ct")
    prompts = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "prompts")
    organ = prompts.GetSegmentation().AddEmptySegment("organ", "organ", [0.2, 0.9, 0.3])
    painted = np.zeros(image.shape, bool)
    painted[1, 2:5, 1:6] = True
    mrml.paint(prompts, organ, painted, volume)
    params = types.SimpleNamespace(
        inputVolume=volume, promptSegmentation=prompts, promptIndices=[1], promptAxis=0, task="Segment"
    )
    steps = mvgslicer.pipeline.ADAPT_STEPS
    assert steps > 0
    for adapt, expected in ((True, steps), (False, 0)):
        params.adaptToScan = adapt
        assert logic.createJob(params).adapt_steps == expected
    params.task, params.adaptToScan = "Denoise", True  # the checkbox is hidden there: it has no effect
    assert logic.createJob(params).adapt_steps == 0

    logic.segment(volume, prompts)
    logic.segment(volume, prompts, adapt=True)
    assert received == [None, steps]
