"""Metrics in physical units, against analytic answers; empty-mask conventions."""

import math

import numpy as np
import pytest

from breasttumorseg.core.geometry import Geometry
from breasttumorseg.evaluation.metrics import (average_symmetric_surface_distance, dice, evaluate_masks, hausdorff,
                                    hausdorff95, precision, sensitivity, surface_distances)

SPACING = (0.6, 0.7, 1.2)  # x, y, z mm: anisotropic
SHAPE = (40, 64, 72)       # z, y, x: 48 x 44.8 x 43.2 mm


def geometry(shape=SHAPE, spacing=SPACING) -> Geometry:
    return Geometry(tuple(reversed(shape)), spacing, (0.0, 0.0, 0.0))


def sphere(centre_mm_xyz, radius_mm, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """Voxels whose centre lies within the sphere (coordinates in mm from voxel 0's centre)."""
    z, y, x = np.indices(shape, dtype=float)
    sx, sy, sz = spacing
    cx, cy, cz = centre_mm_xyz
    return (x * sx - cx) ** 2 + (y * sy - cy) ** 2 + (z * sz - cz) ** 2 <= radius_mm ** 2


CENTRE = (21.0, 22.0, 24.0)


def test_identical_masks():
    mask = sphere(CENTRE, 10.0)
    assert dice(mask, mask) == 1.0 and sensitivity(mask, mask) == 1.0 and precision(mask, mask) == 1.0
    assert hausdorff95(mask, mask, SPACING) == 0.0
    assert average_symmetric_surface_distance(mask, mask, SPACING) == 0.0


def test_shifted_spheres_dice_and_hausdorff():
    r, d = 10.0, 4.0
    a = sphere(CENTRE, r)
    b = sphere((CENTRE[0] + d, CENTRE[1], CENTRE[2]), r)
    overlap = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12  # lens volume of two equal spheres
    expected_dice = overlap / (4 / 3 * math.pi * r ** 3)
    assert dice(a, b) == pytest.approx(expected_dice, abs=0.01)
    # the Hausdorff distance of two equal spheres is the shift of their centres
    assert hausdorff(a, b, SPACING) == pytest.approx(d, abs=max(SPACING))
    assert 0.3 * d < hausdorff95(a, b, SPACING) <= hausdorff(a, b, SPACING)
    assert 0.0 < average_symmetric_surface_distance(a, b, SPACING) < hausdorff95(a, b, SPACING)
    # symmetric
    assert hausdorff95(b, a, SPACING) == pytest.approx(hausdorff95(a, b, SPACING))


def test_concentric_spheres_all_distances_equal_the_radius_gap():
    inner, outer = sphere(CENTRE, 8.0), sphere(CENTRE, 12.0)
    forward, backward = surface_distances(inner, outer, SPACING)
    assert len(forward) == np.count_nonzero(inner) - np.count_nonzero(
        inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
        & np.roll(inner, 1, 2) & np.roll(inner, -1, 2))
    assert np.median(forward) == pytest.approx(4.0, abs=0.5)
    assert np.median(backward) == pytest.approx(4.0, abs=0.5)
    assert average_symmetric_surface_distance(inner, outer, SPACING) == pytest.approx(4.0, abs=0.5)
    assert hausdorff95(inner, outer, SPACING) == pytest.approx(4.0, abs=1.0)
    assert sensitivity(inner, outer) == pytest.approx((8 / 12) ** 3, abs=0.03)
    assert precision(inner, outer) == 1.0


def test_spacing_is_applied_in_zyx_order():
    spacing = (0.5, 0.5, 3.0)  # x, y, z
    shape = (20, 40, 40)
    a = np.zeros(shape, bool)
    a[4:10, 5:35, 5:35] = True
    b = np.roll(a, 2, axis=0)  # two slices along z = 6 mm
    assert hausdorff(a, b, spacing) == pytest.approx(6.0)
    c = np.roll(a, 2, axis=2)  # two columns along x = 1 mm
    assert hausdorff(a, c, spacing) == pytest.approx(1.0)


def test_empty_mask_conventions():
    empty = np.zeros(SHAPE, bool)
    mask = sphere(CENTRE, 5.0)
    assert dice(empty, empty) == 1.0
    assert dice(mask, empty) == 0.0 and dice(empty, mask) == 0.0
    assert sensitivity(empty, empty) == 1.0 and sensitivity(mask, empty) == 0.0 and sensitivity(empty, mask) == 0.0
    assert precision(empty, empty) == 1.0 and precision(empty, mask) == 0.0 and precision(mask, empty) == 0.0
    assert hausdorff95(empty, empty, SPACING) == 0.0
    assert average_symmetric_surface_distance(empty, empty, SPACING) == 0.0
    for pred, ref in ((mask, empty), (empty, mask)):
        assert hausdorff95(pred, ref, SPACING) == math.inf
        assert average_symmetric_surface_distance(pred, ref, SPACING) == math.inf
    forward, backward = surface_distances(mask, empty, SPACING)
    assert backward.size == 0 and forward.size > 0 and np.isinf(forward).all()


def test_simple_counts():
    ref = np.zeros((4, 4, 4), bool)
    ref[1, 1, :4] = True
    pred = np.zeros((4, 4, 4), bool)
    pred[1, 1, :2] = True
    pred[3, 3, 3] = True
    assert sensitivity(pred, ref) == pytest.approx(2 / 4)
    assert precision(pred, ref) == pytest.approx(2 / 3)
    assert dice(pred, ref) == pytest.approx(4 / 7)
    with pytest.raises(ValueError):
        dice(pred, ref[:3])


def test_evaluate_masks_volumes_and_keys():
    g = geometry()
    ref = sphere(CENTRE, 10.0)
    pred = sphere(CENTRE, 9.0)
    result = evaluate_masks(pred, ref, g)
    assert set(result) == {"dice", "sensitivity", "precision", "hd95_mm", "assd_mm", "volume_pred_ml",
                           "volume_ref_ml", "volume_difference_ml", "volume_difference_percent"}
    assert all(isinstance(v, float) for v in result.values())
    assert result["volume_ref_ml"] == pytest.approx(4 / 3 * math.pi * 10 ** 3 / 1000, rel=0.03)
    assert result["volume_pred_ml"] == pytest.approx(np.count_nonzero(pred) * 0.6 * 0.7 * 1.2 / 1000)
    assert result["volume_difference_ml"] == pytest.approx(result["volume_pred_ml"] - result["volume_ref_ml"])
    assert result["volume_difference_percent"] == pytest.approx(100 * (0.9 ** 3 - 1), abs=3)
    assert result["assd_mm"] == pytest.approx(1.0, abs=0.5)
    empty = np.zeros(SHAPE, bool)
    both_empty = evaluate_masks(empty, empty, g)
    assert both_empty["dice"] == 1.0 and both_empty["hd95_mm"] == 0.0 and both_empty["volume_difference_percent"] == 0.0
    missed = evaluate_masks(empty, ref, g)
    assert missed["dice"] == 0.0 and missed["hd95_mm"] == math.inf and missed["volume_difference_percent"] == -100.0
    invented = evaluate_masks(ref, empty, g)
    assert invented["assd_mm"] == math.inf and invented["volume_difference_percent"] == math.inf
