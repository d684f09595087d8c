"""The Slicer logic (BreastTumorSegLib) against the real Slicer core from PyPI (slicer-core).

Phase volumes and a Volume Sequence are built from synthetic arrays on an oblique grid
with a flipped axis; the checks are by physical (RAS) position, not voxel index. Each test runs
in a forked child (``slicer_harness.forked``: an ITK error inside a Slicer logic aborts the
interpreter).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import slicer  # the Slicer core from PyPI (slicer-core, pinned in requirements.txt)

from slicer_harness import create_slicer_core, forked, segment_editor  # noqa: E402

from breasttumorseg.core.errors import BreastTumorSegError, GeometryError, InputError, OutputError  # noqa: E402
from breasttumorseg.core.geometry import Geometry, lps_to_ras  # noqa: E402

pytestmark = pytest.mark.slicer

TIMES_S = (0.0, 75.0, 150.0, 450.0)
#: a phantom seed (never used in training) whose tumor is about 11 mL on the end-to-end grid
PHANTOM_SEED = 33


# ----------------------------------------------------------------------------- fixtures and helpers
def oblique_geometry(size=(48, 40, 20), spacing=(1.5, 1.6, 3.0)) -> Geometry:
    """A grid rotated 25 degrees about two axes with its j axis flipped (LPS)."""
    a, b = np.radians(25.0), np.radians(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx @ np.diag([1.0, -1.0, 1.0])
    return Geometry(size, spacing, (-31.0, 22.5, -14.0), tuple(direction.ravel()))


def dce_case(geometry: Geometry, n_phases: int = 4, seed: int = 3):
    """(phases [T, z, y, x] float32, tumor mask [z, y, x] uint8) on ``geometry``.

    An enhancing, washing-out ellipsoid (about 21 x 19 x 18 mm) in noisy tissue: big
    enough on this small grid for thresholds and refinements to change it visibly (the
    phantom's clinical field of view does not fit a grid this small).
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(geometry.shape_zyx)
    nz, ny, nx = geometry.shape_zyx
    radius2 = ((z - nz * 0.5) / 3.0) ** 2 + ((y - ny * 0.4) / 6.0) ** 2 + ((x - nx * 0.6) / 7.0) ** 2
    mask = (radius2 < 1).astype(np.uint8)
    uptake = [0.0, 160.0, 130.0, 100.0, 90.0, 85.0][:n_phases]
    phases = np.stack([100 + rng.normal(0, 4, geometry.shape_zyx) + mask * u for u in uptake]).astype(np.float32)
    return phases, mask


@pytest.fixture
def core():
    return create_slicer_core()


@pytest.fixture
def logic(core):
    from BreastTumorSegLib import BreastTumorSegLogic

    warnings = []
    result = BreastTumorSegLogic(warn=warnings.append)
    result.warnings = warnings
    return result


def add_phase_volumes(core, phases, geometry, times=TIMES_S, names=None):
    from BreastTumorSegLib import TIME_ATTRIBUTE, nodes

    volumes = []
    for i, array in enumerate(phases):
        node = nodes.newScalarVolumeNode(array, geometry, (names or {}).get(i, f"DCE phase {i}"), core.scene)
        if times is not None:
            node.SetAttribute(TIME_ATTRIBUTE, f"{times[i]:g}")
        volumes.append(node)
    return volumes


def add_volume_sequence(core, phases, geometry, index_values, unit="ms", name="DCE sequence"):
    """A Volume Sequence like the DICOM importer makes: frames in the sequence's own scene."""
    from BreastTumorSegLib import nodes

    sequence = core.scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    sequence.SetIndexName("time")
    sequence.SetIndexUnit(unit)
    sequence.SetIndexType(sequence.NumericIndex)
    for array, value in zip(phases, index_values):
        frame = nodes.newScalarVolumeNode(array, geometry, "frame")
        sequence.SetDataNodeAtValue(frame, f"{value:g}")
    return sequence


def ras_centroid(mask_zyx, ijk_to_ras: np.ndarray) -> np.ndarray:
    """Centroid of a mask in RAS mm through a 4x4 IJKToRAS matrix."""
    k, j, i = np.nonzero(mask_zyx)
    ijk1 = np.stack([i, j, k, np.ones_like(i)]).astype(float)
    return (ijk_to_ras @ ijk1)[:3].mean(axis=1)


def ijk_to_ras_of(node) -> np.ndarray:
    from BreastTumorSegLib import nodes

    return nodes.ijkToRasArray(node)


def node_ids(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def blob_probability(geometry: Geometry, mask) -> np.ndarray:
    """A smooth probability peaking (0.95) inside ``mask``, falling off outside it (no model needed)."""
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(mask, sampling=geometry.spacing[::-1])
    outside = ndimage.distance_transform_edt(1 - mask, sampling=geometry.spacing[::-1])
    signed = np.where(mask > 0, inside, -outside)
    return (0.95 / (1.0 + np.exp(-signed / 1.5))).astype(np.float32)




# ----------------------------------------------------------------------------- harness and geometry
@forked
def test_harness_exposes_logics_where_slicer_util_looks(core):
    assert slicer.mrmlScene is core.scene
    assert slicer.modules.volumes.logic() is core.logic("Volumes")
    assert core.app_logic.GetModuleLogic("Segmentations") is core.logic("Segmentations")
    assert slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene) is not None
    # slicer.util's array helpers run on this scene
    volume = slicer.util.addVolumeFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2, 2, 3, 1]))
    assert slicer.util.arrayFromVolume(volume).shape == (2, 3, 4)
    labelmap = slicer.modules.volumes.logic().CreateAndAddLabelVolume(volume, "label")
    assert labelmap.GetImageData().GetDimensions() == (4, 3, 2)


