"""Derived DCE maps: subtractions, DCE-in, DCE-out (washout slope), percent enhancement, SER.

All maps are ``[z, y, x]`` float32 arrays on the study's grid. Intensities are the
scanner's signal units (arbitrary); times are seconds. Definitions:

* subtraction ``k``: post-contrast phase ``k`` minus the pre-contrast.
* DCE-in (Hirsch et al. 2022): first post-contrast minus pre-contrast (initial uptake).
* washout slope: least-squares slope of the post-contrast signal over acquisition time,
  per second (negative = washout). Needs times; 0 with a single post-contrast phase.
* DCE-out: the washout slope times the post-contrast window (last - first post-contrast
  time, s), i.e. the fitted signal change over that window in signal units. Scaling by
  the window keeps the channel comparable across protocols; Hirsch et al. feed the slope.
* percent enhancement PE = 100 (S1 - S0) / S0, and signal enhancement ratio
  SER = (S1 - S0) / (S2 - S0) (I-SPY / ACRIN 6657 conventions; 0 where undefined).
"""

from __future__ import annotations

import numpy as np

from .dce_exam import DCEStudy

#: Signal values at or below this are treated as "no signal" in ratios.
_EPSILON = 1e-6


def subtraction(study: DCEStudy, post_index: int = 1) -> np.ndarray:
    """Phase ``post_index`` (1 = first post-contrast) minus the pre-contrast."""
    if not 1 <= post_index < study.n_phases:
        raise ValueError(f"post-contrast index {post_index} outside 1..{study.n_phases - 1}")
    return study.phases[post_index] - study.pre_contrast


def dce_in(study: DCEStudy) -> np.ndarray:
    """Initial uptake: first post-contrast minus pre-contrast (signal units)."""
    return subtraction(study, 1)


def washout_slope(study: DCEStudy) -> np.ndarray:
    """Least-squares slope of the post-contrast signal over time, signal units per second.

    Uses every post-contrast phase and the study's acquisition times (required). With a
    single post-contrast phase the slope is undefined and returned as 0 everywhere.
    """
    times = study.require_times("the washout slope (DCE-out)")
    post_times = times[1:]
    if len(post_times) < 2:
        return np.zeros(study.geometry.shape_zyx, dtype=np.float32)
    centred = post_times - post_times.mean()
    weights = (centred / np.sum(centred ** 2)).astype(np.float32)
    slope = np.zeros(study.geometry.shape_zyx, dtype=np.float32)
    for weight, phase in zip(weights, study.post_contrast):
        slope += weight * phase  # sum(w_t * S_t) == covariance / variance, memory-light
    return slope


def dce_out(study: DCEStudy) -> np.ndarray:
    """Washout slope times the post-contrast window: fitted change over that window."""
    times = study.require_times("DCE-out (washout)")
    window = float(times[-1] - times[1])
    return washout_slope(study) * np.float32(window)


def percent_enhancement(pre_contrast: np.ndarray, post_contrast: np.ndarray) -> np.ndarray:
    """PE = 100 (S1 - S0) / S0 in percent; 0 where S0 <= 0."""
    pre = np.asarray(pre_contrast, dtype=np.float32)
    valid = pre > _EPSILON
    out = np.zeros(pre.shape, dtype=np.float32)
    np.divide(100.0 * (np.asarray(post_contrast, dtype=np.float32) - pre), pre, out=out, where=valid)
    return out


def signal_enhancement_ratio(pre_contrast: np.ndarray, early: np.ndarray, late: np.ndarray) -> np.ndarray:
    """SER = (S1 - S0) / (S2 - S0), dimensionless; 0 where S2 - S0 <= 0."""
    pre = np.asarray(pre_contrast, dtype=np.float32)
    late_gain = np.asarray(late, dtype=np.float32) - pre
    out = np.zeros(pre.shape, dtype=np.float32)
    np.divide(np.asarray(early, dtype=np.float32) - pre, late_gain, out=out, where=late_gain > _EPSILON)
    return out


def early_and_late_phases(times_s, early_time_s: float = 150.0, late_time_s: float = 450.0) -> tuple[int, int]:
    """Indices of the post-contrast phases closest to the early and late times (I-SPY).

    ``times_s`` are seconds from injection for every phase (index 0 = pre-contrast).
    The late phase is never earlier than the early one.
    """
    times = np.asarray(times_s, dtype=float)
    post = np.arange(1, len(times))
    early = int(post[np.argmin(np.abs(times[1:] - early_time_s))])
    late = int(post[np.argmin(np.abs(times[1:] - late_time_s))])
    return early, max(early, late)


#: Model input channels by name (see models.ModelCard.inputs).
CHANNELS = {
    "pre_contrast": lambda study: study.pre_contrast.copy(),
    "first_post_contrast": lambda study: study.first_post_contrast.copy(),
    "dce_in": dce_in,
    "dce_out": dce_out,
    "subtraction_last": lambda study: subtraction(study, study.n_phases - 1),
}


#: Model input meaning "every phase, in acquisition order, one channel each" (with their times).
PHASE_SERIES = "phases"


def channel(study: DCEStudy, name: str) -> np.ndarray:
    """One named model input channel (float32 ``[z, y, x]``)."""
    try:
        make = CHANNELS[name]
    except KeyError:
        raise ValueError(f"unknown input channel {name!r}; known: {', '.join(CHANNELS)}") from None
    return np.asarray(make(study), dtype=np.float32)
