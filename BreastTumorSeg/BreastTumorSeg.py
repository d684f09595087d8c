"""BreastTumorSeg: tumor segmentation on breast DCE-MRI, the Qt layer of the Slicer module.

Thin by design: the panel (Resources/UI/BreastTumorSeg.ui) is wired to the Qt-free
:class:`BreastTumorSegLib.BreastTumorSegLogic`, which turns MRML nodes into backend values
and back. Inference runs in a background process (the backend's CLI started with Slicer's
Python) that a ``qt.QTimer`` polls, so Slicer stays responsive and Cancel stops it at once.

Nothing here imports torch or installs anything at import time or in ``setup()``: the
backend's packages are installed (after one confirmation) on the first Segment.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from time import monotonic
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from BreastTumorSegLib import TIME_ATTRIBUTE, BreastTumorSegLogic
from BreastTumorSegLib.phases import finiteNumber
from BreastTumorSegLib import install
from BreastTumorSegLib.nodes import removeWithDependents, voxelsModifiedEvent
from BreastTumorSegLib.readerstudy import ReaderStudyLogic

log = logging.getLogger("breasttumorseg")

#: Sample data: the synthetic study bundled with the module.
SAMPLE_CATEGORY = "BreastTumorSeg"
SAMPLE_NAME = "BreastDCEPhantom"
SAMPLE_FOLDER = os.path.join(os.path.dirname(__file__), "Resources", "SampleData", "SampleBreastDCE")
SAMPLE_TIMES_FILE = "times.json"
SAMPLE_TRUTH_FILE = "tumor_mask.nii.gz"
#: Checksum files looked for in the sample folder (``sha256sum`` format); else computed from the files.
SAMPLE_CHECKSUM_FILES = ("SHA256SUMS", "checksums.sha256", "SHA256SUMS.txt")

#: Rows of the measurements table after those every display shows
#: (breasttumorseg.reporting.measurement_table.measurement_rows): (key of logic.measure, label, unit).
PANEL_MEASUREMENT_ROWS = (
    ("mean_percent_enhancement", "Mean percent enhancement", "%"),
    ("mean_ser", "Mean signal enhancement ratio", ""),
    ("notes", "Notes", ""),
)

POLL_INTERVAL_MS = 200
THRESHOLD_DELAY_MS = 30
MEASURE_DELAY_MS = 600

PHASE_COLUMNS = {"name": 0, "time": 1, "role": 2, "include": 3}

#: Reader study: the reading clock's tick, and how often mouse / keyboard activity is reported.
READING_TICK_MS = 1000
ACTIVITY_INTERVAL_S = 0.5


#
# BreastTumorSeg
#


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


#
# Sample data
#


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sampleFiles(folder: str = SAMPLE_FOLDER) -> list:
    """File names of the sample study: phase_00.nii.gz ... (time order), times.json, tumor_mask.nii.gz."""
    phases = sorted(name for name in os.listdir(folder) if name.startswith("phase_") and name.endswith(".nii.gz"))
    extras = [name for name in (SAMPLE_TIMES_FILE, SAMPLE_TRUTH_FILE) if os.path.isfile(os.path.join(folder, name))]
    return phases + extras


def sampleChecksums(folder: str, names: list) -> list:
    """``SHA256:<digest>`` per file: from a checksum file in ``folder`` when present, else computed."""
    known = {}
    for checksumFile in SAMPLE_CHECKSUM_FILES:
        path = os.path.join(folder, checksumFile)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as stream:
                for line in stream:
                    parts = line.split()
                    if len(parts) == 2:
                        known[parts[1].lstrip("*")] = parts[0].lower()
            break
    return [f"SHA256:{known.get(name) or _sha256(os.path.join(folder, name))}" for name in names]


def _fileUri(path: str) -> str:
    from pathlib import Path

    return Path(path).resolve().as_uri()


def registerSampleData() -> None:
    """Add the synthetic DCE study to the Sample Data module (local files, SHA256-checked)."""
    import SampleData

    folder = SAMPLE_FOLDER
    if not os.path.isdir(folder):
        log.warning(f"BreastTumorSeg: sample study folder {folder} is missing; no sample data registered")
        return
    names = sampleFiles(folder)
    if sum(name.startswith("phase_") for name in names) < 2:
        log.warning(f"BreastTumorSeg: {folder} holds fewer than two phases; no sample data registered")
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, "Breast DCE-MRI (BreastTumorSeg)")
    iconPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "BreastTumorSeg.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        thumbnailFileName=iconPath,
        uris=[_fileUri(os.path.join(folder, name)) for name in names],
        fileNames=[f"BreastTumorSeg-{SAMPLE_NAME}-{name}" for name in names],
        nodeNames=[None] * len(names),
        loadFiles=[False] * len(names),  # loadSampleStudy builds the Volume Sequence
        checksums=sampleChecksums(folder, names),
        customDownloader=loadSampleStudy,
    )


def loadSampleStudy(source=None) -> dict:
    """Load the synthetic sample study as a Volume Sequence (time in s) plus the phantom's true tumor.

    The files go through Sample Data's cache with their SHA256 checksums checked. Returns
    ``{"sequence", "browser", "proxy", "truth"}`` (truth: a hidden segmentation, or None).
    """
    import SampleData

    sampleLogic = SampleData.SampleDataLogic()
    if source is None:
        source = sampleLogic.sourceForSampleName(SAMPLE_NAME)
        if source is None:
            registerSampleData()
            source = sampleLogic.sourceForSampleName(SAMPLE_NAME)
        if source is None:
            raise RuntimeError(f"the BreastTumorSeg sample study is missing from {SAMPLE_FOLDER}")
    plain = SampleData.SampleDataSource(sampleName=source.sampleName, uris=source.uris, fileNames=source.fileNames,
                                        nodeNames=source.nodeNames, loadFiles=source.loadFiles,
                                        checksums=source.checksums)
    paths = sampleLogic.downloadFromSource(plain)
    byName = {}
    for path, fileName, checksum in zip(paths, source.fileNames, source.checksums):
        original = fileName[len(f"BreastTumorSeg-{SAMPLE_NAME}-"):]
        if not os.path.isfile(path) or (checksum and _sha256(path) != checksum.split(":", 1)[1].lower()):
            raise RuntimeError(f"sample file {original} is missing or failed its SHA256 check")
        byName[original] = path
    phaseNames = sorted(name for name in byName if name.startswith("phase_"))
    times = None
    if SAMPLE_TIMES_FILE in byName:
        with open(byName[SAMPLE_TIMES_FILE], encoding="utf-8") as stream:
            times = [float(t) for t in json.load(stream)["times_s"]]
        if len(times) != len(phaseNames):
            raise RuntimeError(f"{SAMPLE_TIMES_FILE} has {len(times)} times for {len(phaseNames)} phases")
    return _buildSampleScene(byName, phaseNames, times)


def _buildSampleScene(byName: dict, phaseNames: list, times: Optional[list]) -> dict:
    scene = slicer.mrmlScene
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "BreastDCE phantom")
        sequence.SetIndexName("time" if times else "phase")
        sequence.SetIndexUnit("s" if times else "")
        sequence.SetIndexType(sequence.NumericIndex)
        for index, name in enumerate(phaseNames):
            volume = slicer.util.loadVolume(byName[name], {"name": f"BreastDCE phantom phase {index}", "show": False})
            value = f"{times[index]:g}" if times else str(index)
            if times:
                volume.SetAttribute(TIME_ATTRIBUTE, value)
            sequence.SetDataNodeAtValue(volume, value)
            removeWithDependents([volume])
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "BreastDCE phantom browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        browser.SetSelectedItemNumber(1)  # the first post-contrast phase
        proxy = browser.GetProxyNode(sequence)
        truth = None
        if SAMPLE_TRUTH_FILE in byName:
            label = slicer.util.loadLabelVolume(byName[SAMPLE_TRUTH_FILE], {"name": "phantom truth", "show": False})
            truth = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "BreastDCE phantom true tumor")
            truth.CreateDefaultDisplayNodes()
            truth.SetReferenceImageGeometryParameterFromVolumeNode(proxy)
            slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(label, truth)
            truth.SetAttribute("BreastTumorSeg.Role", "Truth")
            truth.GetDisplayNode().SetVisibility(False)
            removeWithDependents([label])
        _placeUnderStudy([proxy, sequence, browser] + ([truth] if truth else []))
        slicer.util.setSliceViewerLayers(background=proxy, foreground=None, fit=True)
    except BaseException:
        for nodeId in {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())} - before:
            node = scene.GetNodeByID(nodeId)
            if node is not None:
                scene.RemoveNode(node)
        raise
    return {"sequence": sequence, "browser": browser, "proxy": proxy, "truth": truth}


def _placeUnderStudy(nodes) -> None:
    """A patient / study in subject hierarchy holding the sample's nodes (as a DICOM import would)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Breast phantom (synthetic)")
    study = shNode.CreateStudyItem(patient, "Synthetic DCE-MRI")
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:  # nodes the Data module shows (the browser has no item of its own)
            shNode.SetItemParent(item, study)


