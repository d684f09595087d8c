"""Contrast kinetics of the phantom: population AIF, extended Tofts model, SPGR signal.

Time is in seconds (s) from the injection unless a name says otherwise; rate constants
(Ktrans, kep) are per minute (1/min) as in the pharmacokinetic literature; concentrations
in mmol/L (mM); T1 in ms; relaxivity r1 in 1/(mM s).

* Arterial input function: the population-averaged AIF of Parker et al., "Experimentally-
  derived functional form for a population-averaged high-temporal-resolution arterial input
  function for dynamic contrast-enhanced MRI", Magn Reson Med 2006;56:993-1000
  (doi:10.1002/mrm.21066): whole-blood concentration as two Gaussians plus an exponential
  modulated by a sigmoid, for a standard 0.1 mmol/kg dose. Plasma concentration
  Cp = Cb / (1 - Hct), Hct = 0.42.
* Tissue concentration: the extended Tofts model, Tofts et al., "Estimating kinetic
  parameters from dynamic contrast-enhanced T1-weighted MRI of a diffusable tracer:
  standardized quantities and symbols", J Magn Reson Imaging 1999;10:223-232:
  Ct(t) = vp Cp(t) + Ktrans * integral_0^t Cp(tau) exp(-kep (t - tau)) dtau, kep = Ktrans / ve.
* Signal: the steady-state spoiled gradient-echo (SPGR) equation
  S = M0 sin(a) (1 - E1) / (1 - cos(a) E1), E1 = exp(-TR R1), R1 = 1/T10 + r1 Ct.
"""

from __future__ import annotations

import numpy as np

#: Haematocrit used to turn whole-blood into plasma concentration (Parker et al. 2006).
HAEMATOCRIT = 0.42

# Parker et al. 2006, Table 1 (population average); times in minutes, A in mM min, alpha in mM.
_PARKER = dict(A1=0.809, A2=0.330, T1=0.17046, T2=0.365, sigma1=0.0563, sigma2=0.132,
               alpha=1.050, beta=0.1685, s=38.078, tau=0.483)

#: The kep grid (1/min) of the precomputed Tofts convolution table, log-spaced.
KEP_GRID = np.geomspace(0.01, 30.0, 160)


def parker_blood_concentration(t_s, *, delay_s: float = 0.0, dose_scale: float = 1.0,
                               tail_decay_per_min: float | None = None) -> np.ndarray:
    """Whole-blood Gd concentration (mM) of Parker et al.'s population AIF at times ``t_s`` (s).

    ``delay_s`` shifts the bolus (arrival later than Parker's own time origin); the curve
    is 0 before it. ``dose_scale`` scales the amplitude (1 = 0.1 mmol/kg).
    ``tail_decay_per_min`` replaces the decay rate beta of the late exponential (published
    value 0.1685 /min, the default); the phantom draws it per case to model inter-patient
    differences of the late plasma clearance over 5-15 min breast protocols (with the
    published beta almost every tissue washes out by 10 min, which breast DCE-MRI does not show).
    """
    p = dict(_PARKER)
    if tail_decay_per_min is not None:
        p["beta"] = float(tail_decay_per_min)
    t = (np.asarray(t_s, dtype=float) - delay_s) / 60.0  # minutes
    gauss = (p["A1"] / (p["sigma1"] * np.sqrt(2 * np.pi)) * np.exp(-(t - p["T1"]) ** 2 / (2 * p["sigma1"] ** 2))
             + p["A2"] / (p["sigma2"] * np.sqrt(2 * np.pi)) * np.exp(-(t - p["T2"]) ** 2 / (2 * p["sigma2"] ** 2)))
    with np.errstate(over="ignore"):
        tail = p["alpha"] * np.exp(-p["beta"] * t) / (1.0 + np.exp(-p["s"] * (t - p["tau"])))
    cb = dose_scale * (gauss + tail)
    return np.where(t >= 0, cb, 0.0)


