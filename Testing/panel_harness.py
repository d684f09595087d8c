"""The module panel's .ui files loaded with PySide6, laid out and rendered without Slicer.

Slicer's custom widgets are registered as stand-ins that look and size roughly like them
(a collapsible section with a header that hides its contents, a node selector as a combo
box, a slider with its spin box), so that the .ui's layout can be rendered offscreen
(``QT_QPA_PLATFORM=offscreen``) and measured. The panel is put in the states a user meets
(first open, after a result, during a reading) from the same Qt-free decisions the module
uses (``BreastTumorSegLib.panelstate``, ``phasetable``, ``modelchoice``, the backend's
measurement rows and reading status). A smoke test of the .ui and of those decisions, not
of the real Slicer widgets.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BreastTumorSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "BreastTumorSeg.ui"
TOOLBAR_UI_FILE = MODULE_DIR / "Resources" / "UI" / "ReadingToolbar.ui"
#: Slicer's module panel is about this wide by default; the panel must fit it.
PANEL_WIDTH = 420


def application():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def standins() -> dict:
    """Stand-ins for Slicer's custom widget classes, by the class name the .ui file uses."""
    from PySide6.QtCore import Property, Qt
    from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QGroupBox, QHBoxLayout, QSizePolicy, QSlider,
                                   QWidget)

    def float_property(name, default, apply=None):
        attribute = "_" + name

        def getter(self):
            return getattr(self, attribute, default)

        def setter(self, value):
            setattr(self, attribute, float(value))
            if apply is not None:
                apply(self)

        return Property(float, getter, setter)

    class qMRMLWidget(QWidget):  # noqa: N801 - Slicer's class name
        pass

    class qMRMLNodeComboBox(QComboBox):  # noqa: N801
        def __init__(self, parent=None):
            super().__init__(parent)
            self.addItem("None")
            self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            self.setMinimumContentsLength(12)

    class ctkCollapsibleButton(QGroupBox):  # noqa: N801
        """A titled section; ``collapsed`` hides its contents as ctkCollapsibleButton does."""

        def _text(self):
            return getattr(self, "_label", "")

        def _setText(self, value):
            self._label = value
            self._showTitle()

        def _collapsed(self):
            return getattr(self, "_isCollapsed", False)

        def _setCollapsed(self, value):
            self._isCollapsed = bool(value)
            self.setFlat(self._isCollapsed)  # a collapsed section is its header alone
            self.setMaximumHeight(self.fontMetrics().height() + 8 if self._isCollapsed else 16777215)
            for child in self.findChildren(QWidget, options=_direct_children()):
                child.setVisible(not self._isCollapsed)
            self._showTitle()

        def _showTitle(self):
            self.setTitle(("\u25b8 " if self._collapsed() else "\u25be ") + self._text())

        text = Property(str, _text, _setText)
        collapsed = Property(bool, _collapsed, _setCollapsed)

    def _apply_slider(self):
        if getattr(self, "_spin", None) is None:
            return
        self._spin.setDecimals(self.decimals)
        self._spin.setRange(self.minimum, self.maximum)
        self._spin.setSingleStep(self.singleStep)
        self._spin.setValue(self.value)
        span = (self.maximum - self.minimum) or 1.0
        self._slider.setValue(int(round(1000 * (self.value - self.minimum) / span)))

    class ctkSliderWidget(QWidget):  # noqa: N801
        """A slider with its spin box."""

        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self._slider = QSlider()
            self._slider.setOrientation(Qt.Horizontal)
            self._slider.setRange(0, 1000)
            self._spin = QDoubleSpinBox()
            layout.addWidget(self._slider, 1)
            layout.addWidget(self._spin)
            self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)

        minimum = float_property("minimum", 0.0, _apply_slider)
        maximum = float_property("maximum", 99.0, _apply_slider)
        value = float_property("value", 0.0, _apply_slider)
        singleStep = float_property("singleStep", 1.0, _apply_slider)
        pageStep = float_property("pageStep", 10.0)

        def _decimals(self):
            return getattr(self, "_decimalCount", 2)

        def _setDecimals(self, value):
            self._decimalCount = int(value)
            _apply_slider(self)

        decimals = Property(int, _decimals, _setDecimals)

    return {cls.__name__: cls for cls in (qMRMLWidget, qMRMLNodeComboBox, ctkCollapsibleButton, ctkSliderWidget)}


def _direct_children():
    from PySide6.QtCore import Qt

    return Qt.FindDirectChildrenOnly


