"""Result: the tumor probability threshold (live), the overlay opacity, refining in Segment Editor."""

from __future__ import annotations

import qt
import slicer

from BreastTumorSegLib import views
from BreastTumorSegLib.nodes import voxelsModifiedEvent

from .common import Section, log, oneLine, openSegmentEditor

THRESHOLD_DELAY_MS = 30


class ResultSection(Section):
    """The segmentation shown; the threshold controls re-threshold its probability map as they move."""

    def __init__(self, panel) -> None:
        super().__init__(panel)
        self._observed = None  # (segmentation node, its vtkSegmentation) whose edits are watched
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(THRESHOLD_DELAY_MS)
        self._thresholdTimer.connect("timeout()", self.applyThreshold)
        self.ui.refineButton.connect("clicked()", self.onRefine)

    def cleanup(self) -> None:
        self._thresholdTimer.stop()
        self.observe(None)

    def refresh(self) -> None:
        """Parameter node changed: a newly selected result adopts its settings; changed settings re-threshold."""
        pn = self.pn
        segmentation = pn.segmentation if pn else None
        if segmentation is not (self._observed[0] if self._observed else None):
            self.observe(segmentation)
            self._adoptSettings(segmentation)
            self.panel.measurements.update()
        elif segmentation is not None and self._settingsChanged(segmentation):
            self._thresholdTimer.start()
        if pn is not None:
            views.setOverlayOpacity(slicer.mrmlScene, pn.probabilityVolume, pn.opacity)

    def observe(self, segmentation) -> None:
        """Watch ``segmentation``'s voxels (Segment Editor strokes, slider moves) to re-measure."""
        if self._observed is not None:
            self.panel.removeObserver(self._observed[1], voxelsModifiedEvent(), self._onEdited)
        self._observed = None
        if segmentation is not None:
            self._observed = (segmentation, segmentation.GetSegmentation())
            self.panel.addObserver(self._observed[1], voxelsModifiedEvent(), self._onEdited)

    def _onEdited(self, caller=None, event=None) -> None:
        self.panel.measurements.updateLater()

    def _adoptSettings(self, segmentation) -> None:
        """A newly selected result: its probability map and threshold settings into the parameter node."""
        pn = self.pn
        if pn is None or segmentation is None:
            return
        settings = self.logic.thresholdSettingsOf(segmentation)
        with slicer.util.NodeModify(pn.parameterNode):
            pn.probabilityVolume = self.logic.probabilityNodeFor(segmentation)
            if settings is not None:
                pn.threshold = settings["threshold"]
                pn.relativeThreshold = settings["relative"]
                pn.minComponentMl = settings["minComponentMl"]

    def _settingsChanged(self, segmentation) -> bool:
        stored = self.logic.thresholdSettingsOf(segmentation)
        if stored is None:
            return False  # not one of ours (no probability map behind it)
        pn = self.pn
        return (abs(stored["threshold"] - pn.threshold) > 1e-9 or stored["relative"] != bool(pn.relativeThreshold)
                or abs(stored["minComponentMl"] - pn.minComponentMl) > 1e-9)

    def applyThreshold(self) -> None:
        """The threshold / relative / smallest-piece controls moved: re-threshold the probability map."""
        pn = self.pn
        if pn is None or pn.segmentation is None:
            return
        probability = pn.probabilityVolume or self.logic.probabilityNodeFor(pn.segmentation)
        if probability is None:
            self.setStatus("This segmentation has no probability map: the threshold cannot change it.")
            return
        try:
            self.logic.updateSegmentation(probability, pn.segmentation, pn.threshold, relative=pn.relativeThreshold,
                                          minComponentMl=pn.minComponentMl, returnMask=False)
        except Exception as error:  # noqa: BLE001
            log.exception("BreastTumorSeg: threshold update failed")
            self.setStatus(oneLine(error))

    def show(self, probability, segmentation, firstPostContrast=None) -> None:
        """Select a new result and show it: the probability map over the first post-contrast phase."""
        pn = self.pn
        with slicer.util.NodeModify(pn.parameterNode):
            pn.probabilityVolume = probability
            pn.segmentation = segmentation
        background = self.logic.sourceVolumeFor(segmentation)
        views.browseTo(background, firstPostContrast)
        slicer.util.setSliceViewerLayers(background=background or "keep-current", foreground=probability,
                                         foregroundOpacity=pn.opacity)

    def onRefine(self) -> None:
        pn = self.pn
        segmentation = pn.segmentation if pn else None
        if segmentation is None:
            self.showError("Segment first (or choose a segmentation in Result), then refine it.")
            return
        openSegmentEditor(segmentation, self.logic.sourceVolumeFor(segmentation) or pn.probabilityVolume)


