"""Writing a tumor segmentation (and the probability map) from the scene to files.

The format follows the file extension:

* ``.seg.nrrd``: Slicer's segmentation storage node (segment names, colours, geometry);
* ``.nii`` / ``.nii.gz``: a labelmap (tumor = 1) on the reference volume's grid, through
  Slicer's labelmap export and volume storage node;
* ``.stl`` / ``.obj``: the closed surface, in LPS mm (as Slicer writes for 3D printing);
* DICOM SEG needs the desktop application's DICOM module: refused here with the reason.

Every file is written to a temporary name beside the target and renamed into place
(``breasttumorseg.core.atomic``), so a failed export never leaves a partial file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import slicer
import vtk

from breasttumorseg.core import atomic
from breasttumorseg.core.errors import InputError, OutputError

from . import nodes

SEGMENTATION_SUFFIXES = (".seg.nrrd",)
LABELMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd")
SURFACE_SUFFIXES = (".stl", ".obj")
DICOM_SUFFIXES = (".dcm", ".dicom")


def exportFormat(path) -> str:
    """"segmentation", "labelmap", "surface" or "dicom" for a file name; OutputError otherwise."""
    name = Path(path).name.lower()
    for kind, suffixes in (("segmentation", SEGMENTATION_SUFFIXES), ("labelmap", LABELMAP_SUFFIXES),
                           ("surface", SURFACE_SUFFIXES), ("dicom", DICOM_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    raise OutputError("unsupported export format; use .seg.nrrd, .nii.gz, .nii, .stl or .obj", path)


def exportSegmentation(segmentationNode, path, referenceVolumeNode, scene) -> str:
    """Write ``segmentationNode`` to ``path`` (format by extension); returns the path."""
    path = Path(path)
    kind = exportFormat(path)
    if segmentationNode is None or segmentationNode.GetSegmentation().GetNumberOfSegments() == 0:
        raise InputError("there is no segment to export", path)
    if kind == "dicom":
        raise OutputError("DICOM SEG export needs the desktop Slicer's DICOM module (Slicer >= 5.12, or the "
                          "QuantitativeReporting extension); export from the panel there", path)
    if kind == "segmentation":
        _writeSegmentationFile(segmentationNode, path)
    elif kind == "labelmap":
        _writeLabelmap(segmentationNode, path, referenceVolumeNode, scene)
    else:
        _writeSurface(segmentationNode, path)
    return str(path)


def _writeSegmentationFile(segmentationNode, path: Path) -> None:
    _writeWithStorageNode(slicer.vtkMRMLSegmentationStorageNode(), segmentationNode, path, "segmentation")


def _writeLabelmap(segmentationNode, path: Path, referenceVolumeNode, scene) -> None:
    """Export the segments to a temporary labelmap node and write it with a volume storage node."""
    with nodes.removedAfterwards(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__BreastTumorSeg_export__")
        segmentIds = vtk.vtkStringArray()
        segmentIds.InsertNextValue(nodes.tumorSegmentId(segmentationNode))
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if referenceVolumeNode is not None:
            ok = logic.ExportSegmentsToLabelmapNode(segmentationNode, segmentIds, labelmap, referenceVolumeNode)
        else:
            ok = logic.ExportSegmentsToLabelmapNode(segmentationNode, segmentIds, labelmap)
        if not ok:
            raise OutputError("could not be written (labelmap export failed)", path)
        _writeVolumeNode(labelmap, path)


def _writeSurface(segmentationNode, path: Path) -> None:
    fileFormat = "OBJ" if path.name.lower().endswith(".obj") else "STL"
    segmentIds = vtk.vtkStringArray()
    segmentIds.InsertNextValue(nodes.tumorSegmentId(segmentationNode))
    folder = Path(tempfile.mkdtemp(prefix=".surface-", dir=_existingParent(path)))
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsClosedSurfaceRepresentationToFiles(
            str(folder), segmentationNode, segmentIds, fileFormat, True, 1.0, False)
        written = sorted(p for p in folder.iterdir() if p.suffix.lower() == path.suffix.lower())
        if not ok or not written:
            raise OutputError("could not be written (surface export failed; is the segment empty?)", path)
        with atomic.atomic_path(path) as tmp:
            shutil.copyfile(written[0], tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def exportVolume(volumeNode, path) -> str:
    """Write a scalar volume (e.g. the probability map) with a volume storage node, atomically."""
    path = Path(path)
    if not path.name.lower().endswith((".nrrd", ".nii", ".nii.gz", ".mha")):
        raise OutputError("unsupported volume format; use .nrrd, .nii.gz, .nii or .mha", path)
    _writeVolumeNode(volumeNode, path)
    return str(path)


def _writeVolumeNode(volumeNode, path: Path) -> None:
    """Write a volume (scalar or labelmap) node with a compressed volume storage node, atomically."""
    _writeWithStorageNode(slicer.vtkMRMLVolumeArchetypeStorageNode(), volumeNode, path, "volume")


def _writeWithStorageNode(storage, node, path: Path, kind: str) -> None:
    """Write ``node`` through ``storage`` (compressed) into a temporary file renamed to ``path``."""
    storage.SetUseCompression(1)
    with atomic.atomic_path(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node) or not tmp.exists():
            raise OutputError(f"could not be written ({kind} storage node failed)", path)


def loadSegmentation(path, scene, name=None):
    """Load a ``.seg.nrrd`` into ``scene`` as a segmentation node (InputError if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    logic = _segmentationsLogic(scene)
    node = logic.LoadSegmentationFromFile(str(path), True, name or path.name.split(".")[0])
    if node is None:
        raise InputError("could not be read as a segmentation", path)
    return node


def _segmentationsLogic(scene):
    modules = getattr(slicer, "modules", None)
    segmentations = getattr(modules, "segmentations", None) if modules is not None else None
    if segmentations is not None:
        return segmentations.logic()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    return logic


def _existingParent(path: Path) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"could not be written (cannot create its folder: {error.strerror})", path) from None
    return str(path.parent)
