"""Reader-study bookkeeping: study file, reading order, timer, journal and session (no Slicer)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.errors import InputError, OutputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.readerstudy import definition, schedule
from breasttumorseg.readerstudy.journal import Journal, read_events
from breasttumorseg.readerstudy.session import ReaderSession, readings_file, replay
from breasttumorseg.readerstudy.timer import ReadingTimer
from breasttumorseg.reporting.writing import write_image, write_segmentation_nrrd

ROOT = Path(__file__).resolve().parents[1]
GRID = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))


class Clock:
    """A controllable monotonic clock (seconds)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_study(folder: Path, n_cases: int = 4, readers=("R1", "R2"), washout: int = 1, **extra) -> Path:
    """A small study file with real image files (phases and references on one grid)."""
    rng = np.random.default_rng(0)
    cases = []
    for index in range(n_cases):
        case = f"case{index:02d}"
        phases = []
        for p in range(3):
            path = folder / case / f"phase{p}.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, rng.random(GRID.shape_zyx).astype(np.float32) + p, GRID)
            phases.append(f"{case}/phase{p}.nii.gz")
        mask = np.zeros(GRID.shape_zyx, np.uint8)
        mask[2:4, 3:7, 3:8] = 1
        write_segmentation_nrrd(folder / case / "reference.seg.nrrd", mask, GRID)
        cases.append({"id": case, "phases": phases, "times_s": [0, 90, 180],
                      "reference": f"{case}/reference.seg.nrrd"})
    raw = {"name": "test study", "seed": 7, "readers": list(readers),
           "arms": {"manual": {}, "assisted": {"model": "hirsch-unet3d-phantom", "threshold": 0.5}},
           "washout_cases": washout, "idle_after_s": 30, "autosave_every_s": 10, "cases": cases}
    raw.update(extra)
    path = folder / "study.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def edit_study(path: Path, change) -> Path:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))
    return path


# ----------------------------------------------------------------------------- study file
def test_study_file_is_read_with_paths_relative_to_it(tmp_path):
    study = definition.read_study(make_study(tmp_path))
    assert study.readers == ("R1", "R2") and study.arms == ("manual", "assisted")
    assert study.assisted.model == "hirsch-unet3d-phantom" and study.assisted.threshold == 0.5
    assert study.cases[0].phases[0] == tmp_path / "case00" / "phase0.nii.gz"
    assert study.results_dir == tmp_path / "results"
    assert study.reader_dir("R2") == tmp_path / "results" / "R2"


