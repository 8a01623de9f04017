"""The Run button of the MVGSlicer widget and everything that follows a click.

A run is a model process (MVGSlicerLib.runner) that this panel follows from a QTimer: progress,
cancel, the result written into a new node, or the failure explained (with a CPU retry when the
GPU ran out of memory). It owns the run, so the widget only tells it when the module's parameters
changed and when a run must stop (scene closing, module cleanup).
"""

import logging

import qt
import slicer
from MVGSlicerLib import install, runner
from MVGSlicerLib.engine import is_out_of_memory
from slicer.i18n import tr as _

POLL_INTERVAL_MS = 100


class RunPanel:
    """Drives runButton, progressBar, statusLabel and deviceInUseLabel of the module's .ui.

    ``parameterNode`` is called for the widget's current parameter node (None while the module is
    not shown): a run started from the module goes on when the user leaves it.
    """

    def __init__(self, ui, logic, parameterNode) -> None:
        self.ui = ui
        self.logic = logic
        self.parameterNode = parameterNode
        self.run = None  # runner.ModelRun while the model process runs
        self.job = None  # the pipeline.Job it computes
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.connect("timeout()", self.onPoll)
        ui.runButton.connect("clicked()", self.onRunButton)

    def updateButton(self) -> None:
        """Run is possible with an input volume; during a run the button is Cancel and left alone."""
        if self.run is None:
            self.ui.runButton.text = _("Run")
            p = self.parameterNode()
            self.ui.runButton.enabled = p is not None and p.inputVolume is not None

    def onRunButton(self) -> None:
        if self.run is not None:
            self.run.cancel()
            self.ui.runButton.enabled = False
            self.ui.statusLabel.text = _("Cancelling...")
            return
        self.ui.runButton.enabled = False  # no second click while packages install or inputs are written
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start the run."), waitCursor=True):
                if not self.ensureDependencies():
                    return
                p = self.parameterNode()
                job = self.logic.createJob(p)  # reads the scene here; the model process never sees MRML
                self.run = self.logic.startRun(job, p.modelPath, p.device)
                self.job = job
                self.ui.progressBar.maximum = job.total_steps
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = _("Starting the model...")
                self.timer.start()
        finally:
            if self.run is None:
                self.updateButton()
            else:
                self.ui.runButton.text = _("Cancel")
                self.ui.runButton.enabled = True

    def ensureDependencies(self) -> bool:
        """Ask before installing anything; pip runs here, on the main thread, logging to the console."""
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        viaPyTorchUtils = hasattr(slicer.modules, "pytorchutils")
        if not slicer.util.confirmOkCancelDisplay(install.consent_message(missing, viaPyTorchUtils)):
            return False
        slicer.util.displayPythonShell()
        with slicer.util.WaitCursor():
            self.logic.installDependencies(missing)
        return True

    def onPoll(self) -> None:
        """QTimer tick: read the model process's progress; once it exited, store or report the outcome."""
        run, job = self.run, self.job
        state = run.poll()
        if run.total:
            self.ui.progressBar.maximum = run.total
            self.ui.progressBar.value = run.done
            if state == runner.RUNNING and not run.cancelling:
                stage, done, total = run.stage()
                if stage == "adapt":
                    text = _("Adapting the model to this scan: step {done} of {total}")
                else:
                    text = _("{done} of {total} slices")
                self.ui.statusLabel.text = text.format(done=done, total=total)
        if state == runner.RUNNING:
            return
        self.timer.stop()
        self.run, self.job = None, None
        self.updateButton()
        if run.device:
            self.showDevice(run.device)
        if state == runner.CANCELLED:
            self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
        elif state == runner.FAILED:
            self.onRunFailed(run)
        else:
            with slicer.util.tryWithErrorDisplay(_("Could not store the result."), waitCursor=True):
                node = self.logic.writeResult(job, run.result)  # refuses if the input left the scene
                self.ui.statusLabel.text = _("Done: created '{name}'.").format(name=node.GetName())
                if job.task != "Segment":
                    slicer.util.setSliceViewerLayers(background=node, fit=False)

    def stop(self, message: str = "") -> None:
        """Stop a running model process and drop its result (module cleanup, scene closing)."""
        self.timer.stop()
        if self.run is None:
            return
        self.run.close()  # terminates the child (then kills it) and removes its temporary folder
        self.run, self.job = None, None
        if message:
            self.ui.statusLabel.text = message
        self.updateButton()

    def onRunFailed(self, run) -> None:
        logging.error("MVGSlicer: %s. Output of the model process:\n%s", run.error, "\n".join(run.log_lines))
        self.ui.statusLabel.text = _("Failed: {error}").format(error=run.error)
        p = self.parameterNode()
        if is_out_of_memory(RuntimeError(run.error)) and p is not None and p.device != "cpu":
            if slicer.util.confirmYesNoDisplay(
                _(
                    "The GPU ran out of memory. Close other programs using the GPU, or run on the CPU "
                    "(slower). Run again on the CPU now?"
                )
            ):
                p.device = "cpu"
                self.onRunButton()
            return
        slicer.util.errorDisplay(
            _("The run failed: {error}. The model's output is in the Python console.").format(error=run.error)
        )

    def showDevice(self, device: str) -> None:
        if device.startswith("cuda"):
            self.ui.deviceInUseLabel.text = _("Device in use: {device} (GPU)").format(device=device)
        else:
            self.ui.deviceInUseLabel.text = _(
                "Device in use: {device}. No usable GPU: runs are much slower. If this computer has an "
                "NVIDIA GPU, reinstall PyTorch with CUDA through the PyTorch Utils module."
            ).format(device=device)