@forked
def test_volume_node_geometry_is_the_backend_geometry_in_ras(core):
    from BreastTumorSegLib import nodes

    geometry = oblique_geometry()
    array = np.random.default_rng(0).random(geometry.shape_zyx).astype(np.float32)
    node = nodes.newScalarVolumeNode(array, geometry, "oblique", core.scene)
    assert np.allclose(ijk_to_ras_of(node), geometry.ijk_to_ras())
    assert nodes.geometryFromVolumeNode(node).same_grid(geometry)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
    # one voxel's physical position two ways: Slicer's IJKToRAS, and the backend's Geometry (LPS -> RAS)
    import vtk

    ijk = np.array([7.0, 31.0, 12.0])
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras_slicer = np.array(matrix.MultiplyPoint((*ijk, 1.0))[:3])
    np.testing.assert_allclose(ras_slicer, lps_to_ras(geometry.index_to_physical(ijk)), atol=1e-6)
    # the flipped j axis is really flipped: j runs against the direction's second column
    assert np.linalg.det(geometry.direction_matrix) < 0


# ----------------------------------------------------------------------------- phases
@forked
def test_phases_from_scalar_volumes_are_ordered_by_time(core, logic):
    geometry = oblique_geometry()
    phases, _ = dce_case(geometry)
    shuffled_times = (150.0, 0.0, 450.0, 75.0)
    volumes = add_phase_volumes(core, phases, geometry, times=shuffled_times)
    found = logic.phasesFromNode(volumes)
    assert [t for _, t in found] == sorted(shuffled_times)
    assert [node for node, _ in found] == [volumes[1], volumes[3], volumes[0], volumes[2]]
    # a vtkCollection works too
    import vtk

    collection = vtk.vtkCollection()
    for node in volumes:
        collection.AddItem(node)
    assert [node for node, _ in logic.phasesFromNode(collection)] == [node for node, _ in found]


@forked
def test_phases_without_times_keep_the_given_order(core, logic):
    from BreastTumorSegLib import TIME_ATTRIBUTE

    geometry = oblique_geometry()
    phases, _ = dce_case(geometry, n_phases=3)
    volumes = add_phase_volumes(core, phases, geometry, times=None)
    found = logic.phasesFromNode(volumes[::-1])
    assert [node for node, _ in found] == volumes[::-1]
    assert all(t is None for _, t in found)
    # some but not all timed: no times, and a warning says why
    volumes[0].SetAttribute(TIME_ATTRIBUTE, "0")
    found = logic.phasesFromNode(volumes)
    assert all(t is None for _, t in found)
    assert any("no acquisition time" in w for w in logic.warnings)


@forked
def test_phases_from_a_volume_sequence_in_ms(core, logic):
    geometry = oblique_geometry()
    phases, _ = dce_case(geometry)
    sequence = add_volume_sequence(core, phases, geometry, [t * 1000 for t in TIMES_S], unit="ms")
    found = logic.phasesFromNode(sequence)
    assert [t for _, t in found] == pytest.approx(list(TIMES_S))
    for (node, _), expected in zip(found, phases):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), expected)
        assert np.allclose(ijk_to_ras_of(node), geometry.ijk_to_ras())
    study = logic.studyFromPhases(sequence)
    assert study.geometry.same_grid(geometry)
    np.testing.assert_array_equal(study.phases, phases)
    assert list(study.times_s) == pytest.approx(list(TIMES_S))
    assert study.source == "DCE sequence"


@forked
def test_phases_from_a_sequence_browser_and_its_proxy_volume(core, logic):
    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    sequence = add_volume_sequence(core, phases, geometry, [t * 1000 for t in TIMES_S])
    browser = core.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "DCE browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    browser.SetSelectedItemNumber(2)
    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    assert proxy is not None and proxy.GetScene() is core.scene
    for source in (browser, proxy):  # what the user sees is one frame; the logic takes the whole series
        found = logic.phasesFromNode(source)
        assert [t for _, t in found] == pytest.approx(list(TIMES_S))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(found[3][0]), phases[3])
    # results made from the proxy reference it (a volume in the scene on the same grid) and sit beside it
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene)
    study_item = sh.CreateStudyItem(sh.GetSceneItemID(), "MR breast")
    sh.CreateItem(study_item, proxy)
    probability_node, segmentation_node = logic.addResult(proxy, blob_probability(geometry, truth),
                                                          settings=_settings(0.5), source=proxy)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReference(role) is proxy
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation_node)) == study_item


@forked
def test_phases_from_a_sequence_in_seconds_and_with_a_text_index(core, logic):
    geometry = oblique_geometry()
    phases, _ = dce_case(geometry, n_phases=3)
    seconds = add_volume_sequence(core, phases, geometry, [0, 90, 180], unit="s")
    assert [t for _, t in logic.phasesFromNode(seconds)] == [0.0, 90.0, 180.0]
    minutes = add_volume_sequence(core, phases, geometry, [0, 1.5, 3], unit="min")
    assert [t for _, t in logic.phasesFromNode(minutes)] == pytest.approx([0.0, 90.0, 180.0])
    from BreastTumorSegLib import nodes

    text = core.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "text sequence")
    text.SetIndexType(text.TextIndex)
    for label, array in zip(("pre", "post1", "post2"), phases):
        text.SetDataNodeAtValue(nodes.newScalarVolumeNode(array, geometry, label), label)
    found = logic.phasesFromNode(text)
    assert [t for _, t in found] == [None, None, None]
    assert any("not a time" in w for w in logic.warnings)


