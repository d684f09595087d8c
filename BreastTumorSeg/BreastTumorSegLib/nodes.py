"""MRML nodes <-> backend values: volumes, segments, reference geometry, subject hierarchy.

Everything here is Qt-free and runs on the Slicer core alone (PyPI ``slicer-core``) as well
as inside the desktop application.

Coordinates: a volume node's voxel array is ``[k, j, i]`` = ``[z, y, x]`` (the backend's
order) and its IJKToRAS matrix maps voxel indices to **RAS** mm. The conversion to the
backend's LPS :class:`~breasttumorseg.core.geometry.Geometry` goes only through
``Geometry.from_ijk_to_ras`` / ``Geometry.ijk_to_ras`` (the project's one LPS/RAS place).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from breasttumorseg.core.errors import InputError
from breasttumorseg.core.geometry import Geometry

#: Name of the colour table we create when no suitable built-in one exists (slicer-core has no colour files).
PROBABILITY_COLOR_NODE_NAME = "BreastTumorSeg probability"
#: Built-in colour tables preferred for the probability overlay, best first (desktop Slicer has them as files).
PREFERRED_PROBABILITY_COLORS = ("Inferno", "Magma", "Plasma")
TUMOR_SEGMENT_NAME = "Tumor"
TUMOR_COLOR_RGB = (0.9, 0.2, 0.2)


# ----------------------------------------------------------------------------- geometry
def vtkMatrixFromArray(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """A vtkMatrix4x4 holding the 4x4 numpy ``matrix``."""
    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, float(matrix[row, column]))
    return result


def arrayFromVtkMatrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """The 4x4 numpy array of a vtkMatrix4x4."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The node's IJKToRAS matrix (voxel index -> RAS mm) as a 4x4 array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return arrayFromVtkMatrix(matrix)


def geometryFromVolumeNode(volumeNode) -> Geometry:
    """The backend grid (LPS) of a scalar volume node, from its IJKToRAS matrix and size."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None:
        raise InputError("the volume has no voxels", _name(volumeNode))
    extent = image.GetExtent()
    if extent[0] != 0 or extent[2] != 0 or extent[4] != 0:
        raise InputError(f"the volume's voxel extent does not start at 0 ({extent})", _name(volumeNode))
    return Geometry.from_ijk_to_ras(ijkToRasArray(volumeNode), image.GetDimensions())


def setVolumeNodeGeometry(volumeNode, geometry: Geometry) -> None:
    """Give a volume node the grid ``geometry`` (its IJKToRAS from ``Geometry.ijk_to_ras``)."""
    volumeNode.SetIJKToRASMatrix(vtkMatrixFromArray(geometry.ijk_to_ras()))


def volumeArray(volumeNode) -> np.ndarray:
    """A float32 copy of a scalar volume's voxels ``[z, y, x]``."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None or image.GetPointData().GetScalars() is None:
        raise InputError("the volume has no voxels", _name(volumeNode))
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"expected a scalar volume, got {image.GetNumberOfScalarComponents()} components per voxel",
                         _name(volumeNode))
    return np.array(_scalarView(image), dtype=np.float32, copy=True)


def _scalarView(image) -> np.ndarray:
    """A numpy view ``[z, y, x]`` (or ``[z, y, x, c]``) of a vtkImageData's scalars."""
    nx, ny, nz = image.GetDimensions()
    components = image.GetNumberOfScalarComponents()
    view = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return view.reshape((nz, ny, nx, components) if components > 1 else (nz, ny, nx))


def readOnlyVolumeView(volumeNode) -> np.ndarray:
    """A read-only numpy view of a scalar volume's voxels (no copy; for fast, repeated reads)."""
    view = _scalarView(volumeNode.GetImageData())
    view.flags.writeable = False
    return view


def newScalarVolumeNode(array_zyx: np.ndarray, geometry: Geometry, name: str, scene=None,
                        className: str = "vtkMRMLScalarVolumeNode"):
    """A volume node holding ``array_zyx`` on ``geometry``; added to ``scene`` when given.

    Without a scene the node is detached (used for MultiVolume frames: readable like any
    volume node, but never shown in the scene).
    """
    array_zyx = np.ascontiguousarray(array_zyx)
    if array_zyx.shape != geometry.shape_zyx:
        raise ValueError(f"array shape {array_zyx.shape} does not match grid {geometry.shape_zyx}")
    if scene is not None:
        node = scene.AddNewNodeByClass(className, name)
    else:
        node = getattr(slicer, className)()
        node.SetName(name)
    setVolumeNodeGeometry(node, geometry)
    slicer.util.updateVolumeFromArray(node, array_zyx)
    if scene is not None:
        node.CreateDefaultDisplayNodes()
    return node


