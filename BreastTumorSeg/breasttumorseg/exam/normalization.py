"""Intensity normalisations of the two seed papers.

* ``pre_contrast_p95`` (Hirsch et al. 2022): every channel is divided by the 95th
  percentile of the pre-contrast signal inside the body, so 1.0 is "bright tissue before
  contrast" whatever the scanner's units.
* ``post1_minmax`` (Zhang et al. 2023): clip intensity outliers at percentiles of the
  first post-contrast phase, then min-max scale with that phase's range; the same range
  is applied to every phase so enhancement stays comparable across phases.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError


def pre_contrast_p95(pre_contrast: np.ndarray, body: np.ndarray | None = None, source: str = "study") -> float:
    """95th percentile of the pre-contrast inside ``body`` (all voxels above 0 if None)."""
    values = pre_contrast[body] if body is not None else pre_contrast[pre_contrast > 0]
    if values.size == 0:
        raise InputError("the pre-contrast phase has no signal (all voxels <= 0)", source)
    scale = float(np.percentile(values, 95))
    if scale <= 0:
        raise InputError("the pre-contrast phase has no positive signal to normalise by", source)
    return scale


def normalize_pre_contrast_p95(channels: np.ndarray, pre_contrast: np.ndarray,
                               body: np.ndarray | None = None, source: str = "study") -> np.ndarray:
    """Divide channels ``[C, z, y, x]`` by the pre-contrast's 95th percentile (in place)."""
    channels /= np.float32(pre_contrast_p95(pre_contrast, body, source))
    return channels


def post1_minmax_range(first_post_contrast: np.ndarray, clip_percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """(low, high) clipping range from the first post-contrast phase's percentiles."""
    low, high = np.percentile(first_post_contrast, clip_percentiles)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def normalize_post1_minmax(phases: np.ndarray, first_post_contrast: np.ndarray,
                           clip_percentiles=(0.5, 99.5)) -> np.ndarray:
    """Clip and min-max scale ``phases`` with the first post-contrast's range (new array)."""
    low, high = post1_minmax_range(first_post_contrast, clip_percentiles)
    return ((np.clip(phases, low, high) - low) / (high - low)).astype(np.float32)
