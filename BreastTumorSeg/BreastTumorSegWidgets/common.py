"""What every section shares: the panel it belongs to, one-line errors, Segment Editor."""

from __future__ import annotations

import logging

import slicer

log = logging.getLogger("breasttumorseg")


class Section:
    """One section of the panel: its widgets (``ui``), the segmentation logic, the parameter node."""

    def __init__(self, panel) -> None:
        self.panel = panel
        self.ui = panel.ui
        self.logic = panel.logic

    @property
    def pn(self):
        """The panel's parameter node (``BreastTumorSegParameterNode``), or None between scenes."""
        return self.panel._parameterNode

    def setStatus(self, message: str) -> None:
        self.panel.setStatus(message)

    def showError(self, message: str, details=None) -> None:
        self.panel.showError(message, details)


def oneLine(error) -> str:
    """An exception's first line (the backend's errors are one line naming the file)."""
    text = str(error).strip() or error.__class__.__name__
    return text.splitlines()[0]


def openSegmentEditor(segmentation, source):
    """Show Segment Editor on ``segmentation`` with ``source`` as source volume and the tumor
    segment selected; returns the editor widget."""
    from BreastTumorSegLib import nodes

    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
    editor.setSegmentationNode(segmentation)
    if hasattr(editor, "setSourceVolumeNode"):  # Slicer >= 5.2
        editor.setSourceVolumeNode(source)
    else:
        editor.setMasterVolumeNode(source)
    try:
        editor.setCurrentSegmentID(nodes.tumorSegmentId(segmentation))
    except Exception:  # noqa: BLE001 - no tumor segment: the editor keeps its own choice
        pass
    return editor
