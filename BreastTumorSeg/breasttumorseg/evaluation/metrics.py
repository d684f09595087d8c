"""Segmentation metrics in physical units (mm, mL), for a prediction against a reference.

Masks are ``[z, y, x]`` arrays (nonzero = tumor) on the same grid. Spacing is given in ITK
order ``(x, y, z)`` mm, like :attr:`Geometry.spacing`; anisotropic voxels are handled by
spacing-aware Euclidean distance transforms.

Conventions for empty masks (stated because every tool chooses differently):

* Dice: both empty -> 1.0 (perfect agreement on "no tumor"); exactly one empty -> 0.0.
* sensitivity = |P and R| / |R|: empty reference -> 1.0 if the prediction is also empty,
  else 0.0 (the false positives are counted as a failure rather than returned as NaN).
* precision = |P and R| / |P|: empty prediction -> 1.0 if the reference is also empty,
  else 0.0.
* HD95 and ASSD: both empty -> 0.0; exactly one empty -> ``inf``.

Surface and distance definitions:

* The surface of a mask is its voxels with at least one 6-neighbour outside the mask
  (voxels on the edge of the array count as surface). Distances are between voxel centres.
* ``surface_distances`` gives, for every surface voxel of one mask, the distance to the
  nearest surface voxel of the other, in both directions.
* HD95 is the 95th percentile of the *pooled* distances of both directions (as medpy's
  ``hd95``; MONAI's ``compute_hausdorff_distance(percentile=95)`` instead takes the larger
  of the two directed 95th percentiles).
* ASSD is the mean of the pooled distances of both directions, i.e. the sum of all
  distances over the number of surface voxels of both masks (Heimann et al. 2009;
  medpy's ``assd`` averages the two directed means instead, which differs when the
  surfaces have different sizes).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..core.geometry import Geometry
from ..segmentation.postprocess import bounding_box

_SIX = ndimage.generate_binary_structure(3, 1)


def _as_masks(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} are not on the same grid")
    return pred, ref


def dice(pred, ref) -> float:
    """Dice similarity 2|P and R| / (|P| + |R|); 1.0 when both are empty, 0.0 when one is."""
    pred, ref = _as_masks(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def sensitivity(pred, ref) -> float:
    """|P and R| / |R| (recall); empty reference -> 1.0 if the prediction is empty too, else 0.0."""
    pred, ref = _as_masks(pred, ref)
    n_ref = int(ref.sum())
    if n_ref == 0:
        return 1.0 if not pred.any() else 0.0
    return int(np.logical_and(pred, ref).sum()) / n_ref


def precision(pred, ref) -> float:
    """|P and R| / |P| (positive predictive value); empty prediction -> 1.0 if the reference is empty too, else 0.0.

    The sensitivity with the roles swapped."""
    return sensitivity(ref, pred)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_SIX, border_value=0)


def surface_distances(pred, ref, spacing_xyz) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``pred`` to the nearest surface voxel of
    ``ref``, and from each surface voxel of ``ref`` to ``pred``'s surface.

    ``spacing_xyz`` is the voxel spacing in mm in (x, y, z) order. When one mask is empty,
    the other's distances are all ``inf`` and the empty one's array is empty.
    """
    pred, ref = _as_masks(pred, ref)
    spacing_zyx = tuple(float(s) for s in reversed(tuple(spacing_xyz)))
    if len(spacing_zyx) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing_xyz)} does not match a {pred.ndim}D mask")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not (has_pred and has_ref):
        pred_n = int(_surface(pred).sum()) if has_pred else 0
        ref_n = int(_surface(ref).sum()) if has_ref else 0
        return np.full(pred_n, np.inf), np.full(ref_n, np.inf)
    # Work on the union's bounding box, padded by one background voxel on every side:
    # all surface voxels lie inside it, and the padding keeps the array-edge rule.
    box = bounding_box(pred | ref)
    pred_box = np.pad(pred[box], 1)
    ref_box = np.pad(ref[box], 1)
    pred_surface, ref_surface = _surface(pred_box), _surface(ref_box)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing_zyx)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing_zyx)
    return to_ref[pred_surface].astype(float), to_pred[ref_surface].astype(float)


def _pooled(pred, ref, spacing_xyz) -> np.ndarray | float:
    """Pooled distances, or the float to return for the empty cases."""
    pred, ref = _as_masks(pred, ref)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return math.inf
    forward, backward = surface_distances(pred, ref, spacing_xyz)
    return np.concatenate([forward, backward])


def hausdorff95(pred, ref, spacing_xyz) -> float:
    """95th percentile (mm) of the pooled symmetric surface distances (medpy's definition).

    Both empty -> 0.0; exactly one empty -> inf.
    """
    pooled = _pooled(pred, ref, spacing_xyz)
    if isinstance(pooled, float):
        return pooled
    return float(np.percentile(pooled, 95))


def hausdorff(pred, ref, spacing_xyz) -> float:
    """Maximum (mm) of the symmetric surface distances (the classic Hausdorff distance)."""
    pooled = _pooled(pred, ref, spacing_xyz)
    if isinstance(pooled, float):
        return pooled
    return float(pooled.max())


def average_symmetric_surface_distance(pred, ref, spacing_xyz) -> float:
    """Mean (mm) of the pooled surface distances of both directions.

    Both empty -> 0.0; exactly one empty -> inf.
    """
    pooled = _pooled(pred, ref, spacing_xyz)
    if isinstance(pooled, float):
        return pooled
    return float(pooled.mean())


def evaluate_masks(pred, ref, geometry: Geometry) -> dict:
    """All metrics of ``pred`` against ``ref`` (both ``[z, y, x]`` on ``geometry``).

    Keys: ``dice``, ``sensitivity``, ``precision``, ``hd95_mm``, ``assd_mm``,
    ``volume_pred_ml``, ``volume_ref_ml``, ``volume_difference_ml`` (pred - ref, mL) and
    ``volume_difference_percent`` (100 (pred - ref) / ref; 0.0 when both are empty, inf when
    only the reference is). Empty-mask conventions as in the module docstring.
    """
    pred, ref = _as_masks(pred, ref)
    if pred.shape != geometry.shape_zyx:
        raise ValueError(f"masks {pred.shape} do not match grid {geometry.shape_zyx}")
    voxel_ml = geometry.voxel_volume_ml
    volume_pred = int(pred.sum()) * voxel_ml
    volume_ref = int(ref.sum()) * voxel_ml
    difference = volume_pred - volume_ref
    if volume_ref > 0:
        percent = 100.0 * difference / volume_ref
    else:
        percent = 0.0 if volume_pred == 0 else math.inf
    pooled = _pooled(pred, ref, geometry.spacing)
    if isinstance(pooled, float):
        hd95 = assd = pooled
    else:
        hd95, assd = float(np.percentile(pooled, 95)), float(pooled.mean())
    return {
        "dice": dice(pred, ref),
        "sensitivity": sensitivity(pred, ref),
        "precision": precision(pred, ref),
        "hd95_mm": hd95,
        "assd_mm": assd,
        "volume_pred_ml": float(volume_pred),
        "volume_ref_ml": float(volume_ref),
        "volume_difference_ml": float(difference),
        "volume_difference_percent": float(percent),
    }
