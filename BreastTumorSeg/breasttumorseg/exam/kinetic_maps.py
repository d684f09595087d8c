"""Protocol-invariant model inputs: relative enhancement on a fixed time axis.

A network that sees raw signal learns one scanner's units, one fat suppression, one timing.
These channels mean the same on every protocol (each choice is tested in
``Testing/test_kinetic_maps.py``):

* **Units.** The signal is first shifted so that air is 0 (``background`` = the 0.5th
  percentile of the pre-contrast, which removes any additive offset) and then only ratios
  are used, so a scale factor (x0.01 or x100) cancels exactly.
* **Reference level.** ``R`` = the median of the shifted pre-contrast inside the body
  (threshold at a quarter of the body's 90th percentile). A median cannot be hijacked
  by a small bright organ (heart, vessels, a bright cyst); with fat suppression off the
  level rises with the fat, and every channel stays a ratio.
* **Relative enhancement** ``E(t) = (S(t) - S0) / max(S0, R / 2)``: percent enhancement
  / 100 where the pre-contrast has signal (a multiplicative bias field cancels there),
  floored at half the reference level so that dark voxels (air, suppressed fat) cannot
  blow up. Clipped to [-1, 5].
* **Time axis.** Seconds after injection: times are taken as given when the
  pre-contrast is at or before 0 s (pre-contrast at 0 s or e.g. -60 s before injection
  give the same axis), else shifted so the pre-contrast is at 0 s. The enhancement is 0
  at injection and interpolated linearly along the measured curve to fixed times
  (``KINETIC_TIMES_S``); after the last phase it is held. So 2 to 8 phases at any timing
  fill the same channels.
* **Peak** enhancement over the measured post-contrast phases, and **late coverage**:
  how much of the late window the study observed, (last time - first post time) / 300 s
  clipped to 0..1, a constant map telling the network whether a held value is measured
  (a plateau) or unknown (2 phases).
* **Anatomy**: the shifted pre-contrast divided by ``R``, clipped to [0, 4].

Maps are float32 ``[z, y, x]`` on the study's grid; times in seconds.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.errors import InputError
from .dce_exam import DCEStudy

#: times (s after injection) at which the enhancement curve is sampled
KINETIC_TIMES_S = (60.0, 120.0, 240.0, 420.0)
#: the late window that full late coverage means (s)
LATE_WINDOW_S = 300.0
#: model input channel names of the kinetic normalisation, in order
KINETIC_CHANNELS = ("pre_relative",) + tuple(f"enhancement_{int(t)}s" for t in KINETIC_TIMES_S) + (
    "enhancement_peak", "late_coverage")
ENHANCEMENT_CLIP = (-1.0, 5.0)


def injection_times_s(times_s) -> np.ndarray:
    """Acquisition times in seconds after injection (see the module docstring)."""
    times = np.asarray(times_s, dtype=float)
    return times - max(float(times[0]), 0.0)


def background_level(pre_contrast: np.ndarray) -> float:
    """Signal of air (0.5th percentile of the pre-contrast), in the scanner's units."""
    return float(np.percentile(pre_contrast[::2, ::2, ::2], 0.5))


def reference_level(pre_contrast: np.ndarray, background: float, source: str = "study") -> float:
    """Median of the pre-contrast shifted by ``background`` inside the body (every second
    voxel along each axis), scanner units."""
    sample = pre_contrast[::2, ::2, ::2] - np.float32(background)
    high = float(np.percentile(sample, 90))
    if not high > 0:
        raise InputError("the pre-contrast phase has no signal above its background", source)
    body = sample[sample > 0.25 * high]
    return float(np.median(body))


#: relative enhancement (peak) from which a voxel is a tumor candidate: 0.4 = 40 %, well below the
#: 70 % of the I-SPY functional tumor volume, so faint or early-sampled cancers stay candidates
CANDIDATE_ENHANCEMENT = 0.4
#: margin (mm) around the candidates within which the network runs (context and non-enhancing
#: parts of a tumor, such as a necrotic centre, lie within the tiles that cover it)
CANDIDATE_MARGIN_MM = 12.0


