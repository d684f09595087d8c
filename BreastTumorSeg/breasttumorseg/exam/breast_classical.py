"""A whole-breast mask without a model: the body in front of the chest wall (prone patient).

Nothing here depends on the scanner's units, an intensity offset, fat suppression or the
number of phases, so it holds where a breast-mask network trained on one look fails:

1. **Body**: the minimum over phases (fat, suppressed or not, is brighter than air in every
   phase; ghosts of enhancing structures along the phase-encoding axis, which fill the air in
   front of the breasts, are absent from the pre-contrast) above the air level plus 6 x the
   air's spread, both measured on the darkest 15 % of the field of view (air in every breast
   protocol); specks removed, the largest
   components kept, holes filled (in 3D and slice by slice).
2. **Anterior body surface**: for every column along the anterior-posterior axis, the depth
   (mm) of the first body voxel seen from the front: a height map over the left-right and
   head-foot axes.
3. **Chest surface**: an elliptic cylinder along head-foot, the thorax of a prone patient,
   fitted to that height map as its posterior envelope: the fit is repeated on the columns
   no more than 3 mm in front of the previous fit, so the breasts (which hang in front of
   the thorax) drop out and the columns between, beside, above and below them remain. In a
   unilateral (sagittal) study the midline starts at the field of view's medial edge.
4. **Chest wall**: the chest surface moved back by the subcutaneous fat's thickness,
   measured as the median depth (3-25 mm under the skin, on the columns of the chest
   surface) of the strongest intensity edge of the mean image, fat-to-muscle whether fat
   is dark or bright.
5. **Breasts**: body voxels in front of the chest wall and in front of the thorax's centre
   (the anterior half of the body), as the phantom's reference mask is defined.

Arrays are ``[z, y, x]`` on the study's grid; the patient axes are found from the grid's
direction (LPS; the array axis closest to each patient axis), lengths are mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, optimize

from ..core.morphology import fill_enclosed, large_components
from .dce_exam import DCEStudy

#: the ``breast_mask`` a tumor model's card names to use this mask as its spatial prior
CLASSICAL_BREAST_MASK = "classical"
#: fraction of the darkest voxels taken as air when measuring its level and spread
AIR_FRACTION = 0.15
#: the body starts this many air spreads (robust standard deviations) above the air level
BODY_SPREAD_FACTOR = 6.0
#: columns more than this far (mm) in front of the chest fit are breast, not chest
ENVELOPE_TOLERANCE_MM = 3.0
#: search band (mm under the skin) of the subcutaneous fat's posterior edge
FAT_SEARCH_MM = (3.0, 25.0)


def classical_breast_mask(study: DCEStudy, block_mm: float | None = None) -> np.ndarray:
    """Bool ``[z, y, x]`` on ``study.geometry``: both breasts (or the one imaged), skin
    included, in front of the chest wall. Empty when no body is found.

    ``block_mm``: found on blocks of about that size, each voxel taking its block's answer
    (see :func:`classical_breast_blocks`). None: every voxel."""
    blocks, factors = classical_breast_blocks(study, block_mm)
    return block_expand(blocks, factors, study.geometry.shape_zyx)


def classical_breast_blocks(study: DCEStudy, block_mm: float | None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The breast mask on blocks of whole voxels about ``block_mm`` (mm) per axis (averaged
    phases), and the block's voxels along (z, y, x). A spatial prior grown by 10 mm needs no
    finer outline: about 16 x fewer voxels on a 0.75 mm grid. None: blocks of one voxel."""
    factors = block_factors(study.geometry.spacing, block_mm)
    minimum = block_mean(study.phases.min(axis=0), factors)
    body = body_mask(minimum)
    if not body.any():
        return body, factors
    mean = block_mean(study.phases.mean(axis=0, dtype=np.float32), factors)
    order, flips, spacing = patient_axes(study)
    spacing = tuple(s * factors[axis] for s, axis in zip(spacing, order))
    # canonical frame: axes (S-I, A-P, L-R), A-P index increasing posteriorly
    body_c = _to_canonical(body, order, flips)
    mean_c = _to_canonical(mean, order, flips)
    mask_c = _breasts_canonical(body_c, mean_c, spacing)
    return _from_canonical(mask_c, order, flips), factors


