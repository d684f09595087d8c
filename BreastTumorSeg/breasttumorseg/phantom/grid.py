"""Voxel grids of the phantom: the output grid, a coarse grid for smooth fields, upsampling.

The phantom's anatomy is defined in patient coordinates (LPS mm). The output grid's
direction is a signed permutation (axial: identity; sagittal: rows anterior->posterior,
columns superior->inferior, slices right-ward), so every array axis runs along one LPS
axis and coordinates factor per axis. Smooth fields are computed on a coarse grid
covering the same field of view (about 2 mm voxels) and upsampled linearly, slab by slab,
with separable interpolation (cheap and low in memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.geometry import Geometry

#: Spacing (mm) of the coarse grid on which smooth anatomical fields are computed.
COARSE_SPACING_MM = 2.0


@dataclass
class AxisGrid:
    """One array axis: its LPS component, direction sign, and physical coordinates (mm)."""

    lps: int            # 0 = x (L), 1 = y (P), 2 = z (S)
    sign: float         # +1 or -1
    coords: np.ndarray  # (n,) float64, LPS coordinate of each voxel centre along ``lps``
    spacing: float


class Frame:
    """The output grid seen as three independent axes (array order ``[0, 1, 2]`` = z, y, x)."""

    def __init__(self, geometry: Geometry):
        self.geometry = geometry
        matrix = geometry.direction_matrix
        self.axes: list[AxisGrid] = []
        for a in range(3):
            c = 2 - a  # ITK index component of array axis a
            column = matrix[:, c]
            p = int(np.argmax(np.abs(column)))
            if abs(abs(column[p]) - 1.0) > 1e-6:
                raise ValueError("the phantom needs a grid whose axes are aligned with LPS")
            sign = float(np.sign(column[p]))
            n = geometry.size[c]
            coords = geometry.origin[p] + sign * np.arange(n) * geometry.spacing[c]
            self.axes.append(AxisGrid(p, sign, coords, geometry.spacing[c]))
        self.shape = geometry.shape_zyx

    def broadcast(self, vectors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS (X, Y, Z) arrays broadcastable to a grid, from one 1D vector per array axis."""
        out = [None, None, None]
        for a, vector in enumerate(vectors):
            shape = [1, 1, 1]
            shape[a] = len(vector)
            out[self.axes[a].lps] = np.asarray(vector, dtype=np.float32).reshape(shape)
        return tuple(out)

    def lps_box(self, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, Y, Z) broadcast arrays of the voxel centres in ``box`` (tuple of 3 slices)."""
        return self.broadcast([self.axes[a].coords[box[a]] for a in range(3)])

    def index_of(self, point_lps) -> np.ndarray:
        """Continuous array index (a0, a1, a2) of an LPS point."""
        point = np.asarray(point_lps, dtype=float)
        return np.array([(point[ax.lps] - ax.coords[0]) * ax.sign / ax.spacing for ax in self.axes])

    def box_around(self, centre_lps, half_mm) -> tuple[slice, slice, slice] | None:
        """Array slices of the voxels within ``half_mm`` (scalar or per LPS axis) of a point; None if outside."""
        half = np.broadcast_to(np.asarray(half_mm, dtype=float), (3,))
        index = self.index_of(centre_lps)
        box = []
        for a, ax in enumerate(self.axes):
            radius = half[ax.lps] / ax.spacing
            lo = max(0, int(math.floor(index[a] - radius)))
            hi = min(len(ax.coords), int(math.ceil(index[a] + radius)) + 1)
            if hi <= lo:
                return None
            box.append(slice(lo, hi))
        return tuple(box)

    @property
    def fov_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) LPS mm of the voxel centres, per LPS axis."""
        lo, hi = np.zeros(3), np.zeros(3)
        for ax in self.axes:
            lo[ax.lps], hi[ax.lps] = ax.coords.min(), ax.coords.max()
        return lo, hi