def test_study_file_in_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    raw = json.loads(make_study(tmp_path).read_text())
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(raw))
    assert definition.read_study(tmp_path / "study.yaml").case_ids == ["case00", "case01", "case02", "case03"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r["cases"].append(dict(r["cases"][0])), "duplicate case ID 'case00'"),
    (lambda r: r.update(readers=["R1", "R1"]), "duplicate reader 'R1'"),
    (lambda r: r["cases"][1].update(phases=["case01/phase0.nii.gz", "case01/missing.nii.gz", "x.nii.gz"]),
     "case 'case01': phase file"),
    (lambda r: r["cases"][2].update(reference="case02/none.seg.nrrd"), "case 'case02': reference"),
    (lambda r: r.update(washout_cases=4), "washout_cases 4 cannot be met with 4 cases"),
    (lambda r: r["arms"].update(ai_only={}), "unknown arm 'ai_only'"),
    (lambda r: r["arms"].update(assisted={"threshold": 0.5}), "arm 'assisted' must name its model"),
    (lambda r: r.update(readrs=["R1"]), "unknown key 'readrs'"),
    (lambda r: r.update(readers=["R 1"]), "reader ID 'R 1'"),
    (lambda r: r.update(consensus="vote"), "consensus 'vote'"),
    (lambda r: r["cases"][0].update(times_s=[0, 90]), "2 times for 3 phases"),
])
def test_bad_study_files_give_one_line_naming_the_entry(tmp_path, change, message):
    path = edit_study(make_study(tmp_path), change)
    with pytest.raises(InputError) as error:
        definition.read_study(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_reference_on_another_grid_is_refused(tmp_path):
    path = make_study(tmp_path)
    other = Geometry((12, 10, 6), (1.0, 1.0, 2.5), (0.0, 0.0, 0.0))
    write_segmentation_nrrd(tmp_path / "case01" / "reference.seg.nrrd", np.zeros(other.shape_zyx), other)
    with pytest.raises(InputError, match=r"case 'case01': reference reference.seg.nrrd is on another grid"):
        definition.read_study(path)


def test_a_reader_not_in_the_study_is_refused(tmp_path):
    study = definition.read_study(make_study(tmp_path))
    with pytest.raises(InputError, match=r"reader 'R9' is not in the study \(readers: R1, R2\)"):
        ReaderSession(study, "R9")


# ----------------------------------------------------------------------------- reading order
@pytest.mark.parametrize("n_cases, washout", [(2, 1), (5, 0), (6, 3), (7, 6), (10, 9), (11, 4)])
def test_every_case_once_per_arm_with_the_washout(tmp_path, n_cases, washout):
    study = definition.read_study(make_study(tmp_path, n_cases=n_cases, washout=washout, readers=["A", "B", "C"]))
    orders = {}
    for reader in study.readers:
        readings = schedule.reading_order(study, reader)
        assert sorted(r.key for r in readings) == sorted((c, a) for c in study.case_ids for a in study.arms)
        assert [r.position for r in readings] == list(range(2 * n_cases))
        assert min(schedule.washout_gaps(readings).values()) >= washout
        manual_first = sum(r.arm == "manual" for r in readings[:n_cases])
        assert abs(manual_first - n_cases / 2) <= 0.5  # arms balanced within each pass
        assert readings == schedule.reading_order(study, reader)  # reproducible from the seed
        orders[reader] = [r.key for r in readings]
    if n_cases >= 5:
        assert len({tuple(o) for o in orders.values()}) > 1  # readers get different orders


def test_one_arm_study_reads_each_case_once(tmp_path):
    path = edit_study(make_study(tmp_path, n_cases=5), lambda r: r.update(arms={"manual": {}}))
    readings = schedule.reading_order(definition.read_study(path), "R1")
    assert sorted(r.case_id for r in readings) == [f"case{i:02d}" for i in range(5)]
    assert {r.arm for r in readings} == {"manual"}


# ----------------------------------------------------------------------------- timer
def test_timer_counts_active_time_until_the_last_input_of_an_idle_spell():
    clock = Clock()
    timer = ReadingTimer(idle_after_s=30, clock=clock)
    timer.start()
    clock.advance(20)
    timer.input()                         # t=20, active 20
    clock.advance(25)                     # t=45: 25 s since input, not idle yet
    assert not timer.idle() and timer.active_s() == pytest.approx(45)
    clock.advance(10)                     # t=55: 35 s since input -> idle since t=20
    assert timer.idle() and timer.active_s() == pytest.approx(20)
    clock.advance(100)                    # t=155, still idle: the idle spell counts nowhere in active
    assert timer.active_s() == pytest.approx(20) and timer.wall_s() == pytest.approx(155)
    assert timer.input() is True          # back at t=155
    clock.advance(5)
    assert timer.active_s() == pytest.approx(25) and timer.wall_s() == pytest.approx(160)


def test_timer_pause_and_resume_arithmetic():
    clock = Clock()
    timer = ReadingTimer(idle_after_s=60, clock=clock)
    timer.start()
    clock.advance(12.3)
    timer.pause()
    clock.advance(600)                    # a long pause: wall runs, active does not, never idle
    assert not timer.idle()
    assert timer.active_s() == pytest.approx(12.3) and timer.wall_s() == pytest.approx(612.3)
    timer.pause()                         # a second pause changes nothing
    timer.resume()
    clock.advance(7.7)
    assert timer.active_s() == pytest.approx(20.0)
    wall, active = timer.stop()
    clock.advance(1000)                   # stopped: nothing runs
    assert (wall, active) == (pytest.approx(620.0), pytest.approx(20.0))
    assert timer.wall_s() == pytest.approx(620.0) and timer.active_s() == pytest.approx(20.0)


def test_pause_during_an_idle_spell_keeps_only_the_time_until_the_last_input():
    clock = Clock()
    timer = ReadingTimer(idle_after_s=10, clock=clock)
    timer.start()
    clock.advance(4)
    timer.input()
    clock.advance(50)
    timer.pause()
    assert timer.active_s() == pytest.approx(4)
    timer.resume()
    clock.advance(3)
    assert timer.active_s() == pytest.approx(7)


def test_resumed_timer_continues_from_its_journaled_seconds():
    clock = Clock()
    timer = ReadingTimer(idle_after_s=30, clock=clock, wall_s=100.0, active_s=80.0)
    timer.start()
    clock.advance(5)
    assert timer.wall_s() == pytest.approx(105) and timer.active_s() == pytest.approx(85)


# ----------------------------------------------------------------------------- journal
def test_journal_lines_are_complete_json_events(tmp_path):
    with Journal(tmp_path / "j.jsonl") as journal:
        journal.append("opened", case="c1", wall_s=0.0)
        journal.append("edited", case="c1", effect="Paint")
    events = read_events(tmp_path / "j.jsonl")
    assert [e["event"] for e in events] == ["opened", "edited"] and events[1]["effect"] == "Paint"
    assert all(e["time"].endswith("+00:00") for e in events)


def test_truncated_last_journal_line_is_skipped_and_set_aside(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.append("opened", case="c1")
        journal.append("edited", case="c1")
    with open(path, "ab") as handle:
        handle.write(b'{"event":"edited","case":"c1","wa')  # a write cut short by a kill
    warnings = []
    assert [e["event"] for e in read_events(path, warn=warnings.append)] == ["opened", "edited"]
    assert "incomplete" in warnings[0]
    with Journal(path, warn=warnings.append) as journal:
        journal.append("submitted", case="c1")
    assert [e["event"] for e in read_events(path)] == ["opened", "edited", "submitted"]
    assert (tmp_path / "j.jsonl.damaged-1").read_bytes() == b'{"event":"edited","case":"c1","wa'


def test_corrupt_journal_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"event":"opened"}\nnot json\n{"event":"edited"}\n')
    with pytest.raises(InputError, match="journal line 2 is not a journal event"):
        read_events(path)


def test_second_session_of_the_same_reader_is_refused(tmp_path):
    study = definition.read_study(make_study(tmp_path))
    first = ReaderSession(study, "R1")
    try:
        with pytest.raises(OutputError, match="in use by another session"):
            ReaderSession(study, "R1")
    finally:
        first.close()
    ReaderSession(study, "R1").close()  # released with the first one


# ----------------------------------------------------------------------------- session
def mask_writer(mask):
    def write(path):
        write_segmentation_nrrd(path, mask, GRID)
    return write


def test_a_reading_from_open_to_submit_is_journaled_with_its_times(tmp_path):
    study = definition.read_study(make_study(tmp_path))
    clock = Clock()
    session = ReaderSession(study, "R1", clock=clock)
    first = session.next_reading()
    mask = np.zeros(GRID.shape_zyx, np.uint8)
    opened = session.open_next(mask_writer(mask))
    assert opened.reading == first and opened.resume_file is None
    clock.advance(5)
    mask[2, 3:6, 3:6] = 1
    session.edited("Paint")
    clock.advance(40)                     # idle after 30 s without input
    assert session.tick() == ["idle", "autosaved"]
    session.input()
    clock.advance(3)
    session.flag("image_quality", "motion")
    session.pause()
    clock.advance(100)
    session.resume()
    clock.advance(2)
    session.edited("Erase")
    final = session.submit()
    session.close()
    assert final == readings_file(study.reader_dir("R1"), first.case_id, first.arm)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(final))), mask)
    events = read_events(study.reader_dir("R1") / "journal.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds == ["opened", "edited", "idle", "autosaved", "active", "flagged", "paused", "resumed",
                     "edited", "submitting", "submitted"]
    assert events[-1]["wall_s"] == pytest.approx(150.0) and events[-1]["active_s"] == pytest.approx(10.0)
    record = replay(events, session.order)[first.key]
    assert record.status == "done" and record.n_edits == 2 and record.effects == {"Paint": 1, "Erase": 1}
    assert record.flags == [{"flag": "image_quality", "comment": "motion"}]
    assert not readings_file(study.reader_dir("R1"), first.case_id, first.arm, autosave=True).exists()


