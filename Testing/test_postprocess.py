"""Post-processing of probability maps: thresholds, Hirsch seeds, component size in mL, holes."""

import numpy as np
import pytest

from breasttumorseg.core.errors import InputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.segmentation.postprocess import (ThresholdSettings, connected_components, fill_holes,
                                        segment_probability)


def grid(shape_zyx, spacing_xyz=(1.0, 1.0, 1.0)) -> Geometry:
    return Geometry(tuple(reversed(shape_zyx)), spacing_xyz, (0.0, 0.0, 0.0))


def blob(shape, centre, sigma, peak):
    z, y, x = np.indices(shape, dtype=float)
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return (peak * np.exp(-r2 / (2 * sigma ** 2))).astype(np.float32)


def ball(shape, centre, radius):
    z, y, x = np.indices(shape, dtype=float)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


SHAPE = (24, 32, 40)


def test_absolute_threshold_is_inclusive_and_on_the_grid():
    probability = blob(SHAPE, (12, 16, 12), 3.0, 0.9) + blob(SHAPE, (12, 16, 30), 3.0, 0.6)
    mask = segment_probability(probability, grid(SHAPE, (0.7, 0.8, 1.5)), ThresholdSettings(threshold=0.5))
    assert mask.dtype == np.uint8 and mask.shape == SHAPE and set(np.unique(mask)) <= {0, 1}
    np.testing.assert_array_equal(mask, (probability >= 0.5).astype(np.uint8))
    _, n = connected_components(mask)
    assert n == 2  # the weaker blob passes an absolute threshold of 0.5


def test_relative_threshold_keeps_only_the_seeded_component():
    strong = blob(SHAPE, (12, 16, 12), 3.0, 0.9)
    weak = blob(SHAPE, (12, 16, 30), 3.0, 0.6)  # above 0.5 x 0.9 = 0.45 but no voxel > 0.95 x 0.9
    probability = strong + weak
    settings = ThresholdSettings(threshold=0.5, relative=True, seed_fraction=0.95)
    mask = segment_probability(probability, grid(SHAPE), settings).astype(bool)
    expected = (strong >= 0.45) & (np.indices(SHAPE)[2] < 21)
    np.testing.assert_array_equal(mask, expected)
    assert not mask[:, :, 25:].any()
    assert ((weak >= 0.45) & ~mask).any()  # the weak blob was above threshold and was dropped
    # a lower seed level turns the weak blob into a seeded component too
    lower = segment_probability(probability, grid(SHAPE), ThresholdSettings(0.5, True, seed_fraction=0.6))
    assert connected_components(lower)[1] == 2


def test_relative_threshold_scales_with_the_maximum():
    probability = blob(SHAPE, (12, 16, 20), 4.0, 0.3)  # a weak map: absolute 0.5 finds nothing
    geometry = grid(SHAPE)
    assert segment_probability(probability, geometry, ThresholdSettings(0.5)).sum() == 0
    relative = segment_probability(probability, geometry, ThresholdSettings(0.5, relative=True))
    np.testing.assert_array_equal(relative.astype(bool), probability >= 0.15)
    empty = segment_probability(np.zeros(SHAPE, np.float32), geometry, ThresholdSettings(0.5, relative=True))
    assert empty.sum() == 0


def test_min_component_ml_depends_on_spacing():
    probability = np.zeros(SHAPE, np.float32)
    probability[2:12, 2:12, 2:12] = 1.0    # 1000 voxels
    probability[16:19, 20:23, 30:33] = 1.0  # 27 voxels
    settings = ThresholdSettings(threshold=0.5, min_component_ml=0.5)
    at_1mm = segment_probability(probability, grid(SHAPE, (1.0, 1.0, 1.0)), settings)
    assert at_1mm.sum() == 1000  # 1.0 mL kept, 0.027 mL dropped
    at_half_mm = segment_probability(probability, grid(SHAPE, (0.5, 0.5, 0.5)), settings)
    assert at_half_mm.sum() == 0  # 0.125 mL and 0.0034 mL: both below 0.5 mL
    at_2mm = segment_probability(probability, grid(SHAPE, (2.0, 2.0, 2.0)),
                                 ThresholdSettings(threshold=0.5, min_component_ml=0.2))
    assert at_2mm.sum() == 1027  # 8 mL and 0.216 mL: both kept


def test_enclosed_holes_are_filled_open_ones_are_not():
    shell = ball(SHAPE, (12, 16, 20), 8) & ~ball(SHAPE, (12, 16, 20), 4)
    probability = shell.astype(np.float32)
    geometry = grid(SHAPE, (0.7, 0.7, 2.0))
    filled = segment_probability(probability, geometry, ThresholdSettings(0.5, fill_holes=True))
    np.testing.assert_array_equal(filled.astype(bool), ball(SHAPE, (12, 16, 20), 8))
    kept = segment_probability(probability, geometry, ThresholdSettings(0.5, fill_holes=False))
    np.testing.assert_array_equal(kept.astype(bool), shell)
    # a tube open at both ends has no enclosed hole
    tube = np.zeros(SHAPE, bool)
    tube[:, 8:24, 12:28] = True
    tube[:, 11:21, 15:25] = False
    np.testing.assert_array_equal(fill_holes(tube), tube)


def test_hole_filling_counts_toward_component_size():
    shell = ball(SHAPE, (12, 16, 20), 6) & ~ball(SHAPE, (12, 16, 20), 4)
    full = int(ball(SHAPE, (12, 16, 20), 6).sum())
    threshold_ml = (int(shell.sum()) + full) / 2 / 1000.0  # between shell and filled volume at 1 mm
    mask = segment_probability(shell.astype(np.float32), grid(SHAPE),
                               ThresholdSettings(0.5, min_component_ml=threshold_ml))
    assert mask.sum() == full


def test_connectivity():
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner-touching only
    assert connected_components(mask, 26)[1] == 1
    assert connected_components(mask, 18)[1] == 2
    assert connected_components(mask, 6)[1] == 2
    labels, n = connected_components(np.zeros((3, 3, 3)))
    assert n == 0 and labels.dtype == np.int32 and not labels.any()
    with pytest.raises(ValueError):
        connected_components(mask, 8)


def test_bad_settings_and_shapes_are_refused():
    probability = np.zeros(SHAPE, np.float32)
    for settings in (ThresholdSettings(1.5), ThresholdSettings(-0.1), ThresholdSettings(0.0, relative=True),
                     ThresholdSettings(0.5, min_component_ml=-1), ThresholdSettings(0.5, seed_fraction=0)):
        with pytest.raises(InputError) as error:
            segment_probability(probability, grid(SHAPE), settings)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError):
        segment_probability(probability, grid((24, 32, 41)), ThresholdSettings())