def load_ui(path: Path = UI_FILE):
    """The widget tree of a .ui file (stand-ins registered); ``(widget, stand-in classes)``."""
    from PySide6.QtCore import QFile, QIODevice
    from PySide6.QtUiTools import QUiLoader

    application()
    classes = standins()
    loader = QUiLoader()
    for cls in classes.values():
        loader.registerCustomWidget(cls)
    stream = QFile(str(path))
    if not stream.open(QIODevice.ReadOnly):
        raise OSError(f"{path} cannot be opened")
    try:
        widget = loader.load(stream)
    finally:
        stream.close()
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {path.name}: {loader.errorString()}")
    return widget, classes


def find(widget, name):
    from PySide6.QtCore import QObject

    return widget if widget.objectName() == name else widget.findChild(QObject, name)


# ----------------------------------------------------------------------------- states
def sample_rows():
    """The sample study's phase rows (names and times as the Volume Sequence gives them)."""
    from BreastTumorSegLib import phasetable, sampledata

    from breasttumorseg.exam.loading import read_times_json

    times = read_times_json(sampledata.SAMPLE_FOLDER / sampledata.TIMES_FILE)
    return [phasetable.PhaseRow(i, None, f"{sampledata.SERIES_NAME} phase {i}", t, True, False)
            for i, t in enumerate(times)]


@functools.lru_cache(maxsize=1)
def sample_measurements() -> dict:
    """The measurements of the sample's true tumor on the sample study (what the table shows after a run)."""
    from BreastTumorSegLib import sampledata

    from breasttumorseg.exam.loading import load_study, read_mask, read_times_json
    from breasttumorseg.reporting.measurements import measure

    folder = sampledata.SAMPLE_FOLDER
    phases = sorted(str(p) for p in folder.glob("phase_*.nii.gz"))
    study = load_study(phases, read_times_json(folder / sampledata.TIMES_FILE))
    return measure(study, read_mask(folder / sampledata.TRUTH_FILE, study.geometry))