#
# BreastTumorSegParameterNode
#


@parameterNodeWrapper
class BreastTumorSegParameterNode:
    """The panel's state; a saved scene restores it.

    dceSource - the DCE series: Volume Sequence, MultiVolume, or one of several scalar volumes.
    phaseVolumes - the scalar volumes ticked as phases (when dceSource is a scalar volume).
    excludedPhases - phases of a sequence / MultiVolume left out (indices in time order).
    phaseTimes - acquisition times in s typed in the phase table, by phase index; NaN = not typed.
    modelName - registry name of the model, or the path of a user's .safetensors file; "" = default.
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
    device: str = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    relativeThreshold: bool = False
    minComponentMl: Annotated[float, WithinRange(0.0, 1000.0)] = 0.0
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    probabilityVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode


#
# BreastTumorSegWidget
#


class BreastTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The radiologist's panel: inputs, model, run, result, refine, measurements, export, reader study."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._rows = []  # phase table rows: dicts with key, node, name, time, included, volumeMode
        self._warnings = []
        self._measurements = {}
        self._observedSegmentation = None
        self._userModels = {}  # combobox label -> path of a user's .safetensors
        self._gpuDetected = False
        self._updatingGui = False
        self._lastSource = None
        self._runner = None
        self.readerStudy = None  # the Reader study section (ReaderStudyPanel), made in setup()
        self.quietErrors = False  # tests set this: messages go to the status line and log only

    # ------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Build the panel from the .ui file; opens no dialog and installs nothing."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BreastTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BreastTumorSegLogic(warn=self._collectWarning)

        sourceTypes = ["vtkMRMLSequenceNode", "vtkMRMLScalarVolumeNode"]
        if hasattr(slicer, "vtkMRMLMultiVolumeNode"):
            sourceTypes.append("vtkMRMLMultiVolumeNode")
        self.ui.dceSourceSelector.nodeTypes = sourceTypes

        table = self.ui.phaseTable
        table.setHorizontalHeaderLabels(["Phase", "Time (s)", "Role", "Include"])
        table.horizontalHeader().setSectionResizeMode(PHASE_COLUMNS["name"], qt.QHeaderView.Stretch)
        for column in ("time", "role", "include"):
            table.horizontalHeader().setSectionResizeMode(PHASE_COLUMNS[column], qt.QHeaderView.ResizeToContents)
        table.verticalHeader().setVisible(False)
        table.setSelectionMode(qt.QAbstractItemView.NoSelection)
        measurements = self.ui.measurementsTable
        measurements.setHorizontalHeaderLabels(["Measurement", "Value", "Unit"])
        measurements.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.Stretch)
        measurements.verticalHeader().setVisible(False)
        measurements.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)

        self.ui.deviceSelector.addItem("Auto", "auto")
        self.ui.deviceSelector.addItem("GPU (CUDA)", "cuda")
        self.ui.deviceSelector.addItem("CPU", "cpu")
        self._populateModels()
        self.ui.progressBar.setVisible(False)
        self._updateDicomSegButton()

        # timers: the background run's poll, the live threshold, the measurements after edits
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._pollRun)
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(THRESHOLD_DELAY_MS)
        self._thresholdTimer.connect("timeout()", self._applyThreshold)
        self._measureTimer = qt.QTimer()
        self._measureTimer.setSingleShot(True)
        self._measureTimer.setInterval(MEASURE_DELAY_MS)
        self._measureTimer.connect("timeout()", self._updateMeasurements)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.dceSourceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSourceChanged)
        self.ui.phaseTable.connect("itemChanged(QTableWidgetItem*)", self.onPhaseItemChanged)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.loadModelButton.connect("clicked()", self.onLoadModel)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.segmentButton.connect("clicked()", self.onSegmentOrCancel)
        self.ui.refineButton.connect("clicked()", self.onRefine)
        self.ui.copyMeasurementsButton.connect("clicked()", self.onCopyMeasurements)
        self.ui.exportMeasurementsButton.connect("clicked()", self.onExportMeasurements)
        self.ui.exportSegNrrdButton.connect("clicked()", lambda: self.onExport("segmentation"))
        self.ui.exportNiftiButton.connect("clicked()", lambda: self.onExport("labelmap"))
        self.ui.exportSurfaceButton.connect("clicked()", lambda: self.onExport("surface"))
        self.ui.exportProbabilityButton.connect("clicked()", lambda: self.onExport("probability"))
        self.ui.exportDicomSegButton.connect("clicked()", self.onExportDicomSeg)
        self.readerStudy = ReaderStudyPanel(self)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Application closing: stop a running segmentation and all observations, close the reader study."""
        self._cancelRun(quiet=True)
        if self.readerStudy is not None:
            self.readerStudy.cleanup()
        for timer in (self._pollTimer, self._thresholdTimer, self._measureTimer):
            timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if not self._gpuDetected:  # once, when the panel is first shown (nvidia-smi, never a torch import)
            self._gpuDetected = True
            name = install.gpuName()
            index = self.ui.deviceSelector.findData("cuda")
            self.ui.deviceSelector.setItemText(index, f"GPU ({name})" if name else "GPU (none detected)")
        self._updateDicomSegButton()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRun(quiet=True)
        if self.readerStudy is not None:
            self.readerStudy.closeCase()  # autosaved while its nodes still exist
        self._observeSegmentation(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------------- parameter node
    def initializeParameterNode(self) -> None:
        self.setParameterNode(BreastTumorSegParameterNode(self.logic.getParameterNode()))
        if self._parameterNode.dceSource is None:
            first = (slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLSequenceNode")
                     or (slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLMultiVolumeNode")
                         if hasattr(slicer, "vtkMRMLMultiVolumeNode") else None))
            if first is not None:
                self._parameterNode.dceSource = first

    def setParameterNode(self, parameterNode: Optional[BreastTumorSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # widgets with the "SlicerParameterName" property (segmentation selector, sliders, check box)
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._lastSource = object()  # force a table refresh
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Parameter node -> the widgets it does not drive itself; starts the live threshold update."""
        if self._updatingGui:
            return
        self._updatingGui = True
        try:
            pn = self._parameterNode
            source = pn.dceSource if pn else None
            if self.ui.dceSourceSelector.currentNode() is not source:
                wasBlocked = self.ui.dceSourceSelector.blockSignals(True)
                self.ui.dceSourceSelector.setCurrentNode(source)
                self.ui.dceSourceSelector.blockSignals(wasBlocked)
            if source is not self._lastSource:
                self._lastSource = source
                self._refreshPhaseTable()
            if pn:
                self._selectModelItem(pn.modelName)
                index = self.ui.deviceSelector.findData(pn.device)
                if index >= 0 and index != self.ui.deviceSelector.currentIndex:
                    wasBlocked = self.ui.deviceSelector.blockSignals(True)
                    self.ui.deviceSelector.currentIndex = index
                    self.ui.deviceSelector.blockSignals(wasBlocked)
            segmentation = pn.segmentation if pn else None
            if segmentation is not self._observedSegmentation:
                self._observeSegmentation(segmentation)
                self._adoptSegmentationSettings(segmentation)
                self._updateMeasurements()
            elif segmentation is not None and self._settingsChanged(segmentation):
                self._thresholdTimer.start()
            self._applyOpacity()
            self._updateButtons()
        finally:
            self._updatingGui = False

    # ------------------------------------------------------------------------- inputs
    def onSourceChanged(self, node) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        with slicer.util.NodeModify(self._parameterNode.parameterNode):
            self._parameterNode.phaseVolumes = []
            self._parameterNode.excludedPhases = []
            self._parameterNode.phaseTimes = []
            self._parameterNode.dceSource = node

    def _collectWarning(self, message: str) -> None:
        self._warnings.append(message)
        log.warning(message)

    def _isVolumeSet(self, source) -> bool:
        """True when the source is one of several separate scalar volumes (not a sequence's proxy)."""
        from BreastTumorSegLib.phases import sequenceOfProxy

        return (source.IsA("vtkMRMLScalarVolumeNode") and not source.IsA("vtkMRMLLabelMapVolumeNode")
                and source.GetClassName() != "vtkMRMLMultiVolumeNode"
                and not source.GetAttribute("MultiVolume.FrameLabels") and sequenceOfProxy(source) is None)

    def _candidateVolumes(self, source) -> list:
        """Scalar volumes that can be phases beside ``source``: not labelmaps, results or sequence proxies."""
        from BreastTumorSegLib.phases import sequenceOfProxy

        volumes = []
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if (node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute("BreastTumorSeg.Role")
                    or node.GetImageData() is None or sequenceOfProxy(node) is not None
                    or node.GetClassName() == "vtkMRMLMultiVolumeNode"):
                continue
            volumes.append(node)
        if source not in volumes:
            volumes.insert(0, source)
        return volumes

    def _refreshPhaseTable(self) -> None:
        """Rebuild the phase rows from the source and the parameter node, then show them."""
        pn = self._parameterNode
        source = pn.dceSource if pn else None
        self._warnings = []
        self._rows = []
        try:
            if source is None:
                pass
            elif self._isVolumeSet(source):
                chosen = [node for node in pn.phaseVolumes if node is not None]
                dimensions = _dimensions(source)
                for key, node in enumerate(self._candidateVolumes(source)):
                    included = (node in chosen) if chosen else (
                        node is source or (dimensions is not None and _dimensions(node) == dimensions))
                    self._rows.append({"key": key, "node": node, "name": node.GetName(), "volumeMode": True,
                                       "time": finiteNumber(node.GetAttribute(TIME_ATTRIBUTE)), "included": included})
            else:
                excluded = set(pn.excludedPhases)
                overrides = list(pn.phaseTimes)
                for key, (node, time) in enumerate(self.logic.phasesFromNode(source)):
                    if key < len(overrides) and not math.isnan(overrides[key]):
                        time = overrides[key]
                    self._rows.append({"key": key, "node": node, "name": node.GetName() or f"phase {key}",
                                       "volumeMode": False, "time": time, "included": key not in excluded})
        except Exception as error:  # noqa: BLE001 - any unusable source: say why in one line
            self._rows = []
            self._warnings.append(_oneLine(error))
        self._sortRows()
        self._showPhaseTable()

    def _sortRows(self) -> None:
        """Time order when every phase has a time; phases without one keep their order, after the timed ones."""
        timed = sorted((row for row in self._rows if row["time"] is not None), key=lambda row: row["time"])
        self._rows = timed + [row for row in self._rows if row["time"] is None]

    def _showPhaseTable(self) -> None:
        table = self.ui.phaseTable
        wasBlocked = table.blockSignals(True)
        try:
            table.setRowCount(len(self._rows))
            included = [row for row in self._rows if row["included"]]
            for index, row in enumerate(self._rows):
                name = qt.QTableWidgetItem(row["name"])
                name.setFlags(qt.Qt.ItemIsEnabled)
                time = qt.QTableWidgetItem("" if row["time"] is None else f"{row['time']:g}")
                time.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsEditable)
                time.setToolTip("Acquisition time after the first phase, in seconds (double-click to edit).")
                if row["included"]:
                    role = "pre-contrast" if row is included[0] else f"post-contrast {included.index(row)}"
                else:
                    role = "-"
                roleItem = qt.QTableWidgetItem(role)
                roleItem.setFlags(qt.Qt.ItemIsEnabled)
                include = qt.QTableWidgetItem()
                include.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
                include.setCheckState(qt.Qt.Checked if row["included"] else qt.Qt.Unchecked)
                for column, item in zip(("name", "time", "role", "include"), (name, time, roleItem, include)):
                    item.setData(qt.Qt.UserRole, row["key"])
                    table.setItem(index, PHASE_COLUMNS[column], item)
        finally:
            table.blockSignals(wasBlocked)
        self._updatePhaseWarnings()
        self._updateButtons()

    def _updatePhaseWarnings(self) -> None:
        messages = list(self._warnings)
        included = [row for row in self._rows if row["included"]]
        pn = self._parameterNode
        if pn is not None and pn.dceSource is not None and self._rows:
            if len(included) < 2:
                messages.append("Include at least two phases: a pre-contrast and a post-contrast.")
            elif any(row["time"] is None for row in included):
                messages.append("Acquisition times are missing: phases are used in table order; type the times "
                                "(s) for the kinetic curve and the functional tumor volume.")
            else:
                times = [row["time"] for row in included]
                if len(set(times)) != len(times):
                    messages.append("Two included phases have the same acquisition time.")
            if len(included) >= 2:
                differing = _differentGrids([row["node"] for row in included])
                if differing:
                    messages.append(f"{', '.join(differing)} differ in geometry from the first post-contrast "
                                    f"phase and will be resampled onto its grid.")
        self.ui.phaseWarningLabel.text = "\n".join(messages)
        self.ui.phaseWarningLabel.setVisible(bool(messages))

    def onPhaseItemChanged(self, item) -> None:
        """A time typed or an include box ticked: store it, re-sort, re-label the roles."""
        pn = self._parameterNode
        if pn is None:
            return
        key = item.data(qt.Qt.UserRole)
        row = next((r for r in self._rows if r["key"] == key), None)
        if row is None:
            return
        if item.column() == PHASE_COLUMNS["include"]:
            row["included"] = item.checkState() == qt.Qt.Checked
        elif item.column() == PHASE_COLUMNS["time"]:
            text = item.text().strip()
            value = finiteNumber(text)
            if text and value is None:
                self._setStatus(f"'{text}' is not a time in seconds.")
            else:
                row["time"] = value
        self._storeRows()
        self._updatePhaseWarnings()
        self._updateButtons()
        # re-sort and re-label after Qt has finished with the edited item (never delete it inside its signal)
        qt.QTimer.singleShot(0, self._resortPhaseTable)

    def _resortPhaseTable(self) -> None:
        self._sortRows()
        self._showPhaseTable()

    def _storeRows(self) -> None:
        """The table's choices -> parameter node (and the volumes' time attributes)."""
        pn = self._parameterNode
        self._updatingGui = True  # the rows are already up to date: no table rebuild
        try:
            with slicer.util.NodeModify(pn.parameterNode):
                if self._rows and self._rows[0]["volumeMode"]:
                    for row in self._rows:
                        text = "" if row["time"] is None else f"{row['time']:g}"
                        if (row["node"].GetAttribute(TIME_ATTRIBUTE) or "") != text:
                            row["node"].SetAttribute(TIME_ATTRIBUTE, text)
                    pn.phaseVolumes = [row["node"] for row in self._rows if row["included"]]
                else:
                    count = len(self._rows)
                    times = [float("nan")] * count
                    for row in self._rows:
                        times[row["key"]] = float("nan") if row["time"] is None else float(row["time"])
                    pn.phaseTimes = times
                    pn.excludedPhases = sorted(row["key"] for row in self._rows if not row["included"])
        finally:
            self._updatingGui = False

    def selectedPhases(self) -> list:
        """``[(scalar volume node, time s or None), ...]`` of the included rows, in table order."""
        included = [row for row in self._rows if row["included"]]
        if any(row["time"] is None for row in included):
            return [(row["node"], None) for row in included]
        return [(row["node"], float(row["time"])) for row in included]

    # ------------------------------------------------------------------------- model and device
    def _populateModels(self) -> None:
        selector = self.ui.modelSelector
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        self._cards = {}
        try:
            cards = BreastTumorSegLogic.listModels()
        except Exception as error:  # noqa: BLE001 - e.g. the backend's packages are not installed yet
            cards = []
            log.info(f"BreastTumorSeg: model registry not readable yet ({_oneLine(error)})")
        try:  # the default model first: it is what an empty modelName runs
            from breasttumorseg.segmentation.models import default_model_name

            default = default_model_name()
            cards = sorted(cards, key=lambda card: card.name != default)
        except Exception:  # noqa: BLE001
            pass
        for card in cards:
            label = f"{card.name} {card.version}"
            if _trainedOnSynthetic(card):
                label += " - trained on synthetic data"
            selector.addItem(label, card.name)
            self._cards[card.name] = card
        if not cards:
            selector.addItem("Default model", "")
        for label, path in self._userModels.items():
            selector.addItem(label, path)
        selector.blockSignals(wasBlocked)
        self._showModelInfo()

    def _selectModelItem(self, modelName: str) -> None:
        selector = self.ui.modelSelector
        index = selector.findData(modelName)
        if index < 0 and modelName and os.path.isfile(modelName):  # a user's model saved in the scene
            self._userModels[f"{os.path.basename(modelName)} (your model)"] = modelName
            self._populateModels()
            index = selector.findData(modelName)
        if index < 0:
            index = 0
        if index != selector.currentIndex:
            wasBlocked = selector.blockSignals(True)
            selector.currentIndex = index
            selector.blockSignals(wasBlocked)
        self._showModelInfo()

    def _showModelInfo(self) -> None:
        card = self._cards.get(self.ui.modelSelector.currentData) if hasattr(self, "_cards") else None
        if card is None:
            data = self.ui.modelSelector.currentData
            text = (f"Your model: {data}" if data else
                    "The default model; the model list appears once the backend's packages are installed.")
        else:
            from breasttumorseg.segmentation.model_cards import headline

            text = (f"Accuracy: {headline(card)}. Needs at least {card.min_phases} phases. "
                    f"Trained on: {card.trained_on}.")
            if _trainedOnSynthetic(card):
                text += " Trained on synthetic data only: no clinical accuracy is claimed."
        self.ui.modelInfoLabel.text = text

    def onModelChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.modelName = self.ui.modelSelector.itemData(index) or ""
        self._showModelInfo()

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Load model weights", "",
                                              "Model weights (*.safetensors)")
        if not path:
            return
        # the backend checks the file against its card (checksum, architecture) when the run starts
        label = f"{os.path.basename(path)} (your model)"
        self._userModels[label] = path
        self._populateModels()
        if self._parameterNode is not None:
            self._parameterNode.modelName = path
        self._selectModelItem(path)

    def onDeviceChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.device = self.ui.deviceSelector.itemData(index) or "auto"

    # ------------------------------------------------------------------------- run
    def onSegmentOrCancel(self) -> None:
        if self._runner is not None:
            self._cancelRun()
            return
        self.startSegmentation()

    def startSegmentation(self) -> bool:
        """Check the input, make sure the packages are there, start the background run."""
        pn = self._parameterNode
        if pn is None or pn.dceSource is None:
            self._showError("Choose a DCE series (Volume Sequence, MultiVolume or volumes) in Inputs first.")
            return False
        phases = self.selectedPhases()
        if len(phases) < 2:
            self._showError("A DCE study needs a pre-contrast and at least one post-contrast phase: "
                            f"{len(phases)} phase{'' if len(phases) == 1 else 's'} included.")
            return False
        try:
            if not install.ensureDependencies(askConfirmation=True):
                self._setStatus("Segmentation not started: the Python packages it needs were not installed.")
                return False
        except Exception as error:  # noqa: BLE001 - installation problems: one line, details in the log
            log.exception("BreastTumorSeg: installing Python packages failed")
            self._showError(_oneLine(error))
            return False
        self._populateModels()  # the registry is readable now
        self._selectModelItem(pn.modelName)
        try:
            self._runner = self.logic.startSegmentation(phases, model=pn.modelName or None, device=pn.device,
                                                        minComponentMl=pn.minComponentMl)
        except Exception as error:  # noqa: BLE001 - bad input raises the backend's one-line error
            log.exception("BreastTumorSeg: the segmentation could not start")
            self._showError(_oneLine(error))
            return False
        if not self._rows[0]["volumeMode"]:
            # the result goes beside the series the user sees (proxy volume, MultiVolume) in subject
            # hierarchy, and takes that volume as reference geometry when the phases are not in the scene
            self._runner.source = _displayedVolumeOf(pn.dceSource)
            self._runner.sourceName = pn.dceSource.GetName()
        self._runPhases = phases
        self.ui.segmentButton.text = "Cancel"
        self.ui.segmentButton.toolTip = "Stop the segmentation now; nothing is added to the scene."
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = "Starting... %p%"
        self._setStatus("Segmenting in the background; Slicer stays usable.")
        self._pollTimer.start()
        self._updateButtons()
        return True

    def _pollRun(self) -> None:
        runner = self._runner
        if runner is None:
            self._pollTimer.stop()
            return
        from BreastTumorSegLib.background import CANCELLED, FAILED, RUNNING, SUCCEEDED

        try:
            state = runner.poll()
        except Exception as error:  # noqa: BLE001
            state, runner.error = FAILED, _oneLine(error)
        self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, runner.progress))))
        step = (runner.step or "Working").replace("%", "%%")
        self.ui.progressBar.format = f"{step}: %p%"
        if state == RUNNING:
            return
        self._pollTimer.stop()
        self._runner = None
        if state == SUCCEEDED:
            try:
                probability, segmentation = self.logic.finishSegmentation(runner)
            except Exception as error:  # noqa: BLE001 - finishSegmentation removed what it made
                log.exception("BreastTumorSeg: loading the result failed")
                self._endRun()
                self._showError(_oneLine(error))
                return
            self._endRun()
            self._showResult(probability, segmentation)
            self._setStatus(f"Done: {segmentation.GetName()}. Move the threshold to adjust it, or refine it "
                            f"in Segment Editor.")
        elif state == CANCELLED:
            self._endRun()
            self._setStatus("Segmentation cancelled; nothing was added to the scene.")
        else:
            details = runner.details
            runner.cleanup()
            self._endRun()
            log.error(f"BreastTumorSeg: the segmentation process failed:\n{details}")
            self._showError(f"The segmentation failed: {runner.error or 'the process stopped'}", details=details)

    def _cancelRun(self, quiet: bool = False) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._pollTimer.stop()
        try:
            runner.cancel()
        finally:
            self._endRun()
        if not quiet:
            self._setStatus("Segmentation cancelled; nothing was added to the scene.")

    def _endRun(self) -> None:
        self.ui.segmentButton.text = "Segment"
        self.ui.segmentButton.toolTip = ("Segment the tumor in a background process; the button becomes Cancel "
                                         "while it runs.")
        self.ui.progressBar.setVisible(False)
        self._updateButtons()

    def isRunning(self) -> bool:
        return self._runner is not None

    def _showResult(self, probability, segmentation) -> None:
        """Select the new result and show it: probability over the first post-contrast phase."""
        pn = self._parameterNode
        with slicer.util.NodeModify(pn.parameterNode):
            pn.probabilityVolume = probability
            pn.segmentation = segmentation
        background = self._referenceVolume(segmentation)
        _browseTo(background, getattr(self, "_runPhases", [None, (None, None)])[1][0])
        slicer.util.setSliceViewerLayers(background=background or "keep-current", foreground=probability,
                                         foregroundOpacity=pn.opacity)

    # ------------------------------------------------------------------------- result
    def _observeSegmentation(self, segmentation) -> None:
        if self._observedSegmentation is not None:
            self.removeObserver(self._observedSegmentation, vtk.vtkCommand.ModifiedEvent, self._onSegmentationEdited)
            segmentationData = getattr(self, "_observedSegmentationData", None)
            if segmentationData is not None:
                self.removeObserver(segmentationData, voxelsModifiedEvent(), self._onSegmentationEdited)
        self._observedSegmentation = segmentation
        self._observedSegmentationData = None
        if segmentation is not None:
            self._observedSegmentationData = segmentation.GetSegmentation()
            self.addObserver(self._observedSegmentationData, voxelsModifiedEvent(), self._onSegmentationEdited)

    def _onSegmentationEdited(self, caller=None, event=None) -> None:
        self._measureTimer.start()  # after edits settle (Segment Editor strokes, slider moves)

    def _adoptSegmentationSettings(self, segmentation) -> None:
        """A newly selected result: its probability map and threshold settings into the parameter node."""
        pn = self._parameterNode
        if pn is None or segmentation is None:
            return
        probability = self.logic.probabilityNodeFor(segmentation)
        with slicer.util.NodeModify(pn.parameterNode):
            pn.probabilityVolume = probability
            threshold = finiteNumber(segmentation.GetAttribute("BreastTumorSeg.Threshold"))
            if threshold is not None:
                pn.threshold = min(1.0, max(0.0, threshold))
            relative = segmentation.GetAttribute("BreastTumorSeg.RelativeThreshold")
            if relative is not None:
                pn.relativeThreshold = relative == "1"
            minimum = finiteNumber(segmentation.GetAttribute("BreastTumorSeg.MinComponentMl"))
            if minimum is not None:
                pn.minComponentMl = max(0.0, minimum)

    def _settingsChanged(self, segmentation) -> bool:
        pn = self._parameterNode
        stored = (finiteNumber(segmentation.GetAttribute("BreastTumorSeg.Threshold")),
                  segmentation.GetAttribute("BreastTumorSeg.RelativeThreshold") == "1",
                  finiteNumber(segmentation.GetAttribute("BreastTumorSeg.MinComponentMl")) or 0.0)
        if stored[0] is None:
            return False  # not one of ours (no probability map behind it)
        return (abs(stored[0] - pn.threshold) > 1e-9 or stored[1] != bool(pn.relativeThreshold)
                or abs(stored[2] - pn.minComponentMl) > 1e-9)

    def _applyThreshold(self) -> None:
        """The threshold / relative / smallest-piece controls moved: re-threshold the probability map."""
        pn = self._parameterNode
        if pn is None or pn.segmentation is None:
            return
        probability = pn.probabilityVolume or self.logic.probabilityNodeFor(pn.segmentation)
        if probability is None:
            self._setStatus("This segmentation has no probability map: the threshold cannot change it.")
            return
        try:
            self.logic.updateSegmentation(probability, pn.segmentation, pn.threshold, relative=pn.relativeThreshold,
                                          minComponentMl=pn.minComponentMl)
        except Exception as error:  # noqa: BLE001
            log.exception("BreastTumorSeg: threshold update failed")
            self._setStatus(_oneLine(error))

    def _applyOpacity(self) -> None:
        pn = self._parameterNode
        probability = pn.probabilityVolume if pn else None
        if probability is None:
            return
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            if composite.GetForegroundVolumeID() == probability.GetID():
                composite.SetForegroundOpacity(pn.opacity)

    def _referenceVolume(self, segmentation):
        """The volume the segmentation was made on (its reference geometry): the first post-contrast."""
        if segmentation is None:
            return None
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        node = segmentation.GetNodeReference(role)
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.GetAttribute("BreastTumorSeg.Role"):
            return node
        return None

    # ------------------------------------------------------------------------- refine
    def onRefine(self) -> None:
        pn = self._parameterNode
        segmentation = pn.segmentation if pn else None
        if segmentation is None:
            self._showError("Segment first (or choose a segmentation in Result), then refine it.")
            return
        openSegmentEditor(segmentation, self._referenceVolume(segmentation) or pn.probabilityVolume)

    # ------------------------------------------------------------------------- measurements
    def _updateMeasurements(self) -> None:
        pn = self._parameterNode
        self._measurements = {}
        segmentation = pn.segmentation if pn else None
        message = ""
        if segmentation is not None:
            phases = self.selectedPhases()
            if len(phases) < 2:
                message = "Choose the DCE phases in Inputs to measure this segmentation."
            else:
                try:
                    self._measurements = self.logic.measure(segmentation, phases)
                except Exception as error:  # noqa: BLE001
                    log.exception("BreastTumorSeg: measuring failed")
                    message = _oneLine(error)
        self._showMeasurements(message)

    def _showMeasurements(self, message: str = "") -> None:
        from breasttumorseg.reporting.measurement_table import measurement_rows

        table = self.ui.measurementsTable
        rows = measurement_rows(self._measurements) if self._measurements else []
        rows += [(label, _formatValue(self._measurements.get(key)), unit)
                 for key, label, unit in PANEL_MEASUREMENT_ROWS if key in self._measurements]
        if message:
            rows.append(("Note", message, ""))
        table.setRowCount(len(rows))
        for index, values in enumerate(rows):
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setToolTip(value)
                table.setItem(index, column, item)
        self._updateButtons()

    def measurementsText(self, delimiter: str = "\t") -> str:
        """The measurements as delimited text: name, value, unit (every scalar the logic
        returned, lists as JSON; each lesion's figures as lesion1_..., lesion2_..., as in measurements.csv)."""
        from breasttumorseg.reporting.measurement_table import flat_measurements

        stream = io.StringIO()
        writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
        writer.writerow(["measurement", "value", "unit"])
        units = {key: unit for key, _, unit in PANEL_MEASUREMENT_ROWS}
        for key, value in flat_measurements(self._measurements, lists_as_json=True).items():
            writer.writerow([key, _formatValue(value, plain=True), units.get(key, _unitFromKey(key))])
        return stream.getvalue()

    def onCopyMeasurements(self) -> None:
        qt.QApplication.clipboard().setText(self.measurementsText("\t"))
        self._setStatus("Measurements copied to the clipboard.")

    def onExportMeasurements(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export measurements",
                                              self._defaultFileName("measurements.csv"), "CSV (*.csv)")
        if not path:
            return
        if not path.lower().endswith(".csv"):
            path += ".csv"
        try:
            from breasttumorseg.core import atomic

            with atomic.atomic_path(path) as temporary:
                with open(temporary, "w", encoding="utf-8", newline="") as stream:
                    stream.write(self.measurementsText(","))
        except Exception as error:  # noqa: BLE001
            self._showError(_oneLine(error))
            return
        self._setStatus(f"Saved {path}")

    # ------------------------------------------------------------------------- export
    EXPORT_KINDS = {
        "segmentation": ("Save segmentation", "Segmentation (*.seg.nrrd)", ".seg.nrrd", (".seg.nrrd",)),
        "labelmap": ("Save labelmap", "NIfTI labelmap (*.nii.gz *.nii)", ".nii.gz", (".nii.gz", ".nii")),
        "surface": ("Save surface mesh", "Surface mesh (*.stl *.obj)", ".stl", (".stl", ".obj")),
        "probability": ("Save probability map", "Volume (*.nrrd *.nii.gz *.nii)", ".nrrd",
                        (".nrrd", ".nii.gz", ".nii")),
    }

    def onExport(self, kind: str) -> None:
        pn = self._parameterNode
        segmentation = pn.segmentation if pn else None
        if segmentation is None:
            self._showError("Nothing to export yet: segment first or choose a segmentation in Result.")
            return
        title, fileFilter, suffix, accepted = self.EXPORT_KINDS[kind]
        base = segmentation.GetName() if kind != "probability" else (pn.probabilityVolume.GetName()
                                                                      if pn.probabilityVolume else "probability")
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, self._defaultFileName(base + suffix),
                                              fileFilter)
        if not path:
            return
        if not path.lower().endswith(accepted):
            path += suffix
        try:
            self.exportResult(kind, path)
        except Exception as error:  # noqa: BLE001 - one line; nothing partial is left (atomic writes)
            log.exception("BreastTumorSeg: export failed")
            self._showError(_oneLine(error))
            return
        self._setStatus(f"Saved {path}")

    def exportResult(self, kind: str, path: str) -> str:
        """Write the current result (no dialog): segmentation, labelmap, surface or probability."""
        pn = self._parameterNode
        if kind == "probability":
            probability = pn.probabilityVolume or self.logic.probabilityNodeFor(pn.segmentation)
            if probability is None:
                raise ValueError("this segmentation has no probability map to export")
            return self.logic.exportProbability(probability, path)
        return self.logic.export(pn.segmentation, path)

    def dicomSegAvailability(self) -> tuple:
        """``(available, reason)`` of DICOM SEG export for the current segmentation."""
        plugins = getattr(slicer.modules, "dicomPlugins", {}) or {}
        if "DICOMSegmentationPlugin" not in plugins or not hasattr(slicer, "qSlicerDICOMExportDialog"):
            return False, ("DICOM SEG export needs Slicer 5.12 or newer, or the QuantitativeReporting extension "
                           "on older versions.")
        pn = self._parameterNode
        segmentation = pn.segmentation if pn else None
        if segmentation is None:
            return False, "Segment first: there is no segmentation to export."
        reference = self._referenceVolume(segmentation)
        if reference is None or not reference.GetAttribute("DICOM.instanceUIDs"):
            return False, ("DICOM SEG export needs a source series loaded from DICOM; this segmentation's "
                           "reference volume was not (use .seg.nrrd or NIfTI instead).")
        return True, "Export the segmentation as DICOM SEG (opens the DICOM export dialog)."

    def _updateDicomSegButton(self) -> None:
        available, reason = self.dicomSegAvailability()
        self.ui.exportDicomSegButton.enabled = available
        self.ui.exportDicomSegButton.toolTip = reason

    def onExportDicomSeg(self) -> None:
        available, reason = self.dicomSegAvailability()
        if not available:
            self._showError(reason)
            return
        segmentation = self._parameterNode.segmentation
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        dialog = slicer.qSlicerDICOMExportDialog()
        dialog.setMRMLScene(slicer.mrmlScene)
        dialog.execDialog(shNode.GetItemByDataNode(segmentation))

    # ------------------------------------------------------------------------- helpers
    def _updateButtons(self) -> None:
        pn = self._parameterNode
        running = self._runner is not None
        hasSource = pn is not None and pn.dceSource is not None
        hasResult = pn is not None and pn.segmentation is not None
        enoughPhases = len([row for row in self._rows if row["included"]]) >= 2
        reading = self.readerStudy is not None and self.readerStudy.isReading()
        self.ui.segmentButton.enabled = not reading and (running or (hasSource and enoughPhases))
        for widget in (self.ui.dceSourceSelector, self.ui.phaseTable, self.ui.modelSelector, self.ui.loadModelButton,
                       self.ui.deviceSelector):
            widget.enabled = not running
        for widget in (self.ui.refineButton, self.ui.exportSegNrrdButton, self.ui.exportNiftiButton,
                       self.ui.exportSurfaceButton):
            widget.enabled = hasResult
        hasProbability = hasResult and pn.probabilityVolume is not None
        for widget in (self.ui.thresholdSlider, self.ui.relativeThresholdCheckBox, self.ui.minComponentSpinBox,
                       self.ui.opacitySlider, self.ui.exportProbabilityButton):
            widget.enabled = hasProbability
        hasMeasurements = bool(self._measurements)
        self.ui.copyMeasurementsButton.enabled = hasMeasurements
        self.ui.exportMeasurementsButton.enabled = hasMeasurements
        self._updateDicomSegButton()

    def _setStatus(self, message: str) -> None:
        self.ui.statusLabel.text = message

    def _showError(self, message: str, details: Optional[str] = None) -> None:
        """One sentence in the panel, and a dialog (details, e.g. the process's stderr, behind a button)."""
        self._setStatus(message)
        log.error(f"BreastTumorSeg: {message}")
        if self.quietErrors:
            return
        if details:
            slicer.util.errorDisplay(message, windowTitle="BreastTumorSeg", detailedText=details)
        else:
            slicer.util.errorDisplay(message, windowTitle="BreastTumorSeg")

    def _defaultFileName(self, name: str) -> str:
        safe = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in name).strip() or "BreastTumorSeg"
        return os.path.join(os.path.expanduser("~"), safe)


