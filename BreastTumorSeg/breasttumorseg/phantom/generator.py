# Over 500 lines: one case is assembled in order from one random stream; its parts live in the sibling modules.
"""Assemble a synthetic breast DCE-MRI study: protocol, anatomy, lesions, kinetics, artifacts.

Signal model, per voxel: tissue parameters (proton density M0, native T1 T10, Ktrans, kep,
vp) from the tissue type, modulated by textures; concentration from the extended Tofts
model with the Parker population AIF (see :mod:`.kinetics`); signal from the spoiled
gradient-echo equation with a fat-suppressed effective M0 for fat. Then a smooth bias
field, a small rigid translation of each phase relative to the first post-contrast phase
(sub-voxel to ~1 voxel), and Rician noise (magnitude of complex Gaussian noise).

The masks live on the grid of the first post-contrast phase (phase 1), which does not move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.geometry import Geometry
from ..core.progress import report
from ..exam.curves import late_change_percent
from ..exam.dce_exam import DCEStudy
from . import anatomy
from .anatomy import F, Patient
from .case import PhantomCase
from .grid import CoarseGrid, Frame, shift_volume
from .kinetics import ToftsTable, spgr_signal
from .lesions import TUMOR_SHAPE_KINDS, benign_shape, paint_tube, rasterize, tumor_shape

# internal tissue codes (finer than the public labels)
AIR, FAT, FGT, SKIN, MUSCLE, RIB_LAYER, LUNG, MYOCARDIUM, BLOOD, VESSEL, BENIGN, TUMOR, BONE = range(13)
#: internal code -> public tissue label (0 air, 1 fat, 2 FGT, 3 skin, 4 muscle, 5 chest wall/thorax,
#: 6 heart, 7 vessel, 8 benign lesion, 9 tumor)
PUBLIC_LABEL = np.array([0, 1, 2, 3, 4, 5, 5, 6, 6, 7, 8, 9, 5], dtype=np.uint8)
TISSUE_LABELS = {0: "air", 1: "fat", 2: "fibroglandular", 3: "skin", 4: "muscle", 5: "chest wall/thorax",
                 6: "heart", 7: "vessel", 8: "benign lesion", 9: "tumor"}

# nominal tissue parameters: M0 (relative proton density after fat suppression), T10 (ms, 3 T),
# Ktrans (1/min), kep (1/min), vp. Fat T1 ~370 ms, FGT ~1450 ms (Rakow-Penner et al. 2006, 3 T).
_TISSUE = {
    AIR: (0.0, 1000, 0.0, 0.5, 0.0),
    FAT: (0.075, 370, 0.01, 0.4, 0.004),
    FGT: (0.9, 1450, 0.02, 0.25, 0.008),
    SKIN: (0.75, 1100, 0.06, 0.5, 0.03),
    MUSCLE: (0.72, 1420, 0.05, 0.45, 0.02),
    RIB_LAYER: (0.55, 1300, 0.06, 0.5, 0.03),
    LUNG: (0.06, 1300, 0.03, 0.5, 0.08),
    MYOCARDIUM: (0.8, 1470, 0.5, 1.2, 0.1),
    BLOOD: (0.95, 1930, 0.0, 0.5, 1 - 0.42),
    VESSEL: (0.95, 1930, 0.0, 0.5, 1 - 0.42),
    BENIGN: (0.9, 1600, 0.15, 0.3, 0.02),
    TUMOR: (0.95, 1650, 0.7, 2.0, 0.05),
    BONE: (0.22, 550, 0.04, 0.4, 0.02),
}

#: M0 of fat without fat suppression (its proton density is close to that of water-rich tissue)
FAT_M0_UNSUPPRESSED = 0.9
#: stream of the random numbers of a non-mass enhancement (kept apart from the case's own stream)
NON_MASS_STREAM = 4417

_BPE_KTRANS = {"minimal": 0.015, "mild": 0.04, "moderate": 0.09, "marked": 0.18}


@dataclass
class Protocol:
    geometry: Geometry
    layout: str
    times_s: np.ndarray
    tr_ms: float
    flip_deg: float
    r1: float                # 1/(mM s)
    snr: float               # FGT pre-contrast signal / noise sigma
    intensity_scale: float


# ----------------------------------------------------------------------------- protocol
def sample_geometry(rng: np.random.Generator, layout: str, size, spacing) -> Geometry:
    """Output grid: given or random protocol matrix/spacing; LPS origin and direction."""
    if layout == "axial":
        if spacing is None:
            inplane = rng.uniform(0.6, 0.9)
            spacing = (inplane, inplane, float(np.round(rng.uniform(1.0, 2.5), 1)))
        if size is None:
            n = int(rng.choice([320, 352, 384, 416, 448, 512]))
            fov_in = float(np.clip(n * spacing[0], 290, 390))
            n = int(round(fov_in / spacing[0] / 16) * 16)
            nz = int(np.clip(round(rng.uniform(150, 200) / spacing[2]), 40, 200))
            size = (n, n, nz)
        direction = np.eye(3)
    elif layout == "sagittal":
        if spacing is None:
            inplane = rng.uniform(0.55, 0.9)
            spacing = (inplane, inplane, float(np.round(rng.uniform(1.5, 3.0), 1)))
        if size is None:
            n = int(np.clip(round(rng.uniform(170, 210) / spacing[0] / 16) * 16, 192, 448))
            ns = int(np.clip(round(rng.uniform(150, 190) / spacing[2]), 40, 128))
            size = (n, n, ns)
        # i: anterior -> posterior, j: superior -> inferior, k: patient's left -> right
        direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    else:
        raise ValueError(f"layout must be 'axial' or 'sagittal', got {layout!r}")
    size = tuple(int(v) for v in size)
    spacing = tuple(float(v) for v in spacing)
    centre = np.array([rng.normal(0, 3), rng.normal(0, 3), rng.uniform(-40, 40)])
    half = direction @ ((np.array(size) - 1) / 2 * np.array(spacing))
    origin = centre - half
    return Geometry(size, spacing, tuple(origin), tuple(direction.ravel()))


def sample_times(rng: np.random.Generator, n_phases: int) -> np.ndarray:
    """Phase 0 at 0 s (pre-contrast, injection); first post 60-150 s; then one interval of 45-120 s."""
    first = rng.uniform(60, 150)
    interval = rng.uniform(45, 120)
    times = [0.0] + [first + k * interval for k in range(n_phases - 1)]
    return np.round(np.array(times), 1)


# ----------------------------------------------------------------------------- kinetics
def choose_kinetics(rng, table: ToftsTable, kind: str, ktrans_range, t10_ms, r1, tr_ms, flip, vp):
    """Ktrans and kep (1/min) whose curve at this protocol's times has type ``kind`` if possible.

    Scans kep over a grid, classifies each curve (early ~120 s vs last phase, +-10 %
    with a safety margin) and draws among those of the wanted type. Returns
    (ktrans, kep, achieved type, late change %).
    """
    ktrans = float(rng.uniform(*ktrans_range))
    keps = np.geomspace(0.03, 6.0, 60)
    ranges = {"washout": (0.6, 6.0), "plateau": (0.2, 1.5), "persistent": (0.03, 0.4)}
    n = len(table.times_s)
    if n < 3:
        lo, hi = ranges[kind]
        kep = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return ktrans, kep, "undetermined", float("nan")
    changes = []
    for kep in keps:
        conc = table.concentration(ktrans, kep, vp)
        signal = spgr_signal(1.0, 1000.0 / t10_ms + r1 * conc, tr_ms=tr_ms, flip_deg=flip)
        changes.append(late_change_percent(signal, table.times_s))
    changes = np.array(changes)
    wanted = {"washout": changes < -15, "plateau": np.abs(changes) < 5, "persistent": changes > 15}[kind]
    lo, hi = ranges[kind]
    wanted &= (keps >= lo * 0.5) & (keps <= hi * 2)
    if not wanted.any():
        score = {"washout": changes, "plateau": np.abs(changes), "persistent": -changes}[kind]
        index = int(np.argmin(score))
    else:
        index = int(rng.choice(np.flatnonzero(wanted)))
    kep = float(keps[index] * rng.uniform(0.97, 1.03))
    change = float(changes[index])
    achieved = "persistent" if change > 10 else ("washout" if change < -10 else "plateau")
    return ktrans, kep, achieved, change


# ----------------------------------------------------------------------------- lesions
@dataclass
class Lesion:
    code: int                 # value in the overlay
    tissue: int               # BENIGN or TUMOR
    box: tuple
    inside: np.ndarray        # bool, in box
    m0: np.ndarray
    r10: np.ndarray
    ktrans: np.ndarray
    kep: np.ndarray
    vp: np.ndarray
    exclude: np.ndarray | None = None   # voxels of the box that stay background (lymph node hilum)


def _candidates(coarse: CoarseGrid, fields: np.ndarray, patient: Patient, margin_mm: float,
                side: str | None, fov_lo, fov_hi, prefer_fgt: bool, rng) -> np.ndarray | None:
    """A random LPS point inside a breast, at least ``margin_mm`` from skin and fascia."""
    X, Y, Z = coarse.lps()
    body, fascia, fgt = fields[F["body_sdf"]], fields[F["fascia_sdf"]], fields[F["fgt"]]
    shape = body.shape
    X, Y, Z = (np.broadcast_to(v, shape) for v in (X, Y, Z))
    ok = (body < -max(margin_mm, 2.0)) & (fascia > max(0.5 * margin_mm, 2.0)) & (Y < patient.thorax_centre_y)
    inner = np.ones(shape, bool)
    for axis in range(3):
        value = (X, Y, Z)[axis]
        pad = min(margin_mm, 0.3 * (fov_hi[axis] - fov_lo[axis]))
        inner &= (value > fov_lo[axis] + pad) & (value < fov_hi[axis] - pad)
    ok &= inner
    if side is not None:
        ok &= (X > patient.x_mid) if side == "left" else (X < patient.x_mid)
    if prefer_fgt and (ok & (fgt > 0)).sum() > 10:
        ok &= fgt > -0.1
    index = np.flatnonzero(ok)
    if len(index) == 0:
        return None
    chosen = np.unravel_index(int(rng.choice(index)), shape)
    jitter = rng.uniform(-0.5, 0.5, 3) * np.array([coarse.spacing_along(a) for a in range(3)])
    return np.array([X[chosen], Y[chosen], Z[chosen]]) + jitter


def _lesion_params(frame, box, inside, tissue, m0, t10, ktrans, kep, vp, rng, heterogeneity=0.25,
                   rim=None, spacing=None):
    shape = inside.shape
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    noise /= max(float(noise.std()), 1e-6)
    k = ktrans * np.clip(1 + heterogeneity * noise, 0.3, 2.0)
    r10 = np.full(shape, 1000.0 / t10, np.float32)
    m0_map = np.full(shape, m0, np.float32) * (1 + 0.05 * noise)
    if rim is not None:
        thickness, core_factor = rim
        depth = ndimage.distance_transform_edt(inside, sampling=spacing)
        core = depth > thickness
        k = np.where(core, k * core_factor, k * 1.15)
        r10 = np.where(core, 1000.0 / (t10 * 1.3), r10)
    return (m0_map.astype(np.float32), r10.astype(np.float32), k.astype(np.float32),
            np.full(shape, kep, np.float32) * (1 + 0.05 * noise).astype(np.float32),
            np.full(shape, vp, np.float32))


# ----------------------------------------------------------------------------- main
def generate(seed: int, layout: str = "axial", n_phases: int | None = None, size=None, spacing=None,
             with_tumor: bool = True, progress=None, *, times_s=None, fat_suppressed: bool = True,
             bpe_level: str | None = None, tumor_diameter_mm: float | None = None, tumor_shape_kind: str | None = None,
             multifocal: bool | None = None, non_mass: bool = False, anatomy_fov_mm=None):
    """See :func:`breasttumorseg.phantom.generate_phantom`."""
    if layout not in ("axial", "sagittal"):
        raise ValueError(f"layout must be 'axial' or 'sagittal', got {layout!r}")
    if times_s is not None:
        times_s = np.asarray(times_s, dtype=float)
        if n_phases is not None and int(n_phases) != len(times_s):
            raise ValueError(f"n_phases {n_phases} does not match the {len(times_s)} times given")
        if len(times_s) < 2 or np.any(np.diff(times_s) <= 0) or np.any(times_s[1:] <= 0):
            raise ValueError(f"times_s must increase, with the post-contrast phases after the injection (0 s), "
                             f"got {list(times_s)}")
        n_phases = len(times_s)
    if bpe_level is not None and bpe_level not in _BPE_KTRANS:
        raise ValueError(f"bpe_level must be one of {', '.join(_BPE_KTRANS)}, got {bpe_level!r}")
    if tumor_shape_kind is not None and tumor_shape_kind not in TUMOR_SHAPE_KINDS:
        raise ValueError(f"tumor_shape_kind must be one of {', '.join(TUMOR_SHAPE_KINDS)}, got {tumor_shape_kind!r}")
    rng = np.random.default_rng(seed)
    if n_phases is None:
        n_phases = int(rng.integers(3, 9))
    if not 2 <= int(n_phases) <= 8:
        raise ValueError(f"n_phases must be between 2 and 8, got {n_phases}")
    n_phases = int(n_phases)
    report(progress, "phantom: anatomy", 0.0)
    geometry = sample_geometry(rng, layout, size, spacing)
    frame = Frame(geometry)
    fov_lo, fov_hi = frame.fov_bounds
    times = sample_times(rng, n_phases)
    if times_s is not None:
        times = np.round(times_s, 1)
    protocol = Protocol(geometry, layout, times, tr_ms=float(rng.uniform(3.5, 6.0)),
                        flip_deg=float(rng.uniform(10, 15)), r1=float(rng.uniform(3.5, 5.0)),
                        snr=float(rng.uniform(14, 35)), intensity_scale=float(rng.uniform(300, 1500)))
    anatomy_lo, anatomy_hi = fov_lo, fov_hi
    if anatomy_fov_mm is not None:  # the patient is sized for this field of view, level with the grid's front
        extent = np.asarray(anatomy_fov_mm, dtype=float)
        anatomy_lo = (fov_lo + fov_hi) / 2 - extent / 2
        anatomy_lo[1] = fov_lo[1]
        anatomy_hi = anatomy_lo + extent
    patient = anatomy.sample_patient(rng, layout, anatomy_lo, anatomy_hi)
    if bpe_level is not None:
        patient.bpe_level = bpe_level
    coarse = CoarseGrid(frame)
    fields = anatomy.coarse_fields(rng, patient, coarse)
    table = ToftsTable(times, delay_s=float(rng.uniform(5, 20)), dose_scale=float(rng.uniform(0.85, 1.15)),
                       tail_decay_per_min=float(np.exp(rng.uniform(np.log(0.03), np.log(0.12)))))
    report(progress, "phantom: lesions", 0.2)

    # per-case tissue parameters (jittered)
    params = np.array([_TISSUE[c] for c in range(13)], dtype=np.float64)
    params[1:, 0] *= rng.uniform(0.92, 1.08, 12)
    params[1:, 1] *= rng.uniform(0.93, 1.07, 12)
    if not fat_suppressed:
        params[FAT, 0] *= FAT_M0_UNSUPPRESSED / _TISSUE[FAT][0]
    bpe_ktrans = _BPE_KTRANS[patient.bpe_level] * rng.uniform(0.8, 1.2)
    params[FGT, 3] = float(rng.uniform(0.12, 0.35))
    m0_tab, r10_tab = params[:, 0].astype(np.float32), (1000.0 / params[:, 1]).astype(np.float32)
    kt_tab, kep_tab, vp_tab = (params[:, i].astype(np.float32) for i in (2, 3, 4))
    r10_tab[AIR] = 1.0

    overlay = np.zeros(frame.shape, np.uint8)
    s_iso = patient.scale_iso
    vessels = _paint_vessels(rng, frame, coarse, fields, patient, overlay)

    lesions: list[Lesion] = []
    spacing_zyx = tuple(ax.spacing for ax in frame.axes)
    min_diameter = 3.0 * max(min(spacing_zyx), 0.5)
    side = None if layout == "axial" else _imaged_side(patient, fov_lo, fov_hi)
    info_benign = []
    for _ in range(int(rng.choice([0, 1, 1, 2, 2, 3]))):
        kind = str(rng.choice(["fibroadenoma", "cyst", "lymph_node"], p=[0.6, 0.2, 0.2]))
        diameter = {"fibroadenoma": rng.uniform(6, 28), "cyst": rng.uniform(4, 16),
                    "lymph_node": rng.uniform(5, 11)}[kind] * s_iso
        diameter = max(diameter, min_diameter)
        centre = _candidates(coarse, fields, patient, diameter / 2 + 3, side, fov_lo, fov_hi,
                             kind == "fibroadenoma", rng)
        if centre is None:
            continue
        shape = benign_shape(rng, kind, diameter)
        drawn = rasterize(frame, shape, centre)
        if drawn is None or not drawn[1].any():
            continue
        box, inside, hilum = drawn
        if kind == "cyst":
            values = (0.95, 3000.0, 0.0, 0.3, 0.0)
            kin = "none"
        elif kind == "lymph_node":
            ktrans, kep, kin, _ = choose_kinetics(rng, table, "washout", (0.25, 0.5), 1500, protocol.r1,
                                                  protocol.tr_ms, protocol.flip_deg, 0.04)
            values = (0.9, 1500.0, ktrans, kep, 0.04)
        else:
            ktrans, kep, kin, _ = choose_kinetics(rng, table, "persistent", (0.08, 0.3), 1600, protocol.r1,
                                                  protocol.tr_ms, protocol.flip_deg, 0.02)
            values = (0.9, 1600.0, ktrans, kep, 0.02)
        maps = _lesion_params(frame, box, inside, BENIGN, *values, rng, heterogeneity=0.15)
        lesions.append(Lesion(2 + len(lesions), BENIGN, box, inside, *maps,
                              exclude=hilum if hilum is not None else None))
        info_benign.append({"kind": kind, "diameter_mm": round(float(diameter), 1), "kinetic_type": kin,
                            "centre_lps": [round(float(v), 1) for v in centre]})

    tumor_info = {}
    if with_tumor and non_mass:
        tumor_info = _add_non_mass_enhancement(np.random.default_rng([int(seed), NON_MASS_STREAM]), frame, coarse,
                                               fields, patient, protocol, table, lesions, side, fov_lo, fov_hi)
    elif with_tumor:
        tumor_info = _add_tumor(rng, frame, coarse, fields, patient, protocol, table, lesions, side,
                                fov_lo, fov_hi, min_diameter, diameter_mm=tumor_diameter_mm,
                                shape_kind=tumor_shape_kind, multifocal=multifocal)
    for lesion in lesions:
        region = overlay[lesion.box]
        paint = lesion.inside if lesion.exclude is None else lesion.inside & ~lesion.exclude
        region[paint] = lesion.code
    report(progress, "phantom: signal", 0.35)

    # ------------------------------------------------------------------ chunked synthesis
    T = n_phases
    nz, ny, nx = frame.shape
    phases = np.empty((T,) + frame.shape, np.float32)
    labels = np.empty(frame.shape, np.uint8)
    breast_mask = np.empty(frame.shape, np.uint8)
    body_mask = np.empty(frame.shape, np.uint8)
    rows_per_chunk = max(1, int(1_200_000 // (ny * nx)))
    fgt_pre = float(spgr_signal(m0_tab[FGT], r10_tab[FGT], tr_ms=protocol.tr_ms, flip_deg=protocol.flip_deg))
    scale = np.float32(protocol.intensity_scale / fgt_pre)
    skin = np.float32(patient.skin)
    by_code = {lesion.code: lesion for lesion in lesions}
    for r0 in range(0, nz, rows_per_chunk):
        r1 = min(nz, r0 + rows_per_chunk)
        rows = slice(r0, r1)
        f = coarse.upsample(fields, rows)
        X, Y, Z = frame.broadcast([frame.axes[0].coords[rows], frame.axes[1].coords, frame.axes[2].coords])
        body = f[F["body_sdf"]] < 0
        skin_layer = body & (f[F["body_sdf"]] > -skin)
        breast_region = body & (f[F["fascia_sdf"]] > 0)
        lab = np.zeros(f.shape[1:], np.uint8)
        lab[breast_region] = FAT
        lab[breast_region & (f[F["fgt"]] > 0)] = FGT
        thorax = body & ~breast_region
        wall = f[F["wall_depth"]]
        lab[thorax & (wall < 0)] = MUSCLE
        ribs = thorax & (wall >= 0) & (wall < patient.rib_layer)
        lab[ribs] = RIB_LAYER
        lab[ribs & (f[F["rib"]] > 0.55)] = BONE
        inner = thorax & (wall >= patient.rib_layer)
        lab[inner] = LUNG
        heart = inner & (f[F["heart_sdf"]] < 0)
        lab[heart] = MYOCARDIUM
        cavity = (f[F["heart_sdf"]] < -patient.heart_wall) & (np.abs(f[F["septum"]]) > 0.3 * patient.heart_wall)
        lab[heart & cavity] = BLOOD
        ov = overlay[rows]
        lab[(ov == 1) & body] = VESSEL
        lab[skin_layer] = SKIN
        bmask = breast_region & (Y < patient.thorax_centre_y)
        m0 = m0_tab[lab]
        r10 = r10_tab[lab]
        kt = kt_tab[lab]
        kep = kep_tab[lab]
        vp = vp_tab[lab]
        fgt_here = lab == FGT
        m0 = np.where(fgt_here, m0 * (1 + 0.1 * f[F["texture"]]), m0)
        r10 = np.where(fgt_here, r10 * (1 - 0.05 * f[F["texture"]]), r10)
        bpe = np.clip(0.45 + 0.45 * f[F["bpe"]], 0.05, 1.5) * np.float32(bpe_ktrans)
        kt = np.where(fgt_here, bpe, kt)
        if fat_suppressed:  # imperfect suppression, worse laterally
            m0 = np.where(lab == FAT, m0 * f[F["fat_leak"]], m0)
        # lesions (tumor and benign) inside the breast, not in the skin
        if len(lesions):
            inside_breast = bmask & ~skin_layer
            for code in np.unique(ov[ov >= 2]):
                lesion = by_code[int(code)]
                b0 = lesion.box[0]
                lo, hi = max(b0.start, r0), min(b0.stop, r1)
                local = slice(lo - b0.start, hi - b0.start)
                sub = (slice(lo - r0, hi - r0), lesion.box[1], lesion.box[2])
                where = (ov[sub] == code) & inside_breast[sub]
                lab[sub][where] = lesion.tissue
                for target, source in ((m0, lesion.m0), (r10, lesion.r10), (kt, lesion.ktrans),
                                       (kep, lesion.kep), (vp, lesion.vp)):
                    target[sub][where] = source[local][where]
        bias = f[F["bias"]] * scale
        m0 = m0 * bias
        conc = table.concentration(kt, kep, vp)
        for n in range(T):
            r1_map = r10 + np.float32(protocol.r1) * conc[n]
            phases[n, rows] = spgr_signal(m0, r1_map, tr_ms=protocol.tr_ms, flip_deg=protocol.flip_deg)
        labels[rows] = PUBLIC_LABEL[lab]
        breast_mask[rows] = bmask
        body_mask[rows] = body
        report(progress, "phantom: signal", 0.35 + 0.4 * r1 / nz)

    # ------------------------------------------------------------------ motion and noise
    sigma = np.float32(protocol.intensity_scale / protocol.snr)
    amplitude = rng.uniform(0.1, 1.0)
    shifts = []
    for n in range(T):
        if n == 1:
            shifts.append((0.0, 0.0, 0.0))
            continue
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        magnitude_mm = amplitude * rng.uniform(0.3, 1.0) * min(spacing_zyx[1], spacing_zyx[2])
        shifts.append(tuple(float(direction[a] * magnitude_mm / spacing_zyx[a]) for a in range(3)))
    n_voxels = phases[0].size
    extra = max(4096, n_voxels // 16)
    pool_re = rng.standard_normal(n_voxels + extra, dtype=np.float32)
    pool_im = rng.standard_normal(n_voxels + extra, dtype=np.float32)
    for n in range(T):
        if any(abs(s) > 1e-3 for s in shifts[n]):
            source = phases[n].copy()
            shift_volume(source, shifts[n], phases[n])
            del source
        o_re, o_im = (int(v) for v in rng.integers(0, extra, 2))
        flat = phases[n].reshape(-1)
        step = rows_per_chunk * ny * nx
        for start in range(0, n_voxels, step):
            stop = min(n_voxels, start + step)
            re = flat[start:stop] + sigma * pool_re[o_re + start:o_re + stop]
            im = sigma * pool_im[o_im + start:o_im + stop]
            flat[start:stop] = np.sqrt(re * re + im * im)
        report(progress, "phantom: noise", 0.75 + 0.25 * (n + 1) / T)
    del pool_re, pool_im

    tumor_mask = (labels == 9).astype(np.uint8)
    voxel_ml = geometry.voxel_volume_ml
    names = ["pre-contrast"] + [f"post-contrast {k} ({times[k]:g} s)" for k in range(1, T)]
    study = DCEStudy(phases, geometry, times, names, f"phantom seed {seed}")
    info = {
        "seed": int(seed), "layout": layout, "n_phases": T, "times_s": [float(t) for t in times],
        "size": list(geometry.size), "spacing_mm": list(geometry.spacing),
        "imaged_breast": "both" if layout == "axial" else side,
        "midline_x_mm": round(patient.x_mid, 1),
        "with_tumor": bool(with_tumor),
        "tumor_volume_ml": round(float(tumor_mask.sum() * voxel_ml), 4),
        "breast_volume_ml": round(float(breast_mask.sum() * voxel_ml), 2),
        "fgt_density_category": patient.density_category, "fgt_fraction_target": round(patient.density, 3),
        "bpe_level": patient.bpe_level, "fat_suppressed": bool(fat_suppressed),
        "anatomy_fov_mm": None if anatomy_fov_mm is None else [float(v) for v in anatomy_fov_mm],
        "benign_lesions": info_benign, "n_vessels": vessels,
        "protocol": {"tr_ms": round(protocol.tr_ms, 2), "flip_deg": round(protocol.flip_deg, 1),
                     "r1_per_mM_s": round(protocol.r1, 2), "snr_fgt_pre": round(protocol.snr, 1),
                     "aif": "Parker et al. 2006 population AIF (late decay beta per case)",
                     "aif_tail_decay_per_min": round(float(table_beta(table)), 4),
                     "aif_delay_s": round(table.delay_s, 1)},
        "motion_shift_voxels": [[round(s, 3) for s in shift] for shift in shifts],
        "tissue_labels": TISSUE_LABELS,
    }
    info.update(tumor_info)
    if with_tumor:
        info["n_foci_visible"] = int(ndimage.label(tumor_mask, structure=np.ones((3, 3, 3)))[1])
    report(progress, "phantom", 1.0)
    return PhantomCase(study, tumor_mask, breast_mask, body_mask, labels, info)


def table_beta(table: ToftsTable) -> float:
    return getattr(table, "tail_decay_per_min", float("nan"))


def _imaged_side(patient: Patient, fov_lo, fov_hi) -> str:
    centre_x = (fov_lo[0] + fov_hi[0]) / 2
    return "left" if centre_x > patient.x_mid else "right"


def _add_tumor(rng, frame, coarse, fields, patient, protocol, table, lesions, side, fov_lo, fov_hi,
               min_diameter, diameter_mm=None, shape_kind=None, multifocal=None) -> dict:
    """Place the malignant tumor (1 focus, or several when multifocal/multicentric).

    ``diameter_mm`` (the main focus's longest diameter), ``shape_kind`` (one of
    :data:`~.lesions.TUMOR_SHAPE_KINDS`) and ``multifocal`` replace what the case draws.
    """
    s_iso = patient.scale_iso
    if rng.random() < 0.2:
        diameter = rng.uniform(5, 12)
    else:
        diameter = float(np.exp(rng.uniform(np.log(12), np.log(55))))
    fov_limit = 0.45 * float(np.min(fov_hi - fov_lo))
    diameter = float(np.clip(diameter * s_iso, min_diameter, max(fov_limit, min_diameter)))
    if diameter_mm is not None:
        diameter = max(float(diameter_mm), min_diameter)
    kind = str(rng.choice(["washout", "plateau", "persistent"], p=[0.55, 0.3, 0.15]))
    ktrans_range = {"washout": (0.35, 1.4), "plateau": (0.25, 0.9), "persistent": (0.2, 0.5)}[kind]
    t10 = float(rng.uniform(1500, 1800))
    vp = float(rng.uniform(0.02, 0.1))
    ktrans, kep, achieved, change = choose_kinetics(rng, table, kind, ktrans_range, t10, protocol.r1,
                                                    protocol.tr_ms, protocol.flip_deg, vp)
    shape = tumor_shape(rng, diameter, shape_kind)
    tumor_side = side or ("left" if rng.random() < 0.5 else "right")
    centre = None
    margin = diameter / 2 + 2
    while centre is None and margin > 1:
        centre = _candidates(coarse, fields, patient, margin, tumor_side, fov_lo, fov_hi, True, rng)
        margin *= 0.6
    if centre is None:
        centre = _candidates(coarse, fields, patient, 0.5, None, fov_lo, fov_hi, False, rng)
    if centre is None:  # no breast in the field of view at all: centre of the field
        centre = (fov_lo + fov_hi) / 2
    spacing = tuple(ax.spacing for ax in frame.axes)
    rim = None
    if diameter > 12 * s_iso and rng.random() < 0.3:
        rim = (rng.uniform(1.5, 4.0) * max(s_iso, 0.4), rng.uniform(0.1, 0.4))
    foci = [(centre, shape)]
    drawn_multifocal = rng.random() < 0.18
    multifocal = drawn_multifocal if multifocal is None else bool(multifocal)
    if multifocal:
        for _ in range(int(rng.integers(1, 4))):
            satellite = max(min_diameter, rng.uniform(4, 14) * s_iso)
            for _attempt in range(20):
                offset = rng.normal(size=3)
                offset *= rng.uniform(diameter / 2 + satellite, diameter / 2 + 40 * s_iso) / np.linalg.norm(offset)
                point = centre + offset
                inside = coarse.sample(fields[F["body_sdf"]], point[None])[0] < -satellite / 2 - 1
                inside &= coarse.sample(fields[F["fascia_sdf"]], point[None])[0] > satellite / 2
                if inside:
                    foci.append((point, tumor_shape(rng, satellite, "irregular" if rng.random() < 0.6 else "oval")))
                    break
    for point, focus_shape in foci:
        drawn = rasterize(frame, focus_shape, point)
        if drawn is None or not drawn[1].any():
            continue
        box, inside, _ = drawn
        focus_rim = rim if focus_shape is shape else None
        maps = _lesion_params(frame, box, inside, TUMOR, rng.uniform(0.9, 1.0), t10, ktrans, kep, vp, rng,
                              heterogeneity=0.3, rim=focus_rim, spacing=spacing)
        lesions.append(Lesion(2 + len(lesions), TUMOR, box, inside, *maps))
    return {"tumor_type": "mass", "tumor_shape": shape.kind,
            "tumor_shape_source": (shape.params["shape"].name if shape.kind == "real" else "procedural"),
            "tumor_diameter_target_mm": round(diameter, 1),
            "tumor_centre_lps": [round(float(v), 1) for v in centre], "tumor_side": tumor_side,
            "kinetic_type": achieved, "kinetic_type_intended": kind,
            "late_change_percent_nominal": None if math.isnan(change) else round(change, 1),
            "tumor_ktrans_per_min": round(ktrans, 3), "tumor_kep_per_min": round(kep, 3),
            "tumor_ve": round(ktrans / kep, 3), "tumor_vp": round(vp, 3),
            "rim_enhancement": rim is not None, "n_foci": len(foci), "multifocal": bool(multifocal)}


def _add_non_mass_enhancement(rng, frame, coarse, fields, patient, protocol, table, lesions, side, fov_lo,
                              fov_hi) -> dict:
    """Place a segmental, clumped non-mass enhancement (NME) as the malignant lesion.

    A duct tree starts 5-20 mm behind the nipple and branches towards the chest wall inside a
    cone of half-angle 20-35 degrees (a segment: the territory of one duct system), 25-60 mm
    long. Along its branches lie clustered small foci (radius 1.5-3.5 mm, 1.5-3 mm apart, some
    gaps): clumped enhancement as in ductal carcinoma in situ. Every focus is tumor; the
    kinetics are malignant (plateau or washout, Ktrans 0.3-0.9 /min).
    """
    s_iso = patient.scale_iso
    tumor_side = side or ("left" if rng.random() < 0.5 else "right")
    breast = next(b for b in patient.breasts if b.side == tumor_side)
    direction = -breast.axis
    start = breast.nipple + direction * rng.uniform(5, 20) * s_iso
    length = float(min(rng.uniform(25, 60) * s_iso, 0.8 * breast.depth))
    half_angle = np.deg2rad(rng.uniform(20, 35))
    axis = direction + rng.normal(0, 0.15, 3)
    axis /= np.linalg.norm(axis)
    spacing = np.array([ax.spacing for ax in frame.axes])
    focus_min = 0.6 * float(spacing.max())
    step = 1.5 * s_iso
    foci: list[tuple[np.ndarray, float]] = []
    branches = [(start, axis, 0.0)]  # (point, heading, distance travelled from the start)
    while branches and len(foci) < 400:
        point, heading, travelled = branches.pop()
        gap = 0
        while travelled < length:
            heading = heading + rng.normal(0, 0.12, 3)
            heading /= np.linalg.norm(heading)
            cosine = float(heading @ axis)
            if cosine < np.cos(half_angle):  # turn back into the segment's cone
                heading = heading + (axis - heading) * 0.5
                heading /= np.linalg.norm(heading)
            point = point + heading * step
            travelled += step
            gap -= 1
            if gap <= 0:
                foci.append((point.copy(), max(float(rng.uniform(1.5, 3.5) * s_iso), focus_min)))
                gap = int(rng.integers(1, 3)) if rng.random() < 0.85 else int(rng.integers(3, 6))
            if rng.random() < 0.15 and len(branches) < 16:
                side_heading = heading + rng.normal(0, 0.6, 3)
                side_heading /= np.linalg.norm(side_heading)
                branches.append((point.copy(), side_heading, travelled))
    centres = np.array([c for c, _ in foci])
    radii = np.array([r for _, r in foci])
    inside_body = coarse.sample(fields[F["body_sdf"]], centres) < -1.0
    inside_body &= coarse.sample(fields[F["fascia_sdf"]], centres) > 1.0
    centres, radii = centres[inside_body], radii[inside_body]
    if len(centres) == 0:
        centres, radii = start[None], np.array([max(3.0 * s_iso, focus_min)])
    lo, hi = centres.min(axis=0) - radii.max(), centres.max(axis=0) + radii.max()
    box = frame.box_around((lo + hi) / 2, (hi - lo) / 2 + 1.0)
    kind = "washout" if rng.random() < 0.6 else "plateau"
    t10 = float(rng.uniform(1500, 1800))
    vp = float(rng.uniform(0.02, 0.08))
    ktrans, kep, achieved, change = choose_kinetics(rng, table, kind, (0.3, 0.9), t10, protocol.r1,
                                                    protocol.tr_ms, protocol.flip_deg, vp)
    info = {"tumor_type": "non-mass enhancement", "nme_distribution": "segmental", "nme_pattern": "clumped",
            "nme_length_mm": round(length, 1), "nme_foci": len(centres),
            "tumor_centre_lps": [round(float(v), 1) for v in centres.mean(axis=0)], "tumor_side": tumor_side,
            "kinetic_type": achieved, "kinetic_type_intended": kind,
            "late_change_percent_nominal": None if math.isnan(change) else round(change, 1),
            "tumor_ktrans_per_min": round(ktrans, 3), "tumor_kep_per_min": round(kep, 3),
            "tumor_ve": round(ktrans / kep, 3), "tumor_vp": round(vp, 3), "n_foci": 1, "multifocal": False}
    if box is None:
        return info
    X, Y, Z = frame.lps_box(box)
    inside = np.zeros(np.broadcast(X, Y, Z).shape, dtype=bool)
    for centre, radius in zip(centres, radii):
        inside |= (X - centre[0]) ** 2 + (Y - centre[1]) ** 2 + (Z - centre[2]) ** 2 <= radius * radius
    if inside.any():
        maps = _lesion_params(frame, box, inside, TUMOR, rng.uniform(0.9, 1.0), t10, ktrans, kep, vp, rng,
                              heterogeneity=0.3)
        lesions.append(Lesion(2 + len(lesions), TUMOR, box, inside, *maps))
    return info


def _paint_vessels(rng, frame, coarse, fields, patient: Patient, overlay) -> int:
    """Aorta, internal mammary arteries and tortuous breast vessels (overlay code 1)."""
    s = patient.scale
    s_iso = patient.scale_iso
    lo, hi = frame.fov_bounds
    z_lo, z_hi = lo[2] - 20, hi[2] + 20
    zs = np.linspace(z_lo, z_hi, max(2, int((z_hi - z_lo) / 15) + 1))
    count = 0
    # descending aorta (posterior, left of the spine)
    y_back = patient.thorax_centre_y + 0.55 * patient.thorax_b
    points = np.stack([np.full_like(zs, patient.x_mid + 22 * s[0]), np.full_like(zs, y_back), zs], axis=1)
    paint_tube(frame, overlay, points, np.full(len(zs), 11.5 * s_iso), 1)
    # ascending aorta above the heart
    top = patient.heart_centre[2] + patient.heart_radii[2] * 0.6
    za = np.linspace(top, z_hi, max(2, int((z_hi - top) / 15) + 1))
    if len(za) > 1 and z_hi > top:
        points = np.stack([np.full_like(za, patient.x_mid + 4 * s[0]),
                           np.full_like(za, patient.heart_centre[1] - 8 * s[1]), za], axis=1)
        paint_tube(frame, overlay, points, np.full(len(za), 13.0 * s_iso), 1)
    count += 2
    # internal mammary (thoracic) arteries behind the anterior chest wall
    for sign in (-1.0, 1.0):
        x = patient.x_mid + sign * 28 * s[0]
        du = (x - patient.x_mid) / patient.thorax_a
        y = (patient.thorax_centre_y - patient.thorax_b * np.sqrt(1 - du * du) + patient.muscle + patient.rib_layer
             + 3 * s[1])
        points = np.stack([np.full_like(zs, x) + rng.normal(0, 1, len(zs)), np.full_like(zs, y), zs], axis=1)
        paint_tube(frame, overlay, points, np.full(len(zs), rng.uniform(1.3, 2.0) * s_iso), 1)
        count += 1
    # tortuous breast vessels running from the chest wall towards the nipple
    for breast in patient.breasts:
        for _ in range(int(rng.integers(3, 8))):
            angle = rng.uniform(0, 2 * np.pi)
            radius = rng.uniform(0.55, 0.9)
            start = (breast.base + breast.e1 * np.cos(angle) * radius * breast.radius1
                     + breast.e2 * np.sin(angle) * radius * breast.radius2 + breast.axis * 8 * s_iso)
            target = breast.nipple - breast.axis * rng.uniform(5, 20) * s_iso
            step = 3.0 * s_iso
            direction = target - start
            direction /= np.linalg.norm(direction)
            pts = [start]
            heading = direction
            r0 = rng.uniform(0.8, 1.8) * max(s_iso, 0.5)
            for _k in range(int(rng.integers(12, 45))):
                to_target = target - pts[-1]
                distance = np.linalg.norm(to_target)
                if distance < 2 * step:
                    break
                heading = 0.75 * heading + 0.25 * to_target / distance + rng.normal(0, 0.25, 3)
                heading /= np.linalg.norm(heading)
                pts.append(pts[-1] + heading * step)
            pts = np.array(pts)
            if len(pts) < 3:
                continue
            inside = coarse.sample(fields[F["body_sdf"]], pts) < -1.5
            inside &= coarse.sample(fields[F["fascia_sdf"]], pts) > 1.0
            if inside.sum() < 3:
                continue
            pts = pts[inside]
            radii = np.linspace(r0, r0 * 0.5, len(pts))
            paint_tube(frame, overlay, pts, radii, 1)
            count += 1
    return count