def block_factors(spacing_xyz_mm, block_mm: float | None) -> tuple[int, int, int]:
    """Whole voxels per block along (z, y, x): about ``block_mm`` mm, at least 1."""
    if block_mm is None:
        return (1, 1, 1)
    return tuple(max(1, int(block_mm // float(s))) for s in reversed(tuple(spacing_xyz_mm)))


def block_mean(image: np.ndarray, factors) -> np.ndarray:
    """``image`` averaged over blocks of ``factors`` voxels (the remainder at the far ends dropped)."""
    if tuple(factors) == (1, 1, 1):
        return image
    fz, fy, fx = factors
    nz, ny, nx = (max(1, n // f) for n, f in zip(image.shape, factors))
    crop = image[: nz * fz, : ny * fy, : nx * fx].astype(np.float32, copy=False)
    return crop.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))


def block_expand(mask: np.ndarray, factors, shape) -> np.ndarray:
    """A block mask back on the full grid ``shape``: each voxel takes its block's value, the
    dropped remainder its nearest block's."""
    if tuple(factors) == (1, 1, 1):
        return mask
    full = mask
    for axis, factor in enumerate(factors):
        full = np.repeat(full, factor, axis=axis)
    pad = [(0, max(0, n - m)) for n, m in zip(shape, full.shape)]
    return np.pad(full, pad, mode="edge")[: shape[0], : shape[1], : shape[2]]


def body_mask(image: np.ndarray) -> np.ndarray:
    """Inside of the body (bool) from a minimum-over-phases image: see the module's step 1."""
    values = image.ravel()
    sample = values[:: max(1, values.size // 2_000_000)]
    dark = np.sort(sample)[: max(10, int(AIR_FRACTION * sample.size))]
    level = float(np.median(dark))
    spread = 1.4826 * float(np.median(np.abs(dark - level)))
    if spread <= 0:
        spread = float(dark.std()) or 1e-6
    mask = image > level + BODY_SPREAD_FACTOR * spread
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = fill_enclosed(large_components(mask, 0.05))
    for axis in range(3):  # holes open to the field of view's border in 3D are closed in-plane
        mask = fill_enclosed(mask, within_planes_of=axis)
    return mask


def patient_axes(study: DCEStudy) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[float, float, float]]:
    """The array axes closest to the patient's (S-I, A-P, L-R) axes, whether each must be
    flipped for its index to run as LPS z, y, x (inferior->superior, anterior->posterior,
    right->left), and the spacing (mm) along each."""
    matrix = np.asarray(study.geometry.direction_matrix)  # rows L, P, S; columns i, j, k
    spacing_ijk = study.geometry.spacing
    order, flips, spacing = [], [], []
    for lps in (2, 1, 0):
        column = int(np.argmax(np.abs(matrix[lps])))
        array_axis = 2 - column
        if array_axis in order:
            raise ValueError("the grid's axes are not close to the patient's axes")
        order.append(array_axis)
        flips.append(bool(matrix[lps, column] < 0))
        spacing.append(float(spacing_ijk[column]))
    return tuple(order), tuple(flips), tuple(spacing)


def _to_canonical(array: np.ndarray, order, flips) -> np.ndarray:
    out = np.transpose(array, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


def _from_canonical(array: np.ndarray, order, flips) -> np.ndarray:
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
    return np.ascontiguousarray(np.transpose(array, np.argsort(order)))


def _breasts_canonical(body: np.ndarray, mean: np.ndarray, spacing) -> np.ndarray:
    """Steps 2-5 in the canonical frame (S-I, A-P posterior-ward, L-R left-ward)."""
    _, ny, nx = body.shape
    _, sy, sx = spacing
    present = body.any(axis=1)                                   # [z, x]
    depth = np.argmax(body, axis=1).astype(float) * sy            # mm from the front, [z, x]
    x_mm = np.arange(nx) * sx
    columns = np.argwhere(present)
    xs, ys = x_mm[columns[:, 1]], depth[present]
    fit = _fit_chest_surface(xs, ys, body, sx, sy)
    if fit is None:
        return np.zeros(body.shape, dtype=bool)
    xc, yc, a, b = fit
    surface = _ellipse_front(x_mm, xc, yc, a, b)                 # [x]
    on_chest = present & (np.abs(depth - surface[None, :]) <= ENVELOPE_TOLERANCE_MM)
    fat = _subcutaneous_fat_mm(mean, depth, on_chest, sy)
    wall = _ellipse_front(x_mm, xc, yc, max(a - fat, 1.0), max(b - fat, 1.0))
    y_mm = np.arange(ny) * sy
    in_front = (y_mm[None, :, None] < wall[None, None, :]) & (y_mm[None, :, None] < yc)
    return body & in_front


def _ellipse_front(x, xc, yc, a, b) -> np.ndarray:
    """Depth (mm) of the front of an ellipse at ``x``; ``yc`` (its centre) where it has no front."""
    u = np.clip((np.asarray(x, dtype=float) - xc) / a, -1.0, 1.0)
    front = yc - b * np.sqrt(1.0 - u * u)
    return np.where(np.abs((np.asarray(x, dtype=float) - xc) / a) < 1.0, front, np.inf)


def _fit_chest_surface(xs, ys, body, sx, sy):
    """(xc, yc, a, b) mm of the chest's elliptic cylinder: the posterior envelope of the
    front surface (see the module's step 3); None with too few columns."""
    if len(xs) < 20:
        return None
    nx = body.shape[2]
    width = nx * sx
    # medial edge of a unilateral field of view: the x border the body touches along most of its depth
    touch_low, touch_high = body[:, :, 0].sum(), body[:, :, -1].sum()
    span = float(xs.max() - xs.min())
    if width < 260.0 and max(touch_low, touch_high) > 0.2 * body.shape[0] * body.shape[1] * 0.3:
        xc0 = 0.0 if touch_low > touch_high else width
        a0 = max(span, 60.0)
    else:
        xc0 = float(np.median(xs))
        a0 = max(span / 2, 60.0)
    b0 = 0.75 * a0
    middle = np.abs(xs - xc0) < 0.3 * a0
    y0 = float(np.percentile(ys[middle] if middle.sum() > 5 else ys, 90))
    params = np.array([xc0, y0 + b0, a0, b0])
    keep = np.ones(len(xs), dtype=bool)
    for _ in range(12):
        def residuals(p, x=xs[keep], y=ys[keep]):
            u = np.clip((x - p[0]) / p[2], -0.999, 0.999)
            return y - (p[1] - p[3] * np.sqrt(1.0 - u * u))

        result = optimize.least_squares(residuals, params, loss="soft_l1", f_scale=5.0,
                                        bounds=([-np.inf, -np.inf, 20.0, 20.0], [np.inf, np.inf, 1000.0, 1000.0]))
        params = result.x
        front = _ellipse_front(xs, *params)
        updated = np.isfinite(front) & (ys >= front - ENVELOPE_TOLERANCE_MM)
        if updated.sum() < 20 or np.array_equal(updated, keep):
            break
        keep = updated
    return tuple(float(v) for v in params)


def _subcutaneous_fat_mm(mean, depth, on_chest, sy) -> float:
    """Median depth (mm) under the skin of the strongest edge of ``mean`` on the chest columns."""
    lo, hi = (round(v / sy) for v in FAT_SEARCH_MM)
    zs, xs = np.nonzero(on_chest)
    if len(zs) == 0 or hi <= lo + 1:
        return 8.0
    pick = np.linspace(0, len(zs) - 1, min(len(zs), 4000)).astype(int)
    found = []
    for z, x in zip(zs[pick], xs[pick]):
        start = round(float(depth[z, x]) / sy)
        profile = mean[z, start:start + hi + 2, x].astype(float)
        if len(profile) < hi + 2:
            continue
        profile = ndimage.gaussian_filter1d(profile, 1.0)
        gradient = np.abs(np.diff(profile))[lo:hi]
        found.append((lo + int(np.argmax(gradient)) + 0.5) * sy)
    return float(np.median(found)) if found else 8.0


__all__ = ["CLASSICAL_BREAST_MASK", "body_mask", "classical_breast_mask", "patient_axes"]
