"""Inputs: the DCE series, its phase table (times editable, phases ticked) and the sample study."""

from __future__ import annotations

import qt
import slicer

from BreastTumorSegLib import phasetable, sampledata, views
from BreastTumorSegLib.phases import finiteNumber

from .common import Section, log, oneLine

PHASE_COLUMNS = {"name": 0, "time": 1, "role": 2, "include": 3}


class InputsSection(Section):
    """The DCE source selector and the phase table; the first-step hint and Load sample study."""

    def __init__(self, panel) -> None:
        super().__init__(panel)
        self.rows = []  # phasetable.PhaseRow, in table order
        self._warnings = []
        self._lastSource = None
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
        self.ui.dceSourceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSourceChanged)
        self.ui.phaseTable.connect("itemChanged(QTableWidgetItem*)", self.onPhaseItemChanged)
        self.ui.loadSampleButton.connect("clicked()", self.onLoadSample)

    def collectWarning(self, message: str) -> None:
        """The logic's warnings while reading the phases: shown under the table."""
        self._warnings.append(message)
        log.warning(message)

    # ------------------------------------------------------------------------- parameter node -> table
    def refresh(self, force: bool = False) -> None:
        """Show the parameter node's source; rebuild the rows when it changed (or ``force``)."""
        source = self.pn.dceSource if self.pn else None
        if self.ui.dceSourceSelector.currentNode() is not source:
            wasBlocked = self.ui.dceSourceSelector.blockSignals(True)
            self.ui.dceSourceSelector.setCurrentNode(source)
            self.ui.dceSourceSelector.blockSignals(wasBlocked)
        if force or source is not self._lastSource:
            self._lastSource = source
            self._rebuildRows()

    def _rebuildRows(self) -> None:
        pn = self.pn
        self._warnings = []
        choices = phasetable.PhaseChoices(list(pn.phaseVolumes), list(pn.excludedPhases),
                                          list(pn.phaseTimes)) if pn else phasetable.PhaseChoices()
        try:
            self.rows = phasetable.phaseRows(pn.dceSource if pn else None, choices, slicer.mrmlScene,
                                             warn=self.collectWarning)
        except Exception as error:  # noqa: BLE001 - any unusable source: say why in one line
            self.rows = []
            self._warnings.append(oneLine(error))
        self._showTable()

    def _showTable(self) -> None:
        table = self.ui.phaseTable
        wasBlocked = table.blockSignals(True)
        try:
            table.setRowCount(len(self.rows))
            for index, row in enumerate(self.rows):
                name = qt.QTableWidgetItem(row.name)
                name.setFlags(qt.Qt.ItemIsEnabled)
                time = qt.QTableWidgetItem("" if row.time is None else f"{row.time:g}")
                time.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsEditable)
                time.setToolTip("Acquisition time after the first phase, in seconds (double-click to edit).")
                role = qt.QTableWidgetItem(phasetable.roleOf(row, self.rows))
                role.setFlags(qt.Qt.ItemIsEnabled)
                include = qt.QTableWidgetItem()
                include.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
                include.setCheckState(qt.Qt.Checked if row.included else qt.Qt.Unchecked)
                for column, item in zip(("name", "time", "role", "include"), (name, time, role, include)):
                    item.setData(qt.Qt.UserRole, row.key)
                    table.setItem(index, PHASE_COLUMNS[column], item)
        finally:
            table.blockSignals(wasBlocked)
        self._showWarnings()
        self.panel.updateButtons()

    def _showWarnings(self) -> None:
        messages = list(self._warnings) + phasetable.phaseWarnings(self.rows)
        self.ui.phaseWarningLabel.text = "\n".join(messages)
        self.ui.phaseWarningLabel.setVisible(bool(messages))

    # ------------------------------------------------------------------------- table -> parameter node
    def onSourceChanged(self, node) -> None:
        pn = self.pn
        if pn is None or self.panel.updatingGui:
            return
        with slicer.util.NodeModify(pn.parameterNode):
            pn.phaseVolumes = []
            pn.excludedPhases = []
            pn.phaseTimes = []
            pn.dceSource = node

    def onPhaseItemChanged(self, item) -> None:
        """A time typed or an include box ticked: store it, re-sort, re-label the roles."""
        row = next((r for r in self.rows if r.key == item.data(qt.Qt.UserRole)), None)
        if self.pn is None or row is None:
            return
        if item.column() == PHASE_COLUMNS["include"]:
            row.included = item.checkState() == qt.Qt.Checked
        elif item.column() == PHASE_COLUMNS["time"]:
            text = item.text().strip()
            value = finiteNumber(text)
            if text and value is None:
                self.setStatus(f"'{text}' is not a time in seconds.")
            else:
                row.time = value
        self._storeChoices()
        self._showWarnings()
        self.panel.updateButtons()
        # re-sort and re-label after Qt has finished with the edited item (never delete it inside its signal)
        qt.QTimer.singleShot(0, self._resort)

    def _resort(self) -> None:
        self.rows = phasetable.sortRows(self.rows)
        self._showTable()

    def _storeChoices(self) -> None:
        choices = phasetable.choicesFromRows(self.rows)
        pn = self.pn
        self.panel.updatingGui = True  # the rows are already up to date: no table rebuild
        try:
            with slicer.util.NodeModify(pn.parameterNode):
                if self.rows and self.rows[0].volumeMode:
                    pn.phaseVolumes = choices.phaseVolumes
                else:
                    pn.phaseTimes = choices.phaseTimes
                    pn.excludedPhases = choices.excludedPhases
        finally:
            self.panel.updatingGui = False

    def selectedPhases(self) -> list:
        """``[(scalar volume node, time s or None), ...]`` of the included rows, in table order."""
        return phasetable.selectedPhases(self.rows)

    def includedCount(self) -> int:
        return sum(row.included for row in self.rows)

    def displayedSource(self):
        """The volume that shows the series in the views (a sequence's proxy), or None for separate volumes."""
        if not self.rows or self.rows[0].volumeMode or self.pn is None:
            return None
        return views.displayedVolumeOf(self.pn.dceSource)

    # ------------------------------------------------------------------------- sample study
    def onLoadSample(self) -> None:
        """Load the bundled synthetic study as a Volume Sequence and choose it as the DCE series."""
        slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            sample = sampledata.loadSampleStudy(slicer.mrmlScene)
        except Exception as error:  # noqa: BLE001 - a missing or altered file: one line
            self.showError(oneLine(error))
            return
        finally:
            slicer.app.restoreOverrideCursor()
        slicer.util.setSliceViewerLayers(background=sample["proxy"], foreground=None, fit=True)
        if self.pn is not None:
            self.pn.dceSource = sample["sequence"]
        self.setStatus("Sample study loaded (a synthetic phantom, not a patient). Press Segment to find its tumor.")
