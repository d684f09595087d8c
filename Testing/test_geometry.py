"""Geometry: index <-> physical (LPS) mapping, the single LPS/RAS conversion, resampling."""

import numpy as np
import pytest

from breasttumorseg.core.geometry import Geometry, lps_to_ras, ras_to_lps, resample, resample_stack


def oblique_geometry():
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    flip = np.diag([1.0, -1.0, 1.0])  # a flipped j axis
    return Geometry((20, 16, 10), (0.7, 0.8, 2.0), (-30.0, 12.5, 40.0), (rotation @ flip).ravel())


def test_index_to_physical_matches_simpleitk():
    geometry = oblique_geometry()
    image = geometry.to_image(np.zeros(geometry.shape_zyx, np.float32))
    for ijk in [(0, 0, 0), (3, 7, 2), (19, 15, 9)]:
        expected = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(geometry.index_to_physical(np.array(ijk)), expected, atol=1e-9)
        np.testing.assert_allclose(geometry.physical_to_index(np.array(expected)), ijk, atol=1e-9)


def test_ras_is_lps_with_x_and_y_negated():
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    np.testing.assert_allclose(lps_to_ras(points), [[-1, -2, 3], [4, -5, -6]])
    np.testing.assert_allclose(ras_to_lps(lps_to_ras(points)), points)


def test_ijk_to_ras_round_trip_by_physical_points():
    geometry = oblique_geometry()
    ijk = np.array([5.0, 6.0, 7.0, 1.0])
    ras = geometry.ijk_to_ras() @ ijk
    np.testing.assert_allclose(ras[:3], lps_to_ras(geometry.index_to_physical(ijk[:3])))
    back = Geometry.from_ijk_to_ras(geometry.ijk_to_ras(), geometry.size)
    assert back.same_grid(geometry)


def test_differences_name_what_changed():
    a = oblique_geometry()
    b = Geometry(a.size, (0.7, 0.8, 2.5), tuple(np.add(a.origin, (0, 0, 3.0))), a.direction)
    text = " ".join(a.differences(b))
    assert "spacing" in text and "origin shifted by 3 mm" in text
    assert a.same_grid(a) and not a.same_grid(b)


def test_overlap_fraction():
    a = Geometry((10, 10, 10), (1, 1, 1), (0, 0, 0))
    assert a.overlap_fraction(a) == pytest.approx(1.0)
    half = Geometry((10, 10, 10), (1, 1, 1), (5, 0, 0))
    assert a.overlap_fraction(half) == pytest.approx(0.5)
    far = Geometry((10, 10, 10), (1, 1, 1), (100, 0, 0))
    assert a.overlap_fraction(far) == 0.0


def test_with_spacing_keeps_field_of_view():
    geometry = oblique_geometry()
    coarse = geometry.with_spacing((1.4, 1.6, 2.0))
    assert coarse.size == (10, 8, 10)
    np.testing.assert_allclose(coarse.corners_lps()[0], geometry.corners_lps()[0], atol=1e-9)
    np.testing.assert_allclose(coarse.extent_mm, geometry.extent_mm)


def test_resample_preserves_a_physical_point():
    source = oblique_geometry()
    array = np.zeros(source.shape_zyx, np.float32)
    array[5, 8, 10] = 1.0  # k, j, i
    point = source.index_to_physical(np.array([10, 8, 5]))
    target = Geometry((40, 40, 40), (1.0, 1.0, 1.0), tuple(point - 20.0))
    out = resample(array, source, target, interpolation="nearest")
    k, j, i = np.argwhere(out > 0.5).mean(axis=0)
    np.testing.assert_allclose(target.index_to_physical(np.array([i, j, k])), point, atol=1.0)


def test_same_grid_resample_is_a_copy():
    geometry = oblique_geometry()
    array = np.random.default_rng(0).random(geometry.shape_zyx).astype(np.float32)
    out = resample(array, geometry, geometry)
    np.testing.assert_array_equal(out, array)
    assert out is not array


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_resample_stack_is_resample_of_each_array(interpolation, dtype):
    # on threads, two at a time: every array voxel for voxel what resample gives, in its place
    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    source = Geometry((30, 26, 14), (0.75, 0.8, 2.0), (-11.0, 4.0, -9.0), tuple(rotation.ravel()))
    target = source.with_spacing((1.5, 1.5, 1.5))
    rng = np.random.default_rng(3)
    arrays = (rng.random((5,) + source.shape_zyx) * 200).astype(dtype)
    stacked = resample_stack(arrays, source, target, interpolation=interpolation)
    assert stacked.dtype == np.dtype(dtype) and stacked.shape == (5,) + target.shape_zyx
    for array, resampled in zip(arrays, stacked):
        np.testing.assert_array_equal(resampled, resample(array, source, target, interpolation=interpolation))
    copied = resample_stack(list(arrays), source, source)
    np.testing.assert_array_equal(copied, arrays)
    assert not np.shares_memory(copied, arrays)
