"""MVGSlicer: in-context segmentation, denoising, inpainting and synthesis with the Medical Vision Generalist.

This file is the Slicer shell only (module, parameter node, widget, logic facade, and the self-test
class Slicer looks up here); all computation lives in MVGSlicerLib, which never imports qt/ctk and
is tested against a real MRML scene outside Slicer. The shell's other Qt-side pieces live in
MVGSlicerWidgets: the self-test's tests, and the Run panel, which starts the model in a separate
PythonSlicer process (MVGSlicerLib.runner) and follows it from a QTimer, so Slicer stays responsive
and a crash or an out-of-memory of the model cannot take Slicer down. Both are packages because
Slicer loads every .py file next to this one as a module.
"""

import logging
import os
import shutil
import sys
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_SOURCE_ROOT, "MVGCore")) and _SOURCE_ROOT not in sys.path:
    sys.path.append(_SOURCE_ROOT)  # running from a source checkout: MVGCore sits next to the module folder

from MVGSlicerLib import install, models, mrml_io, pipeline, runner, sample_data  # noqa: E402
from MVGSlicerLib.console import ConsoleLogic  # noqa: E402
from MVGSlicerLib.engine import DEVICES  # noqa: E402
from MVGSlicerWidgets.run_panel import RunPanel  # noqa: E402
from MVGSlicerWidgets.selftest import SelfTests  # noqa: E402

VIEW_NAMES = ("Red", "Green", "Yellow")


class MVGSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MVG Slicer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["MVGSlicer contributors (MVGSlicer project)"]
        self.parent.helpText = _(
            "Label a few slices, and the Medical Vision Generalist (MVG) does the rest: segmentation, "
            "denoising, inpainting and cross-modal synthesis for CT, MRI, X-ray and ultrasound, learned "
            "in context from the example slices you give. Results always go into NEW nodes; your own "
            "segments are never changed. See the clinician guide in the extension's documentation."
        )
        self.parent.acknowledgementText = _(
            "MVG is described in: Ren S., Huang X., Li X., Xiao J., Mei J., Wang Z., Yuille A., Zhou Y., "
            "Xie C. 'Medical Vision Generalist: Unifying Medical Imaging Tasks in Context', "
            "arXiv:2406.05565 (2024). This module is an independent implementation."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData(sampleDataLogic=None):
    """The bundled lung CT crop and its tumour label, in the Sample Data module (see sample_data)."""
    if sampleDataLogic is None:
        import SampleData

        sampleDataLogic = SampleData.SampleDataLogic
    sample_data.register(sampleDataLogic, title=_("MVG Slicer"))


@parameterNodeWrapper
class MVGSlicerParameterNode:
    """Module state saved with the scene.

    promptAxis/promptIndices - the prompt slices: array axis (0=k, 1=j, 2=i) and slice indices.
    holeSegmentID - the segment of promptSegmentation that marks the region to inpaint.
    modelPath - a registry model name or a .safetensors file; empty means the bundled default.
    adaptToScan - Segment: tune a copy of the model on the prompts first (pipeline.ADAPT_STEPS steps).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    task: Annotated[str, Choice(list(pipeline.TASKS))] = "Segment"
    promptSegmentation: vtkMRMLSegmentationNode
    targetVolume: vtkMRMLScalarVolumeNode
    holeSegmentID: str = ""
    promptAxis: int = 0
    promptIndices: list[int]
    modelPath: str = ""
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    adaptToScan: bool = False


class MVGSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGUI = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MVGSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MVGSlicerLogic()
        self.runPanel = RunPanel(self.ui, self.logic, lambda: self._parameterNode)

        editor = self.ui.segmentEditorWidget
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        editor.setSegmentationNodeSelectorVisible(False)  # the prompt segmentation selector above drives it
        editor.setSourceVolumeNodeSelectorVisible(False)
        self.ui.holeSegmentSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.holeSegmentSelector.segmentationNodeSelectorVisible = False

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for view in VIEW_NAMES:
            getattr(self.ui, f"add{view}Button").connect("clicked()", lambda view=view: self.onAddSlice(view))
        self.ui.removePromptButton.connect("clicked()", self.onRemovePrompt)
        self.ui.clearPromptsButton.connect("clicked()", self.onClearPrompts)
        self.ui.holeSegmentSelector.connect("currentSegmentChanged(QString)", self.onHoleSegmentChanged)
        self.ui.browseModelButton.connect("clicked()", self.onBrowseModel)
        self.ui.importWeightsButton.connect("clicked()", self.onImportWeights)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.runPanel.stop()
        self.removeObservers()

    def enter(self) -> None:
        """Give the embedded Segment Editor its shortcuts and view observations, as its own module does."""
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.installKeyboardShortcuts()
        self.ui.segmentEditorWidget.updateWidgetFromMRML()  # sets up its view observations

    def exit(self) -> None:
        """Leave no live editor behind: no active effect, shortcuts or view observations (a run goes on)."""
        self._releaseSegmentEditor()
        self.ui.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.runPanel.stop(_("Cancelled: the scene was closed."))
        self._releaseSegmentEditor()
        self.ui.segmentEditorWidget.setSegmentationNode(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.ui.segmentEditorWidget.setMRMLSegmentEditorNode(self.logic.segmentEditorNode())
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.ui.segmentEditorWidget.updateWidgetFromMRML()

    def _releaseSegmentEditor(self) -> None:
        self.ui.segmentEditorWidget.setActiveEffect(None)
        self.ui.segmentEditorWidget.removeViewObservations()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = mrml_io.first_scalar_volume(slicer.mrmlScene)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        """Show what the chosen task needs; keep the embedded editor on the prompt segmentation."""
        p = self._parameterNode
        if p is None or self._updatingGUI:
            return
        self._updatingGUI = True  # widget signals fired below must not write back into the parameter node
        try:
            self._showParameters(p)
        finally:
            self._updatingGUI = False
        # Given a segmentation, the hole selector shows a segment by itself (the guard above kept its
        # signal out): the segment shown is the one Run uses. Writing it re-enters once, then agrees.
        shown = self.ui.holeSegmentSelector.currentSegmentID() or ""
        if p.task == "Inpaint" and shown != p.holeSegmentID:
            p.holeSegmentID = shown

    def _showParameters(self, p) -> None:
        self.ui.segmentEditorWidget.setSegmentationNode(p.promptSegmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(p.inputVolume)
        self.ui.holeSegmentSelector.setCurrentNode(p.promptSegmentation)
        self.ui.holeSegmentSelector.setCurrentSegmentID(p.holeSegmentID)
        self.ui.segmentationWidget.visible = p.task in ("Segment", "Inpaint")
        self.ui.promptSlicesWidget.visible = p.task in ("Segment", "Synthesize")
        self.ui.targetVolumeWidget.visible = p.task == "Synthesize"
        self.ui.holeSegmentWidget.visible = p.task == "Inpaint"
        self.ui.adaptToScanCheckBox.visible = p.task == "Segment"
        self.ui.promptListWidget.clear()
        for index in p.promptIndices:
            self.ui.promptListWidget.addItem(f"{'kji'[p.promptAxis]} = {index}")
        self.runPanel.updateButton()

    def onAddSlice(self, viewName: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot add this slice as a prompt."), waitCursor=False):
            p = self._parameterNode
            sliceNode = slicer.app.layoutManager().sliceWidget(viewName).mrmlSliceNode()
            axis, index = self.logic.promptSliceFromView(p.inputVolume, sliceNode, viewName)
            if p.promptIndices and axis != p.promptAxis:
                raise ValueError(
                    _(
                        "All prompt slices must cut the volume along the same axis; the {view} view cuts a "
                        "different one. Remove the other prompts first."
                    ).format(view=viewName)
                )
            p.promptAxis = axis
            p.promptIndices = sorted({*p.promptIndices, index})

    def onRemovePrompt(self) -> None:
        row = self.ui.promptListWidget.currentRow
        if row >= 0:
            indices = list(self._parameterNode.promptIndices)
            del indices[row]
            self._parameterNode.promptIndices = indices

    def onClearPrompts(self) -> None:
        self._parameterNode.promptIndices = []

    def onHoleSegmentChanged(self, segmentID: str) -> None:
        if self._parameterNode and not self._updatingGUI:
            self._parameterNode.holeSegmentID = segmentID or ""

    def onBrowseModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("MVG model"), "", "Safetensors (*.safetensors)")
        if path:
            self._parameterNode.modelPath = path

    def onImportWeights(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            self.parent, _("Import MVG weights"), "", "Safetensors (*.safetensors)"
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the weights."), waitCursor=True):
            stored = self.logic.importWeights(path)
            self._parameterNode.modelPath = str(stored)
            slicer.util.infoDisplay(
                _("Weights stored in {path}. They work offline from now on.").format(path=stored)
            )


class MVGSlicerLogic(ConsoleLogic, ScriptedLoadableModuleLogic):
    """Everything the module does, callable from the Python console; results are always new nodes.

    Console example::

        logic = slicer.util.getModuleLogic("MVGSlicer")
        seg = logic.segment(getNode("CT"), getNode("Prompts"), promptIndices=[40, 80], axis=0)
        seg = logic.segment(getNode("CT"), getNode("Prompts"), adapt=True)  # "Adapt to this scan"
        den = logic.denoise(getNode("CT"))
        logic.processFile("Segment", "ct.nrrd", "ct_mvg.seg.nrrd", promptsPath="prompts.seg.nrrd")

    The console calls (ConsoleLogic, Qt-free in MVGSlicerLib.console) compute in Slicer's own
    interpreter. ``engine`` replaces the MVG model there (e.g. ``SimpleEngine()`` for tests); by
    default the model is resolved from ``model`` (registry name or .safetensors path, empty =
    bundled) and cached. The module's Run button instead uses :meth:`startRun`: the model in a
    separate process, which a script can drive the same way::

        job = logic.createJob(logic.getParameterNode())
        run = logic.startRun(job)
        if run.wait() == "done":
            node = logic.writeResult(job, run.result)
        else:
            print(run.error)
    """

    def __init__(self, engine=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ConsoleLogic.__init__(self, engine)
        self.pythonExecutable = (
            None  # None: Slicer's PythonSlicer, found on PATH like slicer.util.pip_install
        )

    def getParameterNode(self):
        return MVGSlicerParameterNode(super().getParameterNode())

    def segmentEditorNode(self):
        node = slicer.mrmlScene.GetSingletonNode("MVGSlicer", "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag("MVGSlicer")
            node = slicer.mrmlScene.AddNode(node)
        return node

    def missingDependencies(self) -> list:
        return install.missing_requirements()

    def installDependencies(self, missing) -> None:
        installTorch = _installTorchWithPyTorchUtils if hasattr(slicer.modules, "pytorchutils") else None
        install.install_missing(missing, slicer.util.pip_install, installTorch, log=logging.info)

    def startRun(self, job: pipeline.Job, model: str = "", device: str = "auto") -> runner.ModelRun:
        """Start the model on ``job`` in a separate process and return at once; poll() the run.

        The process has Slicer's own Python (PythonSlicer), so it sees the packages installed here.
        """
        self.requireDependencies()
        python = self.pythonExecutable or shutil.which("PythonSlicer")
        if not python:
            raise RuntimeError(
                _("Slicer's Python (PythonSlicer) was not found on PATH; start Slicer from its own folder.")
            )
        checkpoint = models.resolve_model(model, self.registry)
        geometry = mrml_io.geometry_from_volume(job.volume_node)
        return runner.ModelRun.start(job, geometry, checkpoint, python=python, device=device)

    def importWeights(self, path: str):
        return models.import_weights(path, self.registry)

    def promptSliceFromView(self, volumeNode, sliceNode, viewName: str) -> tuple:
        if volumeNode is None:
            raise ValueError(_("Select an input volume first."))
        sliceToRAS = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        return mrml_io.view_axis_and_index(volumeNode, sliceToRAS, f"{viewName} view")

    def createJob(self, p: MVGSlicerParameterNode) -> pipeline.Job:
        """Read what the run needs from the scene (main thread)."""
        if p.inputVolume is None:
            raise ValueError(_("Select an input volume."))
        if p.task == "Segment":
            steps = pipeline.ADAPT_STEPS if p.adaptToScan else 0  # the option shows for Segment only
            return pipeline.segment_job(
                p.inputVolume, p.promptSegmentation, p.promptIndices, p.promptAxis, adapt_steps=steps
            )
        if p.task == "Denoise":
            return pipeline.denoise_job(p.inputVolume)
        if p.task == "Inpaint":
            return pipeline.inpaint_job(p.inputVolume, p.promptSegmentation, p.holeSegmentID)
        return pipeline.synthesize_job(p.inputVolume, p.targetVolume, p.promptIndices, p.promptAxis)

    def writeResult(self, job: pipeline.Job, result: np.ndarray):
        return pipeline.write_result(slicer.mrmlScene, job, result)


def _installTorchWithPyTorchUtils(torchSpec: str, torchvisionSpec: str) -> None:
    import PyTorchUtils

    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
        askConfirmation=False,
        torchVersionRequirement=torchSpec.removeprefix("torch"),
        torchvisionVersionRequirement=torchvisionSpec.removeprefix("torchvision"),
    )
    if torch is None:
        raise RuntimeError(_("PyTorch was not installed; see the Python console for the PyTorch Utils log."))


class MVGSlicerTest(SelfTests, ScriptedLoadableModuleTest):
    """Slicer's "Reload and Test" and the CMake unittest look up <module>Test in this file; the
    tests are in MVGSlicerWidgets/selftest.py."""

    logicClass = MVGSlicerLogic
