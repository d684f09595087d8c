"""Reader-study analysis on synthetic studies with known answers, the report, and the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from breasttumorseg.core import atomic
from breasttumorseg.cli.main import main
from breasttumorseg.core.errors import InputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.evaluation.metrics import dice as dice_of
from breasttumorseg.readerstudy import definition
from breasttumorseg.readerstudy.ai import ai_files
from breasttumorseg.readerstudy.analysis import analyze_study, consensus_mask
from breasttumorseg.readerstudy.report import table4, write_report
from breasttumorseg.readerstudy.session import ReaderSession
from breasttumorseg.reporting.writing import write_image, write_segmentation_nrrd

GRID = Geometry((24, 20, 8), (1.0, 1.0, 2.0), (-10.0, 5.0, 3.0))
N_CASES = 5


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def truth_of(index: int) -> np.ndarray:
    mask = np.zeros(GRID.shape_zyx, np.uint8)
    mask[2:6, 4:10 + index, 5:12 + index] = 1
    return mask


def shifted(mask: np.ndarray, voxels: int = 1) -> np.ndarray:
    return np.roll(mask, voxels, axis=2)


def build_study(folder: Path, *, readers=("R1", "R2"), with_reference=True, consensus="majority") -> Path:
    """Cases with phase files, reference masks and a simulated AI result (truth shifted by 2)."""
    rng = np.random.default_rng(1)
    cases = []
    for index in range(N_CASES):
        case = f"c{index}"
        for p in range(2):
            write_image(folder / case / f"p{p}.nii.gz", rng.random(GRID.shape_zyx).astype(np.float32), GRID)
        entry = {"id": case, "phases": [f"{case}/p0.nii.gz", f"{case}/p1.nii.gz"], "times_s": [0, 90]}
        if with_reference:
            write_segmentation_nrrd(folder / case / "ref.seg.nrrd", truth_of(index), GRID)
            entry["reference"] = f"{case}/ref.seg.nrrd"
        cases.append(entry)
    raw = {"name": "known answers", "seed": 3, "readers": list(readers),
           "arms": {"manual": {}, "assisted": {"model": "hirsch-unet3d-phantom"}}, "washout_cases": 1,
           "idle_after_s": 60, "autosave_every_s": 30, "consensus": consensus, "cases": cases}
    path = folder / "study.json"
    path.write_text(json.dumps(raw))
    study = definition.read_study(path)
    for index in range(N_CASES):  # the AI result, as `study prepare` leaves it
        segmentation, metadata = ai_files(study, f"c{index}")
        write_segmentation_nrrd(segmentation, shifted(truth_of(index), 2), GRID)
        atomic.write_json(metadata, {"case": f"c{index}", "model": "simulated", "seconds": 1.5})
    return path


#: What each simulated reader draws, and how long: (mask maker, active seconds) per arm.
def reading_plan(reader: str, arm: str, index: int):
    if reader == "R1":
        return truth_of(index), (600.0 + 30 * index if arm == "manual" else 100.0 + 5 * index)
    if reader == "R2":
        mask = shifted(truth_of(index)) if arm == "manual" else truth_of(index)
        return mask, (900.0 - 20 * index if arm == "manual" else 90.0 + 7 * index)
    return shifted(truth_of(index), -1), (700.0 if arm == "manual" else 200.0)


def read_everything(study_path: Path, readers=None, idle_s: float = 0.0):
    """Each reader reads the worklist: edits every 20 s for the planned active time, plus one
    idle spell of ``idle_s`` (wall time only) per reading."""
    study = definition.read_study(study_path)
    for reader in readers or study.readers:
        clock = Clock()
        session = ReaderSession(study, reader, clock=clock)
        while not session.finished:
            reading = session.next_reading()
            index = int(reading.case_id[1:])
            mask, active = reading_plan(reader, reading.arm, index)
            session.open_next(lambda path, m=mask: write_segmentation_nrrd(path, m, GRID))
            steps = int(active // 20)
            for _ in range(steps):
                clock.t += 20.0
                session.edited("Paint")
            clock.t += active - 20.0 * steps
            session.edited("Erase")
            if idle_s:
                clock.t += idle_s
                session.tick()
                session.input()
            session.submit()
        session.close()


@pytest.fixture()
def read_study(tmp_path):
    path = build_study(tmp_path)
    read_everything(path, idle_s=120.0)
    return definition.read_study(path)


def rows_of(analysis, reader, arm):
    return sorted((r for r in analysis.rows if r["reader"] == reader and r["arm"] == arm), key=lambda r: r["case"])


def test_metrics_and_times_are_the_known_answers(read_study):
    analysis = analyze_study(read_study, compute_ai=False)
    assert not analysis.missing
    r1, r2 = rows_of(analysis, "R1", "manual"), rows_of(analysis, "R2", "manual")
    assert [r["dice"] for r in r1] == [1.0] * N_CASES and [r["hd95_mm"] for r in r1] == [0.0] * N_CASES
    expected = [dice_of(shifted(truth_of(i)), truth_of(i)) for i in range(N_CASES)]
    assert [r["dice"] for r in r2] == pytest.approx(expected)
    # a 1-voxel shift along x (1 mm): sensitivity = precision = Dice, HD95 1 mm
    assert [r["sensitivity"] for r in r2] == pytest.approx(expected)
    assert all(r["hd95_mm"] == pytest.approx(1.0) for r in r2)
    assert [r["active_s"] for r in r1] == pytest.approx([600.0 + 30 * i for i in range(N_CASES)])
    assert [r["wall_s"] for r in r1] == pytest.approx([720.0 + 30 * i for i in range(N_CASES)])  # + idle 120 s
    assert [r["active_s"] for r in rows_of(analysis, "R2", "assisted")] == \
        pytest.approx([90.0 + 7 * i for i in range(N_CASES)])
    ai = rows_of(analysis, "AI", "ai")
    assert [r["dice"] for r in ai] == pytest.approx([dice_of(shifted(truth_of(i), 2), truth_of(i))
                                                     for i in range(N_CASES)])
    assert all(r["wall_s"] == 1.5 and r["reference"] == "reference file" for r in ai)


def test_time_ratio_is_the_ratio_of_mean_times(read_study):
    analysis = analyze_study(read_study, compute_ai=False)
    ratio = next(r for r in analysis.time_ratios if r["reader"] == "R1" and r["time"] == "active_s")
    manual = np.mean([600.0 + 30 * i for i in range(N_CASES)])
    assisted = np.mean([100.0 + 5 * i for i in range(N_CASES)])
    assert ratio["ratio"] == pytest.approx(manual / assisted)
    assert ratio["ci"][0] <= ratio["ratio"] <= ratio["ci"][1]
    assert ratio["manual_mean_min"] == pytest.approx(manual / 60)


def test_statistics_equal_scipys_on_the_same_numbers(read_study):
    analysis = analyze_study(read_study, compute_ai=False, equivalence_margin=0.2)
    tests = {(t["comparison"], t["reader"], t["measure"]): t for t in analysis.tests}
    manual = [r["active_s"] for r in rows_of(analysis, "R2", "manual")]
    assisted = [r["active_s"] for r in rows_of(analysis, "R2", "assisted")]
    ours = tests[("assisted vs manual", "R2", "active_s")]
    theirs = scipy.stats.wilcoxon(assisted, manual, method=ours["wilcoxon_method"])
    assert ours["wilcoxon_statistic"] == pytest.approx(theirs.statistic)
    assert ours["p_value"] == pytest.approx(theirs.pvalue, rel=1e-9)
    assert ours["vargha_delaney_a"] == pytest.approx(
        scipy.stats.mannwhitneyu(assisted, manual).statistic / (len(assisted) * len(manual)))
    reader = np.array([r["dice"] for r in rows_of(analysis, "R2", "manual")])
    ai = np.array([r["dice"] for r in rows_of(analysis, "AI", "ai")])
    tost = tests[("AI equivalent to reader (manual), TOST", "R2", "dice")]
    difference = ai - reader
    p_lower = scipy.stats.ttest_1samp(difference + 0.2, 0.0, alternative="greater").pvalue
    p_upper = scipy.stats.ttest_1samp(difference - 0.2, 0.0, alternative="less").pvalue
    assert tost["p_value"] == pytest.approx(max(p_lower, p_upper), rel=1e-9)
    assert tost["mean_difference"] == pytest.approx(difference.mean())


def test_default_equivalence_margin_is_the_readers_range(read_study):
    analysis = analyze_study(read_study, compute_ai=False)
    means = [np.mean([r["dice"] for r in rows_of(analysis, reader, "manual")]) for reader in ("R1", "R2")]
    assert analysis.equivalence_margin == pytest.approx(max(means) - min(means))
    assert "Hirsch" in analysis.margin_source


def test_leave_one_reader_out_consensus_without_references(tmp_path):
    path = build_study(tmp_path, readers=("R1", "R2", "R3"), with_reference=False, consensus="majority")
    read_everything(path)
    study = definition.read_study(path)
    for rule in ("majority", "union", "intersection"):
        analysis = analyze_study(study, consensus=rule, compute_ai=False)
        for index in range(N_CASES):
            others = [shifted(truth_of(index)), shifted(truth_of(index), -1)]  # R2 and R3 manual
            reference = consensus_mask(others, rule)
            row = next(r for r in analysis.rows if r["reader"] == "R1" and r["arm"] == "assisted"
                       and r["case"] == f"c{index}")
            assert row["dice"] == pytest.approx(dice_of(truth_of(index), reference))
            assert row["reference"] == f"{rule} of R2, R3"
            ai_row = next(r for r in analysis.rows if r["reader"] == "AI" and r["reference_for"] == "R1"
                          and r["case"] == f"c{index}")
            assert ai_row["dice"] == pytest.approx(dice_of(shifted(truth_of(index), 2), reference))


def test_consensus_rules():
    a, b, c = (np.array([1, 1, 0, 0], np.uint8), np.array([1, 0, 1, 0], np.uint8), np.array([1, 1, 1, 0], np.uint8))
    assert consensus_mask([a, b, c], "majority").tolist() == [1, 1, 1, 0]
    assert consensus_mask([a, b], "majority").tolist() == [1, 0, 0, 0]  # more than half of two: both
    assert consensus_mask([a, b], "union").tolist() == [1, 1, 1, 0]
    assert consensus_mask([a, b, c], "intersection").tolist() == [1, 0, 0, 0]


def test_unsubmitted_readings_are_left_out_and_named(tmp_path):
    path = build_study(tmp_path)
    read_everything(path, readers=["R1"])
    analysis = analyze_study(definition.read_study(path), compute_ai=False)
    assert {r["reader"] for r in analysis.rows} == {"R1", "AI"}
    assert len(analysis.missing) == 2 * N_CASES and all(m.startswith("R2:") for m in analysis.missing)


def test_a_reading_on_another_grid_is_refused(read_study):
    other = Geometry((24, 20, 8), (1.0, 1.0, 2.5), (-10.0, 5.0, 3.0))
    target = read_study.reader_dir("R2") / "c3.manual.seg.nrrd"
    target.unlink()
    write_segmentation_nrrd(target, truth_of(3), other)
    with pytest.raises(InputError, match=r"c3.manual.seg.nrrd: is on another grid than ref.seg.nrrd"):
        analyze_study(read_study, compute_ai=False)


def test_results_of_a_reader_not_in_the_study_are_refused(read_study):
    shutil.copytree(read_study.reader_dir("R2"), read_study.results_dir / "R7")
    with pytest.raises(InputError, match=r"R7: results of reader 'R7', who is not in the study"):
        analyze_study(read_study, compute_ai=False)


def test_readings_of_a_case_no_longer_in_the_study_are_refused(read_study):
    raw = json.loads(read_study.path.read_text())
    raw["cases"] = [c for c in raw["cases"] if c["id"] != "c2"]
    read_study.path.write_text(json.dumps(raw))
    with pytest.raises(InputError,
                       match=r"journal.jsonl: event \d+ is a reading of case 'c2', which is not in the study"):
        analyze_study(definition.read_study(read_study.path), compute_ai=False)


def test_report_holds_table4_plots_and_every_number(read_study, tmp_path):
    analysis = analyze_study(read_study, compute_ai=False)
    out = write_report(tmp_path / "report", analysis)
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "readings.csv", "summary.csv", "tests.csv", "summary.json",
            "dice_by_reader.png", "reading_times.png", "volume_bland_altman.png"} <= names
    header, body = table4(analysis)
    assert [row[:2] for row in body] == [["R1", "manual (from scratch)"], ["R1", "assisted (refining the AI)"],
                                         ["R2", "manual (from scratch)"], ["R2", "assisted (refining the AI)"],
                                         ["AI", "AI alone"]]
    assert body[0][3].startswith("1.000") and body[0][9] == f"{np.mean([600 + 30 * i for i in range(5)]) / 60:.2f}"
    markdown = (out / "report.md").read_text()
    assert "| R2 | manual (from scratch) | 5 |" in markdown and "![Dice per reader and arm]" in markdown
    rows = list(csv.DictReader((out / "readings.csv").open()))
    assert len(rows) == len(analysis.rows) == 4 * N_CASES + N_CASES
    assert (out / "dice_by_reader.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- command line
def test_cli_analyze_writes_the_report_and_refuses_to_overwrite(read_study, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["study", "analyze", str(read_study.path), "--output", str(output), "--quiet"]) == 0
    assert (output / "report.html").is_file()
    assert main(["study", "analyze", str(read_study.path), "--output", str(output), "--quiet"]) == 2
    assert "output folder exists" in capsys.readouterr().err


def test_cli_worklist_and_validate(read_study, capsys):
    assert main(["study", "validate", str(read_study.path)]) == 0
    assert "valid: 5 cases (5 with a reference), 2 readers" in capsys.readouterr().out
    assert main(["study", "worklist", str(read_study.path), "--reader", "R1"]) == 0
    out = capsys.readouterr().out
    assert "R1: 10 of 10 readings done" in out and out.count("done") == 11
    assert main(["study", "worklist", str(read_study.path), "--reader", "R5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("breasttumorseg: error:") and "reader 'R5' is not in the study" in err
    assert len(err.splitlines()) == 1


def test_cli_bad_study_file_is_one_line(tmp_path, capsys):
    path = build_study(tmp_path)
    raw = json.loads(path.read_text())
    raw["cases"][1]["id"] = "c0"
    path.write_text(json.dumps(raw))
    assert main(["study", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"breasttumorseg: error: {path}: duplicate case ID 'c0'"]


@pytest.mark.slow
def test_synthetic_two_reader_study_runs_through_to_the_report(tmp_path, capsys):
    """The README's reader-study demo: phantoms, the real AI, two simulated readers, analysis."""
    folder = tmp_path / "study"
    assert main(["study", "synthetic", str(folder), "--quiet", "--device", "cpu"]) == 0
    assert main(["study", "analyze", str(folder / "study.json"), "--output", str(folder / "report")]) == 0
    out = capsys.readouterr().out
    assert "AI      AI alone" in out
    summary = json.loads((folder / "report" / "summary.json").read_text())
    blocks = {(b["reader"], b["arm"]): b for b in summary["summary"]}
    assert set(blocks) == {("R1", "manual"), ("R1", "assisted"), ("R2", "manual"), ("R2", "assisted"), ("AI", "ai")}
    for reader, minutes in (("R1", (14.3, 2.1)), ("R2", (15.2, 1.4))):
        manual, assisted = blocks[(reader, "manual")], blocks[(reader, "assisted")]
        # simulated active minutes are log-normal around Zhang et al.'s medians (log-SD 0.25)
        assert manual["active_s"]["median"] / 60 == pytest.approx(minutes[0], rel=0.35)
        assert assisted["active_s"]["median"] / 60 == pytest.approx(minutes[1], rel=0.35)
        assert manual["wall_s"]["mean"] >= manual["active_s"]["mean"]
    assert not [p for p in (folder / "results").rglob("*.autosave.seg.nrrd")]
