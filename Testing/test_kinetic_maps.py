"""Kinetic model inputs: the same channels on every protocol (units, offset, timing
convention, number of phases, bias field), and the domain randomisation of training phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from breasttumorseg.core.errors import InputError, MissingTimesError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.kinetic_maps import KINETIC_CHANNELS, KINETIC_TIMES_S, injection_times_s, kinetic_channels
from breasttumorseg.phantom import generate_phantom
from breasttumorseg.phantom.randomize import randomize_appearance
from breasttumorseg.exam.dce_exam import DCEStudy

GRID = Geometry((24, 20, 12), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def curve_study(curve, times, *, pre=100.0, scale=1.0, offset=0.0) -> DCEStudy:
    """A study whose body (a block of pre-contrast signal ``pre``) follows ``curve`` (signal
    after contrast, one value per post-contrast phase); air around it is 0."""
    shape = GRID.shape_zyx
    phases = np.zeros((len(times),) + shape, np.float32)
    body = (slice(2, 10), slice(3, 17), slice(3, 21))
    phases[0][body] = pre
    for k, value in enumerate(curve, start=1):
        phases[k][body] = value
    return DCEStudy(phases * scale + offset, GRID, np.asarray(times, float))


def test_units_offset_and_timing_convention_leave_the_channels_unchanged():
    phantom = generate_phantom(7, layout="sagittal", n_phases=5, size=(64, 64, 20), spacing=(2.5, 2.5, 3.0))
    study = phantom.study
    reference = kinetic_channels(study)
    for scale, offset in ((0.01, 0.0), (100.0, 3000.0)):
        scaled = DCEStudy(study.phases * scale + offset, study.geometry, study.times_s)
        assert np.abs(kinetic_channels(scaled) - reference).max() < 1e-3
    before_injection = np.r_[-60.0, study.times_s[1:]]           # pre-contrast acquired 60 s before injection
    moved = DCEStudy(study.phases, study.geometry, before_injection)
    assert np.abs(kinetic_channels(moved) - reference).max() < 1e-5
    assert np.allclose(injection_times_s([30.0, 120.0]), [0.0, 90.0])   # pre after 0 s: it is the injection


def test_enhancement_is_interpolated_on_the_fixed_time_axis_and_held_after_the_last_phase():
    # relative enhancement 1.0 at 90 s, 0.8 at 270 s (washout); pre 100
    channels = kinetic_channels(curve_study([200.0, 180.0], [0.0, 90.0, 270.0]))
    inside = (slice(None), 5, 10, 10)
    values = dict(zip(KINETIC_CHANNELS, channels[inside]))
    assert values["enhancement_60s"] == pytest.approx(60 / 90)
    assert values["enhancement_120s"] == pytest.approx(1.0 - 0.2 * 30 / 180)
    assert values["enhancement_240s"] == pytest.approx(1.0 - 0.2 * 150 / 180)
    assert values["enhancement_420s"] == pytest.approx(0.8)        # held after the last phase
    assert values["enhancement_peak"] == pytest.approx(1.0)
    assert values["late_coverage"] == pytest.approx(180 / 300)
    assert values["pre_relative"] == pytest.approx(1.0)            # the body's median is the reference
    assert KINETIC_TIMES_S == (60.0, 120.0, 240.0, 420.0)


def test_two_phases_fill_every_channel_and_say_the_late_window_is_unknown():
    channels = kinetic_channels(curve_study([250.0], [0.0, 100.0]))
    values = dict(zip(KINETIC_CHANNELS, channels[:, 5, 10, 10]))
    assert values["enhancement_120s"] == values["enhancement_420s"] == pytest.approx(1.5)
    assert values["late_coverage"] == 0.0


def test_dark_voxels_cannot_blow_up_and_a_bias_field_cancels_where_there_is_signal():
    study = curve_study([200.0, 180.0], [0.0, 90.0, 270.0])
    phases = study.phases.copy()
    phases[:, 5, 10, 10] = [0.5, 40.0, 40.0]                        # nearly no pre-contrast signal
    channels = kinetic_channels(DCEStudy(phases, GRID, study.times_s))
    assert channels[:, 5, 10, 10].max() <= 5.0                      # floored denominator, clipped
    field = np.linspace(0.7, 1.3, GRID.shape_zyx[2], dtype=np.float32)[None, None, None, :]
    biased = kinetic_channels(DCEStudy(study.phases * field, GRID, study.times_s))
    unbiased = kinetic_channels(study)
    enhancement = slice(1, 6)
    assert np.abs(biased[enhancement, 5, 10, 5:18] - unbiased[enhancement, 5, 10, 5:18]).max() < 1e-5


def test_missing_times_and_unknown_channels_are_one_line_errors():
    study = curve_study([200.0], [0.0, 90.0])
    with pytest.raises(MissingTimesError):
        kinetic_channels(DCEStudy(study.phases, GRID, None))
    with pytest.raises(InputError, match="unknown kinetic channel"):
        kinetic_channels(study, ["dce_in"])


def test_domain_randomisation_is_deterministic_keeps_the_truth_and_varies_the_signal():
    case = generate_phantom(11, layout="sagittal", n_phases=4, size=(64, 64, 20), spacing=(2.5, 2.5, 3.0))
    drawn = [randomize_appearance(case, np.random.default_rng([11, s])) for s in range(6)]
    again = randomize_appearance(case, np.random.default_rng([11, 0]))
    assert np.array_equal(again.study.phases, drawn[0].study.phases)
    for randomized in drawn:
        assert np.array_equal(randomized.tumor_mask, case.tumor_mask)
        assert randomized.study.geometry == case.study.geometry
        assert np.all(np.diff(randomized.study.times_s) > 0)
        assert {"fat_suppression", "scale", "offset"} <= set(randomized.info["appearance"])
    scales = {r.info["appearance"]["scale"] for r in drawn}
    assert len(scales) == len(drawn)
    assert not np.array_equal(drawn[1].study.phases, case.study.phases)


def test_candidates_are_the_enhancing_voxels_grown_by_the_margin_and_isolated_noise_is_not():
    from breasttumorseg.exam.kinetic_maps import CANDIDATE_MARGIN_MM, candidate_region

    peak = np.zeros((40, 40, 40), np.float32)
    peak[18:21, 18:21, 18:21] = 1.0          # a small enhancing focus
    peak[5, 5, 5] = 3.0                      # one noisy voxel
    region = candidate_region(peak, (2.0, 1.5, 1.5))
    margin = [int(np.ceil(CANDIDATE_MARGIN_MM / s)) for s in (2.0, 1.5, 1.5)]
    assert region[18 - margin[0], 19, 19] and not region[18 - margin[0] - 1, 19, 19]
    assert region[19, 20 + margin[1], 19] and not region[19, 21 + margin[1], 19]
    assert not region[5, 5, 5]
    assert not candidate_region(np.full((8, 8, 8), 0.39, np.float32), (1.5, 1.5, 1.5)).any()
