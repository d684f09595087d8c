"""core.morphology: hole filling and component selection equal scipy's, voxel for voxel."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from breasttumorseg.core.morphology import dilate_cross, erode_cross, fill_enclosed, large_components, open_cross


def random_masks():
    rng = np.random.default_rng(7)
    for density in (0.3, 0.55, 0.7):
        yield ndimage.binary_opening(rng.random((20, 24, 28)) < density)
    for _ in range(20):  # small odd shapes, thin planes included
        shape = tuple(int(n) for n in rng.integers(1, 12, 3))
        yield rng.random(shape) < rng.uniform(0.2, 0.8)


def test_fill_enclosed_equals_binary_fill_holes_in_3d():
    for mask in random_masks():
        np.testing.assert_array_equal(fill_enclosed(mask), ndimage.binary_fill_holes(mask))
    shell = np.zeros((9, 9, 9), bool)
    shell[1:8, 1:8, 1:8] = True
    shell[3:6, 3:6, 3:6] = False          # an enclosed cavity
    assert fill_enclosed(shell)[4, 4, 4] and fill_enclosed(np.ones((3, 3, 3), bool)).all()


def test_fill_enclosed_within_planes_equals_binary_fill_holes_plane_by_plane():
    for mask in random_masks():
        for axis in range(3):
            expected = np.stack([ndimage.binary_fill_holes(plane) for plane in np.moveaxis(mask, axis, 0)],
                                axis=axis)
            np.testing.assert_array_equal(fill_enclosed(mask, within_planes_of=axis), expected)
    # a tube open at both ends along z: no 3D hole, but a hole in every z plane
    tube = np.zeros((6, 9, 9), bool)
    tube[:, 2:7, 2:7] = True
    tube[:, 4, 4] = False
    assert not fill_enclosed(tube)[:, 4, 4].any()
    assert fill_enclosed(tube, within_planes_of=0)[:, 4, 4].all()
    assert not fill_enclosed(tube, within_planes_of=1)[:, 4, 4].any()


def test_large_components_keeps_those_near_the_largest():
    mask = np.zeros((10, 10, 30), bool)
    mask[1:9, 1:9, 1:9] = True          # 512 voxels
    mask[1:9, 1:9, 12:16] = True        # 256 voxels: kept at 0.4, not at 0.6
    mask[5, 5, 20] = True               # 1 voxel
    mask[6, 6, 21] = True               # touches the previous one diagonally only
    assert large_components(mask, 0.4).sum() == 768
    assert large_components(mask, 0.6).sum() == 512
    assert large_components(mask, 0.0).sum() == mask.sum()
    # two 2x2x2 cubes touching at one corner: one component of 16 voxels when 26-connected,
    # two of 8 when 6-connected, where a 12-voxel bar is then the largest
    pair = np.zeros((8, 8, 12), bool)
    pair[0:2, 0:2, 0:2] = True
    pair[2:4, 2:4, 2:4] = True
    pair[6, 6, 0:12] = True
    assert large_components(pair, 0.9, connectivity=3).sum() == 16
    assert large_components(pair, 0.9, connectivity=1).sum() == 12
    assert not large_components(np.zeros((3, 3, 3), bool), 0.5).any()


def test_cross_erosion_dilation_and_opening_equal_scipy():
    for mask in random_masks():
        for n in (1, 2, 3):
            np.testing.assert_array_equal(dilate_cross(mask, n), ndimage.binary_dilation(mask, iterations=n))
            np.testing.assert_array_equal(erode_cross(mask, n), ndimage.binary_erosion(mask, iterations=n))
            np.testing.assert_array_equal(open_cross(mask, n), ndimage.binary_opening(mask, iterations=n))
    full = np.ones((4, 5, 6), bool)
    assert erode_cross(full).sum() == 2 * 3 * 4  # the faces border the outside, which is background
    assert dilate_cross(np.zeros((3, 3, 3), bool)).sum() == 0