#
# Reader study
#


class ReaderStudyPanel:
    """The Reader study section: the reader's worklist, one case at a time in Segment Editor.

    Thin: :class:`BreastTumorSegLib.readerstudy.ReaderStudyLogic` loads the cases, keeps the
    reading clock, the journal and the autosave. This class wires the buttons to it, ticks it
    once a second, reports the reader's mouse and keyboard activity, and blinds the panel's
    AI sections while a case is open.
    """

    def __init__(self, widget: BreastTumorSegWidget) -> None:
        self.widget = widget
        self.ui = widget.ui
        self.logic = ReaderStudyLogic(scene=slicer.mrmlScene, warn=self._warn)
        self._studyOpen = False
        self._studyFile = None  # the study file whose readers are listed
        self._editor = None  # Segment Editor's editor widget while a case is open
        self._activityFilter = None
        self._sectionsCollapsed = {}  # AI section -> its collapsed state before blinding
        self._message = ""  # the last outcome, shown under the reading status

        table = self.ui.worklistTable
        table.setHorizontalHeaderLabels(["#", "Case", "Arm", "Status", "Active min"])
        table.horizontalHeader().setSectionResizeMode(1, qt.QHeaderView.Stretch)
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.setSelectionMode(qt.QAbstractItemView.NoSelection)

        self._tickTimer = qt.QTimer()
        self._tickTimer.setInterval(READING_TICK_MS)
        self._tickTimer.connect("timeout()", self.onTick)

        self.ui.browseStudyButton.connect("clicked()", self.onBrowseStudy)
        self.ui.studyPathLineEdit.connect("editingFinished()", self.onStudyFileChosen)
        self.ui.openStudyButton.connect("clicked()", self.onOpenStudy)
        self.ui.startCaseButton.connect("clicked()", self.onStartNextCase)
        self.ui.pauseButton.connect("toggled(bool)", self.onPauseToggled)
        self.ui.submitCaseButton.connect("clicked()", self.onSubmitCase)
        self.ui.closeCaseButton.connect("clicked()", self.onCloseCase)
        self.ui.flagNoTumorButton.connect("clicked()", lambda: self.flag("no_tumor_visible"))
        self.ui.flagQualityButton.connect("clicked()", lambda: self.flag("image_quality"))
        self.ui.addCommentButton.connect("clicked()", self.onAddComment)
        self.ui.commentLineEdit.connect("returnPressed()", self.onAddComment)
        self.ui.analyzeStudyButton.connect("clicked()", self.onAnalyzeStudy)
        self.refresh()

    def isReading(self) -> bool:
        """True while a case is open (the AI sections are blinded)."""
        return self.logic.isCaseOpen()

    # ------------------------------------------------------------------------- study
    def onBrowseStudy(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Choose the reader study file",
                                              self.ui.studyPathLineEdit.text,
                                              "Reader study (*.json *.yaml *.yml);;All files (*)")
        if path:
            self.ui.studyPathLineEdit.text = path
            self.onStudyFileChosen()

    def onStudyFileChosen(self) -> None:
        """A study file chosen: its readers into the reader list."""
        path = self.ui.studyPathLineEdit.text.strip()
        if path == self._studyFile:
            return  # focus left the field without a change: keep the reader chosen
        self._studyFile = path
        self.ui.readerSelector.clear()
        if path:
            try:
                self.ui.readerSelector.addItems(self.logic.readersOf(path))
            except Exception as error:  # noqa: BLE001 - the study file's one-line error
                self._studyFile = None
                self._showError(error)
        self.refresh()

    def onOpenStudy(self) -> None:
        path, reader = self.ui.studyPathLineEdit.text.strip(), self.ui.readerSelector.currentText
        if not path or not reader:
            self._showError("Choose the study file and your reader name first.")
            return
        self._endReading()  # openStudy closes an open case first
        self._studyOpen = False
        try:
            self.logic.openStudy(path, reader)
        except Exception as error:  # noqa: BLE001
            self._showError(error)
        else:
            self._studyOpen = True
            self._message = f"Study opened for reader {reader}."
        self.refresh()

    def onAnalyzeStudy(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Folder for the study analysis",
                                                     os.path.dirname(self.ui.studyPathLineEdit.text.strip()))
        if not folder:
            return
        report = self.analyzeStudy(folder)
        if report:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(report))

    def analyzeStudy(self, folder: str) -> Optional[str]:
        """Analyse the study into ``folder`` (no dialog); the report's path, or None after an error."""
        self._showProgress("Analysing the study", 0.0)
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            report = self.logic.analyzeStudy(folder, progress=self._showProgress)
        except Exception as error:  # noqa: BLE001
            self._showError(error)
            return None
        finally:
            slicer.app.restoreOverrideCursor()
        self._message = f"Report: {report}"
        self.refresh()
        return report

    # ------------------------------------------------------------------------- one case
    def onStartNextCase(self) -> None:
        """Load the next case, open it in Segment Editor and start the reading clock."""
        self._showProgress("Loading the next case", 0.0)
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            case = self.logic.startNextCase(progress=self._showProgress)
        except Exception as error:  # noqa: BLE001
            self._showError(error)
            return
        finally:
            slicer.app.restoreOverrideCursor()
        self._message = f"{case['case']}: resumed where you left it." if case["resumed"] else ""
        self._blindAi(True)
        self.logic.activeEffectName = self._activeEffectName
        self._watchActivity(True)
        self._tickTimer.start()
        try:  # the case alone in the views (no AI overlay left over), then Segment Editor on it
            slicer.util.setSliceViewerLayers(background=case["sourceVolume"], foreground=None, label=None, fit=True)
            self._editor = openSegmentEditor(case["segmentation"], case["sourceVolume"])
        except Exception as error:  # noqa: BLE001 - the case is open: the reader can still close it
            log.exception("BreastTumorSeg: opening Segment Editor failed")
            self._showError(error)
        self.refresh()

    def onPauseToggled(self, paused: bool) -> None:
        if not self.isReading() or paused == bool(self.logic.status().get("paused")):
            return
        self._call(self.logic.pause if paused else self.logic.resume)

    def flag(self, kind: str, comment: str = "") -> None:
        """Flag the open case: "no_tumor_visible", "image_quality" or "comment"."""
        if self._call(self.logic.flag, kind, comment):
            self._message = f"Recorded: {comment or kind.replace('_', ' ')}."
            self.refresh()

    def onAddComment(self) -> None:
        comment = self.ui.commentLineEdit.text.strip()
        if comment and self.isReading():
            self.flag("comment", comment)
            self.ui.commentLineEdit.text = ""

    def onSubmitCase(self) -> None:
        case = self.logic.status().get("case")
        if not self.widget.quietErrors and not slicer.util.confirmOkCancelDisplay(
                f"Submit your segmentation of {case}? A submitted case cannot be reopened.",
                windowTitle="BreastTumorSeg reader study"):
            return
        try:
            path = self.logic.submitCase()
        except Exception as error:  # noqa: BLE001 - the case stays open: nothing is lost
            self._showError(error)
            return
        self._message = f"{case} submitted: {path}"
        self._endReading()

    def onCloseCase(self) -> None:
        self.closeCase()

    def closeCase(self) -> None:
        """Leave the open case unsubmitted (autosaved); Start next case resumes it."""
        if not self.isReading():
            return
        case = self.logic.status().get("case")
        try:
            self.logic.closeCase()
        except Exception as error:  # noqa: BLE001
            self._showError(error)
        else:
            self._message = f"{case} saved; Start next case resumes it."
        self._endReading()

    def onTick(self) -> None:
        """Once a second while reading: idle detection and autosave, then the status line."""
        if not self.isReading():
            self._endReading()
            return
        try:
            self.logic.tick()
        except Exception as error:  # noqa: BLE001 - e.g. a full disk: say so, keep reading
            if _oneLine(error) != self._message:
                log.error(f"BreastTumorSeg: reader study autosave: {_oneLine(error)}")
            self._message = _oneLine(error)
        self.refresh()

    def cleanup(self) -> None:
        """Module closing: close the study (the open case autosaved) so the journal records it."""
        try:
            self.logic.closeStudy()
        except Exception as error:  # noqa: BLE001 - closing anyway
            log.error(f"BreastTumorSeg: closing the reader study: {_oneLine(error)}")
        self._studyOpen = False
        self._endReading()

    # ------------------------------------------------------------------------- display
    def refresh(self) -> None:
        """Worklist, reading status and buttons from the logic."""
        reading = self.isReading()
        status = self.logic.status()
        self._showWorklist()
        lines = [readingStatusText(status) if self._studyOpen else "Choose the study file and your reader name."]
        if self._message:
            lines.append(self._message)
        self.ui.readingStatusLabel.text = "\n".join(lines)
        wasBlocked = self.ui.pauseButton.blockSignals(True)
        self.ui.pauseButton.checked = reading and bool(status.get("paused"))
        self.ui.pauseButton.text = "Resume" if self.ui.pauseButton.checked else "Pause"
        self.ui.pauseButton.blockSignals(wasBlocked)
        for widget in (self.ui.studyPathLineEdit, self.ui.browseStudyButton, self.ui.readerSelector):
            widget.enabled = not reading
        self.ui.openStudyButton.enabled = not reading and self.ui.readerSelector.count > 0
        self.ui.startCaseButton.enabled = (self._studyOpen and not reading
                                           and status.get("done", 0) < status.get("total", 0))
        self.ui.analyzeStudyButton.enabled = self._studyOpen and not reading
        for widget in (self.ui.pauseButton, self.ui.submitCaseButton, self.ui.closeCaseButton,
                       self.ui.flagNoTumorButton, self.ui.flagQualityButton, self.ui.commentLineEdit,
                       self.ui.addCommentButton):
            widget.enabled = reading

    def _showWorklist(self) -> None:
        rows = self.logic.worklist() if self._studyOpen else []
        table = self.ui.worklistTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            values = (str(row["position"]), row["case"], row["arm"], row["status"], f"{row['active_s'] / 60:.1f}")
            for column, value in enumerate(values):
                table.setItem(index, column, qt.QTableWidgetItem(value))

    def _showProgress(self, step: str, fraction: float) -> None:
        """The logic's progress callback: the step in the status line (user input held back)."""
        self.ui.readingStatusLabel.text = f"{step}... {100 * fraction:.0f}%"
        slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)

    def _showError(self, error) -> None:
        message = error if isinstance(error, str) else _oneLine(error)
        self._message = message
        self.widget._showError(message)
        self.refresh()

    def _warn(self, message: str) -> None:
        log.warning(f"BreastTumorSeg: {message}")
        self._message = message

    def _call(self, action, *args) -> bool:
        """Run a logic call on the open case; its one-line error shown. True when it worked."""
        try:
            action(*args)
        except Exception as error:  # noqa: BLE001
            self._showError(error)
            return False
        self.refresh()
        return True

    # ------------------------------------------------------------------------- reading state
    def _endReading(self) -> None:
        """The case is closed or submitted: stop the clock, stop watching the reader, unblind."""
        self._tickTimer.stop()
        self._watchActivity(False)
        self.logic.activeEffectName = None
        self._editor = None
        self._blindAi(False)
        self.refresh()

    def _activeEffectName(self) -> Optional[str]:
        """Segment Editor's active effect (the tool that made an edit), or None."""
        try:
            effect = self._editor.activeEffect()
            return effect.name if effect is not None else None
        except Exception:  # noqa: BLE001 - no editor / effect: the edit is counted without one
            return None

    def _watchActivity(self, on: bool) -> None:
        if on and self._activityFilter is None:
            self._activityFilter = ReaderActivityFilter(self.logic.noteActivity)
            slicer.app.installEventFilter(self._activityFilter)
        elif not on and self._activityFilter is not None:
            slicer.app.removeEventFilter(self._activityFilter)
            self._activityFilter = None

    def _blindAi(self, blind: bool) -> None:
        """While a case is open the reader can neither run nor see the AI: its sections disabled, collapsed."""
        for section in (self.ui.modelCollapsibleButton, self.ui.runCollapsibleButton,
                        self.ui.resultCollapsibleButton, self.ui.refineCollapsibleButton,
                        self.ui.measurementsCollapsibleButton, self.ui.exportCollapsibleButton):
            if blind:
                self._sectionsCollapsed.setdefault(section.objectName, section.collapsed)
                section.collapsed = True
            elif section.objectName in self._sectionsCollapsed:
                section.collapsed = self._sectionsCollapsed.pop(section.objectName)
            section.enabled = not blind
        self.widget._updateButtons()  # the Segment button follows isReading()