def candidate_region(peak_enhancement: np.ndarray, spacing_zyx_mm) -> np.ndarray:
    """Where the tumor network needs to run (bool ``[z, y, x]``): voxels whose peak relative
    enhancement reaches :data:`CANDIDATE_ENHANCEMENT`, isolated single voxels (noise) left
    out, grown by :data:`CANDIDATE_MARGIN_MM` (a box, per axis in voxels of ``spacing_zyx_mm``).

    The coarse stage of the coarse-to-fine design: tiles without a candidate are skipped;
    the probability is not cut to the region.
    """
    enhancing = peak_enhancement >= CANDIDATE_ENHANCEMENT
    enhancing &= ndimage.convolve(enhancing.astype(np.uint8), np.ones((3, 3, 3), np.uint8), mode="constant") >= 3
    size = [2 * int(np.ceil(CANDIDATE_MARGIN_MM / s)) + 1 for s in spacing_zyx_mm]
    return ndimage.maximum_filter(enhancing, size=size)


def kinetic_channels(study: DCEStudy, names=KINETIC_CHANNELS, box=None) -> np.ndarray:
    """The named kinetic channels ``[C, z, y, x]`` (float32) of ``study`` on its grid, over ``box``
    (slices z, y, x) only when given; the levels always come from the whole study."""
    box = box or tuple(slice(None) for _ in range(3))
    unknown = [n for n in names if n not in KINETIC_CHANNELS]
    if unknown:
        raise InputError(f"unknown kinetic channel(s) {', '.join(unknown)}; known: {', '.join(KINETIC_CHANNELS)}",
                         study.source)
    times = injection_times_s(study.require_times("the kinetic maps (enhancement on a time axis)"))
    background, reference = enhancement_levels(study)
    pre = study.pre_contrast[box] - np.float32(background)
    denominator = np.maximum(pre, np.float32(0.5 * reference))
    enhancement = [np.zeros_like(pre)]
    for phase in study.post_contrast:
        enhancement.append(relative_enhancement(phase[box], pre, background, denominator))
    # enhancement is 0 at injection (or just before a first post-contrast phase acquired earlier)
    curve_times = np.concatenate([[min(0.0, times[1] - 1.0)], times[1:]])
    out = np.empty((len(names),) + pre.shape, dtype=np.float32)
    for index, name in enumerate(names):
        if name == "pre_relative":
            out[index] = np.clip(pre / np.float32(reference), 0.0, 4.0)
        elif name == "enhancement_peak":
            out[index] = np.max(enhancement[1:], axis=0)
        elif name == "late_coverage":
            out[index] = float(np.clip((times[-1] - times[1]) / LATE_WINDOW_S, 0.0, 1.0))
        else:
            out[index] = _sample_curve(enhancement, curve_times, float(name[len("enhancement_"):-1]))
    return out


def enhancement_levels(study: DCEStudy) -> tuple[float, float]:
    """(background, reference level) of ``study`` in its scanner's units (module docstring)."""
    background = background_level(study.pre_contrast)
    return background, reference_level(study.pre_contrast, background, study.source)


def relative_enhancement(phase: np.ndarray, shifted_pre: np.ndarray, background: float,
                         denominator: np.ndarray) -> np.ndarray:
    """``E = (S - background - S0) / max(S0, R / 2)`` (float32, clipped), with ``shifted_pre`` = S0
    and ``denominator`` = max(S0, R / 2) on the same voxels as ``phase``."""
    relative = (phase - np.float32(background) - shifted_pre) / denominator
    return np.clip(relative, *ENHANCEMENT_CLIP).astype(np.float32)


def peak_enhancement(study: DCEStudy, box=None) -> np.ndarray:
    """The ``enhancement_peak`` channel of :func:`kinetic_channels` (float32), over ``box``
    (slices z, y, x of the study's grid) only when given; the levels come from the whole study."""
    box = box or tuple(slice(None) for _ in range(3))
    background, reference = enhancement_levels(study)
    pre = study.pre_contrast[box] - np.float32(background)
    denominator = np.maximum(pre, np.float32(0.5 * reference))
    peak = relative_enhancement(study.post_contrast[0][box], pre, background, denominator)
    for phase in study.post_contrast[1:]:
        np.maximum(peak, relative_enhancement(phase[box], pre, background, denominator), out=peak)
    return peak


def _sample_curve(enhancement: list[np.ndarray], curve_times: np.ndarray, t: float) -> np.ndarray:
    """Enhancement at time ``t`` by linear interpolation between the measured phases."""
    if t >= curve_times[-1]:
        return enhancement[-1]
    after = int(np.searchsorted(curve_times, t, side="right"))
    before = after - 1
    w = np.float32((t - curve_times[before]) / (curve_times[after] - curve_times[before]))
    return (1 - w) * enhancement[before] + w * enhancement[after]
