"""The Qt-free half of MVGSlicerLogic: the models it knows and the console calls that compute with them.

Slicer wants the module's logic class in MVGSlicer.py, derived from ScriptedLoadableModuleLogic,
which imports Qt; MVGSlicerLogic also derives from ConsoleLogic, so everything the Python console
computes runs, and is tested, against slicer-core. The calls work on ``slicer.mrmlScene`` and the
Volumes and Segmentations logics as the console sees them when called, compute in that interpreter
(the module's Run button runs the model in a separate process instead) and always make new nodes.
"""

from __future__ import annotations

import slicer

from . import batch, install, models, pipeline
from .engine import EngineCache


class ConsoleLogic:
    """``engine`` replaces the MVG model (e.g. ``SimpleEngine()`` in tests); otherwise the model is
    resolved from ``model`` (registry name or .safetensors path, empty = bundled) and cached."""

    def __init__(self, engine=None) -> None:
        self.engineOverride = engine
        self.engines = EngineCache()
        self.registry = models.load_registry()

    def requireDependencies(self) -> None:
        """Refuse, naming what is missing, before anything needs the packages that Run installs."""
        missing = install.missing_requirements()
        if missing:
            raise RuntimeError(
                "missing Python packages: "
                + ", ".join(r.spec for r in missing)
                + ". Open the MVG Slicer module and press Run once to install them."
            )

    def engine(self, model: str = "", device: str = "auto"):
        """The engine to run with; loading can take a while and is done once per model and device."""
        if self.engineOverride is not None:
            return self.engineOverride
        self.requireDependencies()
        return self.engines.get(models.resolve_model(model, self.registry), device)

    def processor(self, model: str = "", device: str = "auto") -> batch.SceneProcessor:
        return batch.SceneProcessor(slicer.mrmlScene, self.engine(model, device))

    def segment(
        self,
        volumeNode,
        segmentationNode,
        promptIndices=None,
        axis=0,
        segmentIDs=None,
        model="",
        device="auto",
        adapt=False,
    ):
        """New segmentation from labels painted on prompt slices (default: every painted slice).

        ``adapt=True`` first tunes a copy of the model on the prompt slices ("Adapt to this scan",
        pipeline.ADAPT_STEPS steps); the model file and the cached model are not changed.
        """
        return self.processor(model, device).segment(
            volumeNode,
            segmentationNode,
            promptIndices,
            axis,
            segmentIDs,
            adapt_steps=pipeline.ADAPT_STEPS if adapt else 0,
        )

    def denoise(self, volumeNode, axis=0, model="", device="auto"):
        return self.processor(model, device).denoise(volumeNode, axis)

    def inpaint(self, volumeNode, segmentationNode, holeSegmentID, axis=0, model="", device="auto"):
        return self.processor(model, device).inpaint(volumeNode, segmentationNode, holeSegmentID, axis)

    def synthesize(self, sourceNode, targetNode, promptIndices, axis=0, model="", device="auto"):
        return self.processor(model, device).synthesize(sourceNode, targetNode, promptIndices, axis)

    def processFile(
        self,
        task,
        inputPath,
        outputPath,
        promptsPath=None,
        targetPath=None,
        promptIndices=None,
        axis=0,
        holeSegmentID=None,
        model="",
        device="auto",
    ):
        """Run ``task`` on a file and write a new output file; see MVGSlicerLib.batch.process_file."""
        return batch.process_file(
            slicer.mrmlScene,
            slicer.modules.volumes.logic(),
            slicer.modules.segmentations.logic(),
            self.engine(model, device),
            task,
            inputPath,
            outputPath,
            promptsPath,
            targetPath,
            promptIndices,
            axis,
            holeSegmentID,
        )
