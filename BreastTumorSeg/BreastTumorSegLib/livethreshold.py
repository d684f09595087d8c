"""The threshold slider on one probability volume: the backend's ThresholdIndex and the voxels we wrote.

A :class:`LiveThreshold` is made once per probability map (its image data object and
modification time). Each slider change asks the index which voxels of its universe the new
mask holds and, when the tumor segment still holds exactly what this object last wrote
(same labelmap object, same modification time), writes only the voxels that changed into
the segment's own labelmap, in place. Anything else (a first write, an edit in Segment
Editor, a layer shared with another segment, a threshold below the index's floor) goes
through Slicer's ``SetBinaryLabelmapToSegment`` with the whole mask, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import nodes


@dataclass
class _Written:
    """What one segment holds since our last write."""

    labelmap: object          # the segment's own vtkOrientedImageData
    modified: int             # its GetMTime() right after that write
    kept: np.ndarray          # bool per universe voxel
    positions: np.ndarray     # flat index of each universe voxel in the labelmap's extent


class LiveThreshold:
    """Threshold changes of one probability volume node (``[z, y, x]`` voxels on ``geometry``)."""

    def __init__(self, probabilityNode):
        # waits: the backend needs scipy, which Slicer installs after the module loads
        from breasttumorseg.segmentation.threshold_index import ThresholdIndex

        self.image = probabilityNode.GetImageData()
        self.imageModified = self.image.GetMTime()
        self.geometry = nodes.geometryFromVolumeNode(probabilityNode)
        self.index = ThresholdIndex(nodes.readOnlyVolumeView(probabilityNode), self.geometry)
        self._written: dict[tuple, _Written] = {}

    def isFor(self, probabilityNode) -> bool:
        """Whether this was made from ``probabilityNode``'s voxels as they are now."""
        image = probabilityNode.GetImageData()
        return image is self.image and image.GetMTime() == self.imageModified

    def prepare(self, settings) -> None:
        """Compute now what the index builds on the first change with ``settings``' mode."""
        if self.index.serves(settings):
            self.index.kept(settings)

    def apply(self, segmentationNode, segmentId: str, settings, returnMask: bool = True) -> Optional[np.ndarray]:
        """Make the segment the mask of ``settings``; returns that mask (uint8 ``[z, y, x]``), or None
        with ``returnMask=False`` where only the changed voxels were written (a slider move: building
        the grid-size mask took ~20 ms of a ~45 ms move on the standard grid)."""
        key = (segmentationNode.GetID(), segmentId)
        written = self._written.pop(key, None)
        if not self.index.serves(settings):
            mask = self.index.mask(settings)
            nodes.setSegmentFromArray(segmentationNode, segmentId, mask, self.geometry)
            return mask
        kept = self.index.kept(settings)
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
        if written is not None and labelmap is written.labelmap and labelmap.GetMTime() == written.modified:
            changed = np.flatnonzero(kept != written.kept)
            if changed.size:
                nodes.writeSegmentVoxels(labelmap, segmentationNode, segmentId, written.positions[changed],
                                         kept[changed])
            written.kept, written.modified = kept, labelmap.GetMTime()
            self._written[key] = written
            return self._mask(kept) if returnMask else None
        mask = self._mask(kept)
        nodes.setSegmentFromArray(segmentationNode, segmentId, mask, self.geometry)
        labelmap = nodes.ownSegmentLabelmap(segmentationNode, segmentId, self.geometry, self.index.box)
        if labelmap is not None:
            self._written[key] = _Written(labelmap, labelmap.GetMTime(), kept, self._positions(labelmap))
        return mask

    def _mask(self, kept: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.index.shape, dtype=np.uint8)
        mask.ravel()[self.index.voxels[kept]] = 1
        return mask

    def _positions(self, labelmap) -> np.ndarray:
        """Flat index of every universe voxel in ``labelmap``'s extent (x fastest)."""
        x0, x1, y0, y1, z0, _ = labelmap.GetExtent()
        z, y, x = np.unravel_index(self.index.voxels, self.index.shape)
        return ((z - z0) * (y1 - y0 + 1) + (y - y0)) * (x1 - x0 + 1) + (x - x0)
