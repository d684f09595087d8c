"""ReaderStudyLogic: a reader's session of a reader study, in the MRML scene.

Qt-free (runs on PyPI ``slicer-core`` in CI and in the desktop application). The backend's
:class:`~breasttumorseg.readerstudy.session.ReaderSession` keeps the worklist, the timer,
the journal and the autosave; this logic puts the case into the scene and feeds the session:

* **Start next case** loads the case's phases as volume nodes (the first post-contrast phase
  becomes the source volume), makes a segmentation node on its grid and fills it: with the
  reading's last autosave when the reading resumes after a restart, with the prepared AI
  segmentation in the assisted arm (computed now if ``study prepare`` was not run), empty in
  the manual arm. In the manual arm the AI's files are never read and no AI node is made.
* **Edits**: an observer on the segmentation's voxels reports each modification to the
  session with the Segment Editor effect that made it (``activeEffectName``, set by the Qt
  layer); the Qt layer also reports mouse and keyboard activity (:meth:`noteActivity`) and
  calls :meth:`tick` about once a second (idle detection, autosave).
* **Submit / close** writes the segmentation through the session (atomically, never
  replacing a submitted reading) and removes the case's nodes from the scene.
* **The reading toolbar** (timer, Pause, Submit, Flag) must stay reachable while the reader
  works in Segment Editor, outside the module panel. The logic drives it through
  ``toolbar``, any object with ``show(state)``, ``update(state)`` and ``remove()`` (the Qt
  layer's toolbar in the main window): shown when a case opens, updated on every tick,
  pause, resume and flag, removed when the case is submitted or closed. ``state`` is
  :meth:`toolbarState`.

Segmentations are written as single-segment ``.seg.nrrd`` files on the case's grid by the
backend writer, so they load in Slicer and any NRRD reader.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import slicer

from breasttumorseg.core.errors import BreastTumorSegError, InputError
from breasttumorseg.readerstudy.display import clock_text, reading_status_text

from . import nodes

log = logging.getLogger("breasttumorseg")


class ReaderStudyLogic:
    """One reader working through a study in the scene (see the module docstring)."""

    def __init__(self, scene=None, clock: Callable[[], float] = time.monotonic,
                 warn: Optional[Callable[[str], None]] = None):
        self._scene = scene
        self._clock = clock
        self.warn = warn or (lambda message: log.warning(message))
        #: Returns the Segment Editor's active effect name (set by the Qt layer), or None.
        self.activeEffectName: Optional[Callable[[], Optional[str]]] = None
        self.session = None
        self._caseNodes: list = []
        self._segmentation = None
        self._segmentId = None
        self._geometry = None
        self._observation = None
        #: The reading toolbar (see the module docstring), or None.
        self.toolbar = None

    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    # ------------------------------------------------------------------------- study
    @staticmethod
    def readersOf(studyPath) -> list:
        """The reader IDs of a study file (validated; one-line error when it is not)."""
        from breasttumorseg.readerstudy.definition import read_study

        return list(read_study(studyPath, check_files=False).readers)

    def openStudy(self, studyPath, reader: str) -> None:
        """Open ``reader``'s session of the study (closing any open one first)."""
        from breasttumorseg.readerstudy.definition import read_study
        from breasttumorseg.readerstudy.session import ReaderSession

        study = read_study(studyPath)
        self.closeStudy()
        self.session = ReaderSession(study, reader, clock=self._clock, warn=self.warn)

    def closeStudy(self) -> None:
        """Close the open case (autosaved, resumes next time) and the reader's journal."""
        if self.session is None:
            return
        try:
            self.closeCase()
        finally:
            self.session.close()
            self.session = None

    def worklist(self) -> list:
        """Every reading in order: position (1-based), case, arm, status, wall_s, active_s."""
        return [{"position": record.position + 1, "case": record.case_id, "arm": record.arm,
                 "status": record.status, "wall_s": record.wall_s, "active_s": record.active_s}
                for record in self._session().worklist()]

    # ------------------------------------------------------------------------- one case
    def isCaseOpen(self) -> bool:
        return self.session is not None and self.session.current is not None

    def startNextCase(self, progress=None) -> dict:
        """Load the next reading into the scene and start its timer (see the module docstring)."""
        from breasttumorseg.exam.loading import read_mask

        from .logic import BreastTumorSegLogic

        session = self._session()
        reading = session.next_reading()
        if reading is None:
            raise InputError(f"reader '{session.reader}' has read every case of the study", session.study.path)
        study = session.study
        case = study.case(reading.case_id)
        volumes, dce = BreastTumorSegLogic(self.scene, warn=self.warn).loadStudy(
            case.inputs, case.times_s, name=case.id, progress=progress)
        self._caseNodes = list(volumes)
        initial = None
        try:
            resumeFile = session.resume_file(reading)
            if resumeFile is not None:
                initial = read_mask(resumeFile, dce.geometry, warn=self.warn)
            elif reading.arm == "assisted":
                initial = read_mask(self._aiSegmentation(case, progress), dce.geometry, warn=self.warn)
        except BreastTumorSegError:
            self._removeCaseNodes()
            raise

        scene = self.scene
        label = f"{case.id} ({reading.arm})"
        source = volumes[1]
        segmentation, segmentId = nodes.addTumorSegmentation(scene, source, dce.geometry, f"Reading {label}")
        if initial is not None and initial.any():
            nodes.setSegmentFromArray(segmentation, segmentId, initial, dce.geometry)
        self._caseNodes = volumes + [segmentation]
        self._segmentation, self._segmentId, self._geometry = segmentation, segmentId, dce.geometry
        try:
            opened = session.open_next(self._writeSegmentation)
        except BreastTumorSegError:
            self._removeCaseNodes()
            raise
        _hideSegmentations(scene, keep=segmentation)  # the reading alone in the views: no earlier (AI) result
        self._observe(segmentation)
        if self.toolbar is not None:
            self.toolbar.show(self.toolbarState())
        return {"case": case.id, "arm": reading.arm, "position": reading.position + 1, "total": len(session.order),
                "resumed": opened.resume_file is not None, "segmentation": segmentation, "sourceVolume": source}

    def noteEdit(self, effect: str) -> None:
        """An edit the voxel observer does not see (an undo or redo that replaces the segments)."""
        if self.isCaseOpen():
            self.session.edited(effect)

    def noteActivity(self) -> None:
        """The reader moved the mouse, scrolled or typed."""
        if self.isCaseOpen():
            self.session.input()

    def pause(self) -> None:
        self._session().pause()
        self._updateToolbar()

    def resume(self) -> None:
        self._session().resume()
        self._updateToolbar()

    def flag(self, kind: str, comment: str = "") -> None:
        """Flag the open case: "no_tumor_visible", "image_quality" or "comment"."""
        self._session().flag(kind, comment)
        self._updateToolbar()

    def tick(self) -> list:
        """Idle detection and autosave; call about once a second. Returns the events journaled."""
        if not self.isCaseOpen():
            return []
        try:
            return self.session.tick()
        finally:
            self._updateToolbar()

    def status(self) -> dict:
        """The open case for a display: case, arm, position (1-based), total, done, wall_s,
        active_s, paused, idle, n_edits; ``open`` False when no case is open."""
        if self.session is None:
            return {"open": False, "done": 0, "total": 0}
        status = self.session.status()
        if "position" in status:
            status["position"] += 1
        return status

    def statusText(self) -> str:
        """:meth:`status` in one line (the panel's reading status, the toolbar's tooltip)."""
        return reading_status_text(self.status())

    def toolbarState(self) -> dict:
        """What the reading toolbar shows: ``case`` ("case03 (assisted) 4/12"), ``clock`` (active
        reading time, minutes:seconds), ``paused``, ``idle`` and ``status`` (:meth:`statusText`)."""
        status = self.status()
        if not status.get("open"):
            return {"case": "", "clock": clock_text(0), "paused": False, "idle": False, "status": self.statusText()}
        return {"case": f"{status['case']} ({status['arm']}) {status['position']}/{status['total']}",
                "clock": clock_text(status["active_s"]), "paused": bool(status.get("paused")),
                "idle": bool(status.get("idle")), "status": reading_status_text(status)}

    def submitCase(self) -> str:
        """Write the reading's final segmentation, journal the submit, clear the case from the scene."""
        final = self._session().submit()
        self._endCase()
        return str(final)

    def closeCase(self) -> None:
        """Leave the open case unsubmitted (autosaved); it resumes when the reader comes back."""
        if not self.isCaseOpen():
            return
        try:
            self.session.close_case()
        finally:
            self._endCase()

    # ------------------------------------------------------------------------- analysis
    def analyzeStudy(self, outputDir, studyPath=None, overwrite: bool = True, progress=None) -> str:
        """Analyse the open study (or ``studyPath``) into ``outputDir``; returns report.html's path."""
        from breasttumorseg.readerstudy.analysis import analyze_study
        from breasttumorseg.readerstudy.definition import read_study
        from breasttumorseg.readerstudy.report import write_report

        study = read_study(studyPath) if studyPath else self._session().study
        analysis = analyze_study(study, progress=progress, warn=self.warn)
        if not analysis.rows:
            raise InputError("no reading has been submitted yet: nothing to analyse", study.path)
        folder = write_report(outputDir, analysis, overwrite=overwrite)
        return str(Path(folder) / "report.html")

    # ------------------------------------------------------------------------- internals
    def _session(self):
        if self.session is None:
            raise InputError("no reader study is open; open a study file and pick your reader ID first")
        return self.session

    def _aiSegmentation(self, case, progress) -> Path:
        from breasttumorseg.readerstudy.ai import ai_files, prepared, segment_case

        study = self.session.study
        if prepared(study, case.id) is None:
            self.warn(f"{case.id}: the AI result was not prepared ('breasttumorseg study prepare'); computing it now")
            segment_case(study, case, progress=progress, warn=self.warn)
        return ai_files(study, case.id)[0]

    def _writeSegmentation(self, path: Path) -> None:
        from breasttumorseg.reporting.writing import write_segmentation_nrrd

        mask = nodes.segmentArray(self._segmentation, self._segmentId, self._geometry)
        write_segmentation_nrrd(path, mask, self._geometry)

    def _observe(self, segmentation) -> None:
        data = segmentation.GetSegmentation()
        self._observation = (data, data.AddObserver(nodes.voxelsModifiedEvent(), self._onEdited))

    def _onEdited(self, caller=None, event=None) -> None:
        if not self.isCaseOpen():
            return
        effect = None
        if self.activeEffectName is not None:
            try:
                effect = self.activeEffectName()
            except Exception:  # noqa: BLE001 - the editor may be gone; the edit still counts
                effect = None
        self.session.edited(effect)

    def _updateToolbar(self) -> None:
        if self.toolbar is not None and self.isCaseOpen():
            self.toolbar.update(self.toolbarState())

    def _endCase(self) -> None:
        if self._observation is not None:
            data, tag = self._observation
            data.RemoveObserver(tag)
            self._observation = None
        self._removeCaseNodes()
        if self.toolbar is not None:
            self.toolbar.remove()

    def _removeCaseNodes(self) -> None:
        """Remove the case's volumes and segmentation with their display and storage nodes."""
        nodes.removeWithDependents(self._caseNodes)
        self._caseNodes = []
        self._segmentation = self._segmentId = self._geometry = None


def _hideSegmentations(scene, keep=None) -> None:
    """Hide every segmentation node in the scene but ``keep`` (e.g. an earlier AI result)."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node is keep:
            continue
        for display in range(node.GetNumberOfDisplayNodes()):
            node.GetNthDisplayNode(display).SetVisibility(False)
