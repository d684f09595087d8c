"""Domain randomisation of a phantom's appearance (SynthSeg's lesson, applied to DCE-MRI).

A model trained on one generator learns that generator. Before a training phantom is
turned into model inputs, :func:`randomize_appearance` draws, per case, what scanners and
patients vary far wider than any one protocol does: intensity units and offset, fat
suppression (on, off, failing in part of the field of view), a multiplicative bias field,
extra noise, ghosting along the phase-encoding axis, partial-volume blur, motion between
phases and the timing convention (pre-contrast at injection or before it, timing errors).
Anatomy, lesion types, background parenchymal enhancement and vessels are drawn by the
generator itself. The ground-truth masks are unchanged: every change is to the signal
(motion moves the post-contrast phases by at most 2 mm around the masks' grid, as in a
real study where the reference is drawn on one phase).

Deterministic for a given ``numpy.random.Generator`` state. Phases are ``[T, z, y, x]``
float32 in scanner units; times in seconds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from ..exam.dce_exam import DCEStudy

FAT_LABEL = 1   # public tissue label of fat (see TISSUE_LABELS)
FGT_LABEL = 2


def randomize_appearance(case, rng: np.random.Generator):
    """A copy of the :class:`~breasttumorseg.phantom.PhantomCase` ``case`` with its signal
    and times randomised; the record of what was drawn is added to ``info["appearance"]``."""
    study = case.study
    phases = study.phases.copy()
    labels = case.tissue_labels
    drawn: dict = {}
    tissue_level = fibroglandular_level(case)

    fat_mode = str(rng.choice(["suppressed", "off", "partial"], p=[0.5, 0.25, 0.25]))
    drawn["fat_suppression"] = fat_mode
    if fat_mode != "suppressed":
        fat = ndimage.gaussian_filter((labels == FAT_LABEL).astype(np.float32), 0.7)
        level = float(rng.uniform(0.8, 2.0)) * tissue_level
        if fat_mode == "partial":
            fat *= _smooth_field(rng, phases.shape[1:], low=0.0, high=1.0)
        phases += (level * fat)[None]
        drawn["fat_level"] = round(level / tissue_level, 2)

    if rng.random() < 0.7:
        strength = float(rng.uniform(0.1, 0.5))
        phases *= np.exp(strength * _smooth_field(rng, phases.shape[1:], low=-1.0, high=1.0))[None]
        drawn["bias_field"] = round(strength, 2)

    if rng.random() < 0.3:
        sigma = [float(rng.uniform(0.0, 1.0)) for _ in range(3)]
        for t in range(len(phases)):
            phases[t] = ndimage.gaussian_filter(phases[t], sigma)
        drawn["blur_voxels"] = [round(s, 2) for s in sigma]

    if rng.random() < 0.3:
        spacing_zyx = np.array(study.geometry.spacing[::-1])
        for t in range(1, len(phases)):
            shift_mm = rng.uniform(-2.0, 2.0, 3)
            phases[t] = ndimage.shift(phases[t], shift_mm / spacing_zyx, order=1, mode="nearest")
        drawn["motion_mm"] = 2.0

    if rng.random() < 0.2:
        axis = int(rng.choice([1, 2]))
        amplitude = float(rng.uniform(0.03, 0.15))
        for t in range(1, len(phases)):
            phases[t] += amplitude * np.roll(phases[t], phases.shape[axis + 1] // 2, axis=axis)
        drawn["ghosting"] = round(amplitude, 3)

    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.0, 0.08)) * tissue_level
        real = phases + rng.normal(0.0, sigma, phases.shape).astype(np.float32)
        imaginary = rng.normal(0.0, sigma, phases.shape).astype(np.float32)
        phases = np.sqrt(real * real + imaginary * imaginary)
        drawn["extra_noise"] = round(sigma / tissue_level, 3)

    scale = float(10.0 ** rng.uniform(-2.0, 2.0))
    offset = float(rng.uniform(0.0, 0.3)) * tissue_level * scale
    phases = (phases * np.float32(scale) + np.float32(offset)).astype(np.float32)
    drawn["scale"], drawn["offset"] = round(scale, 4), round(offset, 3)

    times = None if study.times_s is None else study.times_s.astype(float).copy()
    if times is not None:
        if rng.random() < 0.3:
            times[0] = -float(rng.uniform(10.0, 90.0))
        if rng.random() < 0.3 and len(times) > 2:
            jittered = times[1:] + rng.normal(0.0, 10.0, len(times) - 1)
            if np.all(np.diff(jittered) > 5.0) and jittered[0] > times[0]:
                times[1:] = jittered
        drawn["times_s"] = [round(float(t), 1) for t in times]

    new_study = DCEStudy(phases, study.geometry, times, list(study.phase_names), study.source)
    return replace(case, study=new_study, info=dict(case.info, appearance=drawn))


def fibroglandular_level(case) -> float:
    """The case's fibroglandular pre-contrast signal (median over its FGT voxels; the 90th
    percentile of the pre-contrast when it has none), in the scanner's units."""
    pre = case.study.phases[0]
    fgt = case.tissue_labels == FGT_LABEL
    return float(np.median(pre[fgt])) if fgt.any() else float(np.percentile(pre, 90))


def _smooth_field(rng: np.random.Generator, shape, low: float, high: float) -> np.ndarray:
    """A smooth random field on ``shape`` (float32), scaled to [low, high]: white noise on a
    4x4x4 grid, upsampled with cubic splines."""
    coarse = rng.normal(size=(4, 4, 4))
    field = ndimage.zoom(coarse, [n / 4 for n in shape], order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    if field.shape != tuple(shape):
        field = np.pad(field, [(0, n - f) for n, f in zip(shape, field.shape)], mode="edge")
    lo, hi = float(field.min()), float(field.max())
    field = (field - lo) / (hi - lo if hi > lo else 1.0)
    return (low + (high - low) * field).astype(np.float32)
