"""Anatomy of the phantom: a prone patient's chest with two breasts, as smooth fields.

All positions and lengths are LPS millimetres (x: right->left, y: anterior->posterior,
z: inferior->superior). The body is the smooth union of a thorax (an elliptic cylinder
along z, covered by subcutaneous fat and skin) and two breasts (half-ellipsoids hanging
anteriorly from the chest wall, slightly conical, randomly deformed). Inside the thorax's
fascia lie, from outside inwards: pectoral muscle (thickest anteriorly), the rib layer
(ribs and intercostal muscle), then lung/mediastinum with the heart. Fibroglandular tissue
(FGT) fills the centre of each breast as thresholded, anisotropically filtered noise
(ducts radiate towards the nipple), at a BI-RADS-like density drawn per case.

The fields (signed distances in mm, textures without unit) are computed on a
:class:`~breasttumorseg.phantom.grid.CoarseGrid` and upsampled; see :data:`FIELD_NAMES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .grid import CoarseGrid, Frame

#: Coarse fields, in the order of the stacked array returned by :func:`coarse_fields`.
FIELD_NAMES = ("body_sdf", "fascia_sdf", "wall_depth", "fgt", "heart_sdf", "septum",
               "rib", "bias", "texture", "bpe", "fat_leak")
F = {name: i for i, name in enumerate(FIELD_NAMES)}

#: Nominal field of view (mm, LPS x y z) the anatomy is sized for, per layout.
NOMINAL_FOV = {"axial": (340.0, 260.0, 170.0), "sagittal": (175.0, 190.0, 190.0)}


@dataclass
class Breast:
    base: np.ndarray        # LPS mm, centre of the breast's base on the fascia
    axis: np.ndarray        # unit vector base -> nipple
    e1: np.ndarray          # unit vector across the breast (mostly x)
    e2: np.ndarray          # unit vector across the breast (mostly z)
    radius1: float          # mm along e1
    radius2: float          # mm along e2
    depth: float            # mm base -> nipple
    taper: float            # 0 (round) .. 0.35 (conical)
    side: str               # "right" or "left"

    @property
    def nipple(self) -> np.ndarray:
        return self.base + self.axis * self.depth


@dataclass
class Patient:
    """Per-case anatomical parameters (mm, LPS)."""

    scale: np.ndarray               # anatomy scale per LPS axis (1 = nominal adult)
    x_mid: float                    # midline x
    thorax_centre_y: float          # centre of the thorax ellipse (y)
    thorax_a: float                 # fascia half-width (x)
    thorax_b: float                 # fascia half-depth (y)
    subcutaneous_fat: float         # mm between skin and fascia over the thorax
    skin: float                     # skin thickness (mm)
    muscle: float                   # pectoral muscle thickness anteriorly (mm)
    rib_layer: float                # rib layer thickness (mm)
    rib_period: float               # mm between ribs along z
    rib_slope: float                # dz/dx of the ribs
    breasts: list[Breast]
    heart_centre: np.ndarray
    heart_radii: np.ndarray
    heart_rotation: np.ndarray      # 3x3, columns = heart axes in LPS
    heart_wall: float               # myocardium thickness (mm)
    density: float                  # fraction of the breast that is FGT (BI-RADS a..d)
    density_category: str
    bpe_level: str                  # minimal / mild / moderate / marked
    deform: list = field(default_factory=list)

    @property
    def scale_iso(self) -> float:
        return float(np.prod(self.scale) ** (1 / 3))


def sample_patient(rng: np.random.Generator, layout: str, fov_lo: np.ndarray, fov_hi: np.ndarray,
                   side: str | None = None) -> Patient:
    """Draw a patient that fits the field of view ``[fov_lo, fov_hi]`` (LPS mm, voxel centres)."""
    fov = fov_hi - fov_lo
    centre = (fov_lo + fov_hi) / 2
    scale = np.clip(fov / np.array(NOMINAL_FOV[layout]), 0.15, 1.15)
    sx, sy, sz = scale
    s_min = float(scale.min())
    a_t = rng.uniform(135, 160) * sx
    b_t = rng.uniform(95, 120) * sy
    offset = rng.uniform(62, 82) * sx
    offset = min(offset, 0.62 * a_t)
    radius1 = rng.uniform(55, 80) * sx
    radius1 = min(radius1, offset * 0.98)
    radius2 = rng.uniform(55, 80) * sz
    depth = rng.uniform(50, 130) * sy
    gap = rng.uniform(6, 22) * sy
    taper = rng.uniform(0.0, 0.35)
    if layout == "axial":
        x_mid = centre[0] + rng.normal(0, 4) * sx
    else:
        side = side or ("left" if rng.random() < 0.5 else "right")
        sign = 1.0 if side == "left" else -1.0
        x_mid = centre[0] - sign * offset + rng.normal(0, 4) * sx
    z_breast = centre[2] + rng.uniform(-0.06, 0.06) * fov[2]
    y_fascia_at_breast = b_t * np.sqrt(max(1 - (offset / a_t) ** 2, 0.05))
    thorax_centre_y = fov_lo[1] + gap + depth + y_fascia_at_breast
    breasts = []
    for sign, name in ((-1.0, "right"), (1.0, "left")):
        jitter = rng.uniform(0.92, 1.08, size=4)
        u = x_mid + sign * offset * jitter[0]
        du = (u - x_mid) / a_t
        y_base = thorax_centre_y - b_t * np.sqrt(max(1 - du ** 2, 0.05))
        base = np.array([u, y_base, z_breast + rng.normal(0, 3) * sz])
        tilt_x = np.deg2rad(rng.uniform(-4, 12)) * sign  # slightly lateral
        tilt_z = np.deg2rad(rng.uniform(-10, 4))          # slightly inferior
        axis = np.array([np.sin(tilt_x), -np.cos(tilt_x) * np.cos(tilt_z), np.sin(tilt_z)])
        axis /= np.linalg.norm(axis)
        e1 = np.cross(axis, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(e1, axis)
        breasts.append(Breast(base, axis, e1, e2, radius1 * jitter[1], radius2 * jitter[2],
                              depth * jitter[3], taper, name))
    muscle = rng.uniform(6, 15) * sy
    rib_layer = rng.uniform(10, 16) * sy
    heart_radii = np.array([rng.uniform(55, 70) * sx, rng.uniform(42, 55) * sy, rng.uniform(50, 62) * sz])
    heart_y = thorax_centre_y - b_t + muscle + rib_layer + heart_radii[1] * rng.uniform(0.7, 0.9)
    heart_centre = np.array([x_mid + rng.uniform(10, 30) * sx, heart_y,
                             z_breast - rng.uniform(20, 55) * sz])
    angle = np.deg2rad(rng.uniform(20, 45))
    tilt = np.deg2rad(rng.uniform(-15, 15))
    rz = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    categories = (("a", 0.05, 0.2), ("b", 0.2, 0.42), ("c", 0.42, 0.65), ("d", 0.65, 0.85))
    cat = categories[int(rng.choice(4, p=[0.12, 0.4, 0.36, 0.12]))]
    return Patient(
        scale=scale, x_mid=float(x_mid), thorax_centre_y=float(thorax_centre_y), thorax_a=float(a_t),
        thorax_b=float(b_t), subcutaneous_fat=float(rng.uniform(4, 14) * s_min ** 0.5),
        skin=float(rng.uniform(1.3, 2.3) * max(s_min, 0.5)), muscle=float(muscle),
        rib_layer=float(rib_layer), rib_period=float(rng.uniform(20, 28) * sz),
        rib_slope=float(rng.uniform(0.15, 0.4)), breasts=breasts, heart_centre=heart_centre,
        heart_radii=heart_radii, heart_rotation=rz @ rx, heart_wall=float(rng.uniform(7, 11) * s_min ** 0.5),
        density=float(rng.uniform(cat[1], cat[2])), density_category=cat[0],
        bpe_level=str(rng.choice(["minimal", "mild", "moderate", "marked"], p=[0.35, 0.35, 0.2, 0.1])))


# ----------------------------------------------------------------------------- helpers
def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (union of two signed distances, blended over ``k`` mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def fourier_noise(rng: np.random.Generator, frame: Frame, vectors, wavelength_mm: tuple[float, float],
                  n_terms: int = 10, anisotropy=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Smooth random field (zero mean, unit variance) from random plane waves, on a grid.

    ``vectors`` are the per-array-axis LPS coordinates; ``anisotropy`` stretches the
    wavelengths per LPS axis (x, y, z).
    """
    total = None
    for _ in range(n_terms):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength_mm) * direction / np.asarray(anisotropy, dtype=float)
        phase = rng.uniform(0, 2 * np.pi)
        parts = [np.exp(1j * (k[frame.axes[a].lps] * np.asarray(vectors[a]) + (phase if a == 0 else 0.0)))
                 .astype(np.complex64) for a in range(3)]
        term = (parts[0][:, None, None] * parts[1][None, :, None]) * parts[2][None, None, :]
        total = term.real if total is None else total + term.real
    return (total * np.float32(np.sqrt(2.0 / n_terms))).astype(np.float32)