class ReaderActivityFilter(qt.QObject):
    """Application event filter: the reader's mouse and keyboard input, reported at most every 0.5 s."""

    def __init__(self, onActivity) -> None:
        qt.QObject.__init__(self)
        self._onActivity = onActivity
        self._last = -math.inf
        self._types = (qt.QEvent.MouseMove, qt.QEvent.MouseButtonPress, qt.QEvent.KeyPress, qt.QEvent.Wheel)

    def eventFilter(self, obj, event) -> bool:
        if event.type() in self._types:
            now = monotonic()
            if now - self._last >= ACTIVITY_INTERVAL_S:
                self._last = now
                try:
                    self._onActivity()
                except Exception as error:  # noqa: BLE001 - never break event delivery
                    log.debug(f"BreastTumorSeg: activity not recorded: {_oneLine(error)}")
        return False  # the event goes on as usual


#
# helpers
#


def openSegmentEditor(segmentation, source):
    """Show Segment Editor on ``segmentation`` with ``source`` as source volume, the tumor segment
    selected; returns the editor widget."""
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
    editor.setSegmentationNode(segmentation)
    if hasattr(editor, "setSourceVolumeNode"):  # Slicer >= 5.2
        editor.setSourceVolumeNode(source)
    else:
        editor.setMasterVolumeNode(source)
    try:
        from BreastTumorSegLib import nodes

        editor.setCurrentSegmentID(nodes.tumorSegmentId(segmentation))
    except Exception:  # noqa: BLE001 - no tumor segment: the editor keeps its own choice
        pass
    return editor


