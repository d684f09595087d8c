"""Cohort evaluation: bootstrap intervals, the summary's splits, and `evaluate --output --baselines`
end to end on a small phantom cohort, with its bad inputs."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from breasttumorseg.evaluation.comparison import (CASE_COLUMNS, bootstrap_interval, cohort_summary, describe)
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.reporting.measurements import longest_diameter_mm, t_category
from test_cli import assert_one_line_error, run_cli


# ----------------------------------------------------------------------------- statistics
def test_bootstrap_interval_contains_the_median_and_narrows_with_more_cases():
    rng = np.random.default_rng(3)
    few, many = rng.normal(0.7, 0.1, 12), rng.normal(0.7, 0.1, 300)
    widths = []
    for values in (few, many):
        low, high = bootstrap_interval(values, "median")
        assert low <= np.median(values) <= high
        low_mean, high_mean = bootstrap_interval(values, "mean")
        assert low_mean <= values.mean() <= high_mean
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]
    assert bootstrap_interval(few, "median") == bootstrap_interval(few, "median")  # fixed seed
    assert bootstrap_interval(few, "mean", seed=1) != bootstrap_interval(few, "mean", seed=2)
    assert bootstrap_interval([0.4], "median") == (0.4, 0.4)
    assert bootstrap_interval([], "mean") is None


def test_describe_leaves_infinite_distances_out_and_counts_them():
    stats = describe([1.0, 2.0, 3.0, np.inf, None])
    assert stats["n"] == 3 and stats["n_infinite"] == 1
    assert stats["median"] == 2.0 and stats["q1"] == 1.5 and stats["q3"] == 2.5 and stats["mean"] == 2.0
    assert stats["median_ci"][0] <= 2.0 <= stats["median_ci"][1]
    assert describe([np.inf]) is None


def test_summary_splits_by_method_size_band_and_phases():
    rows = []
    for i, (band, phases) in enumerate([("T1", 3), ("T1", 4), ("T2", 3), ("T3", None)]):
        for method, dice in (("model", 0.8 - 0.1 * i), ("pe", 0.2)):
            rows.append({"case": f"c{i}", "method": method, "size_band": band, "n_phases": phases, "dice": dice,
                         "sensitivity": 1.0, "precision": 0.5, "hd95_mm": 3.0, "assd_mm": 1.0,
                         "volume_difference_ml": 0.1})
    summary = cohort_summary(rows, resamples=500)
    assert summary["n_cases"] == 4 and summary["methods"] == ["model", "pe"]
    model = summary["by_method"]["model"]
    assert model["all"]["n_cases"] == 4 and model["all"]["dice"]["median"] == pytest.approx(0.65)
    assert list(model["by_size_band"]) == ["T1", "T2", "T3"]
    assert model["by_size_band"]["T1"]["dice"]["median"] == pytest.approx(0.75)
    assert set(model["by_phases"]) == {"3", "4", "unknown"} and model["by_phases"]["3"]["n_cases"] == 2
    assert summary["bootstrap"]["resamples"] == 500


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small phantoms (random phase counts) and predictions: the truth, the truth grown by
    one voxel, nothing, the truth shifted. Returns (reference folder, prediction folder)."""
    root = tmp_path_factory.mktemp("evaluation")
    ref = root / "phantoms"
    done = run_cli("phantom", ref, "--n", 4, "--seed", 21, "--size", 40, 40, 14, "--spacing", 3.0, 3.0, 5.0, "--quiet")
    assert done.returncode == 0, done.stderr
    pred = root / "pred"
    pred.mkdir()
    for i, case in enumerate(sorted(ref.iterdir())):
        image = sitk.ReadImage(str(case / "tumor_mask.nii.gz"))
        truth = sitk.GetArrayFromImage(image) > 0
        mask = [truth, ndimage.binary_dilation(truth), np.zeros_like(truth), np.roll(truth, 2, axis=2)][i]
        out = sitk.GetImageFromArray(mask.astype(np.uint8))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(pred / f"{case.name}.nii.gz"))
    return ref, pred


def expected_bands_and_phases(ref):
    bands, phases = {}, {}
    for case in sorted(ref.iterdir()):
        image = sitk.ReadImage(str(case / "tumor_mask.nii.gz"))
        mask = sitk.GetArrayFromImage(image) > 0
        bands[case.name] = t_category(longest_diameter_mm(mask, Geometry.from_image(image)))
        phases[case.name] = json.loads((case / "info.json").read_text())["n_phases"]
    return bands, phases


