"""The station's trame application: slice views, the BreastTumorSeg panel, the reader study.

Everything a button does is one call into the Slicer logic the desktop module uses
(:class:`BreastTumorSegLogic`, :class:`ReaderStudyLogic`); this module only lays out the page,
keeps the page's state in step and streams the views. State names start with ``bts_``.

Panel, top to bottom: **Case** (open a case: the bundled sample or a data-folder case; the
phases with their times; Segment with progress and Cancel; overlay opacity; threshold slider,
absolute or relative to the maximum; measurements; export .seg.nrrd / NIfTI into the data
folder), **Edit** (paint, erase, scissors, islands, undo, redo; trame-slicer's segment
editor with the brush settings), **Reader study** (the reader's worklist, Start next case,
Pause, flags, Submit; the AI's sections are hidden while a case is read).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from trame.app import TrameApp, asynchronous
from vtkmodules.vtkCommonCore import vtkCommand
from trame.widgets import html
from trame.widgets import vuetify3 as v3

from breasttumorseg.core.errors import BreastTumorSegError
from breasttumorseg.reporting.measurement_table import measurement_rows, row_text
from breasttumorseg.readerstudy.definition import read_study

from .cases import SAMPLE_CASE, list_cases, open_case
from .security import AccessPolicy, Folders, station_middleware

log = logging.getLogger("breasttumorseg")

TICK_S = 1.0
POLL_S = 0.25
MEASURE_DELAY_S = 0.4
EXPORT_FORMATS = {"seg.nrrd": "tumor.seg.nrrd", "nifti": "tumor_label.nii.gz"}


class Station(TrameApp):
    """One station: one headless Slicer scene, one page (see the module docstring)."""

    def __init__(self, server=None, *, folders: Folders, policy: AccessPolicy, study_path: Path | None = None,
                 device: str = "auto"):
        super().__init__(server)
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import SegmentEditorLogic
        from trame_slicer.rca_view import register_rca_factories

        from BreastTumorSegLib import BreastTumorSegLogic
        from BreastTumorSegLib.readerstudy import ReaderStudyLogic

        from .scene import create_slicer_app

        self.server.enable_module(trame_slicer_module)
        self.folders, self.policy, self.study_path, self.device = folders, policy, study_path, device
        self.slicer = create_slicer_app()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layouts = _layout_manager(self.slicer, self.server)
        self.editor = SegmentEditorLogic(self.server, self.slicer)
        self.tumor = BreastTumorSegLogic(scene=self.slicer.scene, warn=self._warn)
        self.reading = ReaderStudyLogic(scene=self.slicer.scene, warn=self._warn)
        self.reading.activeEffectName = self._active_effect
        self._journal_undo_and_redo()
        self._case = None  # {"volumes", "phases", "source", "probability", "segmentation"}
        self._job = None           # the in-process segmentation running, if any
        self._cancel = None
        self._measure_task = None
        self._initial_state()
        self._build_ui()
        self.server.controller.on_server_bind.add(self._bind)
        self.server.controller.on_client_connected.add(self._on_client_connected)

    # ------------------------------------------------------------------------- set-up
    def _bind(self, wslink_server) -> None:
        wslink_server.app.middlewares.append(station_middleware(self.policy))

    def _initial_state(self) -> None:
        s = self.state
        s.trame__title = "BreastTumorSeg station"
        s.bts_tab = "case"
        s.bts_cases = list_cases(self.folders)
        s.bts_case = SAMPLE_CASE
        s.bts_case_open = ""
        s.bts_phases = []
        s.bts_message = ""
        s.bts_error = ""
        s.bts_running = False
        s.bts_progress = 0
        s.bts_step = ""
        s.bts_has_result = False
        s.bts_threshold = 0.5
        s.bts_relative = False
        s.bts_opacity = 0.5
        s.bts_measurements = []
        s.bts_last_activity = 0
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
        s.change("bts_threshold", "bts_relative")(self._on_threshold)
        s.change("bts_opacity")(self._on_opacity)
        s.change("bts_reader")(self._on_reader)

    def _build_ui(self) -> None:
        from trame_slicer.app.ui import SegmentEditorUI, SegmentEditorUndoRedoUI, ViewerLayout

        with ViewerLayout(self.server, title="BreastTumorSeg station", is_drawer_visible=True) as layout:
            self.ui = layout
            layout.title.set_text("BreastTumorSeg station (research software; phantom-trained models)")
            with layout.drawer:
                with v3.VTabs(v_model=("bts_tab",), density="compact", grow=True):
                    v3.VTab("Case", value="case", id="bts-tab-case", disabled=("bts_reading",))
                    v3.VTab("Edit", value="edit", id="bts-tab-edit")
                    v3.VTab("Reader study", value="reader", id="bts-tab-reader", v_if=("bts_readers.length",))
                with html.Div(classes="pa-2", style="overflow-y: auto; height: calc(100% - 48px);"):
                    v3.VAlert(v_if=("bts_error",), text=("bts_error",), type="error", density="compact",
                              closable=True, id="bts-error", classes="mb-2")
                    html.Div("{{ bts_message }}", v_if=("bts_message",), id="bts-message",
                             classes="text-caption mb-2")
                    with html.Div(v_if=("bts_tab === 'case' && !bts_reading",)):
                        self._case_panel()
                    with html.Div(v_show=("bts_tab === 'edit'",)):
                        self._edit_panel(SegmentEditorUI)
                    with html.Div(v_if=("bts_tab === 'reader'",)):
                        self._reader_panel()
            with layout.undo_redo:
                SegmentEditorUndoRedoUI(editor_ui=self._editor_ui)
            with layout.content:
                # the reader's input counts as activity (at most twice a second) for the idle clock
                with html.Div(classes="d-flex flex-column", style="flex: 1 1 0; min-width: 0; height: 100%;",
                              mousemove=self._activity_js(), keydown=self._activity_js(),
                              wheel=self._activity_js(), pointerdown=self._activity_js()):
                    self.layouts.initialize_layout_grid(layout)

    @staticmethod
    def _activity_js() -> str:
        return ("bts_reading && Date.now() - bts_last_activity > 500 && "
                "(bts_last_activity = Date.now(), trigger('bts_activity'))")

    def _case_panel(self) -> None:
        v3.VSelect(label="Case", items=("bts_cases",), v_model=("bts_case",), density="compact", id="bts-case",
                   disabled=("bts_running",))
        v3.VBtn("Open case", click=self.open_case, id="bts-open-case", block=True,
                disabled=("bts_running || bts_preparing",), classes="mb-2")
        with v3.VTable(density="compact", v_if=("bts_phases.length",), id="bts-phases"):
            with html.Tbody():
                with html.Tr(v_for="phase in bts_phases", key="phase.name"):
                    html.Td("{{ phase.name }}")
                    html.Td("{{ phase.time }}")
                    html.Td("{{ phase.role }}")
        with html.Div(v_if=("bts_case_open",), classes="mt-2"):
            v3.VBtn("{{ bts_running ? 'Cancel' : 'Segment' }}", click=self.segment_or_cancel, id="bts-segment",
                    block=True, color=("bts_running ? 'warning' : 'primary'",))
            v3.VProgressLinear(v_if=("bts_running",), model_value=("bts_progress",), height=6, classes="mt-1")
            html.Div("{{ bts_step }}", v_if=("bts_running",), classes="text-caption", id="bts-step")
        with html.Div(v_if=("bts_has_result",), classes="mt-2"):
            with html.Div(id="bts-opacity"):
                v3.VSlider(label="Overlay opacity", v_model=("bts_opacity",), min=0, max=1, step=0.05,
                           density="compact", hide_details=True)
            with html.Div(id="bts-threshold"):
                v3.VSlider(label="Threshold", v_model=("bts_threshold",), min=0.05, max=0.95, step=0.05,
                           density="compact", hide_details=True, thumb_label=True)
            v3.VCheckbox(label="Fraction of the maximum (Hirsch et al.)", v_model=("bts_relative",),
                         density="compact", hide_details=True, id="bts-relative")
            with v3.VTable(density="compact", id="bts-measurements"):
                with html.Tbody():
                    with html.Tr(v_for="row in bts_measurements", key="row.name"):
                        html.Td("{{ row.name }}")
                        html.Td("{{ row.value }}")
            with html.Div(classes="d-flex mt-2", style="gap: 4px;"):
                v3.VBtn("Export .seg.nrrd", click=(self.export, "['seg.nrrd']"), size="small", id="bts-export-seg")
                v3.VBtn("Export NIfTI", click=(self.export, "['nifti']"), size="small", id="bts-export-nifti")

    def _edit_panel(self, SegmentEditorUI) -> None:
        from trame_slicer.segmentation import (SegmentationEffectErase, SegmentationEffectIslands,
                                               SegmentationEffectPaint, SegmentationEffectScissors)

        self._effects = {"paint": SegmentationEffectPaint, "erase": SegmentationEffectErase,
                         "scissors": SegmentationEffectScissors, "islands": SegmentationEffectIslands}
        with html.Div(classes="d-flex flex-wrap mb-2", style="gap: 4px;"):
            for name in self._effects:
                v3.VBtn(name.capitalize(), size="small", click=(self.use_effect, f"['{name}']"), id=f"bts-{name}")
            v3.VBtn("No tool", size="small", click=(self.use_effect, "['none']"), id="bts-no-tool")
        self._editor_ui = SegmentEditorUI()
        self.editor.set_ui(self._editor_ui)

    def _reader_panel(self) -> None:
        html.Div("Study: {{ bts_study }}", classes="text-caption mb-1")
        v3.VSelect(label="Reader", items=("bts_readers",), v_model=("bts_reader",), density="compact",
                   id="bts-reader", disabled=("bts_reader_fixed || bts_reading",))
        with v3.VTable(density="compact", id="bts-worklist", v_if=("bts_worklist.length",)):
            with html.Thead():
                with html.Tr():
                    for title in ("#", "Case", "Arm", "Status", "Active min"):
                        html.Th(title)
            with html.Tbody():
                with html.Tr(v_for="row in bts_worklist", key="row.position"):
                    for key in ("position", "case", "arm", "status", "active"):
                        html.Td(f"{{{{ row.{key} }}}}")
        html.Div("{{ bts_reading_status }}", id="bts-reading-status", classes="text-body-2 my-2")
        with html.Div(classes="d-flex flex-wrap", style="gap: 4px;"):
            v3.VBtn("Start next case", click=self.start_next_case, id="bts-start-case",
                    disabled=("!bts_reader || bts_reading || bts_all_done || bts_preparing",), size="small",
                    color="primary")
            v3.VBtn("{{ bts_paused ? 'Resume' : 'Pause' }}", click=self.pause_or_resume, id="bts-pause",
                    disabled=("!bts_reading",), size="small")
            v3.VBtn("Submit case", click=self.submit_case, id="bts-submit", disabled=("!bts_reading",),
                    size="small", color="success")
            v3.VBtn("No tumor visible", click=(self.flag, "['no_tumor_visible']"), id="bts-flag-no-tumor",
                    disabled=("!bts_reading",), size="small")
            v3.VBtn("Image quality", click=(self.flag, "['image_quality']"), id="bts-flag-quality",
                    disabled=("!bts_reading",), size="small")
        v3.VTextField(label="Comment", v_model=("bts_comment",), density="compact", disabled=("!bts_reading",),
                      id="bts-comment", classes="mt-2", hide_details=True)
        v3.VBtn("Add comment", click=(self.flag, "['comment']"), id="bts-add-comment", disabled=("!bts_reading",),
                size="small", classes="mt-1")
        self.server.trigger("bts_activity")(self.activity)

    # ------------------------------------------------------------------------- case
    def open_case(self) -> None:
        """Load the chosen case, then swap it in for the open one (a case that fails to load
        leaves the open case as it was) and show its first post-contrast phase."""
        with self._reporting():
            if self.reading.isCaseOpen():
                raise BreastTumorSegError("a reader-study case is open; submit or close it first")
            case = open_case(self.folders, self.state.bts_case)
            volumes, study = self._load_case(case)
            self._clear_scene()
            phases = self.tumor.phasesFromNode(volumes)
            self._case = {"volumes": volumes, "phases": phases, "study": study, "source": volumes[1],
                          "name": case.name, "probability": None, "segmentation": None}
            self._show(volumes[1])
            times = list(study.times_s) if study.times_s is not None else [None] * study.n_phases
            self.state.bts_phases = [{"name": name, "time": "-" if t is None else f"{t:g} s",
                                      "role": "pre-contrast" if i == 0 else f"post {i}"}
                                     for i, (name, t) in enumerate(zip(study.phase_names, times))]
            self.state.bts_case_open = case.name
            self.state.bts_has_result = False
            self.state.bts_measurements = []
            self.state.bts_message = f"{case.name}: {study.n_phases} phases, {study.geometry.size} voxels"

    def _load_case(self, case):
        """The case's phase volumes (new nodes) and study; a data-folder case is read through
        pinned files (:meth:`Folders.pinned_files`), so what was checked is what is read."""
        if case.name == SAMPLE_CASE:
            return self.tumor.loadStudy(list(case.phases), name=case.name)
        files = [*case.phases, *([case.times] if case.times else [])]
        with self.folders.pinned_files("data", files) as pinned:
            try:
                return self.tumor.loadStudy(pinned[:len(case.phases)], name=case.name)
            except BreastTumorSegError as error:  # name the case's file, not its private pinned name
                raise type(error)(str(error).replace(str(pinned[0].parent), case.name)) from None

    def segment_or_cancel(self) -> None:
        """Segment the open case in this process (a worker thread runs the model), or cancel."""
        if self._job is not None:
            self._cancel.cancel()
            self.state.bts_step = "cancelling..."
            return
        from breasttumorseg.core.progress import CancelToken

        with self._reporting():
            if self._case is None:
                raise BreastTumorSegError("open a case first")
            self._segment_started = time.perf_counter()
            self._job = self.tumor.prepareSegmentation(self._case["phases"])
            self._cancel = CancelToken()
            self._progress = (0.0, "starting")
            self.state.bts_running = True
            self.state.bts_progress = 0
            asynchronous.create_task(self._run_segmentation())

    async def _run_segmentation(self) -> None:
        job = self._job

        warnings: list[str] = []  # the worker thread's warnings, shown from this loop

        def progress(step: str, fraction: float) -> None:  # called on the worker thread
            self._progress = (fraction, step)

        worker = asyncio.get_running_loop().run_in_executor(
            None, lambda: job.run(device=self.device, progress=progress, cancel=self._cancel, warn=warnings.append))
        while not worker.done() or warnings:
            with self.state:
                self.state.bts_progress = round(100 * self._progress[0])
                self.state.bts_step = self._progress[1]
                while warnings:
                    self._warn(warnings.pop(0))
            if not worker.done():
                await asyncio.sleep(POLL_S)
        with self.state, self._reporting():
            self._job = None
            self.state.bts_running = False
            worker.result()  # a backend error or the cancellation surfaces here as the page's one line
            computed = time.perf_counter()
            probability, segmentation = self.tumor.finishJob(job, name=self._case["name"])
            self._case.update(probability=probability, segmentation=segmentation)
            self._show(self._case["source"], probability)
            self._edit(segmentation, self._case["source"])
            self.state.bts_threshold = float(job.settings.threshold)
            self.state.bts_relative = bool(job.settings.relative)
            self.state.bts_has_result = True
            shown = time.perf_counter()
            self.state.bts_message = f"segmented in {shown - self._segment_started:.1f} s (Segment click to overlay)"
            log.info("station: segment -> overlay %.2f s (model %.2f s, nodes and views %.2f s)",
                     shown - self._segment_started, computed - self._segment_started, shown - computed)
        self._measure_later()

    def _on_threshold(self, bts_threshold, bts_relative, **_) -> None:
        case = self._case
        if case is None or case.get("probability") is None:
            return
        with self._reporting():
            started = time.perf_counter()
            self.tumor.updateSegmentation(case["probability"], case["segmentation"], float(bts_threshold),
                                          bool(bts_relative))
            log.info("station: threshold %.2f -> segment %.3f s", bts_threshold, time.perf_counter() - started)
        self._measure_later()

    def _measure_later(self) -> None:
        """Measure once the views have the new segment: measuring a clinical-size study takes
        seconds (functional tumor volume, kinetics), which must not hold the view back; moves
        of the slider in the meantime restart the wait."""
        if self._measure_task is not None:
            self._measure_task.cancel()
        self._measure_task = asynchronous.create_task(self._measure_after(MEASURE_DELAY_S))

    async def _measure_after(self, delay_s: float) -> None:
        """The segment is read here (main thread); the measuring runs on a worker thread."""
        from breasttumorseg.reporting.measurements import measure

        await asyncio.sleep(delay_s)
        case = self._case
        if case is None or case.get("segmentation") is None:
            return
        started = time.perf_counter()
        with self._reporting():
            study = case["study"]
            mask = self.tumor.segmentMask(case["segmentation"], study.geometry)
            values = await asyncio.get_running_loop().run_in_executor(None, measure, study, mask)
            if case is self._case:
                with self.state:
                    self.state.bts_measurements = _measurement_rows(values)
            log.info("station: measurements %.2f s", time.perf_counter() - started)

    def _on_opacity(self, bts_opacity, **_) -> None:
        for view in self.slicer.view_manager.get_slice_views():
            view.set_foreground_opacity(float(bts_opacity))

    def export(self, kind: str) -> None:
        """Write the tumor segmentation into the data folder: exports/<case>/<file>."""
        with self._reporting():
            case = self._case
            if case is None or case.get("segmentation") is None:
                raise BreastTumorSegError("segment a case first")
            if "data" not in self.folders.roots:
                raise BreastTumorSegError("start the station with --data DIR to export into that folder")
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case["name"])
            relative = f"exports/{safe}"
            with self.folders.pinned_folder("data", relative) as folder:  # written where it was checked
                self.tumor.export(case["segmentation"], folder / EXPORT_FORMATS[kind], case["source"])
            self.state.bts_message = f"exported {relative}/{EXPORT_FORMATS[kind]}"

    def _journal_undo_and_redo(self) -> None:
        """Undo and redo replace the segments without the voxel event the reading clock counts
        edits by; the editor's undo stack tells the reading instead."""
        stack = self.slicer.segmentation_editor.undo_stack
        for name in ("undo", "redo"):
            action = getattr(stack, name)
            effect_name = name.capitalize()

            def journaled(action=action, effect=effect_name):
                action()
                self.reading.noteEdit(effect)

            setattr(stack, name, journaled)

    def _active_effect(self) -> str | None:
        """The active effect's short name ("Paint", "Erase", ...), as the journal records it."""
        name = self.slicer.segmentation_editor.get_active_effect_name() or ""
        return name.rsplit(".", 1)[-1].replace("SegmentationEffect", "") or None

    def use_effect(self, name: str) -> None:
        editor = self.slicer.segmentation_editor
        if name == "none":
            editor.deactivate_effect()
        else:
            editor.set_active_effect_type(self._effects[name])

    # ------------------------------------------------------------------------- reader study
    def _on_client_connected(self, *_) -> None:
        if self.policy.require_token and self.study_path and self.policy.active_reader:
            with self.state:
                self.state.bts_reader = self.policy.active_reader

    def _on_reader(self, bts_reader, **_) -> None:
        if not bts_reader or not self.study_path:
            return
        if self.policy.require_token and bts_reader != self.policy.active_reader:
            self.state.bts_reader = self.policy.active_reader
            return
        with self._reporting():
            self.reading.openStudy(self.study_path, bts_reader)
            self._refresh_reading()

    def start_next_case(self) -> None:
        """Open the reader's next case; an assisted reading whose AI result was not prepared
        (``breasttumorseg study prepare``) gets it computed first, on a worker thread."""
        from breasttumorseg.readerstudy.ai import prepared

        with self._reporting():
            if self._job is not None or self.state.bts_preparing:
                raise BreastTumorSegError("a segmentation is running; wait for it or cancel it first")
            session = self.reading.session
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
        with self.state, self._reporting():
            self.state.bts_preparing = False
            worker.result()
            self._start_case()

    def _start_case(self) -> None:
        case = self.reading.startNextCase()  # the open case stays if this fails
        self._clear_scene()
        self._show(case["sourceVolume"])
        self._edit(case["segmentation"], case["sourceVolume"])
        self.state.bts_reading = True
        self.state.bts_tab = "edit"
        self.state.bts_message = (f"{case['case']} ({case['arm']}): "
                                  + ("resumed where you left it" if case["resumed"] else "timer started"))
        self._refresh_reading()
        asynchronous.create_task(self._tick())

    async def _tick(self) -> None:
        while self.reading.isCaseOpen():
            await asyncio.sleep(TICK_S)
            with self.state, self._reporting():
                self.reading.tick()
                self._refresh_reading()

    def activity(self) -> None:
        self.reading.noteActivity()

    def pause_or_resume(self) -> None:
        with self._reporting():
            if self.reading.status().get("paused"):
                self.reading.resume()
            else:
                self.reading.pause()
            self._refresh_reading()

    def flag(self, kind: str) -> None:
        with self._reporting():
            comment = self.state.bts_comment if kind == "comment" else ""
            self.reading.flag(kind, comment)
            self.state.bts_comment = ""
            self.state.bts_message = f"recorded: {comment or kind.replace('_', ' ')}"

    def submit_case(self) -> None:
        with self._reporting():
            path = self.reading.submitCase()
            self._forget_edits()
            self.state.bts_reading = False
            self.state.bts_message = f"submitted {Path(path).name}"
            self._refresh_reading()

    def _refresh_reading(self) -> None:
        s = self.state
        if self.reading.session is None:
            s.bts_worklist, s.bts_reading_status = [], ""
            return
        s.bts_worklist = [{**row, "active": f"{row['active_s'] / 60:.1f}"} for row in self.reading.worklist()]
        status = self.reading.status()
        s.bts_all_done = self.reading.session.finished
        s.bts_paused = bool(status.get("paused"))
        s.bts_reading = bool(status.get("open"))
        if status.get("open"):
            marks = " - PAUSED" if status["paused"] else (" - idle" if status["idle"] else "")
            s.bts_reading_status = (f"{status['case']} ({status['arm']}) {status['position']}/{status['total']} - "
                                    f"active {_clock(status['active_s'])}, wall {_clock(status['wall_s'])} - "
                                    f"{status['n_edits']} edits{marks}")
        else:
            s.bts_reading_status = f"{status['done']}/{status['total']} cases done"

    # ------------------------------------------------------------------------- views
    def _show(self, background, foreground=None) -> None:
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(background)
        display.show_volume_in_slice_foreground(foreground)
        for view in self.slicer.view_manager.get_slice_views():
            view.set_foreground_opacity(float(self.state.bts_opacity))
        display.reset_views()

    def _edit(self, segmentation, source) -> None:
        """Make ``segmentation`` the one the editor's effects change; outside a reading, its
        measurements follow every edit."""
        from BreastTumorSegLib.nodes import voxelsModifiedEvent

        self.slicer.segmentation_editor.set_active_segmentation(segmentation, source)
        self.editor._on_segment_editor_changed()
        if self._case is not None and segmentation is self._case.get("segmentation"):
            remeasure = lambda *_: self._measure_later()  # noqa: E731
            segmentation.GetSegmentation().AddObserver(voxelsModifiedEvent(), remeasure)
            segmentation.AddObserver(vtkCommand.ModifiedEvent, remeasure)  # undo and redo replace the segments

    def _forget_edits(self) -> None:
        """No tool active and nothing to undo: the segmentation those edits changed is gone."""
        editor = self.slicer.segmentation_editor
        editor.deactivate_effect()
        if editor.undo_stack is not None:
            editor.undo_stack.clear()

    def _clear_scene(self) -> None:
        """Remove the open (non-reading) case's nodes."""
        self._forget_edits()
        if self._case is not None:
            from BreastTumorSegLib.nodes import removeWithDependents

            removeWithDependents(list(self._case["volumes"]) + [self._case["probability"], self._case["segmentation"]])
        self._case = None
        self.state.bts_case_open = ""
        self.state.bts_has_result = False
        self.state.bts_phases = []
        self.state.bts_measurements = []

    # ------------------------------------------------------------------------- messages
    def _warn(self, message: str) -> None:
        """A backend warning (a phase resampled, times missing): logged and shown in the page."""
        log.warning(message)
        self.state.bts_message = message

    def _reporting(self):
        return _Reporting(self)


