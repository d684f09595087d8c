"""The whole-breast mask: a spatial prior for tumor models (Hirsch et al. 2022; Zhang et al. 2023).

A breast-mask model (card ``task: "breast"``, a 3D U-Net on the pre-contrast at low
resolution) gives the probability of breast tissue. :func:`breast_region` turns it into
the region a tumor may lie in, on the study's grid (the model itself runs in
:func:`.pipeline.breast_region_of`):

1. probability >= 0.5;
2. connected components of at least 5 % of the largest kept (two breasts, or one in a
   unilateral study; specks dropped);
3. grown by ``margin_mm`` (default 10 mm, a Euclidean distance in mm, anisotropic
   spacing respected) so a tumor at the chest wall or in the axillary tail is not cut.

Steps 1-3 run on the breast model's low-resolution working grid (a few seconds less on a
clinical matrix than on the study's grid); the region is then resampled (nearest) onto
the study's grid.

A card may instead name :data:`CLASSICAL_BREAST_MASK` (``"classical"``): the breasts
found without a model by :mod:`breasttumorseg.exam.breast_classical` (the body in front of the
chest wall; independent of intensity units, offset, fat suppression and the number of
phases), grown by the same margin (:func:`classical_breast_region`).

When no breast is found at all (an unexpected field of view), the region is the whole
grid and the caller is warned: a missing prior must never hide a tumor.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import Geometry, resample
from ..core.morphology import large_components
from ..exam.breast_classical import CLASSICAL_BREAST_MASK, block_expand, classical_breast_blocks
from ..exam.dce_exam import DCEStudy

#: growth of the breast mask, in mm, before it restricts a tumor model
BREAST_MARGIN_MM = 10.0
#: components smaller than this fraction of the largest are dropped
MIN_COMPONENT_FRACTION = 0.05


def breast_region(probability: np.ndarray, working: Geometry, geometry: Geometry, *,
                  margin_mm: float = BREAST_MARGIN_MM, source: str = "study", model_name: str = "",
                  warn=None) -> np.ndarray:
    """Bool ``[z, y, x]`` on ``geometry``: the breasts in a breast-mask model's ``probability``
    (on its ``working`` grid), grown by ``margin_mm``; the whole grid when it finds none."""
    breasts = largest_components(probability >= 0.5)
    if not breasts.any():
        if warn is not None:
            warn(f"{source}: the breast-mask model {model_name} found no breast; "
                 f"the tumor model searches the whole field of view")
        return np.ones(geometry.shape_zyx, dtype=bool)
    grown = grow(breasts, working.spacing, margin_mm)
    return resample(grown.astype(np.uint8), working, geometry, interpolation="nearest") > 0


#: block size (mm) on which the classical mask is found when it serves as a prior
PRIOR_BLOCK_MM = 3.0


def classical_breast_region(study: DCEStudy, *, margin_mm: float = BREAST_MARGIN_MM, warn=None) -> np.ndarray:
    """Bool ``[z, y, x]`` on ``study.geometry``: the model-free breast mask grown by
    ``margin_mm``, both found on blocks of about :data:`PRIOR_BLOCK_MM` (a prior grown by
    10 mm needs no finer outline; on the standard case about 2 s instead of 12 s)."""
    blocks, factors = classical_breast_blocks(study, PRIOR_BLOCK_MM)
    if not blocks.any():
        if warn is not None:
            warn(f"{study.source}: the classical breast mask found no breast; "
                 f"the tumor model searches the whole field of view")
        return np.ones(study.geometry.shape_zyx, dtype=bool)
    block_spacing = tuple(s * f for s, f in zip(study.geometry.spacing, reversed(factors)))  # (x, y, z) mm
    return block_expand(grow(blocks, block_spacing, margin_mm), factors, study.geometry.shape_zyx)


def largest_components(mask: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION) -> np.ndarray:
    """Components (26-connected) of at least ``min_fraction`` x the largest one's size."""
    return large_components(mask, min_fraction, connectivity=3)


def grow(mask: np.ndarray, spacing_xyz_mm, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` (Euclidean, physical) of ``mask``; spacing (x, y, z) in mm."""
    if margin_mm <= 0:
        return mask.copy()
    sampling = tuple(float(s) for s in reversed(tuple(spacing_xyz_mm)))  # (z, y, x)
    bounds = np.argwhere(mask)
    pad = np.ceil(margin_mm / np.array(sampling)).astype(int) + 1
    lo = np.maximum(bounds.min(axis=0) - pad, 0)
    hi = np.minimum(bounds.max(axis=0) + pad + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    distance = ndimage.distance_transform_edt(~mask[box], sampling=sampling)
    out = np.zeros(mask.shape, dtype=bool)
    out[box] = distance <= margin_mm
    return out


__all__ = ["breast_region", "classical_breast_region", "largest_components", "grow", "BREAST_MARGIN_MM",
           "MIN_COMPONENT_FRACTION", "CLASSICAL_BREAST_MASK"]