def test_evaluate_cohort_with_baselines_writes_every_file(tmp_path, cohort):
    ref, pred = cohort
    out = tmp_path / "evaluation"
    done = run_cli("evaluate", "--pred", pred, "--ref", ref, "--baselines", ref, "--output", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "fuzzy c-means" in done.stdout and "95% CI median" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["boxplots.png", "per_case.csv", "per_case.json", "summary.json"]
    assert (out / "boxplots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "per_case.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == CASE_COLUMNS
        rows = list(reader)
    bands, phases = expected_bands_and_phases(ref)
    assert len(rows) == 3 * len(bands)
    assert {(r["case"], r["method"]) for r in rows} == {(c, m) for c in bands for m in ("model", "pe", "fcm")}
    for row in rows:
        assert row["size_band"] == bands[row["case"]] and int(row["n_phases"]) == phases[row["case"]]
    model = {r["case"]: r for r in rows if r["method"] == "model"}
    first, second, third, _ = sorted(model)
    assert float(model[first]["dice"]) == 1.0 and 0.0 < float(model[second]["dice"]) < 1.0
    assert float(model[third]["dice"]) == 0.0 and model[third]["hd95_mm"] == "inf"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["model", "pe", "fcm"] and summary["bootstrap"]["resamples"] == 2000
    for method in summary["methods"]:
        block = summary["by_method"][method]
        assert block["all"]["n_cases"] == len(bands)
        assert set(block["by_size_band"]) == set(bands.values())
        assert set(block["by_phases"]) == {str(n) for n in phases.values()}
        assert sum(b["n_cases"] for b in block["by_size_band"].values()) == len(bands)
    hd95 = summary["by_method"]["model"]["all"]["hd95_mm"]
    assert hd95["n_infinite"] == 1 and hd95["n"] == len(bands) - 1
    assert len(json.loads((out / "per_case.json").read_text())) == len(rows)
    # the same command again: refused without --overwrite, nothing changed
    again = run_cli("evaluate", "--pred", pred, "--ref", ref, "--output", out, "--quiet")
    assert_one_line_error(again, "--overwrite")


def test_evaluate_cohort_without_baselines_takes_phases_from_a_csv(tmp_path, cohort):
    ref, pred = cohort
    phases_csv = tmp_path / "phases.csv"
    names = sorted(p.name for p in ref.iterdir())
    phases_csv.write_text("case,n_phases\n" + "".join(f"{n},{2 + i}\n" for i, n in enumerate(names)))
    out = tmp_path / "evaluation"
    done = run_cli("evaluate", "--pred", pred, "--ref", ref, "--phases-csv", phases_csv, "--output", out,
                   "--bootstrap", 200, "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["model"]
    assert set(summary["by_method"]["model"]["by_phases"]) == {"2", "3", "4", "5"}


def test_evaluate_refuses_a_reference_mask_off_its_image_grid(tmp_path, cohort):
    ref, pred = cohort
    moved = tmp_path / "ref"
    shutil.copytree(ref, moved)
    case = sorted(moved.iterdir())[1]
    image = sitk.ReadImage(str(case / "tumor_mask.nii.gz"))
    image.SetOrigin(tuple(o + 7.0 for o in image.GetOrigin()))
    sitk.WriteImage(image, str(case / "tumor_mask.nii.gz"))
    out = tmp_path / "evaluation"
    done = run_cli("evaluate", "--pred", pred, "--ref", moved, "--baselines", moved, "--output", out, "--quiet")
    assert_one_line_error(done, case.name, "not on the grid of its DCE study")
    assert not out.exists()


def test_evaluate_refuses_a_missing_study_or_an_empty_folder(tmp_path, cohort):
    ref, pred = cohort
    studies = tmp_path / "studies"
    shutil.copytree(ref, studies)
    missing = sorted(studies.iterdir())[-1]
    shutil.rmtree(missing)
    out = tmp_path / "evaluation"
    done = run_cli("evaluate", "--pred", pred, "--ref", ref, "--baselines", studies, "--output", out, "--quiet")
    assert_one_line_error(done, "studies", "no DCE study", missing.name)
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_cli("evaluate", "--pred", pred, "--ref", empty, "--output", out, "--quiet")
    assert_one_line_error(done, "empty", "no reference masks")
    done = run_cli("evaluate", "--pred", empty, "--ref", ref, "--output", out, "--quiet")
    assert_one_line_error(done, "no prediction for 4 reference case(s)")
    assert not out.exists()
