"""The Inputs section's phase table without Qt: which volumes are phases, their times and roles.

A DCE source is a Volume Sequence, a MultiVolume, or one of several separate scalar volumes
(a "volume set": the user ticks the phases among the scene's volumes). The table holds one
:class:`PhaseRow` per candidate phase; the parameter node keeps the user's choices
(:class:`PhaseChoices`): for a sequence or MultiVolume the phases left out (by index in
time order) and the times typed (s, NaN = not typed); for a volume set the ticked volumes,
whose typed times live in each volume's ``TIME_ATTRIBUTE``.

Rows are in acquisition order when every phase has a time; phases without one follow the
timed ones in their own order. The earliest included row is the pre-contrast phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import slicer

from . import nodes
from .phases import TIME_ATTRIBUTE, finiteNumber, phasesFromNode, sequenceOfProxy

ROLE_ATTRIBUTE = "BreastTumorSeg.Role"


@dataclass
class PhaseRow:
    """One row: ``key`` is the phase's index in the source (or the candidate's index in a volume set)."""

    key: int
    node: object
    name: str
    time: Optional[float]  # acquisition time in s, None when unknown
    included: bool
    volumeMode: bool  # a volume of a volume set (its time is stored on the node)


@dataclass
class PhaseChoices:
    """The user's choices as the parameter node stores them."""

    phaseVolumes: list = field(default_factory=list)
    excludedPhases: list = field(default_factory=list)
    phaseTimes: list = field(default_factory=list)


def isVolumeSet(source) -> bool:
    """True when ``source`` is one of several separate scalar volumes (not a sequence's proxy, not a MultiVolume)."""
    return (source.IsA("vtkMRMLScalarVolumeNode") and not source.IsA("vtkMRMLLabelMapVolumeNode")
            and source.GetClassName() != "vtkMRMLMultiVolumeNode"
            and not source.GetAttribute("MultiVolume.FrameLabels") and sequenceOfProxy(source) is None)


def candidateVolumes(scene, source) -> list:
    """Scalar volumes of ``scene`` that can be phases beside ``source``: not labelmaps, not our
    results, not sequence proxies, not MultiVolumes; ``source`` first when it is not among them."""
    volumes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if (node.IsA("vtkMRMLLabelMapVolumeNode") or node.GetAttribute(ROLE_ATTRIBUTE)
                or node.GetImageData() is None or sequenceOfProxy(node) is not None
                or node.GetClassName() == "vtkMRMLMultiVolumeNode"):
            continue
        volumes.append(node)
    if source not in volumes:
        volumes.insert(0, source)
    return volumes


def phaseRows(source, choices: PhaseChoices, scene=None, warn=None) -> list:
    """The table's rows for ``source`` with the user's ``choices`` applied, sorted (see module docstring).

    A volume set with no ticked volume includes ``source`` and every volume of its size.
    Raises the backend's one-line error for a source that cannot give phases.
    """
    if source is None:
        return []
    rows = []
    if isVolumeSet(source):
        chosen = [node for node in choices.phaseVolumes if node is not None]
        dimensions = _dimensions(source)
        for key, node in enumerate(candidateVolumes(scene or source.GetScene() or slicer.mrmlScene, source)):
            included = (node in chosen) if chosen else (
                node is source or (dimensions is not None and _dimensions(node) == dimensions))
            rows.append(PhaseRow(key, node, node.GetName(), finiteNumber(node.GetAttribute(TIME_ATTRIBUTE)),
                                 included, volumeMode=True))
    else:
        excluded = set(choices.excludedPhases)
        typed = list(choices.phaseTimes)
        for key, (node, time) in enumerate(phasesFromNode(source, warn=warn)):
            if key < len(typed) and not math.isnan(typed[key]):
                time = typed[key]
            rows.append(PhaseRow(key, node, node.GetName() or f"phase {key}", time, key not in excluded,
                                 volumeMode=False))
    return sortRows(rows)


def sortRows(rows: list) -> list:
    """Acquisition order for the timed rows, then the untimed ones in their order."""
    timed = sorted((row for row in rows if row.time is not None), key=lambda row: row.time)
    return timed + [row for row in rows if row.time is None]


def roleOf(row: PhaseRow, rows: list) -> str:
    """"pre-contrast", "post-contrast k" or "-" (left out), from the included rows' order."""
    included = [r for r in rows if r.included]
    if not row.included:
        return "-"
    return "pre-contrast" if row is included[0] else f"post-contrast {included.index(row)}"


def selectedPhases(rows: list) -> list:
    """``[(volume node, time s or None), ...]`` of the included rows in table order; every time
    None when any included phase lacks one (the phases are then used in table order)."""
    included = [row for row in rows if row.included]
    if any(row.time is None for row in included):
        return [(row.node, None) for row in included]
    return [(row.node, float(row.time)) for row in included]


def phaseWarnings(rows: list) -> list:
    """What the user should know about the included phases, one sentence each."""
    if not rows:
        return []
    included = [row for row in rows if row.included]
    messages = []
    if len(included) < 2:
        messages.append("Include at least two phases: a pre-contrast and a post-contrast.")
    elif any(row.time is None for row in included):
        messages.append("Acquisition times are missing: phases are used in table order; type the times "
                        "(s) for the kinetic curve and the functional tumor volume.")
    else:
        times = [row.time for row in included]
        if len(set(times)) != len(times):
            messages.append("Two included phases have the same acquisition time.")
    if len(included) >= 2:
        differing = differentGrids([row.node for row in included])
        if differing:
            messages.append(f"{', '.join(differing)} differ in geometry from the first post-contrast "
                            f"phase and will be resampled onto its grid.")
    return messages


def choicesFromRows(rows: list) -> PhaseChoices:
    """The rows as the parameter node stores them; a volume set's times are written to its
    volumes' ``TIME_ATTRIBUTE`` (where :func:`phasesFromNode` reads them)."""
    if rows and rows[0].volumeMode:
        for row in rows:
            text = "" if row.time is None else f"{row.time:g}"
            if (row.node.GetAttribute(TIME_ATTRIBUTE) or "") != text:
                row.node.SetAttribute(TIME_ATTRIBUTE, text)
        return PhaseChoices(phaseVolumes=[row.node for row in rows if row.included])
    times = [float("nan")] * len(rows)
    for row in rows:
        times[row.key] = float("nan") if row.time is None else float(row.time)
    return PhaseChoices(excludedPhases=sorted(row.key for row in rows if not row.included), phaseTimes=times)


def differentGrids(volumes) -> list:
    """Names of the volumes whose grid differs from the first post-contrast phase's (the second)."""
    try:
        reference = nodes.geometryFromVolumeNode(volumes[1])
        return [node.GetName() for node in volumes if not nodes.geometryFromVolumeNode(node).same_grid(reference)]
    except Exception:  # noqa: BLE001 - a volume without voxels: the run will say so
        return []


def firstSeries(scene):
    """The first Volume Sequence (else MultiVolume) of ``scene``: the panel's default DCE source."""
    first = scene.GetFirstNodeByClass("vtkMRMLSequenceNode")
    if first is None and hasattr(slicer, "vtkMRMLMultiVolumeNode"):
        first = scene.GetFirstNodeByClass("vtkMRMLMultiVolumeNode")
    return first


def _dimensions(volume):
    image = volume.GetImageData() if volume is not None else None
    return tuple(image.GetDimensions()) if image is not None else None
