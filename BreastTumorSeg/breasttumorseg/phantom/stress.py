"""The stress set: held-out phantoms that go past the training ranges, one axis at a time.

A model trained on randomised phantoms (:mod:`.randomize`, the protocols of
:func:`breasttumorseg.training.cases.case_protocol`) is judged here on cases it could not have
seen. Each stress case is a *base case* (an axial bilateral study, 5 phases with the
generator's regular timing, fat suppressed, a field of view of 300 x 300 x 150 mm,
1.25 mm in-plane, 2 mm slices: inside every training range) with exactly one thing
changed, named by its axis (:data:`STRESS_AXES`):

============================  =====================================================================
axis                          what changes (training range in brackets)
============================  =====================================================================
base                          nothing: the reference for the other axes
scale_x0.01                   signal x 0.01 plus an offset of 0.5 x the fibroglandular pre-contrast
                              level (scale 10^U(-2, 2), offset <= 0.3 x)
scale_x100                    signal x 100 plus the same relative offset
fat_suppression_off           fat imaged without suppression by the signal model (short T1, full
                              proton density) [an added blurred fat image of 0.8-2 x tissue]
pre_contrast_-60s             the pre-contrast acquired 60 s before the injection (times[0] = -60)
two_phases                    one pre- and one post-contrast phase
eight_irregular_phases        8 phases, intervals from 15 s (early, fast) to 240 s (late)
slices_3mm                    3 mm slices [1.5-3 mm]
marked_bpe                    marked background parenchymal enhancement
non_mass_enhancement          the cancer is a segmental, clumped non-mass enhancement [masses]
motion_3mm                    every phase but the first post-contrast moved 3 mm [<= 2 mm per axis]
tumor_under_0.5ml             a small cancer (7 mm longest diameter, no satellites), < 0.5 mL
tumor_over_30ml               a large oval or lobulated cancer (62 mm), > 30 mL
another_fov                   a tight 240 x 240 x 130 mm field of view on the same-sized patient
                              (lateral breast, posterior thorax and head-foot cut)
                              [300-360 mm in-plane, 150-190 mm head-foot]
============================  =====================================================================

Some of the issue's axes now lie inside or at the edge of the training: the randomisation
(:mod:`.randomize`) and protocols (:func:`~breasttumorseg.training.cases.case_protocol`) cover
a pre-contrast at -10..-90 s, 2-8 phases, slices up to 3 mm and motion up to 2 mm per axis
(3.5 mm in all), and the generator draws marked BPE and tumors of 7 mm and of 55 mm in the
tails of its distributions. They are kept as named so figures stay comparable between models.
Past the ranges: the offset, unsuppressed fat from the signal model, irregular timing
(training: one interval, jittered by 10 s), non-mass enhancement, a 62 mm solid cancer
with no satellites, and the tight field of view with the patient's size unchanged.

Seeds: :data:`STRESS_SEED_START` and up (training and validation draw below 100000, the
accuracy benchmark from 500000). Every axis uses the same seeds, and the generator draws
the anatomy before any option takes effect, so seed ``s`` is the same patient on every
axis (except where the axis changes the anatomy's grid; with 2 phases the tumor's
kinetics are drawn differently, so its shape can differ too). Signal transforms (scale,
motion, timing) draw from their own stream ``[seed, STRESS_STREAM, axis index]``.
Deterministic: the same axis and seed give the same case.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from scipy import ndimage

from ..exam.dce_exam import DCEStudy
from . import generate_phantom
from .case import PhantomCase
from .randomize import fibroglandular_level

#: first seed of the stress set; every stress seed lies in [STRESS_SEED_START, STRESS_SEED_STOP)
STRESS_SEED_START = 700000
STRESS_SEED_STOP = 800000
#: stream tag of the transforms' random numbers
STRESS_STREAM = 1313


@dataclass(frozen=True)
class StressBase:
    """The base case's protocol: field of view (x, y, z mm), spacing and phases."""

    fov_mm: tuple[float, float, float] = (300.0, 300.0, 150.0)
    inplane_mm: float = 1.25
    slice_mm: float = 2.0
    n_phases: int = 5

    def grid(self, fov_mm=None, slice_mm=None) -> dict:
        """``size`` and ``spacing`` keyword arguments of :func:`generate_phantom`."""
        fov = self.fov_mm if fov_mm is None else fov_mm
        through = self.slice_mm if slice_mm is None else slice_mm
        spacing = (self.inplane_mm, self.inplane_mm, through)
        return {"size": tuple(max(8, round(f / s)) for f, s in zip(fov, spacing)), "spacing": spacing}


