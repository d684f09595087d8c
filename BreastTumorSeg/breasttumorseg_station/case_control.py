"""The station's Case tab: open and close a case, segment it, follow the threshold, measure, export.

A data-folder case may come with a result to review (its ``probability.nii.gz``, see
:mod:`.cases`): it opens thresholded at 0.5, as a fresh segmentation would.

Every action is one call into the Slicer logic the desktop module uses
(:class:`BreastTumorSegLogic`). The open case is one value (:class:`OpenCase`); a case that
fails to load leaves the open one as it was. Segmenting runs the model on a worker thread
(the page stays live, Cancel stops it). A threshold move is applied as :mod:`.slider` says
(the latest of a burst); measuring a clinical-size study takes seconds, so it waits until the
slider or the editor has been still for a moment and runs off the page's process
(:mod:`.measuring`), stopped by the next change.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from trame.app import asynchronous
from vtkmodules.vtkCommonCore import vtkCommand

from breasttumorseg.core.errors import BreastTumorSegError, GeometryError, InputError
from breasttumorseg.exam.loading import read_image
from breasttumorseg.reporting.measurement_table import measurement_rows, row_text
from breasttumorseg.segmentation.postprocess import ThresholdSettings

from .cases import SAMPLE_CASE, open_case
from .measuring import Measuring
from .page import Page, log
from .slider import LatestOnly, settle_heap

POLL_S = 0.25
MEASURE_DELAY_S = 0.4
EXPORT_FORMATS = {"seg.nrrd": "tumor.seg.nrrd", "nifti": "tumor_label.nii.gz"}


@dataclass
class OpenCase:
    """The nodes of the case open in the Case tab."""

    name: str
    volumes: list            # the phase volume nodes, in acquisition order
    phases: list             # the logic's phase list of those nodes
    study: object            # the DCEStudy read from them (geometry, times)
    source: object           # the volume the views show under the overlay (first post-contrast)
    probability: object = None   # the probability volume node, once segmented
    segmentation: object = None  # the tumor segmentation node, once segmented


class CaseControl:
    """The Case tab's actions on one page (state names: see :meth:`initial_state`)."""

    def __init__(self, page: Page, tumor_logic, reading_logic, folders, device: str):
        self.page, self.state = page, page.state
        self.tumor, self.reading, self.folders, self.device = tumor_logic, reading_logic, folders, device
        self.exports = "exports"    # the data folder's subfolder exports go to (a room: exports/<reader>)
        self.case: OpenCase | None = None
        self._job = None            # the in-process segmentation running, if any
        self._cancel = None
        self._progress = (0.0, "")
        self._measure_task = None
        self._measuring = Measuring()
        self._threshold = LatestOnly(self._apply_threshold)

    def initial_state(self, cases: list[str]) -> None:
        s = self.state
        s.bts_cases = cases
        s.bts_case = SAMPLE_CASE
        s.bts_case_open = ""
        s.bts_phases = []
        s.bts_running = False
        s.bts_progress = 0
        s.bts_step = ""
        s.bts_has_result = False
        s.bts_threshold = 0.5
        s.bts_relative = False
        s.bts_opacity = 0.5
        s.bts_measurements = []
        s.change("bts_threshold", "bts_relative")(self._on_threshold)
        s.change("bts_opacity")(lambda bts_opacity, **_: self.page.set_opacity(bts_opacity))

    @property
    def busy(self) -> bool:
        """Whether a segmentation is running."""
        return self._job is not None

    # ------------------------------------------------------------------------- open and close
    def open_case(self) -> None:
        """Load the chosen case, then swap it in for the open one (a case that fails to load
        leaves the open case as it was) and show its first post-contrast phase."""
        with self.page.reporting():
            if self.reading.isCaseOpen():
                raise BreastTumorSegError("a reader-study case is open; submit or close it first")
            case = open_case(self.folders, self.state.bts_case)
            volumes, study, result = self._load(case)
            self.close()
            self.case = OpenCase(case.name, volumes, self.tumor.phasesFromNode(volumes), study, source=volumes[1])
            self.page.show(self.case.source)
            if result is not None:
                self._show_result(*result)
            times = list(study.times_s) if study.times_s is not None else [None] * study.n_phases
            self.state.bts_phases = [{"name": name, "time": "-" if t is None else f"{t:g} s",
                                      "role": "pre-contrast" if i == 0 else f"post {i}"}
                                     for i, (name, t) in enumerate(zip(study.phase_names, times))]
            self.state.bts_case_open = case.name
            self.state.bts_message = (f"{case.name}: {study.n_phases} phases, {study.geometry.size} voxels"
                                      + (", with its probability map" if result is not None else ""))
            if result is not None:
                self._measure_later()

    def _load(self, case):
        """The case's phase volumes (new nodes), study, and its result to review as
        ``(probability node, segmentation node, threshold settings)`` or None. A data-folder
        case is read through pinned files (:meth:`Folders.pinned_files`), so what was checked
        is what is read; nothing stays in the scene when any file fails."""
        if case.name == SAMPLE_CASE:
            return (*self.tumor.loadStudy(list(case.phases), name=case.name), None)
        extras = [path for path in (case.times, case.probability) if path is not None]
        with self.folders.pinned_files("data", [*case.phases, *extras]) as pinned:
            volumes = None
            try:
                volumes, study = self.tumor.loadStudy(pinned[:len(case.phases)], name=case.name)
                result = None
                if case.probability is not None:
                    result = self._add_result(volumes, study, pinned[-1], case.name)
                return volumes, study, result
            except BreastTumorSegError as error:  # name the case's file, not its private pinned name
                if volumes is not None:
                    from BreastTumorSegLib.nodes import removeWithDependents

                    removeWithDependents(list(volumes))
                raise type(error)(str(error).replace(str(pinned[0].parent), case.name)) from None

    def _add_result(self, volumes, study, path, name: str):
        """Nodes for the probability map at ``path`` (on the first post-contrast phase's grid),
        thresholded at the default 0.5."""
        probability, geometry = read_image(path)
        if not geometry.same_grid(study.geometry):
            raise GeometryError("does not lie on the first post-contrast phase's grid", path)
        if probability.min() < 0.0 or probability.max() > 1.0:
            raise InputError("holds values outside 0..1; expected a probability map", path)
        settings = ThresholdSettings()
        probabilityNode, segmentationNode = self.tumor.addResult(self.tumor.phasesFromNode(volumes), probability,
                                                                 settings=settings, name=name)
        return probabilityNode, segmentationNode, settings

    def close(self) -> None:
        """Remove the open case's nodes (a reader-study case is not this tab's)."""
        self._stop_measuring()
        self.page.forget_edits()
        if self.case is not None:
            from BreastTumorSegLib.nodes import removeWithDependents

            removeWithDependents(list(self.case.volumes) + [self.case.probability, self.case.segmentation])
        self.case = None
        self.state.bts_case_open = ""
        self.state.bts_has_result = False
        self.state.bts_phases = []
        self.state.bts_measurements = []

    # ------------------------------------------------------------------------- segmenting
    def segment_or_cancel(self) -> None:
        """Segment the open case in this process (a worker thread runs the model), or cancel."""
        if self._job is not None:
            self._cancel.cancel()
            self.state.bts_step = "cancelling..."
            return
        from breasttumorseg.core.progress import CancelToken

        with self.page.reporting():
            if self.case is None:
                raise BreastTumorSegError("open a case first")
            self._segment_started = time.perf_counter()
            self._job = self.tumor.prepareSegmentation(self.case.phases)
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
                    self.page.warn(warnings.pop(0))
            if not worker.done():
                await asyncio.sleep(POLL_S)
        with self.state, self.page.reporting():
            self._job = None
            self.state.bts_running = False
            worker.result()  # a backend error or the cancellation surfaces here as the page's one line
            computed = time.perf_counter()
            probability, segmentation = self.tumor.finishJob(job, name=self.case.name)
            self._show_result(probability, segmentation, job.settings)
            shown = time.perf_counter()
            self.state.bts_message = f"segmented in {shown - self._segment_started:.1f} s (Segment click to overlay)"
            log.info("station: segment -> overlay %.2f s (model %.2f s, nodes and views %.2f s)",
                     shown - self._segment_started, computed - self._segment_started, shown - computed)
        self._measure_later()

    def _show_result(self, probability, segmentation, settings) -> None:
        """The result's nodes in the views and the editor; its measurements follow every edit."""
        self.case.probability, self.case.segmentation = probability, segmentation
        self.page.show(self.case.source, probability)
        self.page.edit(segmentation, self.case.source)
        remeasure = lambda *_: self._measure_later()  # noqa: E731
        from BreastTumorSegLib.nodes import voxelsModifiedEvent

        segmentation.GetSegmentation().AddObserver(voxelsModifiedEvent(), remeasure)
        segmentation.AddObserver(vtkCommand.ModifiedEvent, remeasure)  # undo and redo replace the segments
        self.state.bts_threshold = float(settings.threshold)
        self.state.bts_relative = bool(settings.relative)
        self.state.bts_has_result = True
        settle_heap()  # the slider moves next

    # ------------------------------------------------------------------------- threshold and measurements
    def _on_threshold(self, bts_threshold, bts_relative, **_) -> None:
        if self.case is None or self.case.probability is None:
            return
        self._stop_measuring()  # the CPU goes to this move
        self._threshold.submit((float(bts_threshold), bool(bts_relative)))

    def _apply_threshold(self, value: tuple[float, bool]) -> None:
        case = self.case
        if case is None or case.probability is None:
            return
        threshold, relative = value
        with self.state, self.page.reporting():
            started = time.perf_counter()
            with self.page.views_unchanged():
                self.tumor.updateSegmentation(case.probability, case.segmentation, threshold, relative,
                                              returnMask=False)
            self.page.redraw()
            log.info("station: threshold %.2f -> segment %.3f s", threshold, time.perf_counter() - started)
        self._measure_later()

    def _stop_measuring(self) -> None:
        if self._measure_task is not None:
            self._measure_task.cancel()
            self._measure_task = None
        self._measuring.stop()

    def _measure_later(self) -> None:
        """Measure once the views have the new segment: measuring a clinical-size study takes
        seconds (functional tumor volume, kinetics), which must not hold the view back; changes
        in the meantime stop it and restart the wait."""
        self._stop_measuring()
        self._measure_task = asynchronous.create_task(self._measure_after(MEASURE_DELAY_S))

    async def _measure_after(self, delay_s: float) -> None:
        """Measure the segment as it is now: read here (the main thread owns the scene),
        measured off the page's process."""
        from breasttumorseg.reporting.measurements import measure

        await asyncio.sleep(delay_s)
        case = self.case
        if case is None or case.segmentation is None:
            return
        started = time.perf_counter()
        with self.page.reporting():
            mask = self.tumor.segmentMask(case.segmentation, case.study.geometry)
            values = await self._measuring.run(lambda: measure(case.study, mask))
            if case is self.case:
                with self.state:
                    self.state.bts_measurements = [{"name": name, "value": row_text(value, unit)}
                                                   for name, value, unit in measurement_rows(values)]
            log.info("station: measurements %.2f s", time.perf_counter() - started)

    # ------------------------------------------------------------------------- export
    def export(self, kind: str) -> None:
        """Write the tumor segmentation into the data folder: <exports>/<case>/<file>."""
        with self.page.reporting():
            case = self.case
            if case is None or case.segmentation is None:
                raise BreastTumorSegError("segment a case first")
            if "data" not in self.folders.roots:
                raise BreastTumorSegError("start the station with --data DIR to export into that folder")
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in case.name)
            relative = f"{self.exports}/{safe}"
            with self.folders.pinned_folder("data", relative) as folder:  # written where it was checked
                self.tumor.export(case.segmentation, folder / EXPORT_FORMATS[kind], case.source)
            self.state.bts_message = f"exported {relative}/{EXPORT_FORMATS[kind]}"
