"""The conventional baselines: fuzzy c-means on a constructed study, and the I-SPY percent-enhancement
rule on a phantom."""

from __future__ import annotations

import numpy as np
import pytest

from breasttumorseg.evaluation.baselines import (
    baseline_region, enhancement_features, fuzzy_c_means, fuzzy_c_means_baseline, percent_enhancement_baseline,
    run_baseline, seed_component,
)
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.evaluation.metrics import dice
from breasttumorseg.exam.dce_exam import DCEStudy

GRID = Geometry((48, 40, 20), (1.5, 1.5, 2.0), (0.0, 0.0, 0.0))


def constructed_study(seed: int = 0):
    """Four kinds of tissue by their enhancement, as in a breast: fat and stroma (none),
    glandular tissue (mild, persistent), a benign-like patch (moderate, plateau) and one
    clearly enhancing, washing-out blob; Gaussian noise. Returns (study, blob mask)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(GRID.shape_zyx)
    blob = ((z - 10) * 2.0) ** 2 + ((y - 20) * 1.5) ** 2 + ((x - 30) * 1.5) ** 2 < 8.0 ** 2
    fat = x < 10
    benign = (np.abs(z - 10) < 3) & (np.abs(y - 8) < 4) & (np.abs(x - 14) < 4)
    glandular = (np.sin(x / 3.0) + np.cos(y / 4.0) > 0.8) & ~blob & ~fat & ~benign
    base = np.where(fat, 25.0, 100.0)
    uptake = {"blob": (0, 160, 150, 130), "benign": (0, 70, 75, 75), "gland": (0, 25, 35, 45)}
    phases = []
    for t in range(4):
        phase = base.copy()
        phase[glandular] += uptake["gland"][t]
        phase[benign] += uptake["benign"][t]
        phase[blob] += uptake["blob"][t]
        phases.append(phase + rng.normal(0, 4, GRID.shape_zyx))
    study = DCEStudy(np.stack(phases), GRID, times_s=[0, 90, 180, 270], source="constructed")
    return study, blob


def test_fuzzy_c_means_finds_a_clearly_enhancing_blob_and_is_deterministic():
    study, blob = constructed_study()
    region = np.ones(GRID.shape_zyx, dtype=bool)
    mask = fuzzy_c_means_baseline(study, region)
    assert mask.dtype == np.uint8 and mask.shape == GRID.shape_zyx
    assert dice(mask, blob) > 0.8
    again = fuzzy_c_means_baseline(study, region)
    np.testing.assert_array_equal(mask, again)
    np.testing.assert_array_equal(run_baseline("fcm", study, region), mask)


def test_fuzzy_c_means_separates_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]])
    points = np.concatenate([c + rng.normal(0, 0.5, (200, 2)) for c in centres])
    found, memberships = fuzzy_c_means(points, 3)
    assert memberships.shape == (600, 3)
    np.testing.assert_allclose(memberships.sum(axis=1), 1.0, atol=1e-9)
    for centre in centres:
        assert np.min(np.linalg.norm(found - centre, axis=1)) < 0.2
    labels = np.argmax(memberships, axis=1)
    assert all(len(set(labels[i * 200:(i + 1) * 200])) == 1 for i in range(3))


def test_features_are_enhancement_over_the_pre_contrast_p95():
    study, blob = constructed_study()
    region = np.ones(GRID.shape_zyx, dtype=bool)
    features = enhancement_features(study, region)
    assert features.shape == (region.sum(), 3)
    scale = np.percentile(study.pre_contrast, 95)
    flat = blob.ravel()
    assert np.median(features[flat, 0]) * scale == pytest.approx(160, abs=5)


def test_seed_component_keeps_the_component_of_the_strongest_enhancement():
    candidates = np.zeros((10, 10, 10), dtype=bool)
    candidates[1:3, 1:3, 1:3] = True        # small, strongly enhancing
    candidates[5:9, 5:9, 5:9] = True        # large, weaker
    enhancement = np.where(candidates, 1.0, 0.0)
    enhancement[1:3, 1:3, 1:3] = 5.0
    kept = seed_component(candidates, enhancement)
    assert kept[1, 1, 1] == 1 and kept[6, 6, 6] == 0
    assert not seed_component(np.zeros_like(candidates), enhancement).any()


def test_percent_enhancement_baseline_finds_the_phantom_tumor_partially():
    from breasttumorseg.phantom import generate_phantom

    case = generate_phantom(100, n_phases=4, size=(96, 96, 32), spacing=(2.5, 2.5, 4.0))
    truth = case.tumor_mask > 0
    region = baseline_region(case.study, case.breast_mask)
    mask = percent_enhancement_baseline(case.study, region)
    assert mask.any() and (mask.astype(bool) & ~region).sum() == 0
    assert dice(mask, truth) > 0.3            # better than nothing (0), not the model's job done
    assert (mask.astype(bool) & truth).sum() > 0.5 * truth.sum()
    # without a breast mask the body is the region; it must still be a mask on the grid
    body = baseline_region(case.study, None)
    assert body.shape == truth.shape and body.sum() > region.sum()
