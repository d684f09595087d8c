"""Tests for the stress set (breasttumorseg.phantom.stress), the generator options it needs, and
the classical breast mask (breasttumorseg.exam.breast_classical). Small grids: 3 x 3 x 4 mm voxels."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from breasttumorseg.exam.breast_classical import classical_breast_mask
from breasttumorseg.evaluation.metrics import dice
from breasttumorseg.phantom import generate_phantom
from breasttumorseg.phantom.stress import (
    AXIS_NAMES,
    STRESS_SEED_START,
    STRESS_SEED_STOP,
    StressBase,
    stress_case,
    stress_seeds,
)
from breasttumorseg.training.config import RESERVED_SEEDS, TrainingConfig
from scipy import ndimage

SMALL_BASE = StressBase(inplane_mm=3.0, slice_mm=4.0)
SEED = STRESS_SEED_START
FAT, FGT = 1, 2


@pytest.fixture(scope="module")
def cases() -> dict:
    """Every axis's case for the first stress seed, on the small base grid."""
    return {axis: stress_case(axis, SEED, SMALL_BASE) for axis in AXIS_NAMES}


def _fingerprint(case) -> str:
    digest = hashlib.sha256()
    for array in (case.study.phases, case.tumor_mask, case.breast_mask, case.tissue_labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(repr(list(case.study.times_s)).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("options, expected", [
    ({"seed": 7, "n_phases": 5, "size": (96, 80, 36), "spacing": (3.0, 3.0, 4.0)}, "01d9c158d8876f93"),
    ({"seed": 3, "layout": "sagittal", "n_phases": 4, "size": (64, 64, 30), "spacing": (3.0, 3.0, 5.5)},
     "424c3e49bda51272"),
    ({"seed": 12, "size": (48, 40, 20), "spacing": (6.0, 6.0, 8.0)}, "3fa4cd9aa2bf41c5"),
])
def test_generator_defaults_still_give_the_same_cases(options, expected):
    # fingerprints taken before the stress options were added: seeds keep producing the same studies
    seed = options.pop("seed")
    assert _fingerprint(generate_phantom(seed, **options)) == expected


def test_stress_seeds_are_held_out_of_training_validation_and_the_accuracy_benchmark(tmp_path):
    seeds = stress_seeds(40)
    assert seeds[0] == STRESS_SEED_START and all(STRESS_SEED_START <= s < STRESS_SEED_STOP for s in seeds)
    config = TrainingConfig(output=tmp_path)
    training = set(range(config.train_seed_start, config.train_seed_start + config.n_train_cases))
    validation = set(range(config.val_seed_start, config.val_seed_start + config.n_val_cases))
    accuracy = set(range(500000, 600000))  # bench_accuracy.py's HELD_OUT_SEED and up
    assert min(seeds) >= RESERVED_SEEDS and not set(seeds) & (training | validation | accuracy)
    with pytest.raises(ValueError, match="stress seeds"):
        stress_case("base", 10000, SMALL_BASE)
    with pytest.raises(ValueError, match="unknown stress axis"):
        stress_case("coronal", SEED, SMALL_BASE)


def test_at_least_40_cases_one_axis_at_a_time(cases):
    assert len(AXIS_NAMES) * 3 >= 40 and AXIS_NAMES[0] == "base"
    for axis, case in cases.items():
        assert case.info["stress"]["axis"] == axis and case.info["stress"]["seed"] == SEED
    again = stress_case("motion_3mm", SEED, SMALL_BASE)
    np.testing.assert_array_equal(again.study.phases, cases["motion_3mm"].study.phases)


def test_base_case_is_inside_the_training_ranges(cases):
    base = cases["base"].study
    assert base.n_phases == 5 and base.times_s[0] == 0 and base.geometry.spacing == (3.0, 3.0, 4.0)
    assert base.geometry.size == (100, 100, 38)
    assert cases["base"].info["fat_suppressed"] and cases["base"].info["tumor_type"] == "mass"


@pytest.mark.parametrize("axis, factor", [("scale_x0.01", 0.01), ("scale_x100", 100.0)])
def test_scale_axes_multiply_the_signal_and_add_an_offset(cases, axis, factor):
    base, scaled = cases["base"], cases[axis]
    applied = scaled.info["stress"]["applied"]
    assert applied["scale"] == factor and applied["offset"] > 0
    fgt_level = float(np.median(base.study.phases[0][base.tissue_labels == FGT]))
    assert applied["offset"] == pytest.approx(0.5 * fgt_level * factor, rel=1e-3)
    np.testing.assert_allclose(scaled.study.phases, base.study.phases * factor + applied["offset"], rtol=1e-5,
                               atol=1e-6 * factor * fgt_level)
    np.testing.assert_array_equal(scaled.tumor_mask, base.tumor_mask)


def test_fat_suppression_off_makes_fat_brighter_than_fibroglandular_tissue(cases):
    def median(case, label):
        return float(np.median(case.study.phases[0][case.tissue_labels == label]))

    assert median(cases["base"], FAT) < 0.5 * median(cases["base"], FGT)
    off = cases["fat_suppression_off"]
    assert not off.info["fat_suppressed"] and median(off, FAT) > 1.5 * median(off, FGT)
    np.testing.assert_array_equal(off.tumor_mask, cases["base"].tumor_mask)


def test_pre_contrast_at_minus_60_s(cases):
    shifted = cases["pre_contrast_-60s"].study
    assert shifted.times_s[0] == -60.0
    np.testing.assert_array_equal(shifted.times_s[1:], cases["base"].study.times_s[1:])
    np.testing.assert_array_equal(shifted.phases, cases["base"].study.phases)


def test_phase_axes(cases):
    assert cases["two_phases"].study.n_phases == 2
    irregular = cases["eight_irregular_phases"].study
    intervals = np.diff(irregular.times_s)
    assert irregular.n_phases == 8 and irregular.times_s[0] == 0 and np.all(intervals > 0)
    assert intervals.max() / intervals.min() > 4  # far from one regular interval


def test_three_mm_slices(cases):
    geometry = cases["slices_3mm"].study.geometry
    assert geometry.spacing[2] == 3.0 and geometry.size[2] == 50


def test_marked_bpe_enhances_fibroglandular_tissue_more(cases):
    def fgt_enhancement(case):
        fgt = case.tissue_labels == FGT
        pre, post = case.study.phases[0][fgt], case.study.phases[1][fgt]
        return float(np.median((post - pre) / pre))

    marked = cases["marked_bpe"]
    assert marked.info["bpe_level"] == "marked" and cases["base"].info["bpe_level"] != "marked"
    assert fgt_enhancement(marked) > 1.5 * fgt_enhancement(cases["base"])


def test_non_mass_enhancement_is_clumped_enhancing_and_labelled_tumor(cases):
    case = cases["non_mass_enhancement"]
    tumor = case.tumor_mask > 0
    assert case.info["tumor_type"] == "non-mass enhancement" and case.info["nme_foci"] >= 10
    assert tumor.any() and np.array_equal(tumor, case.tissue_labels == 9)
    box = ndimage.find_objects(tumor.astype(np.uint8))[0]
    spacing_zyx = case.study.geometry.spacing[::-1]
    longest_mm = max((side.stop - side.start) * s for side, s in zip(box, spacing_zyx))
    volume_ml = float(tumor.sum() * case.study.geometry.voxel_volume_ml)
    assert longest_mm >= 20  # along a duct segment, not a small focus
    assert volume_ml < 0.2 * np.pi / 6 * longest_mm ** 3 / 1000  # clustered foci, not a solid mass
    pre, post = (float(case.study.phases[t][tumor].mean()) for t in (0, 1))
    assert post > 1.5 * pre
    assert (case.breast_mask[tumor] > 0).all()


def test_motion_moves_every_phase_but_the_first_post_contrast(cases):
    moved, base = cases["motion_3mm"], cases["base"]
    np.testing.assert_array_equal(moved.study.phases[1], base.study.phases[1])
    assert not np.array_equal(moved.study.phases[0], base.study.phases[0])
    shifts = moved.info["stress"]["applied"]["shift_mm_zyx"]
    assert [round(float(np.linalg.norm(s)), 2) for i, s in enumerate(shifts) if i != 1] == [3.0] * 4


@pytest.mark.parametrize("seed", [SEED, SEED + 1, SEED + 2])
def test_tumor_size_axes(seed):
    small = stress_case("tumor_under_0.5ml", seed, SMALL_BASE)
    large = stress_case("tumor_over_30ml", seed, SMALL_BASE)
    assert 0 < small.info["tumor_volume_ml"] < 0.5 and not small.info["multifocal"]
    assert large.info["tumor_volume_ml"] > 30


def test_another_field_of_view_shows_the_same_sized_patient_cut(cases):
    other = cases["another_fov"]
    assert other.study.geometry.size == (80, 80, 32)
    body = other.body_mask > 0
    assert body[:, :, 0].any() and body[:, :, -1].any()  # the thorax runs past both lateral borders
    assert other.breast_mask.any() and other.tumor_mask.any()
    assert other.info["anatomy_fov_mm"] == [300.0, 300.0, 150.0]


@pytest.mark.parametrize("axis", ["base", "fat_suppression_off", "scale_x0.01", "scale_x100"])
def test_classical_breast_mask_holds_across_protocols(cases, axis):
    case = cases[axis]
    assert dice(classical_breast_mask(case.study), case.breast_mask > 0) >= 0.90


def test_classical_breast_mask_ignores_ghosts_in_the_air(cases):
    """Ghosts of the post-contrast phases along the phase-encoding axis (half a field of view
    away, as pulsation makes them) fill the air in front of the breasts; the body surface must
    not follow them."""
    case = cases["base"]
    phases = case.study.phases.copy()
    for t in range(1, len(phases)):
        phases[t] += 0.12 * np.roll(phases[t], phases.shape[2] // 2, axis=1)
    ghosted = case.study.with_phases(phases)
    assert dice(classical_breast_mask(ghosted), case.breast_mask > 0) >= 0.90


def test_classical_breast_mask_on_a_sagittal_study_keeps_its_geometry():
    case = generate_phantom(3, layout="sagittal", n_phases=4, size=(64, 64, 30), spacing=(3.0, 3.0, 5.5))
    mask = classical_breast_mask(case.study)
    assert mask.shape == case.study.geometry.shape_zyx
    assert dice(mask, case.breast_mask > 0) >= 0.90


def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "benchmarks" / "bench_stress.py"
    spec = importlib.util.spec_from_file_location("bench_stress", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_counts_detections_and_false_positive_lesions():
    bench = _bench()
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[2:6, 2:6, 2:6] = True
    pred = np.zeros_like(truth)
    assert bench.lesion_counts(pred, truth) == (False, 0)
    pred[5:8, 5:8, 5:8] = True      # overlaps the tumor
    pred[12:14, 12:14, 12:14] = True  # elsewhere
    pred[17, 2, 2] = True             # elsewhere, one voxel
    assert bench.lesion_counts(pred, truth) == (True, 2)
    rows = [{"axis": "base", "dice": {"m": d, "pe": 0.1, "fcm": 0.2}, "detected": {"m": True, "pe": False, "fcm": True},
             "false_positive_lesions": {"m": fp, "pe": 0, "fcm": 1}, "seconds": {"m": 2.0, "pe": 1.0, "fcm": 1.0},
             "breast_dice": {"classical": 0.9}} for d, fp in ((0.5, 1), (0.7, 0), (0.9, 2))]
    table = bench.axis_table(rows, ["m", "pe", "fcm"], ["classical"])
    assert table["n"] == 3 and table["m"]["median_dice"] == 0.7 and table["m"]["false_positive_lesions_per_case"] == 1
    assert table["pe"]["detection_rate"] == 0 and table["breast_mask_median_dice"]["classical"] == 0.9
    text = bench.format_tables({"base": table}, ["m", "pe", "fcm"], ["m"], ["classical"])
    assert "| base | 3 | 0.700 | 0.100 | 0.200 | 1.00 | 1.0 | 2 | 0.900 |" in text