@forked
def test_phases_from_a_multivolume(core, logic):
    from BreastTumorSegLib import nodes

    geometry = oblique_geometry()
    phases, _ = dce_case(geometry)
    # a MultiVolume node is a vector volume (frames as components) with MultiVolume.* attributes;
    # slicer-core lacks the class, so a vector volume carries the same attributes here
    vector = core.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "DCE multivolume")
    nodes.setVolumeNodeGeometry(vector, geometry)
    order = [2, 0, 3, 1]  # frames stored out of time order
    slicer.util.updateVolumeFromArray(vector, np.stack([phases[i] for i in order], axis=-1))
    vector.SetAttribute("MultiVolume.FrameLabels", ",".join(f"{TIMES_S[i] * 1000:g}" for i in order))
    vector.SetAttribute("MultiVolume.FrameIdentifyingDICOMTagUnits", "ms")
    before = core.node_count()
    found = logic.phasesFromNode(vector)
    assert core.node_count() == before  # frames are detached nodes, the scene is untouched
    assert [t for _, t in found] == pytest.approx(list(TIMES_S))
    for (node, _), expected in zip(found, phases):
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), expected)
        assert nodes.geometryFromVolumeNode(node).same_grid(geometry)


@forked
def test_dicom_times_from_instance_tags():
    from BreastTumorSegLib.phases import timesFromDicom

    class Volume:
        def __init__(self, uid):
            self.uid = uid

        def GetAttribute(self, name):
            return f"{self.uid} other" if name == "DICOM.instanceUIDs" else None

    tags = {("1", "0008,0032"): "101500.000", ("2", "0008,0032"): "101630.5", ("3", "0008,0032"): "102000"}
    times = timesFromDicom([Volume("1"), Volume("2"), Volume("3")], lambda uid, tag: tags.get((uid, tag), ""))
    assert times == pytest.approx([0.0, 90.5, 300.0])
    trigger = {("1", "0018,1060"): "0", ("2", "0018,1060"): "60000"}
    assert timesFromDicom([Volume("1"), Volume("2")], lambda uid, tag: trigger.get((uid, tag), "")) == [0.0, 60.0]
    assert timesFromDicom([Volume("1")], lambda uid, tag: "") is None


@forked
def test_study_resamples_a_phase_on_another_grid_with_a_warning(core, logic):
    geometry = oblique_geometry()
    phases, _ = dce_case(geometry, n_phases=3)
    volumes = add_phase_volumes(core, phases, geometry, times=(0, 90, 180))
    shifted = Geometry(geometry.size, geometry.spacing, tuple(np.add(geometry.origin, (1.5, 0, 0))), geometry.direction)
    from BreastTumorSegLib import nodes

    nodes.setVolumeNodeGeometry(volumes[0], shifted)
    study = logic.studyFromPhases(volumes)
    assert study.geometry.same_grid(geometry)  # phase 1 is the reference grid
    assert any("resampled" in w and "origin" in w for w in logic.warnings)
    far = Geometry(geometry.size, geometry.spacing, tuple(np.add(geometry.origin, (500, 0, 0))), geometry.direction)
    nodes.setVolumeNodeGeometry(volumes[2], far)
    with pytest.raises(GeometryError, match="less than half"):
        logic.studyFromPhases(volumes)


# ----------------------------------------------------------------------------- results on the scene
@forked
def test_result_nodes_lie_on_the_input_grid_and_the_tumor_lands_in_place(core, logic):
    """An injected probability map (no model) ends up at the truth's RAS position."""
    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene)
    study_item = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "MR breast")
    for node in volumes:  # as the DICOM module files a loaded series (slicer-core has no SH plugins to do it)
        sh.CreateItem(study_item, node)

    probability = blob_probability(geometry, truth)
    phase_list = logic.phasesFromNode(volumes)
    settings = _settings(0.5)
    probability_node, segmentation_node = logic.addResult(phase_list, probability, settings=settings, name="Case")

    reference = volumes[1]
    assert np.allclose(ijk_to_ras_of(probability_node), ijk_to_ras_of(reference))
    assert probability_node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
    assert probability_node.GetImageData().GetScalarType() == 10  # VTK_FLOAT
    # the segmentation's reference geometry is the reference phase's, by node and by geometry string
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReference(role) is reference
    labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, _tumor_id(segmentation_node), reference)
    np.testing.assert_array_equal(labelmap, (probability >= 0.5).astype(np.uint8))
    # physical position: truth centroid (backend geometry, LPS -> RAS) vs segment centroid (node IJKToRAS)
    truth_ras = ras_centroid(truth, geometry.ijk_to_ras())
    segment_ras = ras_centroid(labelmap, ijk_to_ras_of(reference))
    assert np.linalg.norm(segment_ras - truth_ras) < 1.0
    center = np.array(segmentation_node.GetSegmentCenterRAS(_tumor_id(segmentation_node)))
    assert np.linalg.norm(center - truth_ras) < 3.0
    # display: colour table, window 0..1, probabilities below the threshold hidden
    display = probability_node.GetDisplayNode()
    assert display.GetColorNode() is not None and display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(0.5)
    assert display.GetWindow() == pytest.approx(1.0) and display.GetLevel() == pytest.approx(0.5)
    # both results sit under the study in subject hierarchy, with one segment named Tumor
    for node in (probability_node, segmentation_node):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study_item
    segmentation = segmentation_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    assert segmentation.GetSegment(_tumor_id(segmentation_node)).GetName() == "Tumor"