def parker_plasma_concentration(t_s, *, delay_s: float = 0.0, dose_scale: float = 1.0,
                                tail_decay_per_min: float | None = None) -> np.ndarray:
    """Plasma concentration Cp = Cb / (1 - Hct) (mM) of the Parker AIF at ``t_s`` (s)."""
    return parker_blood_concentration(t_s, delay_s=delay_s, dose_scale=dose_scale,
                                      tail_decay_per_min=tail_decay_per_min) / (1.0 - HAEMATOCRIT)


class ToftsTable:
    """Extended Tofts model evaluated at a study's acquisition times, for any voxel.

    The convolution integral I(kep, t) = int_0^t Cp(tau) exp(-kep (t - tau)) dtau (mM min)
    is precomputed on :data:`KEP_GRID` at each acquisition time (numerically, 0.25 s steps),
    so a voxel's concentration at phase ``n`` is ``vp * cp[n] + Ktrans * I(kep, t_n)``
    with linear interpolation in log(kep).
    """

    def __init__(self, times_s, *, delay_s: float = 8.0, dose_scale: float = 1.0,
                 tail_decay_per_min: float | None = None, dt_s: float = 0.25):
        self.times_s = np.asarray(times_s, dtype=float)
        self.delay_s = float(delay_s)
        self.dose_scale = float(dose_scale)
        self.tail_decay_per_min = float(_PARKER["beta"] if tail_decay_per_min is None else tail_decay_per_min)
        t_end = float(self.times_s.max()) + dt_s
        grid = np.arange(0.0, t_end + dt_s, dt_s)
        cp = parker_plasma_concentration(grid, delay_s=delay_s, dose_scale=dose_scale,
                                         tail_decay_per_min=tail_decay_per_min)
        self.cp = np.interp(self.times_s, grid, cp).astype(np.float32)
        # trapezoid rule over tau <= t_n for every kep at once
        columns = []
        for t_n in self.times_s:
            upto = grid <= t_n + 1e-9
            tau, c = grid[upto], cp[upto]
            if len(tau) < 2:
                columns.append(np.zeros(len(KEP_GRID)))
                continue
            kernel = np.exp(-np.outer(KEP_GRID, (t_n - tau) / 60.0)) * c
            columns.append(np.trapezoid(kernel, tau / 60.0, axis=1) if hasattr(np, "trapezoid")
                           else np.trapz(kernel, tau / 60.0, axis=1))
        self.integral = np.stack(columns, axis=1).astype(np.float32)
        # integral[k, n]: kep index k, phase n

    def concentration(self, ktrans, kep, vp) -> np.ndarray:
        """Tissue concentration (mM) per phase, shape ``(n_phases,) + shape`` (float32).

        ``ktrans`` and ``kep`` in 1/min, ``vp`` a fraction; arrays broadcast together.
        """
        ktrans, kep, vp = (np.asarray(v, dtype=np.float32) for v in (ktrans, kep, vp))
        index, weight = kep_index(kep)
        out = []
        for n in range(len(self.times_s)):
            row = self.integral[:, n]
            value = row[index] * (1 - weight) + row[index + 1] * weight
            out.append(vp * self.cp[n] + ktrans * value)
        return np.stack(out)


def kep_index(kep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower grid index and linear weight of ``kep`` (1/min) on :data:`KEP_GRID` (log scale)."""
    log_lo, log_hi = np.log(KEP_GRID[0]), np.log(KEP_GRID[-1])
    position = (np.log(np.clip(kep, KEP_GRID[0], KEP_GRID[-1])) - log_lo) * ((len(KEP_GRID) - 1) / (log_hi - log_lo))
    position = position.astype(np.float32)
    index = np.minimum(position.astype(np.int32), len(KEP_GRID) - 2)
    return index, position - index


def spgr_signal(m0, r1_per_s, *, tr_ms: float, flip_deg: float) -> np.ndarray:
    """Spoiled gradient-echo signal for proton density ``m0`` and relaxation rate R1 (1/s)."""
    e1 = np.exp(np.float32(-tr_ms / 1000.0) * r1_per_s)
    alpha = np.deg2rad(flip_deg)
    return m0 * np.float32(np.sin(alpha)) * (1 - e1) / (1 - np.float32(np.cos(alpha)) * e1)