# ----------------------------------------------------------------------------- probability display
def probabilityColorNode(scene):
    """A colour table for probabilities 0..1: a built-in perceptual map when the scene has
    one (desktop Slicer), else our own dark-red-to-yellow table (created once per scene)."""
    for name in PREFERRED_PROBABILITY_COLORS + (PROBABILITY_COLOR_NODE_NAME,):
        nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", name)
        if nodes.GetNumberOfItems() > 0:
            return nodes.GetItemAsObject(0)
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", PROBABILITY_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    for i in range(256):
        t = i / 255.0
        # black-red -> orange -> yellow-white ("hot"), fully opaque; low values are hidden by the threshold
        node.SetColor(i, f"p{t:.3f}", min(1.0, 0.25 + 1.5 * t), max(0.0, min(1.0, 2.0 * t - 0.5)),
                      max(0.0, min(1.0, 3.0 * t - 2.0)), 1.0)
    node.SetAttribute("BreastTumorSeg.Role", "ProbabilityColors")
    return node


def showProbability(probabilityNode, displayThreshold: float) -> None:
    """Colour table, window 0..1 and a lower threshold hiding probabilities below ``displayThreshold``."""
    display = probabilityNode.GetDisplayNode()
    if display is None:
        probabilityNode.CreateDefaultDisplayNodes()
        display = probabilityNode.GetDisplayNode()
    scene = probabilityNode.GetScene()
    if scene is not None:
        display.SetAndObserveColorNodeID(probabilityColorNode(scene).GetID())
    wasModifying = display.StartModify()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetApplyThreshold(1)
    setDisplayThreshold(probabilityNode, displayThreshold)
    display.EndModify(wasModifying)


def setDisplayThreshold(probabilityNode, displayThreshold: float) -> None:
    """Hide probabilities below ``displayThreshold`` (absolute, 0..1) in the overlay."""
    display = probabilityNode.GetDisplayNode()
    if display is not None:
        display.SetThreshold(float(displayThreshold), 1.0 + 1e-6)


# ----------------------------------------------------------------------------- segments
def orientedImageFromArray(mask_zyx: np.ndarray, geometry: Geometry):
    """A uint8 vtkOrientedImageData of ``mask_zyx`` on ``geometry`` (RAS image-to-world)."""
    mask = np.ascontiguousarray(mask_zyx, dtype=np.uint8)
    if mask.shape != geometry.shape_zyx:
        raise ValueError(f"mask shape {mask.shape} does not match grid {geometry.shape_zyx}")
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(*geometry.size)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    _scalarView(image)[...] = mask
    image.SetImageToWorldMatrix(vtkMatrixFromArray(geometry.ijk_to_ras()))
    return image


def emptyOrientedImage(geometry: Geometry):
    """An all-zero uint8 vtkOrientedImageData on ``geometry`` (a resampling reference)."""
    return orientedImageFromArray(np.zeros(geometry.shape_zyx, dtype=np.uint8), geometry)


def addTumorSegmentation(scene, referenceVolumeNode, referenceGeometry: Geometry, name: str):
    """A segmentation node with one empty segment "Tumor", its reference geometry set.

    The reference image geometry comes from ``referenceVolumeNode`` (a node in ``scene``:
    DICOM SEG export and Segment Editor use it) and must equal ``referenceGeometry``.
    Returns ``(segmentationNode, segmentId)``.
    """
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    segmentId = segmentationNode.GetSegmentation().AddEmptySegment(TUMOR_SEGMENT_NAME, TUMOR_SEGMENT_NAME,
                                                                   TUMOR_COLOR_RGB)
    return segmentationNode, segmentId


