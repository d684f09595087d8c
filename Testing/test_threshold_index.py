"""The threshold slider's index gives, voxel for voxel, the direct computation's mask.

Every mode (absolute, relative with Hirsch's seeds, smallest piece, holes on and off) on
random and adversarial maps: smooth blobs, plateaus and ties at the threshold, many tiny
foci, shells with cavities, maps touching the grid's faces; a map holding NaN.
"""

import itertools

import numpy as np
import pytest
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.segmentation.postprocess import ThresholdSettings, segment_probability
from breasttumorseg.segmentation.threshold_index import LOWEST_THRESHOLD, ThresholdIndex
from scipy import ndimage

THRESHOLDS = (0.05, 0.1, 0.25, 0.3, 0.5, 0.625, 0.75, 0.9, 1.0)
MIN_PIECES_ML = (0.0, 0.004, 0.02)


def grid(shape_zyx, spacing_xyz=(0.8, 0.8, 1.5)) -> Geometry:
    return Geometry(tuple(reversed(shape_zyx)), spacing_xyz, (0.0, 0.0, 0.0))


def assert_same_as_direct(probability, geometry, thresholds=THRESHOLDS, seed_fractions=(0.95,), **index_options):
    """Every mode at every threshold: the index's mask equals segment_probability's; returns
    how many settings the index answered itself."""
    index = ThresholdIndex(probability, geometry, **index_options)
    served = 0
    for threshold, relative, smallest, holes, seed in itertools.product(
            thresholds, (False, True), MIN_PIECES_ML, (True, False), seed_fractions):
        settings = ThresholdSettings(float(threshold), relative, seed_fraction=seed, min_component_ml=smallest,
                                     fill_holes=holes)
        expected = segment_probability(probability, geometry, settings)
        got = index.mask(settings)
        assert got.dtype == np.uint8 and got.shape == probability.shape
        if not np.array_equal(got, expected):
            raise AssertionError(f"{settings}: {int((got != expected).sum())} voxels differ")
        served += index.serves(settings)
    return served


def smooth(rng, shape, sigma):
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    field -= field.min()
    return (field / field.max()).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_smooth_random_maps(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(8, 20, 3))
    probability = smooth(rng, shape, float(rng.uniform(0.6, 1.6))) * np.float32(rng.uniform(0.4, 1.0))
    served = assert_same_as_direct(probability, grid(shape), seed_fractions=(0.95, 0.6))
    assert served > 0


def test_white_noise_touching_every_face():
    rng = np.random.default_rng(11)
    probability = rng.random((9, 11, 13)).astype(np.float32)
    assert_same_as_direct(probability, grid(probability.shape))


def test_plateaus_and_ties_at_the_threshold():
    rng = np.random.default_rng(12)
    shape = (12, 14, 16)
    # quantised to eighths: every threshold in THRESHOLDS that is a multiple of 1/8 ties whole plateaus
    probability = (np.round(smooth(rng, shape, 1.2) * 8) / 8).astype(np.float32)
    assert_same_as_direct(probability, grid(shape), thresholds=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0))
    # a float32 threshold that is not a Python float's exact value ties the same way as the direct path
    assert_same_as_direct(probability, grid(shape), thresholds=(float(np.float32(0.3)), 0.3))
    flat = np.full(shape, 0.5, np.float32)  # one plateau filling the grid
    assert_same_as_direct(flat, grid(shape), thresholds=(0.25, 0.5, 0.75))


def test_many_tiny_foci():
    rng = np.random.default_rng(13)
    shape = (14, 18, 20)
    probability = np.zeros(shape, np.float32)
    spots = rng.random(shape) > 0.93  # single voxels and small touching clusters, many on the faces
    probability[spots] = rng.choice(np.array([0.3, 0.5, 0.7, 0.95], np.float32), int(spots.sum()))
    probability[6:9, 8:11, 9:12] = 1.0
    assert_same_as_direct(probability, grid(shape, (1.0, 1.0, 1.0)))


def test_shells_with_cavities_and_nested_blobs():
    shape = (16, 16, 16)
    z, y, x = np.indices(shape)
    r = np.sqrt((z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2)
    probability = np.where((r > 4) & (r < 6.5), 0.8, 0.0).astype(np.float32)   # a hollow ball
    probability[r <= 1.5] = 0.4                                                # a weaker blob in its cavity
    probability[(r > 2.5) & (r <= 3)] = 0.1
    probability[0:3, 0:16, 0:3] = 0.6                                          # a bar along an edge
    probability[8, 8, 12:16] = 0.3                                             # a leak to the outside at 0.3
    assert_same_as_direct(probability, grid(shape, (1.0, 1.0, 1.0)))


def test_a_map_holding_nan_is_thresholded_directly():
    rng = np.random.default_rng(14)
    probability = smooth(rng, (10, 12, 14), 1.0)
    probability[5, 5:8, 5:8] = np.nan
    assert ThresholdIndex(probability, grid(probability.shape)).floor is None
    assert assert_same_as_direct(probability, grid(probability.shape), thresholds=(0.1, 0.5, 0.9)) == 0


def test_a_raised_floor_still_gives_every_threshold():
    rng = np.random.default_rng(15)
    shape = (12, 12, 12)
    probability = smooth(rng, shape, 1.0)
    index = ThresholdIndex(probability, grid(shape), max_voxels=200)
    assert index.floor > LOWEST_THRESHOLD and np.count_nonzero(probability >= index.floor) <= 200
    assert not index.serves(ThresholdSettings(float(index.floor) - 0.01))
    assert index.serves(ThresholdSettings(float(index.floor)))
    with pytest.raises(ValueError, match="below the index's floor"):
        index.kept(ThresholdSettings(0.05))
    served = assert_same_as_direct(probability, grid(shape), max_voxels=200)
    assert 0 < served < len(THRESHOLDS) * 2 * len(MIN_PIECES_ML) * 2


def test_the_universe_holds_every_voxel_any_served_threshold_keeps():
    rng = np.random.default_rng(16)
    probability = smooth(rng, (12, 14, 16), 1.0)
    index = ThresholdIndex(probability, grid(probability.shape))
    lowest = ThresholdSettings(LOWEST_THRESHOLD, relative=True)
    assert index.serves(lowest)
    universe = np.zeros(probability.size, bool)
    universe[index.voxels] = True
    assert not segment_probability(probability, index.geometry, lowest).ravel()[~universe].any()
    assert index.box is not None and len(index.voxels) < probability.size


def test_maps_without_an_index_use_the_direct_computation():
    shape = (6, 7, 8)
    for probability in (np.zeros(shape, np.float32), (np.arange(336).reshape(shape) % 2).astype(np.uint8)):
        index = ThresholdIndex(probability, grid(shape))
        assert index.floor is None and not index.serves(ThresholdSettings(0.5))
        np.testing.assert_array_equal(index.mask(ThresholdSettings(0.5)),
                                      segment_probability(probability, grid(shape), ThresholdSettings(0.5)))
    with pytest.raises(ValueError, match="does not match"):
        ThresholdIndex(np.zeros(shape, np.float32), grid((6, 7, 9)))
