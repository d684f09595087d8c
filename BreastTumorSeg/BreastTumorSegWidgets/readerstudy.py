"""Reader study: the worklist, one case at a time in Segment Editor, and the reading toolbar.

Thin: :class:`BreastTumorSegLib.readerstudy.ReaderStudyLogic` loads the cases, keeps the
reading clock, the journal and the autosave, and shows / removes the reading toolbar
(:class:`ReadingToolbar`, in the main window so that Pause, Submit and Flag stay reachable
while the reader works in Segment Editor). This section wires the buttons to the logic,
ticks it once a second, reports the reader's mouse and keyboard activity, and blinds the
panel's AI sections while a case is open.
"""

from __future__ import annotations

import math
import os
from time import monotonic
from typing import Optional

import qt
import slicer

from BreastTumorSegLib.panelstate import AI_SECTIONS
from BreastTumorSegLib.readerstudy import ReaderStudyLogic

from .common import Section, log, oneLine, openSegmentEditor

READING_TICK_MS = 1000
ACTIVITY_INTERVAL_S = 0.5


class ReaderStudySection(Section):
    """The Reader study section (see the module docstring)."""

    def __init__(self, panel) -> None:
        super().__init__(panel)
        self.readerLogic = ReaderStudyLogic(scene=slicer.mrmlScene, warn=self._warn)
        self.toolbar = ReadingToolbar(panel.resourcePath("UI/ReadingToolbar.ui"), self)
        self.readerLogic.toolbar = self.toolbar
        self._studyOpen = False
        self._studyFile = None  # the study file whose readers are listed
        self._editor = None  # Segment Editor's editor widget while a case is open
        self._activityFilter = None
        self._message = ""  # the last outcome, shown under the reading status

        table = self.ui.worklistTable
        table.setHorizontalHeaderLabels(["#", "Case", "Arm", "Status", "Active min"])
        for column in range(table.columnCount):  # the case name stretches; the rest fit their contents
            table.horizontalHeader().setSectionResizeMode(
                column, qt.QHeaderView.Stretch if column == 1 else qt.QHeaderView.ResizeToContents)
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
        self.ui.closeCaseButton.connect("clicked()", self.closeCase)
        self.ui.flagNoTumorButton.connect("clicked()", lambda: self.flag("no_tumor_visible"))
        self.ui.flagQualityButton.connect("clicked()", lambda: self.flag("image_quality"))
        self.ui.addCommentButton.connect("clicked()", self.onAddComment)
        self.ui.commentLineEdit.connect("returnPressed()", self.onAddComment)
        self.ui.analyzeStudyButton.connect("clicked()", self.onAnalyzeStudy)
        self.refresh()

    def isReading(self) -> bool:
        """True while a case is open (the AI sections are blinded)."""
        return self.readerLogic.isCaseOpen()

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
                self.ui.readerSelector.addItems(self.readerLogic.readersOf(path))
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
            self.readerLogic.openStudy(path, reader)
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
            report = self.readerLogic.analyzeStudy(folder, progress=self._showProgress)
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
            case = self.readerLogic.startNextCase(progress=self._showProgress)  # shows the reading toolbar
        except Exception as error:  # noqa: BLE001
            self._showError(error)
            return
        finally:
            slicer.app.restoreOverrideCursor()
        self._message = f"{case['case']}: resumed where you left it." if case["resumed"] else ""
        self._blindAi(True)
        self.readerLogic.activeEffectName = self._activeEffectName
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
        if not self.isReading() or paused == bool(self.readerLogic.status().get("paused")):
            self.refresh()
            return
        self._call(self.readerLogic.pause if paused else self.readerLogic.resume)

    def flag(self, kind: str, comment: str = "") -> None:
        """Flag the open case: "no_tumor_visible", "image_quality" or "comment"."""
        if self._call(self.readerLogic.flag, kind, comment):
            self._message = f"Recorded: {comment or kind.replace('_', ' ')}."
            self.refresh()

    def onAddComment(self) -> None:
        comment = self.ui.commentLineEdit.text.strip()
        if comment and self.isReading():
            self.flag("comment", comment)
            self.ui.commentLineEdit.text = ""

    def onSubmitCase(self) -> None:
        case = self.readerLogic.status().get("case")
        if not self.panel.quietErrors and not slicer.util.confirmOkCancelDisplay(
                f"Submit your segmentation of {case}? A submitted case cannot be reopened.",
                windowTitle="BreastTumorSeg reader study"):
            return
        try:
            path = self.readerLogic.submitCase()  # removes the reading toolbar
        except Exception as error:  # noqa: BLE001 - the case stays open: nothing is lost
            self._showError(error)
            return
        self._message = f"{case} submitted: {path}"
        self._endReading()

    def closeCase(self) -> None:
        """Leave the open case unsubmitted (autosaved); Start next case resumes it."""
        if not self.isReading():
            return
        case = self.readerLogic.status().get("case")
        try:
            self.readerLogic.closeCase()
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
            self.readerLogic.tick()
        except Exception as error:  # noqa: BLE001 - e.g. a full disk: say so, keep reading
            if oneLine(error) != self._message:
                log.error(f"BreastTumorSeg: reader study autosave: {oneLine(error)}")
            self._message = oneLine(error)
        self.refresh()

    def cleanup(self) -> None:
        """Module closing: close the study (the open case autosaved) so the journal records it."""
        try:
            self.readerLogic.closeStudy()
        except Exception as error:  # noqa: BLE001 - closing anyway
            log.error(f"BreastTumorSeg: closing the reader study: {oneLine(error)}")
        self._studyOpen = False
        self._endReading()
        self.toolbar.remove()

    # ------------------------------------------------------------------------- display
    def refresh(self) -> None:
        """Worklist, reading status and buttons from the logic."""
        reading = self.isReading()
        status = self.readerLogic.status()
        rows = self.readerLogic.worklist() if self._studyOpen else []
        table = self.ui.worklistTable
        table.setRowCount(len(rows))
        for index, row in enumerate(rows):
            values = (str(row["position"]), row["case"], row["arm"], row["status"], f"{row['active_s'] / 60:.1f}")
            for column, value in enumerate(values):
                table.setItem(index, column, qt.QTableWidgetItem(value))
        lines = [self.readerLogic.statusText() if self._studyOpen else "Choose the study file and your reader name."]
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

    def _showProgress(self, step: str, fraction: float) -> None:
        """The logic's progress callback: the step in the status line (user input held back)."""
        self.ui.readingStatusLabel.text = f"{step}... {100 * fraction:.0f}%"
        slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)

    def _showError(self, error) -> None:
        message = error if isinstance(error, str) else oneLine(error)
        self._message = message
        self.showError(message)
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
        self.readerLogic.activeEffectName = None
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
            self._activityFilter = ReaderActivityFilter(self.readerLogic.noteActivity)
            slicer.app.installEventFilter(self._activityFilter)
        elif not on and self._activityFilter is not None:
            slicer.app.removeEventFilter(self._activityFilter)
            self._activityFilter = None

    def _blindAi(self, blind: bool) -> None:
        """While a case is open the reader can neither run nor see the AI: its sections disabled, collapsed."""
        for name in AI_SECTIONS:
            section = getattr(self.ui, f"{name}CollapsibleButton")
            if blind:
                section.collapsed = True
            section.enabled = not blind
        self.panel.updateButtons()  # the Segment button and the sections follow isReading()