def setSegmentFromArray(segmentationNode, segmentId: str, mask_zyx: np.ndarray, geometry: Geometry) -> None:
    """Replace a segment's voxels with ``mask_zyx`` (non-zero = inside) on ``geometry``.

    Only the mask's bounding box travels to VTK (a threshold slider on a clinical-size map
    moves a small tumor, not 30 M voxels). The region replaced is that box joined with the
    segment's current extent, so every voxel of the old segment outside the box is cleared
    (the whole grid's extent would cost ~50 ms on the standard case; this ~2 ms).
    """
    mask = np.asarray(mask_zyx) > 0
    if mask.shape != geometry.shape_zyx:
        raise ValueError(f"mask shape {mask.shape} does not match grid {geometry.shape_zyx}")
    box = _boundingBox(mask)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1, box[0].start, box[0].stop - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    _scalarView(image)[...] = mask[box]
    image.SetImageToWorldMatrix(vtkMatrixFromArray(geometry.ijk_to_ras()))
    extent = list(image.GetExtent())
    current = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    if current is not None:
        old = current.GetExtent()
        if old[0] <= old[1] and old[2] <= old[3] and old[4] <= old[5]:
            extent = [min(a, b) if i % 2 == 0 else max(a, b) for i, (a, b) in enumerate(zip(extent, old))]
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId, logic.MODE_REPLACE, extent):
        raise RuntimeError(f"could not set the voxels of segment {segmentId}")


def ownSegmentLabelmap(segmentationNode, segmentId: str, geometry: Geometry, box: tuple):
    """The segment's own binary labelmap, padded with zeros to cover ``box`` (``(z, y, x)``
    slices of ``geometry``), for writing voxels in place (:func:`writeSegmentVoxels`).

    ``None`` when in-place writes would be wrong: the labelmap is not the source
    representation, another segment shares its layer, or its voxels are not ``geometry``'s.
    The segment's voxels do not change; only its extent grows.
    """
    segmentation = segmentationNode.GetSegmentation()
    labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    if (labelmap is None or not segmentation.IsSourceRepresentationImageData()
            or len(segmentation.GetSegmentIDsForLayer(segmentation.GetLayerIndex(segmentId))) != 1
            or labelmap.GetNumberOfScalarComponents() != 1):
        return None
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    if not np.allclose(arrayFromVtkMatrix(matrix), geometry.ijk_to_ras(), atol=1e-6):
        return None
    old = labelmap.GetExtent()
    wanted = [box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1, box[0].start, box[0].stop - 1]
    empty = old[0] > old[1] or old[2] > old[3] or old[4] > old[5]
    if not empty:
        wanted = [min(a, b) if i % 2 == 0 else max(a, b) for i, (a, b) in enumerate(zip(wanted, old))]
    if list(old) == wanted:
        return labelmap
    padded = slicer.vtkOrientedImageData()
    padded.SetExtent(*wanted)
    padded.AllocateScalars(labelmap.GetScalarType() if not empty else vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = _scalarView(padded)
    voxels[...] = 0
    if not empty:
        voxels[old[4] - wanted[4]:old[5] + 1 - wanted[4], old[2] - wanted[2]:old[3] + 1 - wanted[2],
               old[0] - wanted[0]:old[1] + 1 - wanted[0]] = _scalarView(labelmap)
    padded.SetImageToWorldMatrix(matrix)
    labelmap.ShallowCopy(padded)
    return labelmap


def writeSegmentVoxels(labelmap, segmentationNode, segmentId: str, positions: np.ndarray, inside: np.ndarray) -> None:
    """Set voxels of a segment's own labelmap (from :func:`ownSegmentLabelmap`) in place:
    ``positions`` are flat indices into its extent, ``inside`` says which are in the segment.
    Slicer is told once (the labelmap's Modified event redraws the views)."""
    label = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    voxels[positions] = np.where(inside, label, 0)
    labelmap.Modified()


def _boundingBox(mask: np.ndarray) -> tuple:
    """Slices ``(z, y, x)`` of the box holding every True voxel; one corner voxel when none.
    (numpy only: this module must import before the backend's scipy is installed.)"""
    box = []
    for axis in range(3):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1) if hits.size else slice(0, 1))
    return tuple(box)


def segmentArray(segmentationNode, segmentId: str, geometry: Geometry) -> np.ndarray:
    """A segment as a uint8 mask ``[z, y, x]`` (1 = inside) resampled (nearest) onto ``geometry``."""
    segmentation = segmentationNode.GetSegmentation()
    if segmentation.GetSegment(segmentId) is None:
        raise InputError(f"has no segment {segmentId!r}", segmentationNode.GetName())
    if not segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId):
        segmentationNode.CreateBinaryLabelmapRepresentation()
    labelmap = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap):
        raise InputError(f"segment {segmentId!r} has no binary labelmap", segmentationNode.GetName())
    reference = emptyOrientedImage(geometry)
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return np.zeros(geometry.shape_zyx, dtype=np.uint8)  # empty segment
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False):
        raise RuntimeError(f"could not resample segment {segmentId} onto the reference grid")
    # the output may cover only part of the reference extent: paste it into a full grid
    result = np.zeros(geometry.shape_zyx, dtype=np.uint8)
    out_extent = resampled.GetExtent()
    if out_extent[0] > out_extent[1]:
        return result
    values = _scalarView(resampled) > 0
    i0, j0, k0 = out_extent[0], out_extent[2], out_extent[4]
    nz, ny, nx = values.shape
    # clip to the reference grid
    zs, ys, xs = (slice(max(0, -k0), min(nz, geometry.size[2] - k0)),
                  slice(max(0, -j0), min(ny, geometry.size[1] - j0)),
                  slice(max(0, -i0), min(nx, geometry.size[0] - i0)))
    result[k0 + zs.start:k0 + zs.stop, j0 + ys.start:j0 + ys.stop, i0 + xs.start:i0 + xs.stop] = values[zs, ys, xs]
    return result


