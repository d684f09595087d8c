"""The station's trame application: one headless Slicer scene, one page, its parts put together.

``layout``        the page: slice views and the drawer's Case, Edit and Reader study tabs
``case_control``  the Case tab: open, segment, threshold, measure, export
``reading``       the Reader study tab: worklist, timed readings, pause, flags, submit
``page``          what they share: the page's state, one-line messages, the views
``slider``        what a threshold move costs and how it is kept small; ``measuring``: off the page's process

Everything a button does is one call into the Slicer logic the desktop module uses
(:class:`BreastTumorSegLogic`, :class:`ReaderStudyLogic`). State names start with ``bts_``.
"""

from __future__ import annotations

from pathlib import Path

from trame.app import TrameApp

from .case_control import CaseControl
from .cases import list_cases
from .layout import build_layout, slice_view_layout
from .page import Page
from .reading import ReadingControl
from .security import AccessPolicy, Folders, station_middleware
from .slider import register_views


class Station(TrameApp):
    """One station: one headless Slicer scene, one page (see the module docstring)."""

    def __init__(self, server=None, *, folders: Folders, policy: AccessPolicy, study_path: Path | None = None,
                 device: str = "auto", exports: str = "exports"):
        super().__init__(server)
        # trame-slicer and the Slicer logic wait until a station is made: they load the Slicer core
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import SegmentEditorLogic

        from BreastTumorSegLib import BreastTumorSegLogic
        from BreastTumorSegLib.readerstudy import ReaderStudyLogic

        from .scene import create_slicer_app

        self.server.enable_module(trame_slicer_module)
        self.folders, self.policy = folders, policy
        self.slicer = create_slicer_app()
        register_views(self.slicer.view_manager, self.server)
        self.layouts = slice_view_layout(self.slicer, self.server)
        self.page = Page(self.state, self.slicer, SegmentEditorLogic(self.server, self.slicer))
        tumor = BreastTumorSegLogic(scene=self.slicer.scene, warn=self.page.warn)
        reading = ReaderStudyLogic(scene=self.slicer.scene, warn=self.page.warn)
        self.cases = CaseControl(self.page, tumor, reading, folders, device)
        self.cases.exports = exports  # the data folder's subfolder Case-tab exports go to
        self.reading = ReadingControl(self.page, reading, self.cases, policy, study_path, device)

        self.state.trame__title = "BreastTumorSeg station"
        self.state.bts_tab = "case"
        self.state.bts_message = ""
        self.state.bts_error = ""
        self.cases.initial_state(list_cases(folders))
        self.reading.initial_state()
        self.ui = build_layout(self.server, self.layouts, self.cases, self.reading, self.page)
        self.server.controller.on_server_bind.add(self._bind)
        self.server.controller.on_client_connected.add(self.reading.on_client_connected)

    def _bind(self, wslink_server) -> None:
        wslink_server.app.middlewares.append(station_middleware(self.policy))


__all__ = ["Station"]
