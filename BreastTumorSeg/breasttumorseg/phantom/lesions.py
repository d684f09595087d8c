"""Lesion shapes and tubes of the phantom, drawn at the output resolution in local boxes.

Malignant tumor shape sources (longest diameter ~5-60 mm): ``oval``, ``lobulated`` (smooth
union of lobes), ``irregular`` (noisy margins), ``spiculated`` (irregular core with thin
tapering spicules), and ``real``: one of three real I-SPY2 tumor masks (BreastDCEDL,
naomifridman/BreastDCEDL, CC BY 4.0, Copyright (c) 2025 Naomi Fridman; see
Resources/TumorShapes/README.md), randomly rotated, scaled and deformed. Every shape gets a
random rotation and a smooth random displacement field. Benign lesions: fibroadenoma (smooth
oval or gently lobulated), cyst (round, non-enhancing), intramammary lymph node (oval with
a fatty hilum). Vessels are tubes along polylines with tapering radii.

Lengths are mm; points LPS mm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core.resources import TUMOR_SHAPES_FOLDER
from .grid import Frame


TUMOR_SHAPE_KINDS = ("oval", "lobulated", "irregular", "spiculated", "real")
TUMOR_SHAPE_PROBABILITIES = (0.08, 0.2, 0.2, 0.25, 0.27)


@dataclass
class RealShape:
    """A real tumor mask (1 mm voxels) prepared for resampling."""

    name: str
    values: np.ndarray          # float32 [z, y, x], smoothed 0..1
    centre_index: np.ndarray    # (z, y, x) centre of mass, voxels
    spacing_zyx: np.ndarray     # mm
    longest_mm: float           # approximate longest diameter
    volume_ml: float


@lru_cache(maxsize=1)
def load_real_shapes() -> tuple[RealShape, ...]:
    """The real tumor masks in :data:`TUMOR_SHAPES_FOLDER` (read once)."""
    shapes = []
    for path in sorted(TUMOR_SHAPES_FOLDER.glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        mask = sitk.GetArrayFromImage(image) > 0
        spacing = np.array(image.GetSpacing()[::-1], dtype=float)
        points = np.argwhere(mask) * spacing
        centre = points.mean(axis=0)
        # longest extent along the principal axes (close to the longest diameter)
        _, _, vt = np.linalg.svd(points[:: max(1, len(points) // 4000)] - centre, full_matrices=False)
        projection = (points - centre) @ vt.T
        longest = float((projection.max(axis=0) - projection.min(axis=0)).max())
        values = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)
        shapes.append(RealShape(path.name.replace(".nii.gz", ""), values, centre / spacing, spacing,
                                longest, float(mask.sum() * np.prod(spacing) / 1000.0)))
    return tuple(shapes)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3x3 rotation matrix (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _plane_waves(rng, n, wavelength, amplitude):
    waves = []
    for _ in range(n):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * np.pi / rng.uniform(*wavelength) * direction
        vector = rng.normal(size=3)
        vector *= amplitude / max(np.linalg.norm(vector), 1e-6)
        waves.append((k, vector, rng.uniform(0, 2 * np.pi)))
    return waves


def _ellipsoid(q, radii):
    k0 = np.sqrt(sum((q[i] / radii[i]) ** 2 for i in range(3)))
    k1 = np.sqrt(sum((q[i] / radii[i] ** 2) ** 2 for i in range(3)))
    return k0 * (k0 - 1) / np.maximum(k1, 1e-6)


def _smin(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _segment_distance(q, a, b):
    ab = b - a
    length2 = float(ab @ ab)
    t = ((q[0] - a[0]) * ab[0] + (q[1] - a[1]) * ab[1] + (q[2] - a[2]) * ab[2]) / max(length2, 1e-9)
    t = np.clip(t, 0, 1)
    d = np.sqrt(sum((q[i] - a[i] - t * ab[i]) ** 2 for i in range(3)))
    return d, t


@dataclass
class ShapeSpec:
    """A lesion shape in its own frame: evaluate(q) < 0 inside (q: local mm, 3 arrays)."""

    kind: str
    diameter_mm: float
    extent_mm: float                     # half-size of the box that holds it
    rotation: np.ndarray
    warp: list = field(default_factory=list)
    params: dict = field(default_factory=dict)

    def evaluate(self, q):
        for k, vector, phase in self.warp:
            s = np.sin(k[0] * q[0] + k[1] * q[1] + k[2] * q[2] + phase)
            q = [q[i] + vector[i] * s for i in range(3)]
        p = self.params
        if self.kind in ("oval", "cyst", "fibroadenoma", "lymph_node"):
            value = _ellipsoid(q, p["radii"])
            for centre, radius in p.get("lobes", []):
                value = _smin(value, np.sqrt(sum((q[i] - centre[i]) ** 2 for i in range(3))) - radius,
                              p.get("blend", 3.0))
            return value
        if self.kind == "lobulated":
            value = _ellipsoid(q, p["radii"])
            for centre, radius in p["lobes"]:
                value = _smin(value, np.sqrt(sum((q[i] - centre[i]) ** 2 for i in range(3))) - radius, p["blend"])
            return value
        if self.kind in ("irregular", "spiculated"):
            value = _ellipsoid(q, p["radii"])
            for k, amp, phase in p["ripples"]:
                value = value + amp * np.sin(k[0] * q[0] + k[1] * q[1] + k[2] * q[2] + phase)
            for a, b, r0, r1 in p.get("spicules", []):
                d, t = _segment_distance(q, a, b)
                value = np.minimum(value, d - (r0 + (r1 - r0) * t))
            return value
        if self.kind == "real":
            shape: RealShape = p["shape"]
            scale = p["scale"]
            index = [q[i] / scale / shape.spacing_zyx[2 - i] for i in range(3)]  # local x,y,z -> mask voxels
            coords = np.array([np.broadcast_to(index[2 - a] + shape.centre_index[a], np.broadcast(*q).shape)
                               for a in range(3)])
            inside = ndimage.map_coordinates(shape.values, coords.reshape(3, -1), order=1, cval=0.0)
            return (0.5 - inside.reshape(coords.shape[1:])) * (4.0 * scale)
        raise ValueError(self.kind)


def tumor_shape(rng: np.random.Generator, diameter_mm: float, kind: str | None = None) -> ShapeSpec:
    """A random malignant tumor shape of about ``diameter_mm`` longest diameter."""
    if kind is None:
        kind = str(rng.choice(TUMOR_SHAPE_KINDS, p=TUMOR_SHAPE_PROBABILITIES))
        if kind == "real" and diameter_mm < 18:  # the real shapes are large, elongated cancers
            kind = "irregular"
    radius = diameter_mm / 2
    rotation = random_rotation(rng)
    warp = _plane_waves(rng, 3, (1.2 * diameter_mm, 3 * diameter_mm + 10), 0.06 * diameter_mm)
    params: dict = {}
    extent = radius * 1.35 + 2
    if kind == "oval":
        params["radii"] = radius * np.array([1.0, rng.uniform(0.6, 0.95), rng.uniform(0.5, 0.9)])
        params["lobes"] = []
    elif kind == "lobulated":
        main = radius * 0.72
        params["radii"] = main * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.95)])
        lobes = []
        for _ in range(int(rng.integers(3, 8))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            lobe_radius = main * rng.uniform(0.3, 0.55)
            lobes.append((direction * (radius - lobe_radius) * rng.uniform(0.8, 1.0), lobe_radius))
        params["lobes"] = lobes
        params["blend"] = 0.15 * radius
    elif kind in ("irregular", "spiculated"):
        core = radius * (0.95 if kind == "irregular" else 0.62)
        params["radii"] = core * np.array([1.0, rng.uniform(0.65, 1.0), rng.uniform(0.55, 0.95)])
        ripples = []
        for _ in range(int(rng.integers(5, 10))):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            k = 2 * np.pi / rng.uniform(0.25, 0.7) / core * direction
            ripples.append((k, rng.uniform(0.04, 0.1) * core, rng.uniform(0, 2 * np.pi)))
        params["ripples"] = ripples
        if kind == "spiculated":
            spicules = []
            for _ in range(int(rng.integers(8, 22))):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                length = rng.uniform(0.5, 1.0) * (radius - core) + rng.uniform(2.0, 6.0)
                start = direction * core * 0.6
                end = direction * (core + length)
                spicules.append((start, end, rng.uniform(0.8, 1.6), rng.uniform(0.25, 0.5)))
            params["spicules"] = spicules
            extent = core * 1.1 + max(s[1] @ s[1] for s in spicules) ** 0.5 - core + 3
            extent = max(extent, radius * 1.35 + 3)
    elif kind == "real":
        shapes = load_real_shapes()
        shape = shapes[int(rng.integers(len(shapes)))]
        params["shape"] = shape
        params["scale"] = diameter_mm / shape.longest_mm
        extent = radius * 1.3 + 3
        warp = _plane_waves(rng, 3, (1.2 * diameter_mm, 3 * diameter_mm + 10), 0.04 * diameter_mm)
    else:
        raise ValueError(kind)
    return ShapeSpec(kind, diameter_mm, extent + 0.2 * diameter_mm, rotation, warp, params)


def benign_shape(rng: np.random.Generator, kind: str, diameter_mm: float) -> ShapeSpec:
    """A benign lesion shape: ``fibroadenoma``, ``cyst`` or ``lymph_node``."""
    radius = diameter_mm / 2
    rotation = random_rotation(rng)
    params: dict = {}
    warp = []
    if kind == "fibroadenoma":
        params["radii"] = radius * np.array([1.0, rng.uniform(0.55, 0.85), rng.uniform(0.5, 0.8)])
        lobes = []
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 3))):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                direction[0] *= 1.5
                direction /= np.linalg.norm(direction)
                lobe = radius * rng.uniform(0.45, 0.6)
                lobes.append((direction * params["radii"] * 0.6, lobe))
        params["lobes"] = lobes
        params["blend"] = 0.3 * radius
        warp = _plane_waves(rng, 2, (2 * diameter_mm, 4 * diameter_mm), 0.03 * diameter_mm)
    elif kind == "cyst":
        params["radii"] = radius * np.array([1.0, rng.uniform(0.8, 1.0), rng.uniform(0.75, 1.0)])
    elif kind == "lymph_node":
        params["radii"] = radius * np.array([1.0, rng.uniform(0.5, 0.7), rng.uniform(0.45, 0.65)])
        params["hilum"] = (np.array([radius * 0.55, 0.0, 0.0]), radius * 0.4)
    else:
        raise ValueError(kind)
    return ShapeSpec(kind, diameter_mm, radius * 1.3 + 3, rotation, warp, params)


def rasterize(frame: Frame, shape: ShapeSpec, centre_lps):
    """(box, inside mask, local coordinates) of ``shape`` placed at ``centre_lps``; None if off-grid."""
    box = frame.box_around(centre_lps, shape.extent_mm)
    if box is None:
        return None
    X, Y, Z = frame.lps_box(box)
    p = (X - np.float32(centre_lps[0]), Y - np.float32(centre_lps[1]), Z - np.float32(centre_lps[2]))
    full = np.broadcast(*p).shape
    p = [np.broadcast_to(c, full) for c in p]
    r = shape.rotation
    q = [p[0] * r[0, i] + p[1] * r[1, i] + p[2] * r[2, i] for i in range(3)]
    value = shape.evaluate(q)
    inside = value < 0
    if shape.kind == "lymph_node":
        centre, radius = shape.params["hilum"]
        hilum = np.sqrt(sum((q[i] - centre[i]) ** 2 for i in range(3))) < radius
        return box, inside, hilum & inside
    return box, inside, None


def paint_tube(frame: Frame, overlay: np.ndarray, points: np.ndarray, radii: np.ndarray, code: int) -> int:
    """Paint a tube along the polyline ``points`` (n, 3) with radii (n,) into ``overlay``; voxels painted."""
    painted = 0
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        r0, r1 = float(radii[i]), float(radii[i + 1])
        centre = (a + b) / 2
        half = np.abs(b - a) / 2 + max(r0, r1) + 0.5
        box = frame.box_around(centre, half)
        if box is None:
            continue
        X, Y, Z = frame.lps_box(box)
        d, t = _segment_distance((X, Y, Z), a.astype(np.float32), b.astype(np.float32))
        inside = d <= r0 + (r1 - r0) * t
        if inside.any():
            region = overlay[box]
            region[inside] = code
            painted += int(inside.sum())
    return painted
