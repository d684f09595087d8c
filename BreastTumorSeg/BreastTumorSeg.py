"""BreastTumorSeg: tumor segmentation on breast DCE-MRI, the Qt layer of the Slicer module.

Thin by design: the panel (Resources/UI/BreastTumorSeg.ui) is built here and its sections
are mounted from ``BreastTumorSegWidgets`` (inputs, model and run, result, measurements and
export, reader study). They call the Qt-free ``BreastTumorSegLib``, which turns MRML nodes
into backend values and back and decides what the panel shows (``panelstate``). Inference
runs in a background process that a ``qt.QTimer`` polls, so Slicer stays responsive.

Nothing here imports torch or installs anything at import time or in ``setup()``: the
backend's packages are installed (after one confirmation) on the first Segment.
"""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import slicer
import vtk
from slicer import vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from BreastTumorSegLib import BreastTumorSegLogic, phasetable, sampledata
from BreastTumorSegLib.panelstate import PanelFacts, panelState, sectionChanges
from BreastTumorSegWidgets.inputs import InputsSection
from BreastTumorSegWidgets.measurements import MeasurementsSection
from BreastTumorSegWidgets.readerstudy import ReaderStudySection
from BreastTumorSegWidgets.result import ResultSection
from BreastTumorSegWidgets.run import RunSection
from BreastTumorSegWidgets.sampledata import registerSampleData
from BreastTumorSegWidgets.selftest import BreastTumorSegTest  # noqa: F401 - "Reload and Test" finds it here

log = logging.getLogger("breasttumorseg")


class BreastTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer; registers the sample study after startup."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Breast Tumor Segmentation"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["BreastTumorSeg contributors"]
        self.parent.helpText = """
Segments breast cancers on dynamic contrast-enhanced (DCE) MRI: choose the DCE phases (a Volume
Sequence, a MultiVolume or separate volumes), press Segment, adjust the tumor probability threshold,
refine in Segment Editor, then measure and export.
<p><b>Research software.</b> The bundled models were trained on a synthetic DCE-MRI phantom, not on
patient images; their model cards give the accuracy measured on held-out phantoms. No claim of
clinical accuracy is made; do not use for diagnosis or treatment decisions.</p>
"""
        self.parent.acknowledgementText = """
Methods follow Hirsch L. et al., "Radiologist-level performance by using deep learning for segmentation
of breast cancers on MRI scans", Radiology: Artificial Intelligence 2022, and Zhang J. et al., "A
robust and efficient AI assistant for breast tumor segmentation from DCE-MRI via a spatial-temporal
framework", Patterns 2023 (reimplemented, not their code or weights). Some synthetic tumor shapes
come from I-SPY2 segmentations distributed with BreastDCEDL (CC BY 4.0).
"""
        # register the sample study once the application (and SampleData) is ready
        slicer.app.connect("startupCompleted()", registerSampleData)


@parameterNodeWrapper
class BreastTumorSegParameterNode:
    """The panel's state; a saved scene restores it.

    dceSource - the DCE series: Volume Sequence, MultiVolume, or one of several scalar volumes.
    phaseVolumes - the scalar volumes ticked as phases (when dceSource is a scalar volume).
    excludedPhases - phases of a sequence / MultiVolume left out (indices in time order).
    phaseTimes - acquisition times in s typed in the phase table, by phase index; NaN = not typed.
    modelName - registry name of the model, the path of a user's .safetensors file or of an nnU-Net v2
        model folder; "" = default.
    channelRoles - for an nnU-Net model folder: each input channel's phase role, in dataset.json's
        channel order ("pre", "post1" ... "last", "sub1" ...; "" = not chosen).
    device - "auto", "cuda" or "cpu".
    threshold - tumor probability threshold (0..1), or fraction of the maximum when relativeThreshold.
    minComponentMl - tumor pieces smaller than this volume (mL) are dropped.
    opacity - opacity of the probability overlay in the slice views.
    probabilityVolume, segmentation - the result shown in the Result section.
    """

    dceSource: vtkMRMLNode
    phaseVolumes: list[vtkMRMLScalarVolumeNode]
    excludedPhases: list[int]
    phaseTimes: list[float]
    modelName: str = ""
    channelRoles: list[str]
    device: str = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    relativeThreshold: bool = False
    minComponentMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    probabilityVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode


class BreastTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The radiologist's panel: the sections of ``BreastTumorSegWidgets`` on one parameter node."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._expanded = {}  # the sections' expanded state as last decided by panelstate
        self.updatingGui = False
        self.quietErrors = False  # tests set this: messages go to the status line and log only

    def setup(self) -> None:
        """Build the panel from the .ui file and mount the sections; opens no dialog, installs nothing."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BreastTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BreastTumorSegLogic(warn=lambda message: self.inputs.collectWarning(message))
        self.inputs = InputsSection(self)
        self.run = RunSection(self)
        self.result = ResultSection(self)
        self.measurements = MeasurementsSection(self)
        self.readerStudy = ReaderStudySection(self)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Application closing: stop a running segmentation and all observations, close the reader study."""
        for section in (self.run, self.readerStudy, self.result, self.measurements):
            section.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.run.detectGpu()
        self.updateButtons()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def onSceneStartClose(self, caller, event) -> None:
        self.run.cancel(quiet=True)
        self.readerStudy.closeCase()  # autosaved while its nodes still exist
        self.result.observe(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------------- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(BreastTumorSegParameterNode(self.logic.getParameterNode()))
        if self._parameterNode.dceSource is None:
            first = phasetable.firstSeries(slicer.mrmlScene)
            if first is not None:
                self._parameterNode.dceSource = first

    def setParameterNode(self, parameterNode: Optional[BreastTumorSegParameterNode]) -> None:
        self._disconnectParameterNode()
        self._parameterNode = parameterNode
        if self._parameterNode:
            # widgets with the "SlicerParameterName" property (segmentation selector, sliders, check box)
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified(force=True)

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onParameterNodeModified(self, caller=None, event=None, force: bool = False) -> None:
        """Parameter node -> the sections (the widgets it does not drive itself)."""
        if self.updatingGui:
            return
        self.updatingGui = True
        try:
            self.inputs.refresh(force=force)
            self.run.refresh()
            self.result.refresh()
            self.updateButtons()
        finally:
            self.updatingGui = False

    # ------------------------------------------------------------------------- what the panel shows
    def updateButtons(self) -> None:
        """Sections, hint and buttons for where the user stands (decided by ``panelstate``)."""
        pn = self._parameterNode
        hasResult = pn is not None and pn.segmentation is not None
        hasProbability = hasResult and pn.probabilityVolume is not None
        running = self.run.isRunning()
        facts = PanelFacts(hasSource=pn is not None and pn.dceSource is not None,
                           includedPhases=self.inputs.includedCount(), hasResult=hasResult,
                           hasMeasurements=bool(self.measurements.values), running=running,
                           reading=self.readerStudy.isReading(), sampleAvailable=sampledata.sampleAvailable())
        state = panelState(facts)
        for name, expanded in sectionChanges(self._expanded, state.expanded).items():
            getattr(self.ui, f"{name}CollapsibleButton").collapsed = not expanded
        self._expanded = state.expanded
        self.ui.firstStepHintLabel.text = state.hint
        # after the sections opened: what each shows (an opened section does not re-show what is hidden here)
        self.ui.loadSampleButton.setVisible(state.showSampleButton)
        self.ui.progressBar.setVisible(running)
        self.ui.channelTable.setVisible(self.run.folderModel is not None)
        # never shown inside a collapsed section (ctkCollapsibleButton hides its children itself)
        self.ui.phaseTable.setVisible(state.showPhaseTable and not self.ui.inputsCollapsibleButton.collapsed)
        self.ui.segmentButton.enabled = state.segmentEnabled
        self.ui.segmentButton.toolTip = state.segmentReason
        for widget in (self.ui.dceSourceSelector, self.ui.phaseTable, self.ui.modelSelector, self.ui.loadModelButton,
                       self.ui.deviceSelector, self.ui.loadSampleButton):
            widget.enabled = not running
        self.ui.refineButton.enabled = hasResult
        for widget in (self.ui.thresholdSlider, self.ui.relativeThresholdCheckBox, self.ui.minComponentSpinBox,
                       self.ui.opacitySlider):
            widget.enabled = hasProbability
        self.measurements.updateButtons(hasResult, hasProbability)

    def setStatus(self, message: str) -> None:
        self.ui.statusLabel.text = message

    def showError(self, message: str, details: Optional[str] = None) -> None:
        """One sentence in the panel, and a dialog (details, e.g. the process's stderr, behind a button)."""
        self.setStatus(message)
        log.error(f"BreastTumorSeg: {message}")
        if self.quietErrors:
            return
        if details:
            slicer.util.errorDisplay(message, windowTitle="BreastTumorSeg", detailedText=details)
        else:
            slicer.util.errorDisplay(message, windowTitle="BreastTumorSeg")