@dataclass(frozen=True)
class StressAxis:
    """One axis: generator options from (base, transform rng), then a signal transform."""

    name: str
    description: str
    options: Callable[[StressBase, np.random.Generator], dict] = field(default=lambda base, rng: {})
    transform: Callable[[PhantomCase, np.random.Generator], tuple[PhantomCase, dict]] | None = None


def scaled_with_offset(factor: float, offset_fraction: float = 0.5):
    """Transform: signal x ``factor`` plus ``offset_fraction`` x the FGT pre-contrast level (after scaling)."""

    def transform(case: PhantomCase, rng: np.random.Generator):
        study = case.study
        level = fibroglandular_level(case)
        offset = offset_fraction * level * factor
        phases = (study.phases * np.float32(factor) + np.float32(offset)).astype(np.float32)
        return _with_study(case, study.with_phases(phases)), {"scale": factor, "offset": round(offset, 4)}

    return transform


def pre_contrast_at(time_s: float):
    """Transform: the pre-contrast's acquisition time set to ``time_s`` (s; before any
    contrast arrives its signal does not depend on when it was acquired)."""

    def transform(case: PhantomCase, rng: np.random.Generator):
        times = np.asarray(case.study.times_s, dtype=float).copy()
        times[0] = float(time_s)
        study = case.study
        return _with_study(case, DCEStudy(study.phases, study.geometry, times, list(study.phase_names),
                                          study.source)), {"times_s": [float(t) for t in times]}

    return transform


def moved(distance_mm: float):
    """Transform: every phase but the first post-contrast (the masks' grid) translated by
    ``distance_mm`` in its own random direction (linear interpolation, edges replicated)."""

    def transform(case: PhantomCase, rng: np.random.Generator):
        study = case.study
        spacing_zyx = np.array(study.geometry.spacing[::-1], dtype=float)
        phases = study.phases.copy()
        shifts = []
        for t in range(study.n_phases):
            if t == 1:
                shifts.append([0.0, 0.0, 0.0])
                continue
            direction = rng.normal(size=3)
            shift_mm = distance_mm * direction / np.linalg.norm(direction)
            phases[t] = ndimage.shift(study.phases[t], shift_mm / spacing_zyx, order=1, mode="nearest")
            shifts.append([round(float(v), 3) for v in shift_mm])
        return _with_study(case, study.with_phases(phases)), {"shift_mm_zyx": shifts}

    return transform


def irregular_times(rng: np.random.Generator) -> list[float]:
    """8 acquisition times (s): pre-contrast at 0, the first post at 30-60 s, three fast
    15-30 s intervals, two of 60-120 s and one of 150-240 s."""
    intervals = [rng.uniform(15, 30) for _ in range(3)] + [rng.uniform(60, 120) for _ in range(2)] + \
        [rng.uniform(150, 240)]
    times = [0.0, float(rng.uniform(30, 60))]
    for interval in intervals:
        times.append(times[-1] + float(interval))
    return [round(t, 1) for t in times]