def test_reopening_resumes_the_open_case_with_its_times_and_autosave(tmp_path):
    study = definition.read_study(make_study(tmp_path))
    clock = Clock()
    session = ReaderSession(study, "R2", clock=clock)
    mask = np.zeros(GRID.shape_zyx, np.uint8)
    mask[1:3, 2:5, 2:5] = 1
    reading = session.open_next(mask_writer(mask)).reading
    clock.advance(8)
    session.edited("Paint")
    clock.advance(4)
    session.close()                       # Slicer closed with the case unsubmitted
    again = ReaderSession(study, "R2", clock=clock)
    assert again.next_reading() == reading
    assert again.records[reading.key].status == "in progress"
    resumed = again.open_next(mask_writer(mask))
    assert resumed.resume_file is not None
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(resumed.resume_file))), mask)
    clock.advance(3)
    assert again.status()["wall_s"] == pytest.approx(15.0) and again.status()["active_s"] == pytest.approx(15.0)
    again.submit()
    assert again.next_reading().position == 1
    again.close()


def test_a_submitted_reading_is_never_replaced(tmp_path):
    study = definition.read_study(make_study(tmp_path))
    session = ReaderSession(study, "R1", clock=Clock())
    reading = session.open_next(mask_writer(np.zeros(GRID.shape_zyx))).reading
    final = readings_file(study.reader_dir("R1"), reading.case_id, reading.arm)
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(b"an earlier result")
    with pytest.raises(OutputError, match="never replaced"):
        session.submit()
    assert final.read_bytes() == b"an earlier result"
    session.close()


