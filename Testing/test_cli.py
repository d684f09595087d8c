"""The command line end to end, in child processes: outputs, and every bad input giving
one clear line, a non-zero exit, no traceback and no output left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.geometry import Geometry
from breasttumorseg.reporting.measurements import lesions

ROOT = Path(__file__).resolve().parents[1]
GRID = Geometry((40, 36, 16), (2.0, 2.0, 3.0), (-40.0, -30.0, -20.0))


def run_cli(*args, cwd=None, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "BreastTumorSeg") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "breasttumorseg", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def write_volume(path: Path, array, geometry=GRID):
    image = sitk.GetImageFromArray(np.asarray(array, np.float32))
    geometry.apply_to(image)
    sitk.WriteImage(image, str(path))
    return path


def enhancing_phases(tmp_path: Path, n=3, geometry=GRID):
    """A block of tissue with an enhancing, washing-out sphere; one NIfTI per phase."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(geometry.shape_zyx)
    sphere = (z - 8) ** 2 * 9 + (y - 18) ** 2 * 4 + (x - 20) ** 2 * 4 < 100
    paths = []
    for i in range(n):
        array = 100 + rng.normal(0, 3, geometry.shape_zyx)
        array[sphere] += [0, 150, 120, 100, 90][i]
        paths.append(write_volume(tmp_path / f"phase_{i}.nii.gz", array, geometry))
    return paths


def assert_one_line_error(done, *fragments):
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def tiny_model(tmp_path):
    """A tiny randomly initialised model saved with its card (real safetensors + sha256)."""
    from breasttumorseg.segmentation.models import find_model, save_model
    from breasttumorseg.segmentation.networks import build_network

    default = find_model(None)
    hyper = dict(default.hyperparameters, base_channels=2)
    network = build_network(default.architecture, **hyper)
    fields = {k: getattr(default, k) for k in default.__dataclass_fields__
              if k not in ("name", "weights", "sha256", "card_path", "hyperparameters")}
    fields["hyperparameters"] = hyper
    card = save_model(network, fields, tmp_path / "model", "tiny")
    return tmp_path / "model" / card.weights


