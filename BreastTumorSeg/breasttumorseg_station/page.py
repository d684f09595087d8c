"""What the station's parts share: the page's state, its one-line messages, the slice views.

:class:`Page` is handed to the case control and the reading control. It holds the trame
state (names start with ``bts_``), turns a user's error into the page's one error line
(:meth:`Page.reporting`) and drives the views: which volumes the slice views show, the
overlay's opacity, which segmentation the editor's effects change and which effect is active.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from breasttumorseg.core.errors import BreastTumorSegError

log = logging.getLogger("breasttumorseg")


class Page:
    """The state, messages and views of one station page."""

    #: The editor tools the Edit tab offers (trame-slicer's segmentation effects).
    EFFECTS = ("paint", "erase", "scissors", "islands")

    def __init__(self, state, slicer_app, editor):
        self.state = state
        self.slicer = slicer_app
        self.editor = editor   # trame-slicer's SegmentEditorLogic (its UI is set by the layout)

    # ------------------------------------------------------------------------- messages
    def warn(self, message: str) -> None:
        """A backend warning (a phase resampled, times missing): logged and shown in the page."""
        log.warning(message)
        self.state.bts_message = message

    def reporting(self) -> "_Reporting":
        """Context: a user's error becomes the page's one-line error, anything else is logged too."""
        return _Reporting(self.state)

    # ------------------------------------------------------------------------- views
    def show(self, background, foreground=None) -> None:
        """``background`` (a volume node) in every slice view, ``foreground`` over it at the
        page's overlay opacity; the views reset to fit."""
        display = self.slicer.display_manager
        display.show_volume_in_slice_background(background)
        display.show_volume_in_slice_foreground(foreground)
        self.set_opacity(float(self.state.bts_opacity))
        display.reset_views()

    def set_opacity(self, opacity: float) -> None:
        for view in self.slicer.view_manager.get_slice_views():
            view.set_foreground_opacity(float(opacity))

    @contextmanager
    def views_unchanged(self):
        """For a change that leaves every view's slice where it is (a threshold move): trame-slicer's
        reactions to a view's change (each view's slice-slider state pushed to the page, the
        editor's effect pipelines) are held back while it runs, ~7 ms a move; renders are asked for
        as usual."""
        signals = [view.modified for view in self.slicer.view_manager.get_slice_views()]
        blocked = [signal.block_signals(True) for signal in signals]
        try:
            yield
        finally:
            for signal, was in zip(signals, blocked):
                signal.block_signals(was)

    def redraw(self) -> None:
        """Ask every slice view for a new frame (a segment whose voxels were written in place does
        not ask by itself)."""
        for view in self.slicer.view_manager.get_slice_views():
            view.schedule_render()

    def edit(self, segmentation, source) -> None:
        """Make ``segmentation`` the one the editor's effects change, painted over ``source``."""
        self.slicer.segmentation_editor.set_active_segmentation(segmentation, source)
        self.editor._on_segment_editor_changed()

    def use_effect(self, name: str) -> None:
        """Activate one of :attr:`EFFECTS`, or none (``"none"``)."""
        from trame_slicer import segmentation as effects

        editor = self.slicer.segmentation_editor
        if name == "none":
            editor.deactivate_effect()
        else:
            editor.set_active_effect_type(getattr(effects, f"SegmentationEffect{name.capitalize()}"))

    def forget_edits(self) -> None:
        """No tool active and nothing to undo: the segmentation those edits changed is gone."""
        editor = self.slicer.segmentation_editor
        editor.deactivate_effect()
        if editor.undo_stack is not None:
            editor.undo_stack.clear()

    def active_effect(self) -> str | None:
        """The active effect's short name ("Paint", "Erase", ...), as the reading journal records it."""
        name = self.slicer.segmentation_editor.get_active_effect_name() or ""
        return name.rsplit(".", 1)[-1].replace("SegmentationEffect", "") or None


class _Reporting:
    def __init__(self, state):
        self.state = state

    def __enter__(self):
        self.state.bts_error = ""
        return self

    def __exit__(self, kind, error, _traceback):
        if error is None or not isinstance(error, Exception):
            return False  # a cancelled task (asyncio.CancelledError) or an exit goes on
        if isinstance(error, BreastTumorSegError):
            self.state.bts_error = str(error)
        else:
            log.exception("station: unexpected error")
            self.state.bts_error = f"unexpected error: {error}"
        return True
