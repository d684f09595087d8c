"""The reader study's Slicer logic (BreastTumorSegLib.readerstudy) against the real Slicer core.

Cases are loaded into a real MRML scene, edited with Segment Editor's C++ logic, autosaved,
submitted; a reading in a child process that is killed with SIGKILL resumes in a new scene
with its segmentation and times. Each test runs in a forked child (see slicer_harness).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from slicer_harness import create_slicer_core, forked, segment_editor  # noqa: E402
from test_readerstudy_session import GRID, Clock, make_study  # noqa: E402

from breasttumorseg.core import atomic  # noqa: E402
from breasttumorseg.readerstudy import definition  # noqa: E402
from breasttumorseg.readerstudy.ai import ai_files  # noqa: E402
from breasttumorseg.readerstudy.journal import read_events  # noqa: E402
from breasttumorseg.reporting.writing import write_segmentation_nrrd  # noqa: E402

pytestmark = pytest.mark.slicer
ROOT = Path(__file__).resolve().parents[1]


def ai_mask() -> np.ndarray:
    mask = np.zeros(GRID.shape_zyx, np.uint8)
    mask[1:4, 2:6, 2:7] = 1
    return mask


def prepared_study(folder: Path) -> Path:
    """A study whose assisted arm's AI results are prepared (a known mask stands in for the model)."""
    path = make_study(folder)
    study = definition.read_study(path)
    for case in study.case_ids:
        segmentation, metadata = ai_files(study, case)
        write_segmentation_nrrd(segmentation, ai_mask(), GRID)
        atomic.write_json(metadata, {"case": case, "model": "simulated", "seconds": 1.0})
    return path


@pytest.fixture
def core():
    return create_slicer_core()


def new_logic(clock):
    from BreastTumorSegLib.readerstudy import ReaderStudyLogic

    return ReaderStudyLogic(clock=clock, warn=lambda message: None)


def scene_names(core) -> list:
    return [core.scene.GetNthNode(i).GetName() or "" for i in range(core.scene.GetNumberOfNodes())]


def segment_of(result) -> np.ndarray:
    from BreastTumorSegLib import nodes

    segmentation = result["segmentation"]
    return nodes.segmentArray(segmentation, nodes.tumorSegmentId(segmentation),
                              nodes.geometryFromVolumeNode(result["sourceVolume"]))


@forked
def test_each_arm_starts_as_the_study_says_and_manual_shows_nothing_of_the_ai(core, tmp_path):
    path = prepared_study(tmp_path)
    earlier = core.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "an earlier AI result")
    earlier.CreateDefaultDisplayNodes()
    logic = new_logic(Clock())
    assert logic.readersOf(path) == ["R1", "R2"]
    logic.openStudy(path, "R1")
    seen = set()
    while len(seen) < 2:
        nodes_before = core.scene.GetNumberOfNodes()
        result = logic.startNextCase()
        assert logic.isCaseOpen() and result["position"] == len([w for w in logic.worklist()
                                                                 if w["status"] == "done"]) + 1
        assert not earlier.GetDisplayNode().GetVisibility()          # hidden while reading
        assert logic.status()["position"] == result["position"]
        names = scene_names(core)
        assert f"Reading {result['case']} ({result['arm']})" in names
        if result["arm"] == "manual":
            assert not segment_of(result).any()                       # from scratch
            assert not [n for n in names if "AI" in n and n != "an earlier AI result"]  # no AI node
        else:
            np.testing.assert_array_equal(segment_of(result), ai_mask())  # the AI's result, ready
        seen.add(result["arm"])
        logic.submitCase()
        assert core.scene.GetNumberOfNodes() == nodes_before        # the case's nodes are gone
    logic.closeStudy()


