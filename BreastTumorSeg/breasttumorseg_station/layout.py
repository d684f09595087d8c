"""The station's page: three slice views beside a drawer with the Case, Edit and Reader study tabs.

**Case**: open a case (the bundled sample or a data-folder case), its phases with their
times, Segment with progress and Cancel, overlay opacity, the threshold slider (absolute or
a fraction of the maximum), measurements, export .seg.nrrd / NIfTI into the data folder.
**Edit**: paint, erase, scissors, islands, undo, redo (trame-slicer's segment editor with its
brush settings). **Reader study**: the reader's worklist, Start next case, Pause, flags,
comment, Submit; the Case tab is closed while a case is read.

Widgets only: every button calls a method of the case control, the reading control or the
editor tools; element ids start with ``bts-`` (the browser tests find them by these).
"""

from __future__ import annotations

from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

from .slider import KEEP_KEYS_JS, PLAIN_VIEWS, STILL_SLIDERS_CSS

TITLE = "BreastTumorSeg station (research software; phantom-trained models)"


def build_layout(server, layouts, cases, reading, tools):
    """The page's trame layout (returned); ``layouts`` is the slice views' layout manager."""
    from trame_slicer.app.ui import SegmentEditorUI, SegmentEditorUndoRedoUI, ViewerLayout

    with ViewerLayout(server, title="BreastTumorSeg station", is_drawer_visible=True) as layout:
        layout.title.set_text(TITLE)
        with layout.drawer:
            if not PLAIN_VIEWS:  # what a slider move costs the page: see breasttumorseg_station.slider
                client.Style(STILL_SLIDERS_CSS)
            with v3.VTabs(v_model=("bts_tab",), density="compact", grow=True):
                v3.VTab("Case", value="case", id="bts-tab-case", disabled=("bts_reading",))
                v3.VTab("Edit", value="edit", id="bts-tab-edit")
                v3.VTab("Reader study", value="reader", id="bts-tab-reader", v_if=("bts_readers.length",))
            with html.Div(classes="pa-2", style="overflow-y: auto; height: calc(100% - 48px);",
                          keyup=None if PLAIN_VIEWS else KEEP_KEYS_JS):
                v3.VAlert(v_if=("bts_error",), text=("bts_error",), type="error", density="compact",
                          closable=True, id="bts-error", classes="mb-2")
                html.Div("{{ bts_message }}", v_if=("bts_message",), id="bts-message", classes="text-caption mb-2")
                with html.Div(v_if=("bts_tab === 'case' && !bts_reading",)):
                    _case_tab(cases)
                with html.Div(v_show=("bts_tab === 'edit'",)):
                    editor_ui = _edit_tab(tools, SegmentEditorUI)
                with html.Div(v_if=("bts_tab === 'reader'",)):
                    _reader_tab(reading)
        with layout.undo_redo:
            SegmentEditorUndoRedoUI(editor_ui=editor_ui)
        with layout.content:
            # the reader's input counts as activity (at most twice a second) for the idle clock
            with html.Div(classes="d-flex flex-column", style="flex: 1 1 0; min-width: 0; height: 100%;",
                          mousemove=_ACTIVITY_JS, keydown=_ACTIVITY_JS, wheel=_ACTIVITY_JS,
                          pointerdown=_ACTIVITY_JS):
                layouts.initialize_layout_grid(layout)
    server.trigger("bts_activity")(reading.activity)
    return layout


_ACTIVITY_JS = ("bts_reading && Date.now() - bts_last_activity > 500 && "
                "(bts_last_activity = Date.now(), trigger('bts_activity'))")