class CoarseGrid:
    """A grid with about :data:`COARSE_SPACING_MM` voxels over the same field of view as ``frame``.

    Voxel edges of both grids coincide at the borders of the field of view (as
    ``scipy.ndimage.zoom(..., grid_mode=True)``), so a coarse field upsampled with
    :meth:`upsample` lands exactly on the output grid.
    """

    def __init__(self, frame: Frame, spacing_mm: float = COARSE_SPACING_MM):
        self.frame = frame
        self.shape = []
        self.coords = []
        self.spacing = []
        self._weights = []
        for ax in frame.axes:
            n = len(ax.coords)
            extent = n * ax.spacing
            nc = max(2, min(n, int(math.ceil(extent / max(spacing_mm, ax.spacing)))))
            scale = n / nc  # fine voxels per coarse voxel
            centres = (np.arange(nc) + 0.5) * scale - 0.5  # continuous fine index of coarse centres
            self.shape.append(nc)
            self.coords.append(ax.coords[0] + ax.sign * centres * ax.spacing)
            self.spacing.append(scale * ax.spacing)
            position = np.clip((np.arange(n) + 0.5) / scale - 0.5, 0, nc - 1)
            lower = np.minimum(position.astype(np.int64), nc - 2)
            self._weights.append((lower, (position - lower).astype(np.float32)))
        self.shape = tuple(self.shape)

    def lps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(X, Y, Z) broadcast arrays of the coarse voxel centres (LPS mm)."""
        return self.frame.broadcast(self.coords)

    def spacing_along(self, lps_axis: int) -> float:
        """Coarse spacing (mm) of the array axis that runs along LPS component ``lps_axis``."""
        for a, ax in enumerate(self.frame.axes):
            if ax.lps == lps_axis:
                return self.spacing[a]
        raise ValueError(lps_axis)

    def sigma_voxels(self, sigma_lps_mm) -> tuple[float, float, float]:
        """Per-array-axis Gaussian sigma in coarse voxels from a sigma per LPS axis (mm)."""
        sigma = np.broadcast_to(np.asarray(sigma_lps_mm, dtype=float), (3,))
        return tuple(sigma[ax.lps] / self.spacing[a] for a, ax in enumerate(self.frame.axes))

    def upsample(self, fields: np.ndarray, rows: slice) -> np.ndarray:
        """Linear upsampling of coarse ``fields [F, c0, c1, c2]`` to fine rows ``rows`` of axis 0.

        Returns ``[F, len(rows), n1, n2]`` float32.
        """
        lower0, w0 = self._weights[0]
        lower0, w0 = lower0[rows], w0[rows]
        needed = np.unique(np.concatenate([lower0, lower0 + 1]))
        sub = fields[:, needed]
        position = np.searchsorted(needed, lower0)
        g = sub[:, position] * (1 - w0)[None, :, None, None] + sub[:, position + 1] * w0[None, :, None, None]
        # x first (the array is still coarse along y), then y: whole contiguous rows are gathered
        lower2, w2 = self._weights[2]
        g = g[..., lower2] * (1 - w2) + g[..., lower2 + 1] * w2
        lower1, w1 = self._weights[1]
        g = g[:, :, lower1] * (1 - w1)[None, None, :, None] + g[:, :, lower1 + 1] * w1[None, None, :, None]
        return g.astype(np.float32, copy=False)

    def sample(self, field: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
        """Linear interpolation of a coarse ``field`` at LPS points ``(n, 3)`` (clamped at the border)."""
        points = np.atleast_2d(np.asarray(points_lps, dtype=float))
        index = []
        for a, ax in enumerate(self.frame.axes):
            fine = (points[:, ax.lps] - ax.coords[0]) * ax.sign / ax.spacing
            n = len(ax.coords)
            index.append((fine + 0.5) * self.shape[a] / n - 0.5)
        return ndimage.map_coordinates(field, np.array(index), order=1, mode="nearest")


def _take_shifted(array: np.ndarray, offset: int, axis: int, out: np.ndarray) -> np.ndarray:
    """out[j] = array[clip(j + offset)] along ``axis`` (edge replication), by slicing."""
    n = array.shape[axis]

    def sl(a, b):
        index = [slice(None)] * array.ndim
        index[axis] = slice(a, b)
        return tuple(index)

    lo = min(max(-offset, 0), n)          # first j whose source is inside
    hi = max(min(n - offset, n), lo)      # one past the last such j
    if hi > lo:
        out[sl(lo, hi)] = array[sl(lo + offset, hi + offset)]
    if lo > 0:
        out[sl(0, lo)] = array[sl(0, 1)]
    if hi < n:
        out[sl(hi, n)] = array[sl(n - 1, n)]
    return out


def shift_volume(volume: np.ndarray, shift_voxels, out: np.ndarray) -> None:
    """Translate ``volume`` by a sub-voxel ``shift_voxels`` (array order) into ``out``.

    Separable linear interpolation with edge replication: the content moves by +shift.
    Works slice by slice along axis 0 to keep temporaries small.
    """
    s0, s1, s2 = (float(v) for v in shift_voxels)
    n0 = volume.shape[0]
    base0 = int(np.floor(-s0))
    f0 = np.float32(-s0 - base0)
    base1, base2 = int(np.floor(-s1)), int(np.floor(-s2))
    f1, f2 = np.float32(-s1 - base1), np.float32(-s2 - base2)
    a = np.empty(volume.shape[1:], np.float32)
    b = np.empty_like(a)
    for k in range(n0):
        plane = volume[min(max(k + base0, 0), n0 - 1)] * (1 - f0) + volume[min(max(k + base0 + 1, 0), n0 - 1)] * f0
        if abs(s1) > 1e-3:
            plane = _take_shifted(plane, base1, 0, a) * (1 - f1) + _take_shifted(plane, base1 + 1, 0, b) * f1
        if abs(s2) > 1e-3:
            plane = _take_shifted(plane, base2, 1, a) * (1 - f2) + _take_shifted(plane, base2 + 1, 1, b) * f2
        out[k] = plane