@forked
def test_results_from_a_sequence_use_its_frames_grid(core, logic):
    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    sequence = add_volume_sequence(core, phases, geometry, [t * 1000 for t in TIMES_S])
    probability_node, segmentation_node = logic.addResult(sequence, blob_probability(geometry, truth),
                                                          settings=_settings(0.5), source=sequence)
    assert np.allclose(ijk_to_ras_of(probability_node), geometry.ijk_to_ras())
    # the frames live in the sequence's own scene: the geometry reference is the probability map (same grid)
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReference(role) is probability_node
    labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, _tumor_id(segmentation_node),
                                                          probability_node)
    assert np.linalg.norm(ras_centroid(labelmap, ijk_to_ras_of(probability_node))
                          - ras_centroid(truth, geometry.ijk_to_ras())) < 1.0


@forked
def test_threshold_changes_update_the_segment(core, logic):
    from breasttumorseg.segmentation.postprocess import ThresholdSettings, segment_probability

    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    probability = blob_probability(geometry, truth)
    probability_node, segmentation_node = logic.addResult(logic.phasesFromNode(volumes), probability,
                                                          settings=_settings(0.5))
    counts = []
    for threshold in (0.1, 0.3, 0.5, 0.7, 0.9):
        started = time.perf_counter()
        mask = logic.updateSegmentation(probability_node, segmentation_node, threshold)
        elapsed = time.perf_counter() - started
        in_segment = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, _tumor_id(segmentation_node),
                                                                volumes[1])
        np.testing.assert_array_equal(in_segment, mask)
        np.testing.assert_array_equal(mask, segment_probability(probability, geometry, ThresholdSettings(threshold)))
        assert probability_node.GetDisplayNode().GetLowerThreshold() == pytest.approx(threshold)
        counts.append(int(in_segment.sum()))
        assert elapsed < 2.0  # small grid; the 100 ms target is a benchmark on the standard case
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] > 0
    # back down: the segment grows past the extent it had at 0.9
    mask = logic.updateSegmentation(probability_node, segmentation_node, 0.1)
    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, _tumor_id(segmentation_node), volumes[1]), mask)
    assert int(mask.sum()) == counts[0]
    # relative threshold: a fraction of the maximum; the display threshold follows
    logic.updateSegmentation(probability_node, segmentation_node, 0.5, relative=True)
    assert probability_node.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.5 * probability.max(), rel=1e-4)
    assert segmentation_node.GetAttribute("BreastTumorSeg.RelativeThreshold") == "1"
    with pytest.raises(InputError, match="between 0 and 1"):
        logic.updateSegmentation(probability_node, segmentation_node, 1.5)


@forked
def test_slider_writes_only_changed_voxels_and_equals_the_direct_computation(core, logic, monkeypatch):
    """Mode switches, a threshold below the index's floor, a Segment Editor edit and another
    segment in the same layer: after each change the segment is the backend's mask."""
    from BreastTumorSegLib import nodes
    from breasttumorseg.segmentation.postprocess import ThresholdSettings, segment_probability

    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    probability = blob_probability(geometry, truth)
    probability[2:4, 3:5, 40:44] = 0.6   # a small focus (about 0.12 mL) touching nothing
    probability[0, 0:3, 0:3] = 0.7       # another on the grid's corner
    probability_node, segmentation_node = logic.addResult(logic.phasesFromNode(volumes), probability,
                                                          settings=_settings(0.5))
    segment_id = _tumor_id(segmentation_node)
    full_writes = []
    original = nodes.setSegmentFromArray
    monkeypatch.setattr(nodes, "setSegmentFromArray",
                        lambda *args, **kwargs: (full_writes.append(args[2]), original(*args, **kwargs))[1])
    editor, _ = segment_editor(core, segmentation_node, volumes[1])
    editor.SetCurrentSegmentID(segment_id)

    def check(threshold, relative=False, smallest=0.0, full=False, returnMask=True):
        before = len(full_writes)
        mask = logic.updateSegmentation(probability_node, segmentation_node, threshold, relative=relative,
                                        minComponentMl=smallest, returnMask=returnMask)
        expected = segment_probability(probability, geometry, ThresholdSettings(threshold, relative,
                                                                                min_component_ml=smallest))
        if returnMask or full:
            np.testing.assert_array_equal(mask, expected)
        else:  # the slider's way: the changed voxels written, no grid-size mask built
            assert mask is None
        np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id,
                                                                                 volumes[1]), expected)
        assert (len(full_writes) > before) == full, "whole-mask write" if not full else "in-place write"
        return int(expected.sum())

    counts = [check(t, returnMask=t != 0.9) for t in (0.3, 0.9, 0.05, 0.5)]
    assert counts[1] <= counts[3] <= counts[0] <= counts[2] and counts[1] < counts[2]
    focus = check(0.5, smallest=0.0)
    assert check(0.5, smallest=0.2) < focus  # the foci go, the tumor stays
    assert check(0.5, relative=True) < focus  # not seeded: the foci go
    check(0.9, relative=True)
    check(0.01, full=True)                    # below the floor: the direct computation, whole mask
    check(0.4, full=True)                     # the segment no longer holds what was written in place
    check(0.45, returnMask=False)
    # a Segment Editor edit: the next change replaces the segment as a whole
    box = np.zeros(geometry.shape_zyx, np.uint8)
    box[10:12, 30:33, 2:5] = 1
    editor.ModifySegmentByLabelmap(segmentation_node, segment_id, nodes.orientedImageFromArray(box, geometry),
                                   editor.ModificationModeAdd, False, True)
    check(0.5, full=True)
    check(0.55, returnMask=False)
    # another segment in the tumor's layer: every change goes through Slicer, the other segment stays
    other = segmentation_node.GetSegmentation().AddEmptySegment("Other")
    editor.SetCurrentSegmentID(other)
    editor.ModifySegmentByLabelmap(segmentation_node, other, nodes.orientedImageFromArray(box, geometry),
                                   editor.ModificationModeAdd, False, True)
    layer = segmentation_node.GetSegmentation().GetLayerIndex
    assert layer(other) == layer(segment_id)
    check(0.6, full=True)
    check(0.3, full=True)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, other, volumes[1]),
                                  box)


