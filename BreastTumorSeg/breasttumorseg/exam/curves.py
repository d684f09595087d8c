"""The delayed-phase type of a signal-time curve (BI-RADS; Kuhl et al. 1999).

The early signal is the one at the post-contrast phase acquired closest to ``early_time_s``
(120 s by default; never the last phase), the late signal the one at the last phase. Their
change 100 (S_late - S_early) / S_early in percent is "persistent" above +10 %, "washout"
below -10 %, else "plateau"; "undetermined" with fewer than two post-contrast phases.
Times in seconds, phase 0 the pre-contrast.
"""

from __future__ import annotations

import numpy as np

#: early signal: the post-contrast phase closest to this time (s)
EARLY_TIME_S = 120.0
#: late change (percent of the early signal) beyond which a curve is persistent or washout
CURVE_CHANGE_PERCENT = 10.0


def early_phase(times_s, early_time_s: float = EARLY_TIME_S) -> int:
    """Index of the post-contrast phase closest to ``early_time_s``, never the last (>= 3 phases)."""
    times = np.asarray(times_s, dtype=float)
    candidates = np.arange(1, len(times) - 1)
    return int(candidates[np.argmin(np.abs(times[candidates] - early_time_s))])


def late_change_percent(curve, times_s, early_time_s: float = EARLY_TIME_S) -> float:
    """100 (S_late - S_early) / S_early of ``curve`` (one value per phase); NaN with < 3 phases."""
    curve = np.asarray(curve, dtype=float)
    if len(curve) < 3:
        return float("nan")
    early = curve[early_phase(times_s, early_time_s)]
    return float(100.0 * (curve[-1] - early) / early)


def delayed_type(change_percent: float, threshold_percent: float = CURVE_CHANGE_PERCENT) -> str:
    """"persistent", "plateau" or "washout" for a late change in percent."""
    if change_percent > threshold_percent:
        return "persistent"
    if change_percent < -threshold_percent:
        return "washout"
    return "plateau"


def curve_type(curve, times_s, *, early_time_s: float = EARLY_TIME_S,
               change_percent: float = CURVE_CHANGE_PERCENT) -> str:
    """Delayed-phase type of ``curve`` (one signal per phase at ``times_s``), or "undetermined"."""
    if len(curve) < 3:
        return "undetermined"
    return delayed_type(late_change_percent(curve, times_s, early_time_s), change_percent)