class ReadingToolbar:
    """The reading toolbar in Slicer's main window: case, clock, Pause, Submit, Flag, Close.

    Implements the toolbar calls of :class:`~BreastTumorSegLib.readerstudy.ReaderStudyLogic`:
    ``show(state)`` adds it to the main window, ``update(state)`` shows the clock and the
    pause state, ``remove()`` takes it out again.
    """

    def __init__(self, uiPath: str, section: ReaderStudySection) -> None:
        self._uiPath = uiPath
        self._section = section
        self.toolbar = None
        self.ui = None

    def show(self, state: dict) -> None:
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:
            return
        if self.toolbar is None:
            content = slicer.util.loadUI(self._uiPath)
            self.ui = slicer.util.childWidgetVariables(content)
            self.toolbar = qt.QToolBar("Reader study")
            self.toolbar.objectName = "BreastTumorSegReadingToolBar"
            self.toolbar.movable = True
            self.toolbar.addWidget(content)
            section = self._section
            self.ui.toolbarPauseButton.connect("toggled(bool)", section.onPauseToggled)
            self.ui.toolbarSubmitButton.connect("clicked()", section.onSubmitCase)
            self.ui.toolbarFlagNoTumorButton.connect("clicked()", lambda: section.flag("no_tumor_visible"))
            self.ui.toolbarFlagQualityButton.connect("clicked()", lambda: section.flag("image_quality"))
            self.ui.toolbarCloseButton.connect("clicked()", section.closeCase)
            mainWindow.addToolBar(qt.Qt.TopToolBarArea, self.toolbar)
        self.toolbar.show()
        self.update(state)

    def update(self, state: dict) -> None:
        if self.ui is None:
            return
        self.ui.toolbarCaseLabel.text = state["case"]
        self.ui.toolbarClockLabel.text = state["clock"] + (" paused" if state["paused"] else
                                                           " idle" if state["idle"] else "")
        self.ui.toolbarClockLabel.toolTip = state["status"]
        wasBlocked = self.ui.toolbarPauseButton.blockSignals(True)
        self.ui.toolbarPauseButton.checked = state["paused"]
        self.ui.toolbarPauseButton.text = "Resume" if state["paused"] else "Pause"
        self.ui.toolbarPauseButton.blockSignals(wasBlocked)

    def remove(self) -> None:
        if self.toolbar is None:
            return
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:
            mainWindow.removeToolBar(self.toolbar)
        self.toolbar.deleteLater()
        self.toolbar = self.ui = None


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
                    log.debug(f"BreastTumorSeg: activity not recorded: {oneLine(error)}")
        return False  # the event goes on as usual