def _normalized(values: np.ndarray) -> np.ndarray:
    values = values - values.mean()
    return values / max(float(values.std()), 1e-6)


def gradient_normalized(field_: np.ndarray, spacing) -> np.ndarray:
    """field / |grad field|: a signed-distance approximation (mm) near the zero level."""
    grads = np.gradient(field_, *spacing)
    norm = np.sqrt(sum(g * g for g in grads))
    return field_ / np.maximum(norm, 0.3)


# ----------------------------------------------------------------------------- fields
def breast_implicit(breast: Breast, X, Y, Z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signed value ~mm, normalised radial coordinate, normalised depth) of one breast."""
    px, py, pz = X - breast.base[0], Y - breast.base[1], Z - breast.base[2]
    along = px * breast.axis[0] + py * breast.axis[1] + pz * breast.axis[2]
    r1 = px * breast.e1[0] + py * breast.e1[1] + pz * breast.e1[2]
    r2 = px * breast.e2[0] + py * breast.e2[1] + pz * breast.e2[2]
    t = np.clip(along / breast.depth, 0, 1)
    profile = 1 - breast.taper * t * t
    rho2 = (r1 / (breast.radius1 * profile)) ** 2 + (r2 / (breast.radius2 * profile)) ** 2
    back = 18.0 * breast.depth / 80.0
    q = rho2 + np.where(along > 0, along / breast.depth, along / back) ** 2
    size = min(breast.radius1, breast.radius2, breast.depth)
    return (np.sqrt(q) - 1) * (0.6 * size), np.sqrt(rho2), along / breast.depth


def coarse_fields(rng: np.random.Generator, patient: Patient, coarse: CoarseGrid) -> np.ndarray:
    """All smooth fields of the anatomy on the coarse grid: ``[len(FIELD_NAMES), c0, c1, c2]``."""
    frame = coarse.frame
    X, Y, Z = coarse.lps()
    shape = coarse.shape
    spacing = coarse.spacing
    s = patient.scale
    out = np.zeros((len(FIELD_NAMES),) + shape, dtype=np.float32)

    # thorax: fascia ellipse and body surface ellipse (closed-form distance approximation)
    du = X - patient.x_mid
    dv = Y - patient.thorax_centre_y
    taper_z = 1 + 0.04 * (Z - patient.breasts[0].base[2]) / (100 * s[2])

    def ellipse_sdf(a, b):
        a = a * taper_z
        f = (du / a) ** 2 + (dv / b) ** 2 - 1
        g = 2 * np.sqrt((du / a ** 2) ** 2 + (dv / b ** 2) ** 2)
        return f / np.maximum(g, 1e-3)

    fascia = np.broadcast_to(ellipse_sdf(patient.thorax_a, patient.thorax_b), shape)
    body = ellipse_sdf(patient.thorax_a + patient.subcutaneous_fat, patient.thorax_b + patient.subcutaneous_fat)

    # breasts, randomly deformed, joined to the thorax with a smooth union
    envelope = np.zeros(shape, dtype=np.float32)
    wobble = fourier_noise(rng, frame, coarse.coords, (60 * patient.scale_iso, 160 * patient.scale_iso), 8)
    for breast in patient.breasts:
        value, rho, depth = breast_implicit(breast, X, Y, Z)
        value = value + wobble * (3.5 * patient.scale_iso)
        body = smooth_min(body, value, 14.0 * patient.scale_iso)
        nipple = breast.nipple + breast.axis * 1.5
        sphere = np.sqrt((X - nipple[0]) ** 2 + (Y - nipple[1]) ** 2 + (Z - nipple[2]) ** 2) - 4.5 * patient.scale_iso
        body = smooth_min(body, sphere, 3.0 * patient.scale_iso)
        central = np.clip(1 - rho ** 2, 0, 1) * np.clip(1.2 - 0.4 * depth, 0, 1)
        envelope = np.maximum(envelope, central.astype(np.float32))
    body_sdf = gradient_normalized(np.broadcast_to(body, shape).astype(np.float32), spacing)
    out[F["body_sdf"]] = body_sdf
    out[F["fascia_sdf"]] = fascia

    # chest wall layers: pectoral muscle thickest anteriorly, then the rib layer
    anterior = np.clip(-dv / patient.thorax_b, 0, 1)
    muscle = patient.muscle * (0.35 + 0.65 * anterior)
    out[F["wall_depth"]] = -fascia - muscle
    phase = (Z + patient.rib_slope * np.abs(du)) / patient.rib_period
    out[F["rib"]] = np.broadcast_to(np.cos(2 * np.pi * phase), shape)

    # fibroglandular tissue: central envelope x anisotropic noise, thresholded at the density
    skin_depth = -body_sdf
    subcutaneous = rng.uniform(3, 10) * patient.scale_iso
    retro = rng.uniform(2, 8) * patient.scale_iso
    envelope *= np.clip((skin_depth - subcutaneous) / (6 * patient.scale_iso), 0, 1)
    envelope *= np.clip((fascia - retro) / (5 * patient.scale_iso), 0, 1)
    white = rng.standard_normal(shape, dtype=np.float32)
    coarse_noise = _normalized(ndimage.gaussian_filter(white, coarse.sigma_voxels((3.0, 7.0, 3.0)), mode="wrap"))
    fine_noise = _normalized(ndimage.gaussian_filter(white, coarse.sigma_voxels((1.4, 2.5, 1.4)), mode="wrap"))
    score = envelope * (1.0 + 0.55 * coarse_noise + 0.35 * fine_noise)
    region = (body_sdf < -patient.skin) & (fascia > 0) & (Y < patient.thorax_centre_y)
    if region.any():
        threshold = float(np.quantile(score[region], 1 - patient.density))
    else:
        threshold = 0.5
    out[F["fgt"]] = score - max(threshold, 0.08)

    # heart: rotated ellipsoid, with an interventricular septum plane
    rot = patient.heart_rotation
    px, py, pz = X - patient.heart_centre[0], Y - patient.heart_centre[1], Z - patient.heart_centre[2]
    local = [px * rot[0, i] + py * rot[1, i] + pz * rot[2, i] for i in range(3)]
    r = patient.heart_radii
    k0 = np.sqrt(sum((local[i] / r[i]) ** 2 for i in range(3)))
    k1 = np.sqrt(sum((local[i] / r[i] ** 2) ** 2 for i in range(3)))
    out[F["heart_sdf"]] = k0 * (k0 - 1) / np.maximum(k1, 1e-6)
    out[F["septum"]] = np.broadcast_to(local[0] + 0.15 * local[1], shape)

    # smooth multiplicative bias field (coil sensitivity: brighter near the breast coil)
    bias = fourier_noise(rng, frame, coarse.coords, (250, 600), 6) * rng.uniform(0.05, 0.14)
    coil = np.clip((patient.thorax_centre_y - patient.thorax_b - Y) / (80 * s[1]), -1.5, 1.0)
    out[F["bias"]] = np.exp(bias + rng.uniform(0.0, 0.15) * coil)
    out[F["texture"]] = _normalized(ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32),
                                                            coarse.sigma_voxels(2.0), mode="wrap"))
    out[F["bpe"]] = fourier_noise(rng, frame, coarse.coords, (25, 70), 12)
    out[F["fat_leak"]] = np.exp(0.35 * fourier_noise(rng, frame, coarse.coords, (120, 300), 6)
                                + 0.5 * np.clip(np.abs(du) / patient.thorax_a - 0.5, 0, 1))
    return out