class _Reporting:
    """Context: a user's error becomes the page's one-line error, anything else is logged too."""

    def __init__(self, station: Station):
        self.station = station

    def __enter__(self):
        self.station.state.bts_error = ""
        return self

    def __exit__(self, kind, error, _traceback):
        if error is None:
            return False
        if isinstance(error, BreastTumorSegError):
            self.station.state.bts_error = str(error)
        else:
            log.exception("station: unexpected error")
            self.station.state.bts_error = f"unexpected error: {error}"
        return True


def _measurement_rows(values: dict) -> list[dict]:
    """The panel's measurement table: the rows every display shows (total volume, the index
    lesion's diameter and T category, each lesion, FTV, curve type), name and value with its unit."""
    return [{"name": name, "value": row_text(value, unit)} for name, value, unit in measurement_rows(values)]


def _clock(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _layout_manager(slicer_app, server):
    """Three slice views, axial large (no 3D view: volume rendering costs CPU a reader does not need)."""
    from trame_slicer.core import LayoutManager
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    manager = LayoutManager(slicer_app.scene, slicer_app.view_manager, server)
    layout = Layout(LayoutDirection.Horizontal, [
        ViewLayoutDefinition.axial_view(),
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.coronal_view()]),
    ])
    manager.register_layout("BreastTumorSeg", layout)
    manager.set_layout("BreastTumorSeg")
    return manager


__all__ = ["Station"]
