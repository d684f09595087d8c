"""What the panel decides without Qt, on the real Slicer core (slicer-core): the bundled sample
study as a Volume Sequence, the phase table's rows and the choices it stores, the views'
helpers, the threshold settings a result carries, the nodes removed on failure, the reading
toolbar shown and removed by the reader-study logic, and the panel's sections and hint.

Each test that touches MRML runs in a forked child (see slicer_harness).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from slicer_harness import create_slicer_core, forked  # noqa: E402
from test_readerstudy_session import Clock  # noqa: E402
from test_slicer_logic import TIMES_S, add_phase_volumes, dce_case, oblique_geometry  # noqa: E402
from test_slicer_readerstudy import prepared_study  # noqa: E402

from breasttumorseg.core.errors import InputError  # noqa: E402

pytestmark = pytest.mark.slicer


@pytest.fixture
def core():
    return create_slicer_core()


# ----------------------------------------------------------------------------- sample study
@forked
def test_sample_study_loads_as_a_time_indexed_sequence_with_its_hidden_true_tumor(core):
    from BreastTumorSegLib import nodes, phasesFromNode, sampledata

    names = sampledata.sampleFiles()
    assert names[:4] == [f"phase_{i:02d}.nii.gz" for i in range(4)] and "times.json" in names
    sample = sampledata.loadSampleStudy(core.scene)
    sequence, proxy, truth = sample["sequence"], sample["proxy"], sample["truth"]
    assert sequence.GetNumberOfDataNodes() == 4 and sequence.GetIndexUnit() == "s"
    assert [float(sequence.GetNthIndexValue(i)) for i in range(4)] == [0.0, 82.9, 172.0, 261.2]
    assert sample["browser"].GetSelectedItemNumber() == 1            # the first post-contrast phase shown
    phases = phasesFromNode(proxy)                                     # the series the user sees
    assert [time for _, time in phases] == [0.0, 82.9, 172.0, 261.2]
    geometry = nodes.geometryFromVolumeNode(proxy)
    tumor = nodes.segmentArray(truth, truth.GetSegmentation().GetNthSegmentID(0), geometry)
    assert tumor.sum() > 100 and not truth.GetDisplayNode().GetVisibility()
    # the phase volumes loaded on the way are gone: the sequence holds its own copies
    volumes = [core.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(core.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert volumes == [proxy]
    # patient / study in subject hierarchy, as a DICOM import gives
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(core.scene)
    study = sh.GetItemParent(sh.GetItemByDataNode(proxy))
    assert sh.GetItemLevel(study) == "Study" and sh.GetItemParent(sh.GetItemByDataNode(truth)) == study


@forked
def test_an_altered_sample_file_is_refused_and_the_scene_is_left_as_it_was(core, tmp_path):
    from BreastTumorSegLib import sampledata

    folder = tmp_path / "sample"
    shutil.copytree(sampledata.SAMPLE_FOLDER, folder)
    with open(folder / "phase_02.nii.gz", "ab") as stream:
        stream.write(b"\0")
    before = core.node_count()
    with pytest.raises(InputError, match="phase_02.nii.gz.*SHA-256"):
        sampledata.loadSampleStudy(core.scene, folder)
    assert core.node_count() == before
    (folder / "phase_02.nii.gz").unlink()
    (folder / "phase_01.nii.gz").unlink()
    (folder / "phase_03.nii.gz").unlink()
    assert not sampledata.sampleAvailable(folder)
    with pytest.raises(InputError, match="fewer than two phases"):
        sampledata.loadSampleStudy(core.scene, folder)


@forked
def test_a_failure_after_some_nodes_were_added_removes_them(core):
    from BreastTumorSegLib import nodes

    before = nodes.nodeIds(core.scene)
    with pytest.raises(RuntimeError):
        with nodes.removedOnFailure(core.scene):
            core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "half made")
            core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "half made too")
            raise RuntimeError("a later step failed")
    assert nodes.nodeIds(core.scene) == before
    with nodes.removedOnFailure(core.scene):
        kept = core.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "kept")
    assert kept.GetID() in nodes.nodeIds(core.scene)
    with nodes.removedAfterwards(core.scene):
        core.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "temporary")
    assert nodes.nodeIds(core.scene) == before | {kept.GetID()}


# ----------------------------------------------------------------------------- phase table
@forked
def test_phase_rows_of_a_sequence_follow_typed_times_and_exclusions(core):
    from BreastTumorSegLib import phasetable, sampledata

    sample = sampledata.loadSampleStudy(core.scene)
    sequence = sample["sequence"]
    rows = phasetable.phaseRows(sequence, phasetable.PhaseChoices())
    assert [row.time for row in rows] == [0.0, 82.9, 172.0, 261.2]
    assert [phasetable.roleOf(row, rows) for row in rows] == ["pre-contrast", "post-contrast 1", "post-contrast 2",
                                                              "post-contrast 3"]
    assert phasetable.phaseWarnings(rows) == []
    # the user types an earlier time for the last phase and leaves out the second
    rows[3].time = 50.0
    rows[1].included = False
    choices = phasetable.choicesFromRows(rows)
    assert choices.excludedPhases == [1] and choices.phaseTimes[3] == 50.0 and not math.isnan(choices.phaseTimes[0])
    assert choices.phaseTimes[0] == 0.0
    again = phasetable.phaseRows(sequence, choices)
    assert [row.key for row in again] == [0, 3, 1, 2]                   # re-sorted by the typed time
    assert [phasetable.roleOf(row, again) for row in again] == ["pre-contrast", "post-contrast 1", "-",
                                                                "post-contrast 2"]
    selected = phasetable.selectedPhases(again)
    assert [time for _, time in selected] == [0.0, 50.0, 172.0]
    again[0].included = False
    again[2].included = again[3].included = False
    assert phasetable.phaseWarnings(again) == ["Include at least two phases: a pre-contrast and a post-contrast."]


@forked
def test_phase_rows_of_separate_volumes_store_typed_times_on_the_volumes(core):
    from BreastTumorSegLib import TIME_ATTRIBUTE, nodes, phasetable

    geometry = oblique_geometry()
    phases, _ = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry, times=None)
    other = nodes.newScalarVolumeNode(np.zeros((4, 5, 6), np.float32), oblique_geometry(size=(6, 5, 4)),
                                      "a localizer", core.scene)
    probability = nodes.newScalarVolumeNode(phases[0], geometry, "old probability", core.scene)
    probability.SetAttribute("BreastTumorSeg.Role", "Probability")
    assert phasetable.isVolumeSet(volumes[0])
    rows = phasetable.phaseRows(volumes[0], phasetable.PhaseChoices(), core.scene)
    assert [row.node for row in rows] == volumes + [other]              # our probability map is no candidate
    assert [row.included for row in rows] == [True] * 4 + [False]       # same size as the chosen one
    assert "Acquisition times are missing" in phasetable.phaseWarnings(rows)[0]
    assert all(time is None for _, time in phasetable.selectedPhases(rows))
    for row, seconds in zip(rows, TIMES_S):
        row.time = seconds
    choices = phasetable.choicesFromRows(rows)
    assert choices.phaseVolumes == volumes
    assert [volume.GetAttribute(TIME_ATTRIBUTE) for volume in volumes] == [f"{t:g}" for t in TIMES_S]
    rows = phasetable.phaseRows(volumes[2], choices, core.scene)
    assert [time for _, time in phasetable.selectedPhases(rows)] == list(TIMES_S)
    rows[-1].included = True                                            # a localizer on another grid
    assert "a localizer differ in geometry" in phasetable.phaseWarnings(rows)[-1]


# ----------------------------------------------------------------------------- views and results
@forked
def test_browsing_the_series_and_the_overlay_opacity(core):
    from BreastTumorSegLib import sampledata, views

    sample = sampledata.loadSampleStudy(core.scene)
    sequence, proxy, browser = sample["sequence"], sample["proxy"], sample["browser"]
    assert views.displayedVolumeOf(sequence) is proxy and views.browserOf(proxy) is browser
    assert views.browseTo(proxy, sequence.GetNthDataNode(3)) and browser.GetSelectedItemNumber() == 3
    assert not views.browseTo(proxy, None)
    composite = core.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    composite.SetForegroundVolumeID(proxy.GetID())
    assert views.setOverlayOpacity(core.scene, proxy, 0.25) == 1
    assert composite.GetForegroundOpacity() == pytest.approx(0.25)


@forked
def test_a_result_carries_its_threshold_settings_and_source_volume(core):
    from BreastTumorSegLib import BreastTumorSegLogic

    geometry = oblique_geometry()
    phases, mask = dce_case(geometry)
    volumes = add_phase_volumes(core, phases, geometry)
    logic = BreastTumorSegLogic()
    probability = np.where(mask > 0, 0.9, 0.05).astype(np.float32)
    probabilityNode, segmentation = logic.addResult([(v, t) for v, t in zip(volumes, TIMES_S)], probability,
                                                    name="case")
    assert logic.thresholdSettingsOf(segmentation) == {"threshold": 0.5, "relative": False, "minComponentMl": 0.0}
    logic.updateSegmentation(probabilityNode, segmentation, 0.7, relative=True, minComponentMl=0.25)
    assert logic.thresholdSettingsOf(segmentation) == {"threshold": 0.7, "relative": True, "minComponentMl": 0.25}
    assert logic.sourceVolumeFor(segmentation) is volumes[1]            # the first post-contrast phase
    drawn = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn by hand")
    assert logic.thresholdSettingsOf(drawn) is None and logic.sourceVolumeFor(drawn) is None


# ----------------------------------------------------------------------------- reading toolbar
class ToolbarHost:
    """Records what the logic asks of the reading toolbar (the Qt toolbar's three calls)."""

    def __init__(self):
        self.shown = False
        self.calls = []

    def show(self, state):
        self.shown = True
        self.calls.append(("show", state))

    def update(self, state):
        assert self.shown, "update before show"
        self.calls.append(("update", state))

    def remove(self):
        self.shown = False
        self.calls.append(("remove", None))


@forked
def test_the_reading_toolbar_is_shown_while_a_case_is_open_and_removed_after(core, tmp_path):
    from BreastTumorSegLib.readerstudy import ReaderStudyLogic

    path = prepared_study(tmp_path)
    clock = Clock()
    logic = ReaderStudyLogic(clock=clock, warn=lambda message: None)
    logic.toolbar = host = ToolbarHost()
    logic.openStudy(path, "R1")
    assert not host.calls
    case = logic.startNextCase()
    assert host.shown and host.calls[-1][0] == "show"
    state = host.calls[-1][1]
    assert state["case"] == f"{case['case']} ({case['arm']}) 1/{case['total']}" and state["clock"] == "0:00"
    for _ in range(83):                                                  # a reader at work for 83 s
        clock.advance(1)
        logic.noteActivity()
    logic.tick()
    assert host.calls[-1][0] == "update" and host.calls[-1][1]["clock"] == "1:23"
    logic.pause()
    assert host.calls[-1][1]["paused"] and host.calls[-1][1]["status"].endswith(" - PAUSED")
    logic.resume()
    logic.flag("image_quality")
    assert host.calls[-1][0] == "update" and not host.calls[-1][1]["paused"]
    logic.submitCase()
    assert not host.shown and host.calls[-1] == ("remove", None)
    logic.startNextCase()
    assert host.shown
    logic.closeStudy()                                                   # closing the study closes the case
    assert not host.shown
    assert logic.statusText() == "0/0 cases done."


# ----------------------------------------------------------------------------- sections and hint (no MRML)
def test_sections_open_as_they_get_something_to_show():
    from BreastTumorSegLib.panelstate import PanelFacts, panelState, sectionChanges

    first = panelState(PanelFacts())
    assert [name for name, open_ in first.expanded.items() if open_] == ["inputs"]
    assert "Load sample study" in first.hint and first.showSampleButton
    assert not first.segmentEnabled and "Choose a DCE series" in first.segmentReason
    assert "Load sample study" not in panelState(PanelFacts(sampleAvailable=False)).hint
    ready = panelState(PanelFacts(hasSource=True, includedPhases=4))
    assert ready.segmentEnabled and ready.expanded["model"] and ready.expanded["run"]
    assert not ready.expanded["result"] and not ready.showSampleButton
    one = panelState(PanelFacts(hasSource=True, includedPhases=1))
    assert not one.segmentEnabled and "pre-contrast" in one.segmentReason
    result = panelState(PanelFacts(hasSource=True, includedPhases=4, hasResult=True, hasMeasurements=True))
    assert result.expanded["result"] and result.expanded["measurements"] and not result.expanded["export"]
    assert sectionChanges(ready.expanded, result.expanded) == {"result": True, "refine": True, "measurements": True}
    reading = panelState(PanelFacts(hasSource=True, includedPhases=4, hasResult=True, reading=True))
    assert [name for name, open_ in reading.expanded.items() if open_] == ["readerStudy"]
    assert not reading.segmentEnabled and "toolbar" in reading.hint


def test_reading_status_and_clock_texts():
    from breasttumorseg.readerstudy.display import clock_text, reading_status_text

    assert [clock_text(s) for s in (0, 59.9, 83, 3600, -5, float("nan"))] == ["0:00", "0:59", "1:23", "60:00",
                                                                             "0:00", "0:00"]
    status = {"open": True, "case": "case03", "arm": "assisted", "position": 4, "total": 12, "active_s": 83,
              "wall_s": 125, "n_edits": 1, "paused": False, "idle": True}
    assert reading_status_text(status) == "case03 (assisted) 4/12 - active 1:23, wall 2:05 - 1 edit - idle"
    assert reading_status_text({"open": False, "done": 12, "total": 12}).startswith("12/12 cases done. All read")


def test_measurement_rows_and_delimited_text_show_every_figure():
    from breasttumorseg.reporting.measurement_table import delimited_text, detailed_rows

    record = {"tumor_volume_ml": 10.104, "longest_diameter_mm": 26.43, "t_category": "T2", "n_lesions": 1,
              "lesions": [{"volume_ml": 10.104, "longest_diameter_mm": 26.43, "side": "right",
                           "centroid_lps_mm": [-85.2, -30.1, 12.0]}],
              "functional_tumor_volume_ml": 7.5, "kinetic_curve_type": "washout",
              "mean_percent_enhancement": 143.27, "mean_ser": 1.41, "notes": "times typed by hand"}
    rows = detailed_rows(record)
    assert [name for name, _, _ in rows] == ["Tumor volume", "Longest diameter", "T category (size)", "Lesions",
                                             "Lesion 1 (index)", "Functional tumor volume", "Kinetic curve type",
                                             "Mean percent enhancement", "Mean signal enhancement ratio", "Notes"]
    assert rows[0][1:] == ("10.10", "mL") and rows[7][1:] == ("143.3", "%") and rows[8][1] == "1.41"
    text = delimited_text(record, ",").splitlines()
    assert text[0] == "measurement,value,unit" and "tumor_volume_ml,10.104,mL" in text
    assert "lesion1_centroid_lps_x_mm,-85.2,mm" in text and "mean_percent_enhancement,143.27,%" in text


# ----------------------------------------------------------------------------- nnU-Net folders in the panel
def _model_folder(root, channels: dict, licence: str = "CC-BY-NC-4.0"):
    import json

    folder = root / "Dataset105_MAMA" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0,
                                                                                          "tumor": 1},
                                                     "licence": licence, "reference": "Garrucho et al. 2025"}))
    (folder / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    return folder


def test_a_model_folder_gets_one_row_per_channel_with_the_cli_defaults(tmp_path):
    from BreastTumorSegLib.modelchoice import channelBindings, channelRoles, folderModel

    from breasttumorseg.core.errors import BreastTumorSegError, InputError

    folder = _model_folder(tmp_path / "one", {"0": "DCE_1"})
    model = folderModel(tmp_path / "one")                                # found below the folder chosen
    assert model.folder == str(folder) and model.channels == ("DCE_1",) and model.roles == ("post1",)
    assert model.preset.startswith("MAMA-MIA") and model.licence == "CC-BY-NC-4.0"
    assert channelBindings(model, model.roles) == ["DCE_1=post1"]
    two = folderModel(_model_folder(tmp_path / "two", {"0": "pre", "1": "sub"}).parent)
    assert two.roles == ("", "") and two.preset == ""                   # no preset: the user binds each row
    with pytest.raises(InputError, match="'sub' is not mapped"):
        channelBindings(two, ("pre", ""))
    assert channelBindings(two, ("pre", "sub2")) == ["pre=pre", "sub=sub2"]
    assert [role for role, _ in channelRoles(4)] == ["pre", "post1", "post2", "post3", "last", "sub1", "sub2", "sub3"]
    with pytest.raises(BreastTumorSegError, match="no nnU-Net v2 model"):
        folderModel(folder / "fold_0")                                  # nothing at or below