def test_whole_worklist_reads_every_case_in_both_arms(tmp_path):
    study = definition.read_study(make_study(tmp_path, n_cases=3, washout=2))
    session = ReaderSession(study, "R1", clock=Clock())
    while not session.finished:
        session.open_next(mask_writer(np.zeros(GRID.shape_zyx)))
        session.submit()
    assert all(r.status == "done" for r in session.worklist())
    with pytest.raises(InputError, match="has read every case"):
        session.open_next(mask_writer(np.zeros(GRID.shape_zyx)))
    session.close()


# ----------------------------------------------------------------------------- crash
CRASHING_READER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {backend!r})
    from breasttumorseg.core.geometry import Geometry
    from breasttumorseg.readerstudy.definition import read_study
    from breasttumorseg.readerstudy.session import ReaderSession
    from breasttumorseg.reporting.writing import write_segmentation_nrrd

    grid = Geometry((12, 10, 6), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    study = read_study({study!r})
    session = ReaderSession(study, "R1")
    mask = np.zeros(grid.shape_zyx, np.uint8)
    session.open_next(lambda path: write_segmentation_nrrd(path, mask, grid))
    step = 0
    while True:                                   # a reader painting one voxel after another
        mask.flat[min(step, mask.size - 1)] = 1
        session.edited("Paint")
        session.autosave()
        step += 1
        if step == 25:
            print("painting", flush=True)
""")


def test_journal_and_autosave_survive_sigkill_mid_case(tmp_path):
    path = make_study(tmp_path)
    script = tmp_path / "reader.py"
    script.write_text(CRASHING_READER.format(backend=str(ROOT / "BreastTumorSeg"), study=str(path)))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"painting\n", process.stderr.read().decode()
        time.sleep(0.3)                           # keep it writing events and autosaves
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    study = definition.read_study(path)
    journal = study.reader_dir("R1") / "journal.jsonl"
    warnings = []
    events = read_events(journal, warn=warnings.append)  # complete events, maybe one cut line
    edits = [e for e in events if e["event"] == "edited"]
    saves = [e for e in events if e["event"] == "autosaved"]
    assert len(edits) >= 25 and saves
    session = ReaderSession(study, "R1", warn=warnings.append)
    try:
        reading = session.open_next(lambda p: None)
        assert reading.record.n_edits == edits[-1]["n_edits"]
        assert reading.timer.wall_s() >= events[-1]["wall_s"]
        saved = sitk.GetArrayFromImage(sitk.ReadImage(str(reading.resume_file)))  # a whole file
        # one voxel per edit: the autosave holds every voxel painted up to its journaled event
        # (or one more edit, when the kill fell between the file's rename and its event)
        assert saves[-1]["n_edits"] <= int(saved.sum()) <= edits[-1]["n_edits"] + 1
    finally:
        session.close()
    assert not [p for p in study.reader_dir("R1").iterdir() if ".part" in p.name]