def test_segment_writes_every_output_on_the_reference_grid(tmp_path, tiny_model):
    phases = enhancing_phases(tmp_path)
    out = tmp_path / "out"
    done = run_cli("segment", *phases, "--times", 0, 90, 180, "--output", out, "--model", tiny_model, "--quiet")
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["measurements.csv", "measurements.json", "overview.png", "probability.nii.gz",
                     "tumor.seg.nrrd", "tumor_label.nii.gz"]
    for name in ("probability.nii.gz", "tumor_label.nii.gz", "tumor.seg.nrrd"):
        image = sitk.ReadImage(str(out / name))
        assert Geometry.from_image(image).same_grid(GRID), name
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "probability.nii.gz")))
    assert probability.dtype == np.float32 and 0 <= probability.min() and probability.max() <= 1
    label = sitk.ReadImage(str(out / "tumor_label.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    record = json.loads((out / "measurements.json").read_text())
    for key in ("tumor_volume_ml", "longest_diameter_mm", "t_category", "n_lesions", "lesions",
                "functional_tumor_volume_ml", "kinetic_curve_type", "model_name", "model_version", "threshold"):
        assert key in record, key
    assert "tumor_volume_ml" in (out / "measurements.csv").read_text().splitlines()[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_progress_lines_are_json(tmp_path, tiny_model):
    phases = enhancing_phases(tmp_path)
    done = run_cli("segment", *phases, "--times", 0, 90, 180, "--output", tmp_path / "out",
                   "--model", tiny_model, "--progress-lines")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    fractions = [e["progress"] for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"inference", "done"} <= {e["step"] for e in events}


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    done = run_cli("segment", tmp_path / "nope.nii.gz", tmp_path / "nope2.nii.gz", "--output", out)
    assert_one_line_error(done, "nope.nii.gz")
    assert not out.exists()


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image at all")
    good = enhancing_phases(tmp_path)[0]
    done = run_cli("segment", bad, good, "--times", 0, 90, "--output", tmp_path / "out")
    assert_one_line_error(done, "bad.nii.gz")
    assert not (tmp_path / "out").exists()


def test_single_phase(tmp_path):
    phase = enhancing_phases(tmp_path)[0]
    done = run_cli("segment", phase, "--output", tmp_path / "out")
    assert_one_line_error(done, "phase")
    assert not (tmp_path / "out").exists()


def test_phases_without_physical_overlap(tmp_path):
    phases = enhancing_phases(tmp_path, n=2)
    far = Geometry(GRID.size, GRID.spacing, (500.0, 500.0, 500.0))
    write_volume(phases[0], np.full(GRID.shape_zyx, 100.0), far)
    done = run_cli("segment", *phases, "--times", 0, 90, "--output", tmp_path / "out")
    assert_one_line_error(done, "overlap")
    assert not (tmp_path / "out").exists()


def test_nan_voxels(tmp_path):
    phases = enhancing_phases(tmp_path, n=2)
    array = np.full(GRID.shape_zyx, 100.0)
    array[3, 4, 5] = np.nan
    write_volume(phases[1], array)
    done = run_cli("segment", *phases, "--times", 0, 90, "--output", tmp_path / "out")
    assert_one_line_error(done, "phase_1", "NaN")
    assert not (tmp_path / "out").exists()


def test_2d_image(tmp_path):
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((30, 30), np.float32)), str(flat))
    phases = enhancing_phases(tmp_path, n=2)
    done = run_cli("segment", flat, phases[1], "--times", 0, 90, "--output", tmp_path / "out")
    assert_one_line_error(done, "flat.nii.gz", "2D")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("times,word", [((0, 90, 90), "duplicate"), ((0, 180, 90), "decrease")])
def test_bad_times(tmp_path, times, word):
    phases = enhancing_phases(tmp_path)
    done = run_cli("segment", *phases, "--times", *times, "--output", tmp_path / "out")
    assert_one_line_error(done, word)
    assert not (tmp_path / "out").exists()


def test_missing_times_names_the_option(tmp_path, tiny_model):
    phases = enhancing_phases(tmp_path)
    done = run_cli("segment", *phases, "--output", tmp_path / "out", "--model", tiny_model)
    assert_one_line_error(done, "--times")
    assert not (tmp_path / "out").exists()


def test_weights_checksum_mismatch(tmp_path, tiny_model):
    data = bytearray(tiny_model.read_bytes())
    data[-1] ^= 0xFF
    tiny_model.write_bytes(bytes(data))
    phases = enhancing_phases(tmp_path)
    done = run_cli("segment", *phases, "--times", 0, 90, 180, "--output", tmp_path / "out", "--model", tiny_model)
    assert_one_line_error(done, tiny_model.name, "checksum")
    assert not (tmp_path / "out").exists()


def test_weights_architecture_mismatch(tmp_path, tiny_model):
    card_path = tiny_model.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["hyperparameters"]["base_channels"] = 4
    card_path.write_text(json.dumps(card))
    phases = enhancing_phases(tmp_path)
    done = run_cli("segment", *phases, "--times", 0, 90, 180, "--output", tmp_path / "out", "--model", tiny_model)
    assert_one_line_error(done, tiny_model.name)
    assert not (tmp_path / "out").exists()


def test_non_empty_output_needs_overwrite(tmp_path, tiny_model):
    phases = enhancing_phases(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = run_cli("segment", *phases, "--times", 0, 90, 180, "--output", out, "--model", tiny_model)
    assert_one_line_error(done, "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_help_explains_units():
    done = run_cli("segment", "--help")
    assert done.returncode == 0
    for text in ("seconds", "millilitres", "--relative-threshold", "--device"):
        assert text in done.stdout


# ----------------------------------------------------------------------------- the bundled demo
SAMPLE = ROOT / "BreastTumorSeg" / "Resources" / "SampleData" / "SampleBreastDCE"


def test_sample_study_matches_its_checksums():
    from breasttumorseg.segmentation.models import sha256_of

    lines = (SAMPLE / "SHA256SUMS").read_text().splitlines()
    assert len(lines) >= 7  # four phases, times, tumor and breast masks, info
    for line in lines:
        digest, name = line.split()
        assert sha256_of(SAMPLE / name) == digest, name


def test_demo_segments_the_sample_with_the_bundled_model(tmp_path):
    """`breasttumorseg demo`: the bundled model on the bundled sample, outputs and a real Dice."""
    out = tmp_path / "demo"
    done = run_cli("demo", "--output", out, "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "tumor_volume_ml" in (out / "measurements.csv").read_text()
    dice = float(done.stdout.split("Dice ")[1].split(",")[0])
    # recomputed here from the files, not trusted from the printout
    from breasttumorseg.evaluation.metrics import dice as dice_of

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "tumor_label.nii.gz"))) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "tumor_mask.nii.gz"))) > 0
    assert dice == pytest.approx(dice_of(label, truth), abs=1e-3)
    assert dice >= 0.7, f"the bundled model's Dice on the sample fell to {dice:.3f}"
    record = json.loads((out / "measurements.json").read_text())
    assert record["n_lesions"] >= 1 and record["kinetic_curve_type"] == "washout"
    # the index lesion is the phantom's tumor: in the right breast, centred where the truth is (LPS mm)
    truth_image = sitk.ReadImage(str(SAMPLE / "tumor_mask.nii.gz"))
    (true_tumor,) = lesions(truth, Geometry.from_image(truth_image))
    index = record["lesions"][0]
    assert index["side"] == true_tumor["side"] == "right"
    assert np.linalg.norm(np.subtract(index["centroid_lps_mm"], true_tumor["centroid_lps_mm"])) < 5.0
    assert record["longest_diameter_mm"] == index["longest_diameter_mm"]
    printed = done.stdout.splitlines()
    assert any(line.startswith("Lesion 1 (index) ") for line in printed)
    assert any(line.startswith("T category (size) ") and line.endswith(f" {record['t_category']}") for line in printed)