# ----------------------------------------------------------------------------- refinement in Segment Editor
def _edited_case(core, logic):
    from BreastTumorSegLib import nodes

    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    phase_list = logic.phasesFromNode(volumes)
    _, segmentation_node = logic.addResult(phase_list, blob_probability(geometry, truth), settings=_settings(0.5))
    segment_id = nodes.tumorSegmentId(segmentation_node)
    editor, _ = segment_editor(core, segmentation_node, volumes[1])
    editor.SetCurrentSegmentID(segment_id)
    return geometry, phase_list, volumes, segmentation_node, segment_id, editor


def _erase_and_paint(geometry, editor, segmentation_node, segment_id, before):
    """Erase the tumor's half with the larger i index; paint a 3x3x3 box away from it (Segment Editor's way)."""
    from BreastTumorSegLib import nodes

    k, j, i = np.nonzero(before)
    half = np.zeros_like(before)
    half[:, :, int(np.median(i)):] = 1
    half &= before
    editor.SaveStateForUndo()
    editor.ModifySegmentByLabelmap(segmentation_node, segment_id, nodes.orientedImageFromArray(half, geometry),
                                   editor.ModificationModeRemove, False, True)
    box = np.zeros_like(before)
    box[2:5, 2:5, 2:5] = 1
    assert not (box & before).any()
    editor.SaveStateForUndo()
    editor.ModifySegmentByLabelmap(segmentation_node, segment_id, nodes.orientedImageFromArray(box, geometry),
                                   editor.ModificationModeAdd, False, True)
    return (before & (1 - half)) | box


@forked
def test_segment_editor_logic_modifies_the_segment(core, logic):
    geometry, _, volumes, segmentation_node, segment_id, editor = _edited_case(core, logic)
    before = logic.segmentMask(segmentation_node, geometry)
    expected = _erase_and_paint(geometry, editor, segmentation_node, segment_id, before)
    after = logic.segmentMask(segmentation_node, geometry)
    np.testing.assert_array_equal(after, expected)
    # slicer.util reads the same voxels through the reference volume
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volumes[1]),
                                  expected)
    assert editor.CanUndo()
    editor.Undo()  # undo the paint
    editor.Undo()  # and the erase
    np.testing.assert_array_equal(logic.segmentMask(segmentation_node, geometry), before)


@forked
def test_measurements_follow_refinement(core, logic):
    from breasttumorseg.reporting.measurements import measure, t_category

    geometry, phase_list, volumes, segmentation_node, segment_id, editor = _edited_case(core, logic)
    study = logic.studyFromPhases(phase_list)
    before = logic.segmentMask(segmentation_node, geometry)
    first = logic.measure(segmentation_node, phase_list)
    assert first["tumor_volume_ml"] == pytest.approx(before.sum() * geometry.voxel_volume_ml, rel=1e-6)
    assert first["n_lesions"] == 1
    expected = _erase_and_paint(geometry, editor, segmentation_node, segment_id, before)
    second = logic.measure(segmentation_node, phase_list)
    assert second["tumor_volume_ml"] == pytest.approx(expected.sum() * geometry.voxel_volume_ml, rel=1e-6)
    assert second["tumor_volume_ml"] < first["tumor_volume_ml"]
    assert second["n_lesions"] == 2  # the painted box is a second lesion
    # the same numbers as the backend computes from the mask directly (the CLI's names and values)
    direct = measure(study, expected)
    for key in ("tumor_volume_ml", "longest_diameter_mm", "t_category", "n_lesions"):
        wanted = pytest.approx(direct[key]) if isinstance(direct[key], float) else direct[key]
        assert second[key] == wanted
    # the index lesion gives the diameter and the T category, "(m)" for the second lesion
    assert first["t_category"] == t_category(first["longest_diameter_mm"])
    assert second["t_category"] == t_category(second["longest_diameter_mm"]) + " (m)"
    assert second["longest_diameter_mm"] == second["lesions"][0]["longest_diameter_mm"]
    # the painted box's centroid in RAS, by the volume node's own IJKToRAS (an oblique grid)
    box = np.zeros_like(before)
    box[2:5, 2:5, 2:5] = 1
    painted = second["lesions"][1]
    assert painted["volume_ml"] == pytest.approx(27 * geometry.voxel_volume_ml)
    assert painted["centroid_ras_mm"] == pytest.approx(list(ras_centroid(box, ijk_to_ras_of(volumes[1]))), abs=1e-6)
    assert painted["centroid_lps_mm"] == pytest.approx(direct["lesions"][1]["centroid_lps_mm"])


