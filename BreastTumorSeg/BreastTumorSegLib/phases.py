"""DCE phases from what the user selects in Slicer, ordered by acquisition time.

A *phase list* is a list of ``(scalar volume node, time in s or None)`` pairs, earliest
first: phase 0 is the pre-contrast, phase 1 the first post-contrast (the reference grid).
Sources:

* a **Volume Sequence** (``vtkMRMLSequenceNode`` of scalar volumes; how Slicer's DICOM
  module imports a 4D DCE series), its sequence browser, or the browser's proxy volume
  (what the user sees in the views): one phase per data node, its index value the time
  (converted from the index unit: ms, s or min);
* a **MultiVolume** node (older Slicer; a vector volume with ``MultiVolume.*``
  attributes): one detached scalar volume per frame, times from ``MultiVolume.FrameLabels``;
* **scalar volumes** (a list, a vtkCollection, or one node): times from the node attribute
  ``BreastTumorSeg.TimeSeconds``, else from the DICOM database (trigger / acquisition /
  content time of the node's first instance) when Slicer has one, else ``None``.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import numpy as np
import slicer

from breasttumorseg.core.errors import InputError
from breasttumorseg.core.geometry import Geometry

from . import nodes

#: Node attribute holding a phase's acquisition time in seconds (set by the panel's phase table).
TIME_ATTRIBUTE = "BreastTumorSeg.TimeSeconds"

#: Index units of a sequence -> factor to seconds.
_UNIT_TO_SECONDS = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
                    "ms": 1e-3, "msec": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3,
                    "min": 60.0, "minute": 60.0, "minutes": 60.0}

#: DICOM tags that time a DCE phase, best first: trigger time (ms), acquisition time, content time.
DICOM_TIME_TAGS = ("0018,1060", "0008,0032", "0008,0033")

Warn = Callable[[str], None]
Phase = tuple  # (vtkMRMLScalarVolumeNode, float | None)


def _log_warning(message: str) -> None:
    logging.getLogger("breasttumorseg").warning(message)


def phasesFromNode(source, warn: Optional[Warn] = None) -> list[Phase]:
    """``[(scalar volume node, time s or None), ...]`` ordered by time, for a DCE source.

    ``source`` is a sequence node, a MultiVolume node, one scalar volume, or a list /
    vtkCollection of scalar volumes or of ``(node, time)`` pairs. Volumes without a
    time keep the order given. Counting phases (at least two) is left to the study.
    """
    warn = warn or _log_warning
    if source is None:
        raise InputError("no DCE phases selected")
    if isinstance(source, (list, tuple)) or _isCollection(source):
        items = _listItems(source)
        if items and all(isinstance(item, tuple) for item in items):
            return _ordered([(node, None if t is None else float(t)) for node, t in items], "the phases", warn)
        return _fromVolumes(items, warn)
    className = source.GetClassName()
    if source.IsA("vtkMRMLSequenceNode"):
        return _fromSequence(source, warn)
    if source.IsA("vtkMRMLSequenceBrowserNode"):
        sequence = source.GetMasterSequenceNode()
        if sequence is None:
            raise InputError("the sequence browser has no sequence", source.GetName())
        return _fromSequence(sequence, warn)
    sequence = sequenceOfProxy(source)
    if sequence is not None:  # the volume the user sees of a 4D series: take the whole series
        return _fromSequence(sequence, warn)
    if className == "vtkMRMLMultiVolumeNode" or source.GetAttribute("MultiVolume.FrameLabels"):
        return _fromMultiVolume(source, warn)
    if source.IsA("vtkMRMLScalarVolumeNode") and not source.IsA("vtkMRMLLabelMapVolumeNode"):
        return _fromVolumes([source], warn)
    raise InputError(f"is a {className}; choose a Volume Sequence, a MultiVolume or scalar volumes",
                     source.GetName())


# ----------------------------------------------------------------------------- sources
def sequenceOfProxy(node):
    """The volume sequence that ``node`` shows as a sequence browser's proxy, or None."""
    scene = node.GetScene() if hasattr(node, "GetScene") else None
    if scene is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        return None
    browsers = scene.GetNodesByClass("vtkMRMLSequenceBrowserNode")
    for i in range(browsers.GetNumberOfItems()):
        browser = browsers.GetItemAsObject(i)
        if browser.IsProxyNodeID(node.GetID()):
            sequence = browser.GetSequenceNode(node)
            if sequence is not None and sequence.GetNumberOfDataNodes() > 0:
                return sequence
    return None


def _fromSequence(sequence, warn: Warn) -> list[Phase]:
    name = sequence.GetName()
    count = sequence.GetNumberOfDataNodes()
    frames = [sequence.GetNthDataNode(i) for i in range(count)]
    for i, frame in enumerate(frames):
        if frame is None or not frame.IsA("vtkMRMLScalarVolumeNode") or frame.IsA("vtkMRMLLabelMapVolumeNode"):
            kind = "nothing" if frame is None else frame.GetClassName()
            raise InputError(f"frame {i} is {kind}, not a scalar volume", name)
    unit = (sequence.GetIndexUnit() or "").strip().lower()
    factor = _UNIT_TO_SECONDS.get(unit)
    times = [finiteNumber(sequence.GetNthIndexValue(i)) for i in range(count)]
    if factor is None:
        warn(f"{name}: unknown time unit {unit!r} of the sequence index; acquisition times are not used")
        times = [None] * count
    elif any(t is None for t in times):
        if count > 1:
            warn(f"{name}: the sequence index ({sequence.GetIndexName()}) is not a time; "
                 f"phases are taken in sequence order without times")
        times = [None] * count
    else:
        times = [t * factor for t in times]
    return _ordered(list(zip(frames, times)), name, warn)