# ----------------------------------------------------------------------------- phantom and evaluate
def test_phantom_writes_nifti_and_dicom_that_segment_reads(tmp_path, tiny_model):
    out = tmp_path / "phantoms"
    done = run_cli("phantom", out, "--n", 2, "--seed", 40, "--phases", 3, "--size", 64, 64, 24,
                   "--spacing", 3.0, 3.0, 6.0, "--dicom", "--quiet")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["case_0040", "case_0041"]
    case = out / "case_0040"
    for name in ("phase_00.nii.gz", "phase_02.nii.gz", "times.json", "tumor_mask.nii.gz", "breast_mask.nii.gz"):
        assert (case / name).is_file(), name
    times = json.loads((case / "times.json").read_text())["times_s"]
    assert len(times) == 3 and times[0] == 0 and times == sorted(times)
    # the DICOM series (one series, three temporal positions) goes through segment, times from DICOM
    result = tmp_path / "from_dicom"
    done = run_cli("segment", case / "dicom", "--output", result, "--model", tiny_model, "--quiet")
    assert done.returncode == 0, done.stderr
    label = sitk.ReadImage(str(result / "tumor_label.nii.gz"))
    reference = sitk.ReadImage(str(case / "phase_01.nii.gz"))
    assert label.GetSize() == reference.GetSize()
    np.testing.assert_allclose(label.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(label.GetSpacing(), reference.GetSpacing(), atol=1e-4)


def test_evaluate_files_and_folders(tmp_path):
    ref = np.zeros(GRID.shape_zyx, np.uint8)
    ref[4:12, 10:20, 10:20] = 1            # 8 x 10 x 10 voxels
    pred = np.zeros_like(ref)
    pred[4:12, 10:20, 15:25] = 1           # shifted 5 voxels (10 mm) along x: half overlaps
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
    write_volume(tmp_path / "pred" / "case_a.nii.gz", pred)
    write_volume(tmp_path / "ref" / "case_a.nii.gz", ref)
    write_volume(tmp_path / "pred" / "case_b.nii.gz", ref)
    write_volume(tmp_path / "ref" / "case_b.nii.gz", ref)
    report = tmp_path / "metrics.json"
    done = run_cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref", "--json", report, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "case_a" in done.stdout and "median" in done.stdout
    rows = {row["case"]: row for row in json.loads(report.read_text())["cases"]}
    assert rows["case_a"]["dice"] == pytest.approx(0.5)
    assert rows["case_a"]["hd95_mm"] == pytest.approx(10.0, abs=0.5)
    assert rows["case_a"]["volume_difference_ml"] == pytest.approx(0.0)
    assert rows["case_b"]["dice"] == 1.0 and rows["case_b"]["hd95_mm"] == 0.0
    # two files work the same way; a missing prediction is one clear line
    done = run_cli("evaluate", "--pred", tmp_path / "pred" / "case_a.nii.gz",
                   "--ref", tmp_path / "ref" / "case_a.nii.gz")
    assert done.returncode == 0 and "0.500" in done.stdout
    (tmp_path / "pred" / "case_b.nii.gz").unlink()
    done = run_cli("evaluate", "--pred", tmp_path / "pred", "--ref", tmp_path / "ref")
    assert_one_line_error(done, "case_b")