def apply_state(panel, facts, *, rows=(), measurements=None, reading=None) -> None:
    """Put the loaded panel in the state the module shows for ``facts`` (``panelstate.PanelFacts``)."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QHeaderView, QTableWidgetItem

    from BreastTumorSegLib import phasetable
    from BreastTumorSegLib.modelchoice import modelEntries, modelInfoText
    from BreastTumorSegLib.panelstate import panelState

    from breasttumorseg.reporting.measurement_table import detailed_rows

    state = panelState(facts)
    find(panel, "firstStepHintLabel").setText(state.hint)
    find(panel, "loadSampleButton").setVisible(state.showSampleButton)
    segment = find(panel, "segmentButton")
    segment.setEnabled(state.segmentEnabled)
    segment.setToolTip(state.segmentReason)
    find(panel, "progressBar").setVisible(facts.running)

    find(panel, "channelTable").setVisible(False)  # shown for an nnU-Net model folder only
    selector = find(panel, "modelSelector")
    selector.clear()
    entries, cards = modelEntries({})
    for entry in entries:
        selector.addItem(entry.label, entry.data)
    find(panel, "modelInfoLabel").setText(modelInfoText(cards.get(selector.currentData()), selector.currentData()))
    for name, items in (("deviceSelector", ("Auto", "GPU (none detected)", "CPU")),):
        find(panel, name).clear()
        find(panel, name).addItems(list(items))

    source = find(panel, "dceSourceSelector")
    source.clear()
    source.addItem("BreastDCE phantom" if facts.hasSource else "None")
    table = find(panel, "phaseTable")
    table.setHorizontalHeaderLabels(["Phase", "Time (s)", "Role", "Include"])
    table.verticalHeader().setVisible(False)
    header = table.horizontalHeader()
    header.setSectionResizeMode(0, QHeaderView.Stretch)
    for column in (1, 2, 3):
        header.setSectionResizeMode(column, QHeaderView.ResizeToContents)
    table.setRowCount(len(rows))
    for index, row in enumerate(rows):
        for column, text in enumerate((row.name, f"{row.time:g}", phasetable.roleOf(row, list(rows)), "")):
            item = QTableWidgetItem(text)
            if column == 3:
                item.setFlags(Qt.ItemIsEnabled | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked if row.included else Qt.Unchecked)
            table.setItem(index, column, item)
    find(panel, "phaseWarningLabel").setVisible(False)

    values = detailed_rows(measurements or {})
    table = find(panel, "measurementsTable")
    table.setHorizontalHeaderLabels(["Measurement", "Value", "Unit"])
    table.verticalHeader().setVisible(False)
    table.setRowCount(len(values))
    for index, row in enumerate(values):
        for column, text in enumerate(row):
            table.setItem(index, column, QTableWidgetItem(text))
    _measurement_columns(table)
    fit_table_height(table)

    if facts.hasResult:
        find(panel, "segmentationSelector").clear()
        find(panel, "segmentationSelector").addItem("BreastDCE phantom tumor segmentation")
        find(panel, "statusLabel").setText("Done: BreastDCE phantom tumor segmentation. Move the threshold to "
                                           "adjust it, or refine it in Segment Editor.")
    if reading is not None:
        worklist = find(panel, "worklistTable")
        worklist.setHorizontalHeaderLabels(["#", "Case", "Arm", "Status", "Active min"])
        worklist.verticalHeader().setVisible(False)
        worklist.setRowCount(len(reading["worklist"]))
        for index, row in enumerate(reading["worklist"]):
            for column, text in enumerate(row):
                worklist.setItem(index, column, QTableWidgetItem(text))
        find(panel, "readingStatusLabel").setText(reading["status"])
        for name in ("studyPathLineEdit",):
            find(panel, name).setText(reading["study"])
        find(panel, "readerSelector").addItem(reading["reader"])
        worklist_columns(worklist)
    for name, expanded in state.expanded.items():  # last: a collapsed section hides what was filled in
        find(panel, f"{name}CollapsibleButton").setProperty("collapsed", not expanded)
    # after the sections (the stand-in shows every child of an expanded section), as the module shows them
    find(panel, "phaseTable").setVisible(state.showPhaseTable and state.expanded["inputs"])
    find(panel, "loadSampleButton").setVisible(state.showSampleButton and state.expanded["inputs"])
    find(panel, "progressBar").setVisible(facts.running and state.expanded["run"])
    find(panel, "channelTable").setVisible(False)  # shown for an nnU-Net model folder only


def worklist_columns(table) -> None:
    """As the module lays out the worklist: the case name stretches, the other columns fit their contents."""
    from PySide6.QtWidgets import QHeaderView

    header = table.horizontalHeader()
    for column in range(table.columnCount()):
        header.setSectionResizeMode(column, QHeaderView.Stretch if column == 1 else QHeaderView.ResizeToContents)


def _measurement_columns(table) -> None:
    from PySide6.QtWidgets import QHeaderView

    header = table.horizontalHeader()
    header.setSectionResizeMode(0, QHeaderView.ResizeToContents)
    header.setSectionResizeMode(1, QHeaderView.Stretch)
    header.setSectionResizeMode(2, QHeaderView.ResizeToContents)


def fit_table_height(table) -> int:
    """Make the table as tall as its rows (as the module does for the measurements); returns the height."""
    table.resizeRowsToContents()
    height = table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
    height += sum(table.rowHeight(row) for row in range(table.rowCount()))
    table.setFixedHeight(max(height, 60))
    return table.height()


def lay_out(widget, width: int = PANEL_WIDTH) -> None:
    """Show ``widget`` offscreen at ``width`` px, as tall as its layout asks."""
    app = application()
    widget.resize(width, 10)
    widget.show()
    app.processEvents()
    table = find(widget, "measurementsTable")
    if table is not None and table.isVisible():  # laid out at its final width: fit its rows again
        fit_table_height(table)
    widget.resize(width, widget.sizeHint().height())
    app.processEvents()


def render(widget, path: Path, width: int = PANEL_WIDTH) -> tuple:
    """Lay ``widget`` out (:func:`lay_out`) and save it as PNG; returns (width, height) in px."""
    lay_out(widget, width)
    picture = widget.grab()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not picture.save(str(path), "PNG"):
        raise OSError(f"{path} could not be written")
    return picture.width(), picture.height()


def reading_toolbar(state: dict):
    """The reading toolbar's .ui with ``state`` (``ReaderStudyLogic.toolbarState``) shown, as the module shows it."""
    widget, _ = load_ui(TOOLBAR_UI_FILE)
    find(widget, "toolbarCaseLabel").setText(state["case"])
    find(widget, "toolbarClockLabel").setText(state["clock"] + (" paused" if state["paused"] else ""))
    pause = find(widget, "toolbarPauseButton")
    pause.setChecked(state["paused"])
    pause.setText("Resume" if state["paused"] else "Pause")
    return widget