def voxelsModifiedEvent():
    """vtkSegmentation's event for changed voxels (renamed from Master... in Slicer 5.4)."""
    segmentation = slicer.vtkSegmentation
    return getattr(segmentation, "SourceRepresentationModified", None) or segmentation.MasterRepresentationModified


def tumorSegmentId(segmentationNode) -> str:
    """The ID of our tumor segment (recorded on the node, else the segment named "Tumor")."""
    segmentation = segmentationNode.GetSegmentation()
    recorded = segmentationNode.GetAttribute("BreastTumorSeg.SegmentID")
    if recorded and segmentation.GetSegment(recorded) is not None:
        return recorded
    byName = segmentation.GetSegmentIdBySegmentName(TUMOR_SEGMENT_NAME)
    if byName:
        return byName
    if segmentation.GetNumberOfSegments() == 1:
        return segmentation.GetNthSegmentID(0)
    raise InputError(f"has no segment named {TUMOR_SEGMENT_NAME!r}", segmentationNode.GetName())


def removeWithDependents(nodes) -> None:
    """Remove each node (None and nodes already out of their scene are skipped) together with
    its display and storage nodes, which the Slicer core leaves behind otherwise."""
    for node in nodes:
        scene = node.GetScene() if node is not None else None
        if scene is None:
            continue
        dependents = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        dependents.append(node.GetStorageNode())
        scene.RemoveNode(node)
        for dependent in dependents:
            if dependent is not None and dependent.GetScene() is not None:
                scene.RemoveNode(dependent)


def nodeIds(scene) -> set:
    """The IDs of every node in ``scene`` now."""
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def removeNodesAddedSince(scene, before: set) -> None:
    """Remove every node added to ``scene`` since ``before`` (:func:`nodeIds`) was taken."""
    for nodeId in sorted(nodeIds(scene) - before, reverse=True):
        node = scene.GetNodeByID(nodeId)
        if node is not None:
            scene.RemoveNode(node)


@contextmanager
def removedOnFailure(scene):
    """The nodes added inside the ``with`` block are removed again when it raises: the scene
    is left as it was."""
    before = nodeIds(scene)
    try:
        yield
    except BaseException:
        removeNodesAddedSince(scene, before)
        raise


@contextmanager
def removedAfterwards(scene):
    """The nodes added inside the ``with`` block are removed when it ends (temporary nodes)."""
    before = nodeIds(scene)
    try:
        yield
    finally:
        removeNodesAddedSince(scene, before)


# ----------------------------------------------------------------------------- subject hierarchy
def placeBeside(nodes, anchorNode) -> None:
    """Put ``nodes`` under the subject-hierarchy parent (the study) of ``anchorNode``.

    Does nothing when the scene has no subject hierarchy or the anchor is not in it.
    """
    if anchorNode is None or anchorNode.GetScene() is None:
        return
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(anchorNode.GetScene())
    if shNode is None:
        return
    anchorItem = shNode.GetItemByDataNode(anchorNode)
    if not anchorItem:
        return
    parentItem = shNode.GetItemParent(anchorItem)
    if not parentItem or parentItem == shNode.GetSceneItemID():
        return
    placeUnder(shNode, parentItem, nodes)


def placeUnder(shNode, parentItem: int, nodes) -> None:
    """Put ``nodes`` under the subject-hierarchy item ``parentItem`` (creating their items if needed)."""
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if item:
            shNode.SetItemParent(item, parentItem)
        else:  # without the desktop's subject hierarchy plugins nodes get no item by themselves
            shNode.CreateItem(parentItem, node)


def _name(node) -> str:
    if node is None:
        return "volume"
    return node.GetName() or node.GetID() or node.GetClassName()