def _fromMultiVolume(multiVolume, warn: Warn) -> list[Phase]:
    name = multiVolume.GetName()
    image = multiVolume.GetImageData()
    if image is None:
        raise InputError("the MultiVolume has no voxels", name)
    frames = nodes._scalarView(image)
    if frames.ndim == 3:
        frames = frames[..., np.newaxis]
    count = frames.shape[-1]
    geometry = Geometry.from_ijk_to_ras(nodes.ijkToRasArray(multiVolume), image.GetDimensions())
    labels = [finiteNumber(v) for v in (multiVolume.GetAttribute("MultiVolume.FrameLabels") or "").split(",")
              if v.strip()]
    unit = (multiVolume.GetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits") or "ms").strip().lower()
    factor = _UNIT_TO_SECONDS.get(unit)
    if len(labels) != count or any(t is None for t in labels) or factor is None:
        if count > 1:
            warn(f"{name}: no usable frame times in the MultiVolume; phases are taken in frame order without times")
        times = [None] * count
    else:
        times = [t * factor for t in labels]
    phases = []
    for i in range(count):
        frame = nodes.newScalarVolumeNode(np.array(frames[..., i], dtype=np.float32), geometry, f"{name} frame {i}")
        phases.append((frame, times[i]))
    return _ordered(phases, name, warn)


def _fromVolumes(volumes, warn: Warn) -> list[Phase]:
    if not volumes:
        raise InputError("no DCE phases selected")
    for node in volumes:
        if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            kind = "nothing" if node is None else node.GetClassName()
            raise InputError(f"a phase must be a scalar volume, got {kind}", getattr(node, "GetName", lambda: None)())
    times = [finiteNumber(node.GetAttribute(TIME_ATTRIBUTE)) for node in volumes]
    if any(t is None for t in times):
        fromDicom = timesFromDicom(volumes)
        if fromDicom is not None:
            times = fromDicom
    if any(t is None for t in times):
        if len(volumes) > 1 and any(t is not None for t in times):
            warn("some phases have no acquisition time; phases are taken in the order given, without times")
        times = [None] * len(volumes)
    return _ordered(list(zip(volumes, times)), "the phases", warn)


def _ordered(phases: list[Phase], source: str, warn: Warn) -> list[Phase]:
    """Sorted by time when every phase has one (stable), else as given."""
    if phases and all(t is not None for _, t in phases):
        return sorted(phases, key=lambda phase: phase[1])
    return [(node, None) for node, _ in phases]


# ----------------------------------------------------------------------------- DICOM times
def timesFromDicom(volumes, instanceValue: Optional[Callable[[str, str], str]] = None) -> Optional[list]:
    """Acquisition times (s, relative to the earliest) of volumes loaded from DICOM, or None.

    ``instanceValue(sopInstanceUID, "gggg,eeee") -> str`` reads a tag; by default Slicer's
    DICOM database (desktop only). The first tag of :data:`DICOM_TIME_TAGS` that every
    volume has is used.
    """
    uids = [(node.GetAttribute("DICOM.instanceUIDs") or "").split() for node in volumes]
    if not all(uids):
        return None
    if instanceValue is None:
        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not getattr(database, "isOpen", False):
            return None
        instanceValue = database.instanceValue
    for tag in DICOM_TIME_TAGS:
        values = [_dicomSeconds(instanceValue(first[0], tag), tag) for first in uids]
        if all(v is not None for v in values):
            start = min(values)
            return [v - start for v in values]
    return None


def _dicomSeconds(value, tag: str) -> Optional[float]:
    """Seconds from a DICOM trigger time (ms, DS) or a time of day (TM ``HHMMSS.ffffff``)."""
    text = (value or "").strip()
    if not text:
        return None
    if tag == "0018,1060":
        number = finiteNumber(text)
        return None if number is None else number / 1000.0
    text = text.replace(":", "")
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


# ----------------------------------------------------------------------------- helpers
def finiteNumber(value) -> Optional[float]:
    """``value`` (a number or its text) as a finite float; None when absent or not a finite number."""
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _isCollection(value) -> bool:
    return hasattr(value, "GetNumberOfItems") and hasattr(value, "GetItemAsObject")


def _listItems(source) -> list:
    if _isCollection(source):
        return [source.GetItemAsObject(i) for i in range(source.GetNumberOfItems())]
    return list(source)


def phaseTimes(phases: list[Phase]) -> Optional[list]:
    """The phases' times in s, or None unless every phase has one."""
    times = [t for _, t in phases]
    return None if any(t is None for t in times) else [float(t) for t in times]