#: The stress axes, in the order the benchmark reports them.
STRESS_AXES: tuple[StressAxis, ...] = (
    StressAxis("base", "the base case (inside every training range)"),
    StressAxis("scale_x0.01", "signal x0.01 plus an offset of 0.5 x the FGT level", transform=scaled_with_offset(0.01)),
    StressAxis("scale_x100", "signal x100 plus an offset of 0.5 x the FGT level", transform=scaled_with_offset(100.0)),
    StressAxis("fat_suppression_off", "fat imaged without suppression",
               options=lambda base, rng: {"fat_suppressed": False}),
    StressAxis("pre_contrast_-60s", "pre-contrast 60 s before the injection", transform=pre_contrast_at(-60.0)),
    StressAxis("two_phases", "2 phases (pre + one post)", options=lambda base, rng: {"n_phases": 2}),
    StressAxis("eight_irregular_phases", "8 phases at irregular intervals (15-240 s)",
               options=lambda base, rng: {"n_phases": None, "times_s": irregular_times(rng)}),
    StressAxis("slices_3mm", "3 mm slices", options=lambda base, rng: base.grid(slice_mm=3.0)),
    StressAxis("marked_bpe", "marked background parenchymal enhancement",
               options=lambda base, rng: {"bpe_level": "marked"}),
    StressAxis("non_mass_enhancement", "segmental clumped non-mass enhancement as the cancer",
               options=lambda base, rng: {"non_mass": True}),
    StressAxis("motion_3mm", "3 mm motion of every phase but the first post-contrast", transform=moved(3.0)),
    StressAxis("tumor_under_0.5ml", "7 mm cancer (< 0.5 mL), no satellites",
               options=lambda base, rng: {"tumor_diameter_mm": 7.0, "multifocal": False,
                                          "tumor_shape_kind": str(rng.choice(["oval", "irregular", "spiculated"]))}),
    StressAxis("tumor_over_30ml", "62 mm oval or lobulated cancer (> 30 mL), no satellites",
               options=lambda base, rng: {"tumor_diameter_mm": 62.0, "multifocal": False,
                                          "tumor_shape_kind": str(rng.choice(["oval", "lobulated"]))}),
    StressAxis("another_fov", "240 x 240 x 130 mm field of view, same-sized patient",
               options=lambda base, rng: dict(base.grid(fov_mm=(240.0, 240.0, 130.0)), anatomy_fov_mm=base.fov_mm)),
)
AXIS_NAMES = tuple(axis.name for axis in STRESS_AXES)


def stress_axis(name: str) -> StressAxis:
    """The axis called ``name`` (ValueError naming the known axes otherwise)."""
    for axis in STRESS_AXES:
        if axis.name == name:
            return axis
    raise ValueError(f"unknown stress axis {name!r}; known: {', '.join(AXIS_NAMES)}")


def stress_seeds(seeds_per_axis: int) -> list[int]:
    """The seeds of the stress set (the same on every axis)."""
    if not 1 <= int(seeds_per_axis) <= STRESS_SEED_STOP - STRESS_SEED_START:
        raise ValueError(f"seeds per axis must be 1..{STRESS_SEED_STOP - STRESS_SEED_START}, got {seeds_per_axis}")
    return list(range(STRESS_SEED_START, STRESS_SEED_START + int(seeds_per_axis)))


def stress_case(axis_name: str, seed: int, base: StressBase = StressBase(), progress=None) -> PhantomCase:
    """The stress case of ``axis_name`` for ``seed``; ``info["stress"]`` records what was applied."""
    if not STRESS_SEED_START <= int(seed) < STRESS_SEED_STOP:
        raise ValueError(f"stress seeds lie in {STRESS_SEED_START}..{STRESS_SEED_STOP - 1}, got {seed}")
    axis = stress_axis(axis_name)
    rng = np.random.default_rng([int(seed), STRESS_STREAM, AXIS_NAMES.index(axis.name)])
    options = dict(layout="axial", n_phases=base.n_phases, **base.grid())
    options.update(axis.options(base, rng))
    case = generate_phantom(int(seed), progress=progress, **options)
    applied = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    if axis.transform is not None:
        case, drawn = axis.transform(case, rng)
        applied.update(drawn)
    info = dict(case.info, stress={"axis": axis.name, "description": axis.description, "seed": int(seed),
                                   "applied": applied})
    return replace(case, info=info)


def _with_study(case: PhantomCase, study: DCEStudy) -> PhantomCase:
    return replace(case, study=study)


__all__ = ["AXIS_NAMES", "STRESS_AXES", "STRESS_SEED_START", "STRESS_SEED_STOP", "StressAxis", "StressBase",
           "irregular_times", "stress_axis", "stress_case", "stress_seeds"]
