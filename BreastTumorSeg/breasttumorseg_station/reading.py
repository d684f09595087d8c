"""The station's Reader study tab: the reader's worklist and one timed reading at a time.

Every action is one call into :class:`ReaderStudyLogic`, the reader-study logic the desktop
module uses: choose the reader, start the next case (an assisted reading whose AI result was
not prepared gets it computed first, on a worker thread), pause and resume, flag, comment,
submit. The reading's clock ticks once a second while a case is open; the page reports the
reader's input as activity (see the layout) and the editor's undo and redo as edits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from trame.app import asynchronous

from breasttumorseg.core.errors import BreastTumorSegError
from breasttumorseg.readerstudy.definition import read_study
from breasttumorseg.readerstudy.display import reading_status_text

from .page import Page

TICK_S = 1.0
POLL_S = 0.25


class ReadingControl:
    """The Reader study tab's actions on one page (state names: see :meth:`initial_state`)."""

    def __init__(self, page: Page, reading_logic, case_control, policy, study_path: Path | None, device: str):
        self.page, self.state = page, page.state
        self.logic, self.cases = reading_logic, case_control
        self.policy, self.study_path, self.device = policy, study_path, device
        self._progress = (0.0, "")
        self.logic.activeEffectName = page.active_effect
        self._journal_undo_and_redo()

    def initial_state(self) -> None:
        s = self.state
        study = read_study(self.study_path, check_files=False) if self.study_path else None
        s.bts_study = study.name if study else ""
        s.bts_readers = list(study.readers) if study else []
        s.bts_reader = None
        s.bts_reader_fixed = self.policy.require_token
        s.bts_worklist = []
        s.bts_reading = False
        s.bts_all_done = False
        s.bts_preparing = False  # an assisted reading's AI result being computed
        s.bts_reading_status = ""
        s.bts_paused = False
        s.bts_comment = ""
        s.bts_last_activity = 0
        s.change("bts_reader")(self._on_reader)

    def _journal_undo_and_redo(self) -> None:
        """Undo and redo replace the segments without the voxel event the reading clock counts
        edits by; the editor's undo stack tells the reading instead."""
        stack = self.page.slicer.segmentation_editor.undo_stack
        for name in ("undo", "redo"):
            action = getattr(stack, name)
            effect_name = name.capitalize()

            def journaled(action=action, effect=effect_name):
                action()
                self.logic.noteEdit(effect)

            setattr(stack, name, journaled)

    # ------------------------------------------------------------------------- the reader
    def on_client_connected(self, *_) -> None:
        """With tokens, the reader is the one whose token opened the page."""
        if self.policy.require_token and self.study_path and self.policy.active_reader:
            with self.state:
                self.state.bts_reader = self.policy.active_reader

    def _on_reader(self, bts_reader, **_) -> None:
        if not bts_reader or not self.study_path:
            return
        if self.policy.require_token and bts_reader != self.policy.active_reader:
            self.state.bts_reader = self.policy.active_reader
            return
        with self.page.reporting():
            self.logic.openStudy(self.study_path, bts_reader)
            self._refresh()

    # ------------------------------------------------------------------------- one reading
    def start_next_case(self) -> None:
        """Open the reader's next case; an assisted reading whose AI result was not prepared
        (``breasttumorseg study prepare``) gets it computed first, on a worker thread."""
        from breasttumorseg.readerstudy.ai import prepared

        with self.page.reporting():
            if self.cases.busy or self.state.bts_preparing:
                raise BreastTumorSegError("a segmentation is running; wait for it or cancel it first")
            session = self.logic.session
            reading = session.next_reading() if session is not None else None
            if reading is not None and reading.arm == "assisted" and prepared(session.study, reading.case_id) is None:
                self.state.bts_preparing = True
                asynchronous.create_task(self._prepare_then_start(session.study, reading.case_id))
                return
            self._start_case()

    async def _prepare_then_start(self, study, case_id: str) -> None:
        from breasttumorseg.readerstudy.ai import segment_case

        self._progress = (0.0, "preparing the case")
        worker = asyncio.get_running_loop().run_in_executor(
            None, lambda: segment_case(study, study.case(case_id), device=self.device,
                                       progress=lambda step, fraction: setattr(self, "_progress", (fraction, step))))
        while not worker.done():
            with self.state:
                self.state.bts_reading_status = f"preparing the case... {100 * self._progress[0]:.0f}%"
            await asyncio.sleep(POLL_S)
        with self.state, self.page.reporting():
            self.state.bts_preparing = False
            worker.result()
            self._start_case()

    def _start_case(self) -> None:
        case = self.logic.startNextCase()  # the open case stays if this fails
        self.cases.close()
        self.page.show(case["sourceVolume"])
        self.page.edit(case["segmentation"], case["sourceVolume"])
        self.state.bts_reading = True
        self.state.bts_tab = "edit"
        self.state.bts_message = (f"{case['case']} ({case['arm']}): "
                                  + ("resumed where you left it" if case["resumed"] else "timer started"))
        self._refresh()
        asynchronous.create_task(self._tick())

    async def _tick(self) -> None:
        while self.logic.isCaseOpen():
            await asyncio.sleep(TICK_S)
            with self.state, self.page.reporting():
                self.logic.tick()
                self._refresh()

    def activity(self) -> None:
        """The reader's input in the page (mouse, keys, wheel): the reading is not idle."""
        self.logic.noteActivity()

    def pause_or_resume(self) -> None:
        with self.page.reporting():
            if self.logic.status().get("paused"):
                self.logic.resume()
            else:
                self.logic.pause()
            self._refresh()

    def flag(self, kind: str) -> None:
        """Journal a flag ("no_tumor_visible", "image_quality") or the typed comment ("comment")."""
        with self.page.reporting():
            comment = self.state.bts_comment if kind == "comment" else ""
            self.logic.flag(kind, comment)
            self.state.bts_comment = ""
            self.state.bts_message = f"recorded: {comment or kind.replace('_', ' ')}"

    def submit_case(self) -> None:
        with self.page.reporting():
            path = self.logic.submitCase()
            self.page.forget_edits()
            self.state.bts_reading = False
            self.state.bts_message = f"submitted {Path(path).name}"
            self._refresh()

    def _refresh(self) -> None:
        """The worklist, the status line and the buttons' state, as the reading logic has them."""
        s = self.state
        if self.logic.session is None:
            s.bts_worklist, s.bts_reading_status = [], ""
            return
        s.bts_worklist = [{**row, "active": f"{row['active_s'] / 60:.1f}"} for row in self.logic.worklist()]
        status = self.logic.status()
        s.bts_all_done = self.logic.session.finished
        s.bts_paused = bool(status.get("paused"))
        s.bts_reading = bool(status.get("open"))
        s.bts_reading_status = reading_status_text(status)
