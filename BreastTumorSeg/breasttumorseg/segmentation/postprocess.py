"""From a tumor probability map to a binary tumor mask.

Two ways to threshold the probability (``[z, y, x]`` float, 0..1, on a :class:`Geometry`):

* **absolute**: tumor where ``probability >= threshold``;
* **relative** (Hirsch et al. 2022, Radiology: AI): tumor where
  ``probability >= threshold x max(probability)`` (threshold 0.5 in the paper), keeping only
  the 26-connected components that contain a *seed*, a voxel with
  ``probability > seed_fraction x max`` (0.95 in the paper). A separate weaker blob above
  the threshold but without a seed is dropped.

Then, in this order: enclosed holes are filled (3D; a hole is background not 6-connected
to the outside of the mask, the topological dual of 26-connected foreground), and
connected components smaller than ``min_component_ml`` millilitres (counted after hole
filling, from the grid's spacing) are removed.

The work after thresholding runs on the bounding box of the thresholded voxels, so moving
a threshold slider on a clinical-size map stays fast when the tumor is small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.errors import InputError
from ..core.geometry import Geometry
from ..core.morphology import fill_enclosed

_STRUCTURES = {6: 1, 18: 2, 26: 3}


@dataclass
class ThresholdSettings:
    """How a probability map becomes a mask (see the module docstring).

    Attributes:
        threshold: absolute probability (0..1), or the fraction of the maximum
            probability when ``relative`` is True. Voxels ``>=`` the threshold pass.
        relative: Hirsch et al.: threshold at ``threshold x max`` and keep only components
            containing a seed voxel ``> seed_fraction x max``.
        seed_fraction: seed level as a fraction of the maximum (relative mode only).
        min_component_ml: drop 26-connected components smaller than this, in mL.
        fill_holes: fill enclosed holes in 3D.
    """

    threshold: float = 0.5
    relative: bool = False
    seed_fraction: float = 0.95
    min_component_ml: float = 0.0
    fill_holes: bool = True

    def validate(self) -> None:
        """Raise :class:`InputError` (one line naming the setting) for impossible values."""
        what = "relative threshold (fraction of the maximum)" if self.relative else "probability threshold"
        if not np.isfinite(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"{what} must be between 0 and 1, got {self.threshold:g}")
        if self.relative and self.threshold <= 0.0:
            raise InputError(f"{what} must be above 0, got {self.threshold:g}")
        if not np.isfinite(self.seed_fraction) or not 0.0 < self.seed_fraction <= 1.0:
            raise InputError(f"seed fraction must be in (0, 1], got {self.seed_fraction:g}")
        if not np.isfinite(self.min_component_ml) or self.min_component_ml < 0.0:
            raise InputError(f"minimum component size must be >= 0 mL, got {self.min_component_ml:g}")


def structure(connectivity: int = 26) -> np.ndarray:
    """3x3x3 neighbourhood for 6-, 18- or 26-connectivity."""
    try:
        rank = _STRUCTURES[int(connectivity)]
    except KeyError:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}") from None
    return ndimage.generate_binary_structure(3, rank)


def connected_components(mask, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Label the connected components of a 3D mask.

    Returns ``(labels, n)``: an int32 array ``[z, y, x]`` with 0 = background and
    1..n = components, and the number of components ``n``.
    """
    mask = np.asarray(mask) > 0
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D mask [z, y, x], got {mask.ndim}D")
    labels = np.zeros(mask.shape, dtype=np.int32)
    n = ndimage.label(mask, structure=structure(connectivity), output=labels)
    return labels, int(n)


def bounding_box(mask: np.ndarray, margin: int | tuple[int, int, int] = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every nonzero voxel, grown by ``margin`` voxels
    per axis (z, y, x) and clipped to the array; ``None`` for an empty mask."""
    mask = np.asarray(mask)
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if hits.size == 0:
            return None
        start = max(0, int(hits[0]) - int(margins[axis]))
        stop = min(mask.shape[axis], int(hits[-1]) + 1 + int(margins[axis]))
        box.append(slice(start, stop))
    return tuple(box)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed 3D holes (background not 6-connected to the outside of the mask)."""
    mask = np.asarray(mask) > 0
    out = mask.copy()
    box = bounding_box(mask, margin=1)
    if box is None:
        return out
    out[box] = fill_enclosed(mask[box])
    return out


def remove_small_components(mask: np.ndarray, geometry: Geometry, min_component_ml: float,
                            connectivity: int = 26) -> np.ndarray:
    """Drop connected components whose volume (voxels x voxel volume) is below ``min_component_ml`` mL."""
    mask = np.asarray(mask) > 0
    if min_component_ml <= 0:
        return mask.copy()
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return out
    labels, n = connected_components(mask[box], connectivity)
    volumes_ml = np.bincount(labels.ravel(), minlength=n + 1) * geometry.voxel_volume_ml
    keep = volumes_ml >= min_component_ml
    keep[0] = False
    out[box] = keep[labels]
    return out


def segment_probability(probability: np.ndarray, geometry: Geometry, settings: ThresholdSettings) -> np.ndarray:
    """Threshold a probability map (``[z, y, x]`` on ``geometry``) into a uint8 0/1 mask.

    See the module docstring for the order of the steps. A map whose maximum is 0 gives
    an empty mask in relative mode. The mask is on the same grid as ``probability``.
    """
    settings.validate()
    probability = np.asarray(probability)
    if probability.shape != geometry.shape_zyx:
        raise ValueError(f"probability shape {probability.shape} does not match grid {geometry.shape_zyx}")
    if settings.relative:
        peak = float(np.max(probability)) if probability.size else 0.0
        if not peak > 0.0:
            return np.zeros(probability.shape, dtype=np.uint8)
        candidate = probability >= settings.threshold * peak
    else:
        candidate = probability >= settings.threshold
    out = np.zeros(probability.shape, dtype=np.uint8)
    box = bounding_box(candidate, margin=1)
    if box is None:
        return out
    mask = candidate[box]
    if settings.relative:
        labels, n = connected_components(mask, 26)
        seeded = np.unique(labels[probability[box] > settings.seed_fraction * peak])
        keep = np.zeros(n + 1, dtype=bool)
        keep[seeded] = True
        keep[0] = False
        mask = keep[labels]
    if settings.fill_holes:
        mask = fill_enclosed(mask)
    if settings.min_component_ml > 0:
        mask = remove_small_components(mask, geometry, settings.min_component_ml)
    out[box] = mask
    return out
