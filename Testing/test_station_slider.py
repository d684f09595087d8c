"""The station's slider helpers: a lone move applied at once, the latest of a burst once; measuring
in a child that stops and gets the CPU only when nothing else wants it."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

pytest.importorskip("trame")

from breasttumorseg.core.errors import BreastTumorSegError, InputError  # noqa: E402
from breasttumorseg_station.measuring import Measuring  # noqa: E402
from breasttumorseg_station.slider import PLAIN_VIEWS, QUIET_S, LatestOnly, OneViewAtATime  # noqa: E402

pytestmark = pytest.mark.skipif(PLAIN_VIEWS, reason="BREASTTUMORSEG_STATION_PLAIN_VIEWS is set")


def test_a_lone_move_is_applied_at_once_and_a_burst_after_it_once_at_its_last_value():
    applied = []

    async def moves():
        latest = LatestOnly(applied.append)
        latest.submit(0.3)  # the slider was still: applied in the call, before the event loop turns
        at_once = list(applied)
        for value in (0.35, 0.4, 0.45):  # a drag goes on: one application, at the last value
            latest.submit(value)
        assert applied == [0.3]
        await asyncio.sleep(0.05)
        latest.submit(0.5)  # 50 ms after the last: still the drag, applied on the next turn
        assert applied == [0.3, 0.45]
        await asyncio.sleep(0.05)
        await asyncio.sleep(QUIET_S)
        latest.submit(0.55)  # the slider rested: at once again
        assert applied == [0.3, 0.45, 0.5, 0.55]
        return at_once

    assert asyncio.run(moves()) == [0.3]
    assert applied == [0.3, 0.45, 0.5, 0.55]


@pytest.mark.skipif(not Measuring.forks(), reason="needs fork")
def test_measuring_in_a_child_returns_its_record_and_its_errors():
    def measured():
        return {"tumor_volume_ml": 10.1, "lesions": [{"centroid_lps_mm": [1.0, 2.0, 3.0]}]}

    def bad():
        raise InputError("holds NaN values", "case/phase_01.nii.gz")

    measuring = Measuring()
    assert asyncio.run(measuring.run(measured)) == measured()
    with pytest.raises(BreastTumorSegError, match="^case/phase_01.nii.gz: holds NaN values$"):
        asyncio.run(measuring.run(bad))


@pytest.mark.skipif(not Measuring.forks() or not hasattr(os, "SCHED_IDLE"), reason="needs fork and SCHED_IDLE")
def test_the_measuring_child_gets_the_cpu_only_when_nothing_else_wants_it():
    # a killed child gives its copy of the station's memory back during the move that killed it
    # (~50 ms of a core per move, perf, standard case): at idle priority that work yields to the views
    record = asyncio.run(Measuring().run(lambda: {"policy": os.sched_getscheduler(0)}))
    assert record == {"policy": os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the station itself keeps its priority


@pytest.mark.skipif(not Measuring.forks(), reason="needs fork")
def test_a_change_stops_the_measuring_at_once():
    measuring = Measuring()

    async def stopped_after(delay_s):
        running = asyncio.ensure_future(measuring.run(lambda: time.sleep(60) or {}))
        await asyncio.sleep(delay_s)
        child = measuring._child
        measuring.stop()
        with pytest.raises(RuntimeError, match="ended"):
            await running
        return child

    started = time.monotonic()
    child = asyncio.run(stopped_after(0.5))
    assert time.monotonic() - started < 10 and not child.is_alive()


def test_each_view_sends_its_frame_before_the_next_view_renders_and_the_still_frame_is_not_rendered():
    events = []

    class RenderWindow:
        multisamples = 4

        def SetMultiSamples(self, samples):  # noqa: N802 - VTK's name
            self.multisamples = samples

    class View:  # a remote-controlled area as trame-rca sees it: renders when its pixels are read
        def __init__(self, name):
            self.name, self.render_window = name, RenderWindow()

        @property
        def img_cols_rows(self):
            events.append(("render", self.name))
            time.sleep(0.02)
            return np.zeros((2, 4, 3), np.uint8), 4, 2

        def process_resize_event(self, width, height):
            pass

        def process_interaction_event(self, event):
            pass

    async def move():
        loop = asyncio.get_running_loop()

        async def sent(name, quality):
            events.append(("sent", name, quality))

        def push(name):  # as wslink publishes: the socket write is scheduled, not done in the call
            return lambda image, meta: loop.call_later(0, lambda: asyncio.ensure_future(sent(name, meta["quality"])))

        views = [View(name) for name in ("axial", "sagittal", "coronal")]
        schedulers = [OneViewAtATime(view, rca_encoder="jpeg", target_fps=100, interactive_quality=35,
                                     push_callback=push(view.name)) for view in views]
        events.clear()  # trame-rca's protocol check read each view's pixels once
        for scheduler in schedulers:  # a segment change asks every view for a frame at once
            scheduler.schedule_render()
        await asyncio.sleep(0.5)
        for scheduler in schedulers:
            await scheduler.close()
        return views

    views = asyncio.run(move())
    assert all(view.render_window.multisamples == 0 for view in views)
    moving = [event for event in events if len(event) == 2 or event[2] == 35]
    assert moving == [("render", "axial"), ("sent", "axial", 35), ("render", "sagittal"), ("sent", "sagittal", 35),
                      ("render", "coronal"), ("sent", "coronal", 35)]
    assert sorted(event[1] for event in events if event[2:] == (90,)) == ["axial", "coronal", "sagittal"]
    assert [event[0] for event in events].count("render") == 3  # the still frames re-encode the last pixels


@pytest.mark.slow
def test_a_threshold_move_in_the_station_allocates_no_grid_size_mask_and_no_view_reacts(tmp_path):
    # the station's move writes the changed voxels only (updateSegmentation(..., returnMask=False)):
    # a mask of the whole grid, built and thrown away, took ~20 ms of every move on the standard case
    import tracemalloc

    from scipy import ndimage
    from trame.app import get_server

    from breasttumorseg_station.app import Station
    from breasttumorseg_station.security import AccessPolicy, Folders
    from test_station_browser import sample_case_with_map

    def blurred_map(tumor):
        blurred = ndimage.gaussian_filter(tumor.astype(np.float32), 2.0)
        return np.where(blurred > 0.01, 0.95 * blurred / blurred.max(), 0.0)

    tumor = sample_case_with_map(tmp_path / "data" / "reviewed", blurred_map)
    station = Station(get_server("slider-allocation-test"), folders=Folders({"data": tmp_path / "data"}),
                      policy=AccessPolicy(require_token=False))
    station.state.bts_case = "reviewed"
    station.cases.open_case()
    assert station.state.bts_error == "" and station.state.bts_has_result
    open_case = station.cases.case
    grid_voxels = tumor.size

    def kept(threshold):
        station.cases._apply_threshold((threshold, False))
        return int(station.cases.tumor.segmentMask(open_case.segmentation, open_case.study.geometry).sum())

    kept(0.4)  # the index's first move on this segment writes it whole
    reactions = []  # trame-slicer's reactions to a view's change: each view's slice-slider state pushed, ...
    for view in station.slicer.view_manager.get_slice_views():
        view.modified.connect(lambda *_: reactions.append(1))
    peaks = []
    for threshold in (0.3, 0.7, 0.5):
        tracemalloc.start()
        station.cases._apply_threshold((threshold, False))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert max(peaks) < grid_voxels // 4, (peaks, grid_voxels)
    assert reactions == []  # held back: a threshold move moves no view's slice
    assert kept(0.3) > kept(0.5) > kept(0.7) > 0  # the moves changed the segment