def _case_tab(cases) -> None:
    v3.VSelect(label="Case", items=("bts_cases",), v_model=("bts_case",), density="compact", id="bts-case",
               disabled=("bts_running",))
    v3.VBtn("Open case", click=cases.open_case, id="bts-open-case", block=True,
            disabled=("bts_running || bts_preparing",), classes="mb-2")
    with v3.VTable(density="compact", v_if=("bts_phases.length",), id="bts-phases"):
        with html.Tbody():
            with html.Tr(v_for="phase in bts_phases", key="phase.name"):
                html.Td("{{ phase.name }}")
                html.Td("{{ phase.time }}")
                html.Td("{{ phase.role }}")
    with html.Div(v_if=("bts_case_open",), classes="mt-2"):
        v3.VBtn("{{ bts_running ? 'Cancel' : 'Segment' }}", click=cases.segment_or_cancel, id="bts-segment",
                block=True, color=("bts_running ? 'warning' : 'primary'",))
        v3.VProgressLinear(v_if=("bts_running",), model_value=("bts_progress",), height=6, classes="mt-1")
        html.Div("{{ bts_step }}", v_if=("bts_running",), classes="text-caption", id="bts-step")
    with html.Div(v_if=("bts_has_result",), classes="mt-2"):
        with html.Div(id="bts-opacity", classes="bts-still-slider"):
            v3.VSlider(label="Overlay opacity", v_model=("bts_opacity",), min=0, max=1, step=0.05,
                       density="compact", hide_details=True)
        with html.Div(id="bts-threshold", classes="bts-still-slider"):
            threshold = dict(label="Threshold", min=0.05, max=0.95, step=0.05, density="compact", hide_details=True,
                             thumb_label=True)
            if PLAIN_VIEWS:
                v3.VSlider(v_model=("bts_threshold",), **threshold)
            else:  # its own component: a move re-renders the slider, not the page's whole template
                with client.Getter(name="bts_threshold", value_name="threshold", update_name="set_threshold"):
                    v3.VSlider(model_value=("threshold",), update_modelValue="set_threshold", **threshold)
        v3.VCheckbox(label="Fraction of the maximum (Hirsch et al.)", v_model=("bts_relative",),
                     density="compact", hide_details=True, id="bts-relative")
        with v3.VTable(density="compact", id="bts-measurements"):
            with html.Tbody():
                with html.Tr(v_for="row in bts_measurements", key="row.name"):
                    html.Td("{{ row.name }}")
                    html.Td("{{ row.value }}")
        with html.Div(classes="d-flex mt-2", style="gap: 4px;"):
            v3.VBtn("Export .seg.nrrd", click=(cases.export, "['seg.nrrd']"), size="small", id="bts-export-seg")
            v3.VBtn("Export NIfTI", click=(cases.export, "['nifti']"), size="small", id="bts-export-nifti")


def _edit_tab(tools, SegmentEditorUI):
    """The effect buttons and trame-slicer's segment-editor panel (returned: undo/redo use it)."""
    with html.Div(classes="d-flex flex-wrap mb-2", style="gap: 4px;"):
        for name in tools.EFFECTS:
            v3.VBtn(name.capitalize(), size="small", click=(tools.use_effect, f"['{name}']"), id=f"bts-{name}")
        v3.VBtn("No tool", size="small", click=(tools.use_effect, "['none']"), id="bts-no-tool")
    editor_ui = SegmentEditorUI()
    tools.editor.set_ui(editor_ui)
    return editor_ui


def _reader_tab(reading) -> None:
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
        v3.VBtn("Start next case", click=reading.start_next_case, id="bts-start-case",
                disabled=("!bts_reader || bts_reading || bts_all_done || bts_preparing",), size="small",
                color="primary")
        v3.VBtn("{{ bts_paused ? 'Resume' : 'Pause' }}", click=reading.pause_or_resume, id="bts-pause",
                disabled=("!bts_reading",), size="small")
        v3.VBtn("Submit case", click=reading.submit_case, id="bts-submit", disabled=("!bts_reading",),
                size="small", color="success")
        v3.VBtn("No tumor visible", click=(reading.flag, "['no_tumor_visible']"), id="bts-flag-no-tumor",
                disabled=("!bts_reading",), size="small")
        v3.VBtn("Image quality", click=(reading.flag, "['image_quality']"), id="bts-flag-quality",
                disabled=("!bts_reading",), size="small")
    v3.VTextField(label="Comment", v_model=("bts_comment",), density="compact", disabled=("!bts_reading",),
                  id="bts-comment", classes="mt-2", hide_details=True)
    v3.VBtn("Add comment", click=(reading.flag, "['comment']"), id="bts-add-comment", disabled=("!bts_reading",),
            size="small", classes="mt-1")


def slice_view_layout(slicer_app, server):
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
