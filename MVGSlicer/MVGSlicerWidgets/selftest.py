"""The MVGSlicer self-test that Slicer's "Reload and Test" runs, inside Slicer.

Slicer looks the test class up by name in the module's own file (ScriptedLoadableModule.runTest:
``getattr(module, moduleName + "Test")``), so MVGSlicer.py defines MVGSlicerTest from SelfTests
and its Logic; the tests live here and never import MVGSlicer.py, which imports this file.
Testing/mrml/test_module_shell.py runs the parts that need no Slicer application against
slicer-core.
"""

import time

import numpy as np
import slicer
from MVGSlicerLib import batch, install, mrml_io, pipeline, resources, runner, sample_data
from MVGSlicerLib.simple_engine import SimpleEngine

from MVGCore.slicewise import take_slice


class SelfTests:
    """What users run, inside Slicer: the console API (numpy SimpleEngine), the bundled model on the
    sample data through the model process with a cancel, and the module's widget driven by its own
    timer. The model tests need the packages that Run installs; without them they say so and pass.

    A mixin for a ScriptedLoadableModuleTest that sets ``logicClass`` (MVGSlicerLogic); not a
    TestCase itself, so no test loader collects it without a logic.
    """

    RUN_TIMEOUT_S = 300
    logicClass = None

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_SegmentFromPromptSlices, self.test_ModelProcessOnSample, self.test_WidgetRun):
            self.setUp()
            test()

    def _volume(self):
        array = np.random.default_rng(0).normal(size=(6, 10, 12)).astype(np.float32)
        ijkToRAS = np.array([[-0.8, 0, 0, 10.0], [0, -1.2, 0, 5.0], [0, 0, 2.5, -3.0], [0, 0, 0, 1]])
        return mrml_io.add_volume_from_array(slicer.mrmlScene, array, ijkToRAS, "MVGTestVolume")

    def _sample(self):
        folder = resources.shared_resource("SampleData")
        volume = batch.load_volume(slicer.modules.volumes.logic(), folder / sample_data.FILES[0])
        prompts = batch.load_segmentation(slicer.modules.segmentations.logic(), folder / sample_data.FILES[1])
        return volume, prompts

    def _modelMissing(self) -> bool:
        missing = install.missing_requirements()
        if missing:
            self.delayDisplay(
                "Not run: the model needs "
                + ", ".join(r.spec for r in missing)
                + " (press Run once to install)"
            )
        return bool(missing)

    def _waitFor(self, condition) -> None:
        deadline = time.monotonic() + self.RUN_TIMEOUT_S
        while not condition():
            self.assertLess(time.monotonic(), deadline, "the model process did not finish in time")
            slicer.app.processEvents()
            time.sleep(0.02)

    def test_SegmentFromPromptSlices(self):
        self.delayDisplay("Segment from one painted slice")
        volume = self._volume()
        prompts = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MVGTestPrompts")
        prompts.CreateDefaultDisplayNodes()
        prompts.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        lesion = prompts.GetSegmentation().AddEmptySegment("lesion", "lesion", [0.9, 0.2, 0.1])
        painted = np.zeros((6, 10, 12), np.uint8)
        painted[2, 3:6, 4:9] = 1
        slicer.util.updateSegmentBinaryLabelmapFromArray(painted, prompts, lesion, volume)
        before = slicer.mrmlScene.GetNumberOfNodes()

        result = self.logicClass(engine=SimpleEngine()).segment(volume, prompts, promptIndices=[2], axis=0)

        self.assertNotEqual(result.GetID(), prompts.GetID())
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)
        segment = result.GetSegmentation().GetSegment(lesion)
        self.assertEqual(segment.GetName(), "lesion")
        np.testing.assert_allclose(segment.GetColor(), (0.9, 0.2, 0.1), atol=1e-6)
        expected = np.repeat(painted[2:3].astype(bool), 6, axis=0)  # SimpleEngine copies the nearest prompt
        np.testing.assert_array_equal(mrml_io.segment_mask(result, lesion, volume), expected)
        np.testing.assert_array_equal(mrml_io.segment_mask(prompts, lesion, volume), painted.astype(bool))
        self.delayDisplay("Segment test passed")

    def test_ModelProcessOnSample(self):
        """Run's path without the widget: the bundled model in a PythonSlicer process, then a cancel."""
        self.delayDisplay("Bundled model on the sample data in a separate process")
        if self._modelMissing():
            return
        volume, prompts = self._sample()
        logic = self.logicClass()
        job = pipeline.segment_job(volume, prompts, sample_data.PROMPT_SLICES)
        run = logic.startRun(job, "", "cpu")
        self._waitFor(lambda: run.poll() != runner.RUNNING)
        self.assertEqual(run.state, runner.DONE, run.error)
        self.assertEqual((run.done, run.total, run.device), (job.total_slices, job.total_slices, "cpu"))
        self.assertFalse(run.folder.exists())
        for prompt in job.prompts:  # the painted prompt slices come back exactly
            np.testing.assert_array_equal(take_slice(run.result, job.axis, prompt.index), prompt.target)
        node = logic.writeResult(job, run.result)
        self.assertEqual(node.GetName(), "MVGSampleLungCT MVG segment")

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        cancelled = logic.startRun(job, "", "cpu")
        cancelled.cancel()
        self._waitFor(lambda: cancelled.poll() != runner.RUNNING)
        self.assertEqual(cancelled.state, runner.CANCELLED)
        self.assertFalse(cancelled.folder.exists())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Model process test passed")

    def test_WidgetRun(self):
        """The module as a user drives it (needs the Slicer application): Run, the timer, the result."""
        self.delayDisplay("The module's Run button and timer")
        if self._modelMissing():
            return
        volume, prompts = self._sample()
        slicer.util.selectModule("MVGSlicer")
        widget = slicer.modules.mvgslicer.widgetRepresentation().self()
        p = widget.logic.getParameterNode()
        p.inputVolume, p.promptSegmentation, p.device = volume, prompts, "cpu"
        p.task = "Inpaint"  # the hole selector shows a segment by itself: it must be the one used
        slicer.app.processEvents()
        self.assertTrue(p.holeSegmentID)
        self.assertEqual(p.holeSegmentID, widget.ui.holeSegmentSelector.currentSegmentID())
        p.task, p.promptAxis, p.promptIndices = "Segment", 0, list(sample_data.PROMPT_SLICES)
        widget.runPanel.onRunButton()
        self.assertEqual(widget.ui.runButton.text, "Cancel")
        self._waitFor(lambda: widget.runPanel.run is None)  # only the panel's QTimer advances the run
        self.assertIn("Done", widget.ui.statusLabel.text)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("MVGSampleLungCT MVG segment"))

        widget.runPanel.onRunButton()  # a run in progress when the scene closes is stopped, writes nothing
        slicer.mrmlScene.Clear()
        self.assertIsNone(widget.runPanel.run)
        self.assertEqual(widget.ui.runButton.text, "Run")
        slicer.util.selectModule("Data")  # leaving the module leaves no active editor effect behind
        self.assertIsNone(widget.ui.segmentEditorWidget.activeEffect())
        self.delayDisplay("Widget test passed")