@forked
def test_segment_editor_edits_are_journaled_and_autosaved(core, tmp_path):
    from BreastTumorSegLib import nodes

    path = prepared_study(tmp_path)
    clock = Clock()
    logic = new_logic(clock)
    logic.activeEffectName = lambda: "Paint"
    logic.openStudy(path, "R2")
    result = logic.startNextCase()
    segmentation, source = result["segmentation"], result["sourceVolume"]
    segment_id = nodes.tumorSegmentId(segmentation)
    editor, _ = segment_editor(core, segmentation, source)
    painted = segment_of(result)
    for step in range(3):                                   # three paint strokes, 5 s apart
        clock.advance(5)
        stroke = np.zeros(GRID.shape_zyx, np.uint8)
        stroke[step, 0:2, 0:2] = 1
        painted |= stroke
        editor.ModifySegmentByLabelmap(segmentation, segment_id, nodes.orientedImageFromArray(stroke, GRID),
                                       editor.ModificationModeAdd, False, True)
    status = logic.status()
    assert status["n_edits"] >= 3 and status["active_s"] == pytest.approx(15.0)
    clock.advance(10)                                       # autosave every 10 s in this study
    assert logic.tick() == ["autosaved"]
    study = definition.read_study(path)
    folder = study.reader_dir("R2")
    autosave = folder / f"{result['case']}.{result['arm']}.autosave.seg.nrrd"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(autosave))), painted)
    clock.advance(45)                                       # idle since the last stroke (30 s limit)
    assert logic.tick() == ["idle", "checkpoint"]           # nothing new to save: the times only
    logic.noteActivity()
    logic.flag("no_tumor_visible")
    final = Path(logic.submitCase())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(final))), painted)
    events = read_events(folder / "journal.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "opened" and kinds[-1] == "submitted"
    assert {"autosaved", "idle", "active", "flagged"} <= set(kinds)
    assert {e["effect"] for e in events if e["event"] == "edited"} == {"Paint"}
    assert events[-1]["active_s"] == pytest.approx(15.0) and events[-1]["wall_s"] == pytest.approx(70.0)
    logic.closeStudy()


@forked
def test_no_study_open_is_one_clear_error(core):
    from breasttumorseg.core.errors import InputError

    logic = new_logic(Clock())
    with pytest.raises(InputError, match="no reader study is open"):
        logic.startNextCase()
    assert logic.tick() == [] and logic.status()["open"] is False


KILLED_SLICER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path[:0] = [{testing!r}, {module!r}]
    from slicer_harness import create_slicer_core
    from BreastTumorSegLib import nodes
    from BreastTumorSegLib.readerstudy import ReaderStudyLogic

    core = create_slicer_core()
    logic = ReaderStudyLogic()
    logic.openStudy({study!r}, "R1")
    result = logic.startNextCase()
    segmentation, geometry = result["segmentation"], nodes.geometryFromVolumeNode(result["sourceVolume"])
    segment = nodes.tumorSegmentId(segmentation)
    mask = np.zeros(geometry.shape_zyx, np.uint8)
    mask[1:3, 2:5, 2:6] = 1
    nodes.setSegmentFromArray(segmentation, segment, mask, geometry)   # an edit, journaled
    logic.session.autosave()
    print(result["case"], result["arm"], flush=True)
    while True:                                                       # the reader keeps working
        logic.noteActivity()
        logic.tick()
""")


def test_a_killed_slicer_session_resumes_with_its_segmentation_and_times(tmp_path):
    path = prepared_study(tmp_path)
    script = tmp_path / "reader.py"
    script.write_text(KILLED_SLICER.format(testing=str(ROOT / "Testing"), module=str(ROOT / "BreastTumorSeg"),
                                           study=str(path)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = process.stdout.readline().decode().split()
        assert len(line) == 2, process.stderr.read().decode()[-2000:]
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    case, arm = line
    _resume_in_a_new_scene(path, case, arm)


@forked
def _resume_in_a_new_scene(path, case, arm):
    create_slicer_core()
    logic = new_logic(Clock())
    logic.openStudy(path, "R1")
    assert [w["status"] for w in logic.worklist()].count("in progress") == 1
    result = logic.startNextCase()
    assert (result["case"], result["arm"], result["resumed"]) == (case, arm, True)
    expected = np.zeros(GRID.shape_zyx, np.uint8)
    expected[1:3, 2:5, 2:6] = 1
    np.testing.assert_array_equal(segment_of(result), expected)
    events = read_events(definition.read_study(path).reader_dir("R1") / "journal.jsonl")
    assert events[-1]["event"] == "opened" and events[-1]["resumed"] is True
    assert logic.status()["n_edits"] >= 1
    logic.closeStudy()