# ----------------------------------------------------------------------------- export
@forked
def test_export_and_reload_give_identical_voxels(core, logic, tmp_path):
    from breasttumorseg.exam.loading import read_image

    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    _, segmentation_node = logic.addResult(logic.phasesFromNode(volumes), blob_probability(geometry, truth),
                                           settings=_settings(0.5))
    expected = logic.segmentMask(segmentation_node, geometry)
    assert expected.sum() > 20
    before = node_ids(core.scene)

    written = logic.export(segmentation_node, tmp_path / "tumor.seg.nrrd")
    assert node_ids(core.scene) == before
    reloaded = logic.loadSegmentation(written)
    np.testing.assert_array_equal(logic.segmentMask(reloaded, geometry), expected)
    assert reloaded.GetSegmentation().GetNthSegment(0).GetName() == "Tumor"

    for name in ("tumor_label.nii.gz", "tumor_label.nii"):
        logic.export(segmentation_node, tmp_path / name)
        label, label_geometry = read_image(tmp_path / name)
        assert label_geometry.same_grid(geometry), label_geometry.differences(geometry)
        np.testing.assert_array_equal(label > 0, expected > 0)
    assert node_ids(core.scene) == before | node_ids_of(reloaded)

    stl = Path(logic.export(segmentation_node, tmp_path / "tumor.stl"))
    assert stl.stat().st_size > 1000
    _check_surface_in_lps(stl, expected, geometry)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    with pytest.raises(OutputError, match="DICOM SEG"):
        logic.export(segmentation_node, tmp_path / "tumor.dcm")
    with pytest.raises(OutputError, match="unsupported"):
        logic.export(segmentation_node, tmp_path / "tumor.png")
    assert not (tmp_path / "tumor.dcm").exists()


@forked
def test_backend_seg_nrrd_loads_as_the_same_segmentation(core, logic, tmp_path):
    from breasttumorseg.reporting import writing

    geometry = oblique_geometry()
    _, truth = dce_case(geometry)
    path = tmp_path / "backend.seg.nrrd"
    writing.write_segmentation_nrrd(path, truth, geometry, segment_name="Tumor")
    node = logic.loadSegmentation(path)
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment_id = segmentation.GetNthSegmentID(0)
    assert segmentation.GetSegment(segment_id).GetName() == "Tumor"
    # its internal labelmap lies on the backend geometry (RAS image-to-world == Geometry.ijk_to_ras)
    import vtk

    labelmap = node.GetBinaryLabelmapInternalRepresentation(segment_id)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    from BreastTumorSegLib import nodes

    np.testing.assert_allclose(nodes.arrayFromVtkMatrix(matrix), geometry.ijk_to_ras(), atol=1e-4)
    np.testing.assert_array_equal(logic.segmentMask(node, geometry), truth)


