"""Model and Run: the model list (registry and the user's files), the device, Segment / Cancel."""

from __future__ import annotations

import os

import qt
import slicer

from BreastTumorSegLib import install
from BreastTumorSegLib.background import CANCELLED, FAILED, RUNNING, SUCCEEDED

from .common import Section, log, oneLine

POLL_INTERVAL_MS = 200


class RunSection(Section):
    """Model, device and the background segmentation (a process the poll timer watches)."""

    def __init__(self, panel) -> None:
        super().__init__(panel)
        self.runner = None
        self._runPhases = []
        self._cards = {}
        self._userModels = {}  # combobox label -> path of a user's .safetensors
        self._gpuDetected = False
        self.ui.deviceSelector.addItem("Auto", "auto")
        self.ui.deviceSelector.addItem("GPU (CUDA)", "cuda")
        self.ui.deviceSelector.addItem("CPU", "cpu")
        self.populateModels()
        self.ui.progressBar.setVisible(False)
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self._poll)
        self._folderModel = None  # modelchoice.FolderModel of the chosen nnU-Net model folder
        self._channelsShownFor = object()  # the model whose channel rows are shown
        self.ui.channelTable.setHorizontalHeaderLabels(["Model channel", "DCE image"])
        self.ui.channelTable.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.ResizeToContents)
        self.ui.channelTable.horizontalHeader().setSectionResizeMode(1, qt.QHeaderView.Stretch)
        self.ui.channelTable.verticalHeader().setVisible(False)
        self.ui.channelTable.setVisible(False)
        menu = qt.QMenu(self.ui.loadModelButton)
        menu.addAction("Weights file (.safetensors)...", self.onLoadModel)
        menu.addAction("nnU-Net v2 model folder...", self.onLoadModelFolder)
        self.ui.loadModelButton.setMenu(menu)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.segmentButton.connect("clicked()", self.onSegmentOrCancel)

    def cleanup(self) -> None:
        self.cancel(quiet=True)
        self._pollTimer.stop()

    def detectGpu(self) -> None:
        """Once, when the panel is first shown (nvidia-smi, never a torch import)."""
        if self._gpuDetected:
            return
        self._gpuDetected = True
        name = install.gpuName()
        index = self.ui.deviceSelector.findData("cuda")
        self.ui.deviceSelector.setItemText(index, f"GPU ({name})" if name else "GPU (none detected)")

    def refresh(self) -> None:
        """Parameter node -> model and device selectors."""
        if self.pn is None:
            return
        self.selectModel(self.pn.modelName)
        index = self.ui.deviceSelector.findData(self.pn.device)
        if index >= 0 and index != self.ui.deviceSelector.currentIndex:
            wasBlocked = self.ui.deviceSelector.blockSignals(True)
            self.ui.deviceSelector.currentIndex = index
            self.ui.deviceSelector.blockSignals(wasBlocked)

    # ------------------------------------------------------------------------- models
    def populateModels(self) -> None:
        from BreastTumorSegLib.modelchoice import modelEntries

        selector = self.ui.modelSelector
        wasBlocked = selector.blockSignals(True)
        selector.clear()
        entries, self._cards = modelEntries(self._userModels)
        for entry in entries:
            selector.addItem(entry.label, entry.data)
            selector.setItemData(selector.count - 1, entry.tooltip, qt.Qt.ToolTipRole)
        selector.blockSignals(wasBlocked)
        self._showModelInfo()

    def selectModel(self, modelName: str) -> None:
        selector = self.ui.modelSelector
        index = selector.findData(modelName)
        if index < 0 and modelName and os.path.isfile(modelName):  # a user's model saved in the scene
            self._userModels[f"{os.path.basename(modelName)} (your model)"] = modelName
            self.populateModels()
            index = selector.findData(modelName)
        elif index < 0 and modelName and os.path.isdir(modelName):  # an nnU-Net model folder saved in the scene
            self._userModels[f"{os.path.basename(modelName.rstrip(os.sep))} (nnU-Net)"] = modelName
            self.populateModels()
            index = selector.findData(modelName)
        index = max(index, 0)
        if index != selector.currentIndex:
            wasBlocked = selector.blockSignals(True)
            selector.currentIndex = index
            selector.blockSignals(wasBlocked)
        self._showModelInfo()

    def _showModelInfo(self) -> None:
        from BreastTumorSegLib.modelchoice import folderModelText, modelInfoText

        data = self.ui.modelSelector.currentData
        self._showChannels(data)
        if self._folderModel is not None:
            self.ui.modelInfoLabel.text = folderModelText(self._folderModel)
        else:
            self.ui.modelInfoLabel.text = modelInfoText(self._cards.get(data), data)

    # ------------------------------------------------------------------------- nnU-Net model folders
    def onLoadModelFolder(self) -> None:
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "nnU-Net v2 model folder")
        if not path:
            return
        from BreastTumorSegLib.modelchoice import folderModel

        try:
            model = folderModel(path)
        except Exception as error:  # noqa: BLE001 - no model below the folder: one line
            self.showError(oneLine(error))
            return
        self._userModels[f"{os.path.basename(model.folder.rstrip(os.sep))} (nnU-Net)"] = model.folder
        self._channelsShownFor = object()  # the rows take the folder's default roles
        self.populateModels()
        if self.pn is not None:
            with slicer.util.NodeModify(self.pn.parameterNode):
                self.pn.channelRoles = list(model.roles)
                self.pn.modelName = model.folder
        self.selectModel(model.folder)

    def _showChannels(self, data) -> None:
        """One row per channel of an nnU-Net model folder, each with the DCE image it receives."""
        from BreastTumorSegLib.modelchoice import channelRoles, folderModel

        if data == self._channelsShownFor:
            return  # built once per model: a role chosen in a row must not rebuild the row under it
        self._channelsShownFor = data
        self._folderModel = None
        table = self.ui.channelTable
        if data and os.path.isdir(data):
            try:
                self._folderModel = folderModel(data)
            except Exception as error:  # noqa: BLE001
                self.setStatus(oneLine(error))
        model = self._folderModel
        table.setVisible(model is not None)
        if model is None:
            table.setRowCount(0)
            return
        stored = list(self.pn.channelRoles) if self.pn is not None else []
        roles = stored if len(stored) == len(model.channels) else list(model.roles)
        choices = channelRoles(max(2, self.panel.inputs.includedCount()))
        table.setRowCount(len(model.channels))
        for row, (name, role) in enumerate(zip(model.channels, roles)):
            item = qt.QTableWidgetItem(name)
            item.setFlags(qt.Qt.ItemIsEnabled)
            table.setItem(row, 0, item)
            combo = qt.QComboBox()
            combo.addItem("(choose)", "")
            for value, label in choices:
                combo.addItem(label, value)
            combo.currentIndex = max(0, combo.findData(role))
            combo.connect("currentIndexChanged(int)", self._storeChannelRoles)
            table.setCellWidget(row, 1, combo)

    def _storeChannelRoles(self, index=None) -> None:
        if self.pn is None or self._folderModel is None:
            return
        table = self.ui.channelTable
        self.pn.channelRoles = [table.cellWidget(row, 1).currentData or "" for row in range(table.rowCount)]

    def _nnunetOptions(self):
        """The request's options for an nnU-Net model folder (its channels bound), else None."""
        if self._folderModel is None:
            return None
        from BreastTumorSegLib.modelchoice import channelBindings

        return {"channels": tuple(channelBindings(self._folderModel, list(self.pn.channelRoles)))}

    def onModelChanged(self, index) -> None:
        if self.pn is not None and not self.panel.updatingGui:
            self.pn.modelName = self.ui.modelSelector.itemData(index) or ""
        self._showModelInfo()

    def onLoadModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Load model weights", "",
                                              "Model weights (*.safetensors)")
        if not path:
            return
        # the backend checks the file against its card (checksum, architecture) when the run starts
        self._userModels[f"{os.path.basename(path)} (your model)"] = path
        self.populateModels()
        if self.pn is not None:
            self.pn.modelName = path
        self.selectModel(path)

    def onDeviceChanged(self, index) -> None:
        if self.pn is not None and not self.panel.updatingGui:
            self.pn.device = self.ui.deviceSelector.itemData(index) or "auto"

    # ------------------------------------------------------------------------- run
    def onSegmentOrCancel(self) -> None:
        if self.runner is not None:
            self.cancel()
        else:
            self.start()

    def start(self) -> bool:
        """Check the input, make sure the packages are there, start the background run."""
        pn = self.pn
        if pn is None or pn.dceSource is None:
            self.showError("Choose a DCE series (Volume Sequence, MultiVolume or volumes) in Inputs first.")
            return False
        phases = self.panel.inputs.selectedPhases()
        if len(phases) < 2:
            self.showError("A DCE study needs a pre-contrast and at least one post-contrast phase: "
                           f"{len(phases)} phase{'' if len(phases) == 1 else 's'} included.")
            return False
        try:
            if not install.ensureDependencies(askConfirmation=True):
                self.setStatus("Segmentation not started: the Python packages it needs were not installed.")
                return False
        except Exception as error:  # noqa: BLE001 - installation problems: one line, details in the log
            log.exception("BreastTumorSeg: installing Python packages failed")
            self.showError(oneLine(error))
            return False
        self.populateModels()  # the registry is readable now
        self.selectModel(pn.modelName)
        try:
            nnunetOptions = self._nnunetOptions()  # a channel without a role: one line, nothing runs
            if nnunetOptions is not None and not install.ensureNnUNet(askConfirmation=True):
                self.setStatus("Segmentation not started: nnU-Net was not installed.")
                return False
            self.runner = self.logic.startSegmentation(phases, model=pn.modelName or None, device=pn.device,
                                                       minComponentMl=pn.minComponentMl, nnunetOptions=nnunetOptions)
        except Exception as error:  # noqa: BLE001 - bad input raises the backend's one-line error
            log.exception("BreastTumorSeg: the segmentation could not start")
            self.showError(oneLine(error))
            return False
        shown = self.panel.inputs.displayedSource()
        if shown is not None:
            # the result goes beside the series the user sees (proxy volume, MultiVolume) in subject
            # hierarchy, and takes that volume as reference geometry when the phases are not in the scene
            self.runner.source = shown
            self.runner.sourceName = pn.dceSource.GetName()
        self._runPhases = phases
        self.ui.segmentButton.text = "Cancel"
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = "Starting... %p%"
        self.setStatus("Segmenting in the background; Slicer stays usable.")
        self._pollTimer.start()
        self.panel.updateButtons()
        return True

    def _poll(self) -> None:
        runner = self.runner
        if runner is None:
            self._pollTimer.stop()
            return
        try:
            state = runner.poll()
        except Exception as error:  # noqa: BLE001
            state, runner.error = FAILED, oneLine(error)
        self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, runner.progress))))
        step = (runner.step or "Working").replace("%", "%%")
        self.ui.progressBar.format = f"{step}: %p%"
        if state == RUNNING:
            return
        self._pollTimer.stop()
        self.runner = None
        if state == SUCCEEDED:
            try:
                probability, segmentation = self.logic.finishSegmentation(runner)
            except Exception as error:  # noqa: BLE001 - finishSegmentation removed what it made
                log.exception("BreastTumorSeg: loading the result failed")
                self._endRun()
                self.showError(oneLine(error))
                return
            self._endRun()
            firstPost = self._runPhases[1][0] if len(self._runPhases) > 1 else None
            self.panel.result.show(probability, segmentation, firstPost)
            self.setStatus(f"Done: {segmentation.GetName()}. Move the threshold to adjust it, or refine it "
                           f"in Segment Editor.")
        elif state == CANCELLED:
            self._endRun()
            self.setStatus("Segmentation cancelled; nothing was added to the scene.")
        else:
            details = runner.details
            runner.cleanup()
            self._endRun()
            log.error(f"BreastTumorSeg: the segmentation process failed:\n{details}")
            self.showError(f"The segmentation failed: {runner.error or 'the process stopped'}", details=details)

    def cancel(self, quiet: bool = False) -> None:
        runner, self.runner = self.runner, None
        if runner is None:
            return
        self._pollTimer.stop()
        try:
            runner.cancel()
        finally:
            self._endRun()
        if not quiet:
            self.setStatus("Segmentation cancelled; nothing was added to the scene.")

    def _endRun(self) -> None:
        self.ui.segmentButton.text = "Segment"
        self.ui.progressBar.setVisible(False)
        self.panel.updateButtons()

    def isRunning(self) -> bool:
        return self.runner is not None

    @property
    def folderModel(self):
        """The chosen nnU-Net model folder (``modelchoice.FolderModel``), or None."""
        return self._folderModel
