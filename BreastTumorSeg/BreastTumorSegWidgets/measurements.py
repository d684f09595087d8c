"""Measurements and Export: the table (every row visible), Copy / Export CSV, the result's files, DICOM SEG."""

from __future__ import annotations

import os

import qt
import slicer

from breasttumorseg.reporting.measurement_table import delimited_text, detailed_rows

from .common import Section, log, oneLine

MEASURE_DELAY_MS = 600

#: kind -> (dialog title, file filter, default suffix, accepted suffixes)
EXPORT_KINDS = {
    "segmentation": ("Save segmentation", "Segmentation (*.seg.nrrd)", ".seg.nrrd", (".seg.nrrd",)),
    "labelmap": ("Save labelmap", "NIfTI labelmap (*.nii.gz *.nii)", ".nii.gz", (".nii.gz", ".nii")),
    "surface": ("Save surface mesh", "Surface mesh (*.stl *.obj)", ".stl", (".stl", ".obj")),
    "probability": ("Save probability map", "Volume (*.nrrd *.nii.gz *.nii)", ".nrrd", (".nrrd", ".nii.gz", ".nii")),
}


class MeasurementsSection(Section):
    """Measurements of the segmentation as it is now (re-measured after edits settle) and its export."""

    def __init__(self, panel) -> None:
        super().__init__(panel)
        self.values = {}
        table = self.ui.measurementsTable
        table.setHorizontalHeaderLabels(["Measurement", "Value", "Unit"])
        table.horizontalHeader().setSectionResizeMode(0, qt.QHeaderView.ResizeToContents)
        table.horizontalHeader().setSectionResizeMode(1, qt.QHeaderView.Stretch)
        table.horizontalHeader().setSectionResizeMode(2, qt.QHeaderView.ResizeToContents)
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.setWordWrap(True)
        table.setVerticalScrollBarPolicy(qt.Qt.ScrollBarAlwaysOff)  # the table grows to show every row
        self._timer = qt.QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(MEASURE_DELAY_MS)
        self._timer.connect("timeout()", self.update)
        self.ui.copyMeasurementsButton.connect("clicked()", self.onCopy)
        self.ui.exportMeasurementsButton.connect("clicked()", self.onExportCsv)
        self.ui.exportSegNrrdButton.connect("clicked()", lambda: self.onExport("segmentation"))
        self.ui.exportNiftiButton.connect("clicked()", lambda: self.onExport("labelmap"))
        self.ui.exportSurfaceButton.connect("clicked()", lambda: self.onExport("surface"))
        self.ui.exportProbabilityButton.connect("clicked()", lambda: self.onExport("probability"))
        self.ui.exportDicomSegButton.connect("clicked()", self.onExportDicomSeg)

    def cleanup(self) -> None:
        self._timer.stop()

    def updateLater(self) -> None:
        self._timer.start()

    # ------------------------------------------------------------------------- table
    def update(self) -> None:
        """Measure the selected segmentation with the phases chosen in Inputs."""
        pn = self.pn
        self.values = {}
        segmentation = pn.segmentation if pn else None
        message = ""
        if segmentation is not None:
            phases = self.panel.inputs.selectedPhases()
            if len(phases) < 2:
                message = "Choose the DCE phases in Inputs to measure this segmentation."
            else:
                try:
                    self.values = self.logic.measure(segmentation, phases)
                except Exception as error:  # noqa: BLE001
                    log.exception("BreastTumorSeg: measuring failed")
                    message = oneLine(error)
        self._show(message)

    def _show(self, message: str = "") -> None:
        table = self.ui.measurementsTable
        rows = detailed_rows(self.values)
        if message:
            rows.append(("Note", message, ""))
        table.setRowCount(len(rows))
        for index, values in enumerate(rows):
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setToolTip(value)
                table.setItem(index, column, item)
        table.resizeRowsToContents()
        height = table.horizontalHeader().height + 2 * table.frameWidth
        height += sum(table.rowHeight(row) for row in range(table.rowCount))
        table.setFixedHeight(max(height, 60))  # every row visible: the panel scrolls, not the table
        self.panel.updateButtons()

    def text(self, delimiter: str = "\t") -> str:
        """The measurements as delimited text: measurement, value, unit (as measurements.csv names them)."""
        return delimited_text(self.values, delimiter)

    def onCopy(self) -> None:
        qt.QApplication.clipboard().setText(self.text("\t"))
        self.setStatus("Measurements copied to the clipboard.")

    def onExportCsv(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export measurements",
                                              defaultFileName("measurements.csv"), "CSV (*.csv)")
        if not path:
            return
        if not path.lower().endswith(".csv"):
            path += ".csv"
        try:
            from breasttumorseg import atomic

            with atomic.atomic_path(path) as temporary:
                with open(temporary, "w", encoding="utf-8", newline="") as stream:
                    stream.write(self.text(","))
        except Exception as error:  # noqa: BLE001
            self.showError(oneLine(error))
            return
        self.setStatus(f"Saved {path}")

    # ------------------------------------------------------------------------- files
    def onExport(self, kind: str) -> None:
        pn = self.pn
        segmentation = pn.segmentation if pn else None
        if segmentation is None:
            self.showError("Nothing to export yet: segment first or choose a segmentation in Result.")
            return
        title, fileFilter, suffix, accepted = EXPORT_KINDS[kind]
        base = segmentation.GetName() if kind != "probability" else (pn.probabilityVolume.GetName()
                                                                      if pn.probabilityVolume else "probability")
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), title, defaultFileName(base + suffix),
                                              fileFilter)
        if not path:
            return
        if not path.lower().endswith(accepted):
            path += suffix
        try:
            self.exportResult(kind, path)
        except Exception as error:  # noqa: BLE001 - one line; nothing partial is left (atomic writes)
            log.exception("BreastTumorSeg: export failed")
            self.showError(oneLine(error))
            return
        self.setStatus(f"Saved {path}")

    def exportResult(self, kind: str, path: str) -> str:
        """Write the current result (no dialog): segmentation, labelmap, surface or probability."""
        pn = self.pn
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
        segmentation = self.pn.segmentation if self.pn else None
        if segmentation is None:
            return False, "Segment first: there is no segmentation to export."
        reference = self.logic.sourceVolumeFor(segmentation)
        if reference is None or not reference.GetAttribute("DICOM.instanceUIDs"):
            return False, ("DICOM SEG export needs a source series loaded from DICOM; this segmentation's "
                           "reference volume was not (use .seg.nrrd or NIfTI instead).")
        return True, "Export the segmentation as DICOM SEG (opens the DICOM export dialog)."

    def updateButtons(self, hasResult: bool, hasProbability: bool) -> None:
        for widget in (self.ui.exportSegNrrdButton, self.ui.exportNiftiButton, self.ui.exportSurfaceButton):
            widget.enabled = hasResult
        self.ui.exportProbabilityButton.enabled = hasProbability
        self.ui.copyMeasurementsButton.enabled = bool(self.values)
        self.ui.exportMeasurementsButton.enabled = bool(self.values)
        available, reason = self.dicomSegAvailability()
        self.ui.exportDicomSegButton.enabled = available
        self.ui.exportDicomSegButton.toolTip = reason

    def onExportDicomSeg(self) -> None:
        available, reason = self.dicomSegAvailability()
        if not available:
            self.showError(reason)
            return
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        dialog = slicer.qSlicerDICOMExportDialog()
        dialog.setMRMLScene(slicer.mrmlScene)
        dialog.execDialog(shNode.GetItemByDataNode(self.pn.segmentation))


def defaultFileName(name: str) -> str:
    """``name`` made safe for a file, in the user's home folder."""
    safe = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in name).strip() or "BreastTumorSeg"
    return os.path.join(os.path.expanduser("~"), safe)