# ----------------------------------------------------------------------------- bad input leaves the scene as it was
@forked
def test_bad_inputs_raise_one_line_errors_and_leave_the_scene_unchanged(core, logic):
    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    one_frame = add_volume_sequence(core, phases[:1], geometry, [0.0], name="single frame")
    before = node_ids(core.scene)
    cases = [
        ([], "no DCE phases"),
        (volumes[:1], "at least one post-contrast"),
        (one_frame, "single frame: .*at least one post-contrast"),
        ([(volumes[0], 0.0), (volumes[1], 0.0)], "duplicate acquisition time"),
    ]
    for phases_given, message in cases:
        with pytest.raises(BreastTumorSegError, match=message) as raised:
            logic.segment(phases_given, model="no-such-model")
        assert "\n" not in str(raised.value)
        assert node_ids(core.scene) == before
    with pytest.raises(BreastTumorSegError, match="not a scalar volume|scalar volume"):
        logic.phasesFromNode([volumes[0], core.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")])
    # a probability map on another grid is refused before any node is made
    before = node_ids(core.scene)
    with pytest.raises(GeometryError):
        logic.addResult(logic.phasesFromNode(volumes), np.zeros((3, 4, 5), np.float32), settings=_settings(0.5))
    assert node_ids(core.scene) == before


@forked
def test_a_failure_while_making_nodes_removes_what_was_made(core, logic, monkeypatch):
    from BreastTumorSegLib import nodes

    geometry = oblique_geometry()
    phases, truth = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    before = node_ids(core.scene)

    def broken(*args, **kwargs):
        raise RuntimeError("segment import failed")

    monkeypatch.setattr(nodes, "setSegmentFromArray", broken)
    with pytest.raises(RuntimeError, match="segment import failed"):
        logic.addResult(logic.phasesFromNode(volumes), blob_probability(geometry, truth), settings=_settings(0.5))
    assert node_ids(core.scene) == before


# ----------------------------------------------------------------------------- background process
def test_background_command_line_and_progress_lines():
    from breasttumorseg.run.request import SegmentationRequest
    from BreastTumorSegLib.background import parseProgressLine, segmentCommand

    request = SegmentationRequest(phases=("a.nrrd", "b.nrrd"), times_s=(0, 90.5), model="m", device="cpu",
                                  threshold=0.4, relative=True, min_component_ml=0.2)
    command = segmentCommand("/usr/bin/python3", request, "/tmp/out")
    assert command[:6] == ["/usr/bin/python3", "-m", "breasttumorseg", "segment", "a.nrrd", "b.nrrd"]
    text = " ".join(command)
    for part in ("--output /tmp/out", "--quiet", "--progress-lines", "--device cpu", "--times 0 90.5",
                 "--model m", "--relative-threshold 0.4", "--min-component-ml 0.2"):
        assert part in text
    assert "--threshold" not in command
    assert parseProgressLine('{"step": "inference", "progress": 0.42}\n') == ("inference", 0.42)
    assert parseProgressLine("WARNING: something") is None
    assert parseProgressLine('{"step": "x"}') is None


@forked
def test_background_run_can_be_cancelled_at_once(core, logic, tmp_path, monkeypatch):
    import sys

    from BreastTumorSegLib import background

    geometry = oblique_geometry()
    phases, _ = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    before = node_ids(core.scene)
    # a stand-in for the CLI that reports progress, then hangs; started, read and killed like the real one
    script = tmp_path / "slow_cli.py"
    script.write_text("import json, sys, time\n"
                      "print(json.dumps({'step': 'inference', 'progress': 0.25}), flush=True)\n"
                      "time.sleep(60)\n")
    real_command = background.segmentCommand
    monkeypatch.setattr(background, "segmentCommand", lambda *args, **kwargs: [sys.executable, str(script)])
    runner = logic.startSegmentation(volumes, pythonExecutable=sys.executable)
    deadline = time.time() + 20
    while runner.poll() == "running" and runner.progress == 0.0 and time.time() < deadline:
        time.sleep(0.05)
    assert (runner.step, runner.progress) == ("inference", 0.25)
    folder = runner.folder
    # the phases were written for the CLI on the study's grid, with their times
    from breasttumorseg.exam.loading import read_image

    written, written_geometry = read_image(folder / "phases" / "phase_2.nrrd")
    assert written_geometry.same_grid(geometry)
    np.testing.assert_allclose(written, phases[2])
    command = real_command(sys.executable, runner.request.with_phase_files(["p0.nrrd"]), folder / "output")
    assert "--times" in command and command[command.index("--times") + 3] == "150"
    started = time.perf_counter()
    runner.cancel()
    assert time.perf_counter() - started < 2.0
    assert runner.state == "cancelled" and runner.process.poll() is not None
    assert not folder.exists()
    with pytest.raises(BreastTumorSegError, match="cancelled"):
        logic.finishSegmentation(runner)
    assert node_ids(core.scene) == before


@forked
def test_background_failure_reports_the_cli_error_line(core, logic, tmp_path, monkeypatch):
    import sys

    from BreastTumorSegLib import background

    geometry = oblique_geometry()
    phases, _ = dce_case(geometry, n_phases=3)
    volumes = add_phase_volumes(core, phases, geometry, times=(0, 90, 180))
    script = tmp_path / "failing_cli.py"
    script.write_text("import sys\nprint('some detail', file=sys.stderr)\n"
                      "print('breasttumorseg: error: model.safetensors: checksum does not match its card', "
                      "file=sys.stderr)\nsys.exit(2)\n")
    monkeypatch.setattr(background, "segmentCommand", lambda *args, **kwargs: [sys.executable, str(script)])
    runner = logic.startSegmentation(volumes, pythonExecutable=sys.executable)
    assert runner.wait(timeout=30) == "failed"
    assert runner.error == "model.safetensors: checksum does not match its card"
    assert "some detail" in runner.details
    before = node_ids(core.scene)
    with pytest.raises(BreastTumorSegError, match="checksum"):
        logic.finishSegmentation(runner)
    assert node_ids(core.scene) == before and not runner.folder.exists()

# ----------------------------------------------------------------------------- end to end with a model
def _default_model():
    """The registry's default model (its weights are bundled)."""
    from breasttumorseg.segmentation.models import load_model

    return load_model(None)


def phantom_case(geometry: Geometry, seed: int, n_phases: int = 4):
    """(phases, tumor mask, times) of a phantom generated on ``geometry``'s size and spacing,
    its arrays then placed on ``geometry`` (oblique): what the default model was trained on.

    The phantom's arrays run anterior -> posterior along j (LPS); on a grid whose j axis is
    flipped they are flipped too, so that the anatomy agrees with the grid's direction (the
    model-free breast mask, the default model's prior, finds the breasts from it)."""
    from breasttumorseg.phantom import generate_phantom

    case = generate_phantom(seed, layout="axial", n_phases=n_phases, size=tuple(geometry.size),
                            spacing=tuple(geometry.spacing))
    phases = np.asarray(case.study.phases, dtype=np.float32)
    mask = (case.tumor_mask > 0).astype(np.uint8)
    if np.asarray(geometry.direction_matrix)[1, 1] < 0:   # j points anterior
        phases, mask = np.ascontiguousarray(phases[:, :, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    assert mask.sum() > 50, "pick a seed whose tumor is visible on this grid"
    return phases, mask, tuple(float(t) for t in case.study.times_s)


@forked
def test_segment_end_to_end_with_the_default_model(core, logic):
    model = _default_model()
    geometry = oblique_geometry(size=(128, 112, 40), spacing=(2.0, 2.0, 3.0))
    phases, truth, times = phantom_case(geometry, seed=PHANTOM_SEED)
    volumes = add_phase_volumes(core, phases, geometry, times=times)
    before = node_ids(core.scene)
    steps = []
    probability_node, segmentation_node = logic.segment(volumes, model=model, device="cpu",
                                                        progress=lambda step, fraction: steps.append((step, fraction)))
    assert steps and steps[-1][1] == pytest.approx(1.0)
    assert [f for _, f in steps] == sorted(f for _, f in steps)
    # only our results were added: probability (+ display, + colours once) and segmentation (+ display)
    added = node_ids(core.scene) - before
    assert probability_node.GetID() in added and segmentation_node.GetID() in added and len(added) <= 5
    reference = volumes[1]
    assert np.allclose(ijk_to_ras_of(probability_node), ijk_to_ras_of(reference))
    assert probability_node.GetImageData().GetDimensions() == reference.GetImageData().GetDimensions()
    probability = slicer.util.arrayFromVolume(probability_node)
    assert probability.dtype == np.float32 and 0.0 <= probability.min() and probability.max() <= 1.0
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReference(role) is reference
    labelmap = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, _tumor_id(segmentation_node), reference)
    assert labelmap.shape == geometry.shape_zyx
    # the model, trained on the phantom, finds the phantom's tumor where it is (physical position, RAS mm)
    assert labelmap.any(), "the default model found no tumor in a phantom study"
    distance = np.linalg.norm(ras_centroid(labelmap, ijk_to_ras_of(reference))
                              - ras_centroid(truth, geometry.ijk_to_ras()))
    assert distance < 5.0, f"tumor centroid {distance:.1f} mm from the truth"
    # the measurements use the CLI's names
    measured = logic.measure(segmentation_node, volumes)
    for key in ("tumor_volume_ml", "longest_diameter_mm", "t_category", "n_lesions"):
        assert key in measured
    # a model needing more phases than given: one-line error, scene unchanged
    before = node_ids(core.scene)
    needs = model.card.min_phases
    if needs > 2:
        with pytest.raises(InputError, match=f"at least {needs} phases"):
            logic.segment(volumes[:needs - 1], model=model, device="cpu")
        assert node_ids(core.scene) == before


@forked
def test_background_run_of_the_real_cli_matches_the_blocking_call(core, logic):
    import sys

    model = _default_model()
    geometry = oblique_geometry(size=(64, 56, 24), spacing=(2.0, 2.0, 3.0))
    phases, _ = dce_case(geometry, n_phases=max(4, model.card.min_phases), seed=5)
    volumes = add_phase_volumes(core, phases, geometry, times=(0.0, 75.0, 150.0, 450.0, 600.0, 750.0))
    runner = logic.startSegmentation(volumes, device="cpu", pythonExecutable=sys.executable)
    seen = set()
    deadline = time.time() + 300
    while runner.poll() == "running" and time.time() < deadline:
        seen.add(runner.step)
        time.sleep(0.1)
    assert runner.state == "succeeded", runner.error + "\n" + runner.details
    assert runner.progress == pytest.approx(1.0) and len(seen - {""}) >= 1
    probability_node, segmentation_node = logic.finishSegmentation(runner)
    assert not runner.folder.exists()
    assert np.allclose(ijk_to_ras_of(probability_node), ijk_to_ras_of(volumes[1]))
    blocking_node, _ = logic.segment(volumes, model=model, device="cpu")
    np.testing.assert_allclose(slicer.util.arrayFromVolume(probability_node),
                               slicer.util.arrayFromVolume(blocking_node),
                               atol=1e-4)


# ----------------------------------------------------------------------------- helpers needing the backend
def _settings(threshold, relative=False):
    try:
        from breasttumorseg.segmentation.postprocess import ThresholdSettings
    except ImportError:  # until the backend's post-processing is there: a stand-in with the same fields
        from types import SimpleNamespace

        return SimpleNamespace(threshold=threshold, relative=relative, min_component_ml=0.0)
    return ThresholdSettings(threshold=threshold, relative=relative)


def _tumor_id(segmentation_node) -> str:
    from BreastTumorSegLib import nodes

    return nodes.tumorSegmentId(segmentation_node)


def node_ids_of(node) -> set:
    ids = {node.GetID()}
    for i in range(node.GetNumberOfDisplayNodes()):
        ids.add(node.GetNthDisplayNodeID(i))
    for i in range(node.GetNumberOfStorageNodes()):
        ids.add(node.GetNthStorageNodeID(i))
    return ids


def _check_surface_in_lps(path: Path, mask, geometry: Geometry) -> None:
    """The STL's bounding box (LPS, as Slicer writes surfaces) matches the mask's within 1.5 voxels."""
    import vtk

    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    bounds = np.array(reader.GetOutput().GetBounds()).reshape(3, 2)
    k, j, i = np.nonzero(mask)
    lps = geometry.index_to_physical(np.stack([i, j, k], axis=1).astype(float))
    tolerance = 1.5 * max(geometry.spacing)
    np.testing.assert_allclose(bounds[:, 0], lps.min(axis=0), atol=tolerance)
    np.testing.assert_allclose(bounds[:, 1], lps.max(axis=0), atol=tolerance)