def readingStatusText(status: dict) -> str:
    """The reading status line: "case03 (assisted) 4/12 - active 1:23, wall 2:05 - 7 edits" (+ PAUSED / idle)."""
    if not status.get("open"):
        done, total = status.get("done", 0), status.get("total", 0)
        return f"All {total} cases read - thank you." if total and done >= total else f"{done}/{total} cases done."
    edits = status.get("n_edits", 0)
    text = (f"{status['case']} ({status['arm']}) {status['position']}/{status['total']} - "
            f"active {_minutesSeconds(status['active_s'])}, wall {_minutesSeconds(status['wall_s'])} - "
            f"{edits} edit{'' if edits == 1 else 's'}")
    if status.get("paused"):
        text += " - PAUSED"
    elif status.get("idle"):
        text += " - idle"
    return text


def _minutesSeconds(seconds: float) -> str:
    whole = int(max(0.0, seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def _dimensions(volume):
    image = volume.GetImageData() if volume is not None else None
    return tuple(image.GetDimensions()) if image is not None else None


def _oneLine(error) -> str:
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0]


def _formatValue(value, plain: bool = False) -> str:
    if value is None:
        return "" if plain else "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}" if plain else f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _unitFromKey(key: str) -> str:
    for suffix, unit in (("_ml", "mL"), ("_mm", "mm"), ("_percent", "%"), ("_s", "s")):
        if key.endswith(suffix):
            return unit
    return ""


def _trainedOnSynthetic(card) -> bool:
    trainedOn = getattr(card, "trained_on", None)
    if isinstance(trainedOn, bool):
        return trainedOn
    text = str(trainedOn or "").lower()
    return any(word in text for word in ("synthetic", "phantom"))


def _browserOf(volume):
    """The sequence browser whose proxy ``volume`` is, or None."""
    if volume is None:
        return None
    for browser in slicer.util.getNodesByClass("vtkMRMLSequenceBrowserNode"):
        if browser.IsProxyNodeID(volume.GetID()):
            return browser
    return None


def _displayedVolumeOf(source):
    """The volume showing a DCE source in the views: a sequence's proxy volume, else the source itself."""
    if source is not None and source.IsA("vtkMRMLSequenceNode"):
        for browser in slicer.util.getNodesByClass("vtkMRMLSequenceBrowserNode"):
            proxy = browser.GetProxyNode(source)
            if proxy is not None:
                return proxy
    return source


def _browseTo(proxy, phaseNode) -> None:
    """Show ``phaseNode`` (a sequence's data node, e.g. the first post-contrast) in its proxy volume."""
    browser = _browserOf(proxy)
    if browser is None or phaseNode is None:
        return
    sequence = browser.GetSequenceNode(proxy)
    if sequence is None:
        return
    for index in range(sequence.GetNumberOfDataNodes()):
        if sequence.GetNthDataNode(index) is phaseNode:
            browser.SetSelectedItemNumber(index)
            return


def _differentGrids(volumes) -> list:
    """Names of the phases whose grid differs from the first post-contrast phase's (the second one)."""
    from BreastTumorSegLib import nodes

    try:
        reference = nodes.geometryFromVolumeNode(volumes[1])
        return [node.GetName() for node in volumes
                if not nodes.geometryFromVolumeNode(node).same_grid(reference)]
    except Exception:  # noqa: BLE001 - a volume without voxels: the run will say so
        return []


#
# BreastTumorSegTest
#


class BreastTumorSegTest(ScriptedLoadableModuleTest):
    """The whole workflow on the synthetic sample study inside a real Slicer ("Reload and Test")."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_workflow()
        self.setUp()
        self.test_panel()

    def _requireBackend(self):
        import unittest

        missing = install.missingDependencies()
        if missing:
            raise unittest.SkipTest(f"BreastTumorSeg test needs {', '.join(missing)} in Slicer's Python "
                                    f"(press Segment once to install them)")

    def test_workflow(self):
        """Sample study -> phases -> blocking segmentation -> threshold -> measurements -> export, reload."""
        import tempfile

        import numpy as np

        from BreastTumorSegLib import nodes

        self._requireBackend()
        self.delayDisplay("Loading the sample study")
        registerSampleData()
        sample = loadSampleStudy()
        logic = BreastTumorSegLogic()

        phases = logic.phasesFromNode(sample["proxy"])  # the series the user sees: the whole sequence
        self.assertGreaterEqual(len(phases), 2)
        times = [time for _, time in phases]
        self.assertTrue(all(time is not None for time in times))
        self.assertEqual(times, sorted(times))

        self.delayDisplay("Segmenting (blocking)")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        probability, segmentation = logic.segment(sample["proxy"])
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)

        # the result lies on the first post-contrast phase's grid
        reference = nodes.geometryFromVolumeNode(phases[1][0])
        self.assertTrue(nodes.geometryFromVolumeNode(probability).same_grid(reference))
        role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        geometryNode = segmentation.GetNodeReference(role)
        self.assertIsNotNone(geometryNode)
        self.assertTrue(nodes.geometryFromVolumeNode(geometryNode).same_grid(reference))
        mask = logic.segmentMask(segmentation, reference)
        self.assertGreater(int(mask.sum()), 0)
        if sample["truth"] is not None:  # overlap with the phantom's true tumor (a flipped axis would fail)
            truth = nodes.segmentArray(sample["truth"], sample["truth"].GetSegmentation().GetNthSegmentID(0),
                                       reference) > 0
            dice = 2.0 * np.logical_and(mask > 0, truth).sum() / max(1, (mask > 0).sum() + truth.sum())
            self.assertGreater(dice, 0.5, f"Dice with the phantom's true tumor is {dice:.2f}")

        measurements = logic.measure(segmentation, phases)
        for key in ("tumor_volume_ml", "longest_diameter_mm", "t_category", "functional_tumor_volume_ml",
                    "kinetic_curve_type"):
            self.assertIn(key, measurements)
        self.assertGreater(measurements["tumor_volume_ml"], 0.0)
        self.assertGreater(measurements["longest_diameter_mm"], 0.0)
        index = measurements["lesions"][0]  # the largest lesion gives the diameter; the total is all lesions
        self.assertEqual(measurements["longest_diameter_mm"], index["longest_diameter_mm"])
        self.assertAlmostEqual(measurements["tumor_volume_ml"],
                               sum(lesion["volume_ml"] for lesion in measurements["lesions"]), places=6)

        self.delayDisplay("Threshold changes")
        low = logic.updateSegmentation(probability, segmentation, 0.2)
        high = logic.updateSegmentation(probability, segmentation, 0.8)
        self.assertLessEqual(int(high.sum()), int(low.sum()))
        np.testing.assert_array_equal(logic.segmentMask(segmentation, reference), high)
        logic.updateSegmentation(probability, segmentation, 0.5)

        self.delayDisplay("Export and reload")
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "tumor.seg.nrrd")
            logic.export(segmentation, path)
            self.assertTrue(os.path.isfile(path))
            reloaded = logic.loadSegmentation(path)
            np.testing.assert_array_equal(logic.segmentMask(reloaded, reference), logic.segmentMask(segmentation,
                                                                                                    reference))
            labelmapPath = os.path.join(folder, "tumor.nii.gz")
            logic.export(segmentation, labelmapPath)
            self.assertTrue(os.path.isfile(labelmapPath))
        self.delayDisplay("Workflow test passed")

    def test_panel(self):
        """The panel: phase table, bad input leaves the scene unchanged, background run, live threshold."""
        import time

        self._requireBackend()
        registerSampleData()
        sample = loadSampleStudy()
        slicer.util.selectModule("BreastTumorSeg")
        widget = slicer.modules.breasttumorseg.widgetRepresentation().self()
        widget.quietErrors = True
        pn = widget._parameterNode
        pn.dceSource = sample["sequence"]
        slicer.app.processEvents()
        count = sample["sequence"].GetNumberOfDataNodes()
        self.assertEqual(widget.ui.phaseTable.rowCount, count)
        roleColumn = PHASE_COLUMNS["role"]
        self.assertEqual(widget.ui.phaseTable.item(0, roleColumn).text(), "pre-contrast")

        self.delayDisplay("Bad input: one phase")
        includeColumn = PHASE_COLUMNS["include"]
        for row in range(1, count):
            widget.ui.phaseTable.item(row, includeColumn).setCheckState(qt.Qt.Unchecked)
            slicer.app.processEvents()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        self.assertFalse(widget.startSegmentation())
        self.assertIn("pre-contrast", widget.ui.statusLabel.text)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        for row in range(count):
            widget.ui.phaseTable.item(row, includeColumn).setCheckState(qt.Qt.Checked)
            slicer.app.processEvents()
        self.assertEqual(len(widget.selectedPhases()), count)

        self.delayDisplay("Background run")
        self.assertTrue(widget.startSegmentation())
        self.assertEqual(widget.ui.segmentButton.text, "Cancel")
        deadline = time.time() + 600
        while widget.isRunning() and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertFalse(widget.isRunning(), "the background segmentation did not finish in 10 minutes")
        self.assertIsNotNone(pn.segmentation, widget.ui.statusLabel.text)
        self.assertIsNotNone(pn.probabilityVolume)
        self.assertEqual(widget.ui.segmentButton.text, "Segment")

        self.delayDisplay("Live threshold and measurements")
        from BreastTumorSegLib import nodes

        reference = nodes.geometryFromVolumeNode(pn.probabilityVolume)
        before = int(widget.logic.segmentMask(pn.segmentation, reference).sum())
        widget.ui.thresholdSlider.value = 0.95
        widget._applyThreshold()
        after = int(widget.logic.segmentMask(pn.segmentation, reference).sum())
        self.assertLessEqual(after, before)
        widget._updateMeasurements()
        self.assertGreater(widget.ui.measurementsTable.rowCount, 0)
        self.assertIn("tumor_volume_ml", widget.measurementsText())

        self.delayDisplay("Cancel")
        self.assertTrue(widget.startSegmentation())
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        widget.onSegmentOrCancel()
        self.assertFalse(widget.isRunning())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertIn("cancelled", widget.ui.statusLabel.text)
        widget.quietErrors = False
        self.delayDisplay("Panel test passed")
