"""Derived maps and normalisations against analytic values."""

import numpy as np
import pytest

from breasttumorseg.exam import maps
from breasttumorseg.core.errors import InputError, MissingTimesError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.normalization import (normalize_post1_minmax, normalize_pre_contrast_p95,
                                          pre_contrast_p95)
from breasttumorseg.exam.dce_exam import DCEStudy

GRID = Geometry((4, 3, 2), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0))


def study_with_curve(values, times):
    phases = np.stack([np.full(GRID.shape_zyx, v, np.float32) for v in values])
    return DCEStudy(phases, GRID, times)


def test_dce_in_and_subtraction():
    study = study_with_curve([100, 250, 230, 210], [0, 90, 180, 270])
    assert np.allclose(maps.dce_in(study), 150)
    assert np.allclose(maps.subtraction(study, 3), 110)


def test_washout_slope_per_second_and_dce_out():
    study = study_with_curve([100, 250, 230, 210], [0, 90, 180, 270])
    assert np.allclose(maps.washout_slope(study), -20 / 90)  # exact line through the post phases
    assert np.allclose(maps.dce_out(study), -40)  # slope x (270 - 90) s


def test_washout_slope_least_squares_with_uneven_times():
    times = np.array([0, 60, 120, 300, 420.0])
    values = np.array([100, 200, 215, 190, 170.0])
    study = study_with_curve(values, times)
    expected = np.polyfit(times[1:], values[1:], 1)[0]
    assert np.allclose(maps.washout_slope(study), expected, rtol=1e-5)


def test_single_post_contrast_has_zero_slope():
    study = study_with_curve([100, 200], [0, 90])
    assert np.all(maps.washout_slope(study) == 0)


def test_times_needed_for_washout():
    study = study_with_curve([100, 200, 180], None)
    with pytest.raises(MissingTimesError, match="--times"):
        maps.washout_slope(study)


def test_percent_enhancement_and_ser():
    pre, early, late = np.array([100.0, 0.0]), np.array([250.0, 10.0]), np.array([200.0, 5.0])
    np.testing.assert_allclose(maps.percent_enhancement(pre, early), [150.0, 0.0])
    np.testing.assert_allclose(maps.signal_enhancement_ratio(pre, early, late), [1.5, 2.0])
    np.testing.assert_allclose(maps.signal_enhancement_ratio([100.0], [150.0], [90.0]), [0.0])


def test_early_and_late_phase_choice():
    assert maps.early_and_late_phases([0, 90, 180, 270, 360, 480]) == (2, 5)
    assert maps.early_and_late_phases([0, 100]) == (1, 1)


def test_pre_contrast_p95_normalisation():
    pre = np.arange(1, 101, dtype=np.float32).reshape(4, 25)
    channels = np.stack([pre, 2 * pre])
    scale = pre_contrast_p95(pre)
    normalize_pre_contrast_p95(channels, pre)
    np.testing.assert_allclose(channels[1], 2 * pre / scale)
    with pytest.raises(InputError, match="no signal"):
        pre_contrast_p95(np.zeros((3, 3)))


def test_post1_minmax_uses_first_post_range_for_all_phases():
    rng = np.random.default_rng(1)
    post1 = rng.uniform(0, 100, 1000).astype(np.float32)
    phases = np.stack([post1 * 0.5, post1, post1 * 3])
    out = normalize_post1_minmax(phases, post1, clip_percentiles=(0, 100))
    assert out[1].min() == pytest.approx(0) and out[1].max() == pytest.approx(1)
    assert out[2].max() == pytest.approx(1)  # clipped with the post-1 range
    assert out[0].max() == pytest.approx(0.5, abs=0.02)


def test_study_rejects_bad_times_and_values():
    with pytest.raises(InputError, match="duplicate"):
        study_with_curve([1, 2, 3], [0, 60, 60])
    with pytest.raises(InputError, match="decrease"):
        study_with_curve([1, 2, 3], [0, 120, 60])
    with pytest.raises(InputError, match="at least one post-contrast"):
        study_with_curve([1], [0])
    phases = np.ones((2,) + GRID.shape_zyx, np.float32)
    phases[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        DCEStudy(phases, GRID)
