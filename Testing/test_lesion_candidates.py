"""The lesion scorer: candidate descriptors, the scorer file, suppression and the pipeline's use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breasttumorseg.core.errors import ModelError
from breasttumorseg.exam.kinetic_maps import KINETIC_CHANNELS
from breasttumorseg.segmentation.lesion_candidates import (
    FEATURES, NEEDED_CHANNELS, SUPPRESS_MARGIN_VOXELS, Candidates, LesionScorer, find_candidates,
    study_keep_probability, suppress_rejected)
from breasttumorseg.segmentation.models import card_from_json, load_model, register_model, save_model
from breasttumorseg.segmentation.networks import build_network
from breasttumorseg.segmentation.pipeline import segment_study

SPACING = (2.0, 1.0, 1.0)   # z, y, x mm


def channels(shape, peak=1.5, late=-0.3):
    maps = {name: np.zeros(shape, np.float32) for name in NEEDED_CHANNELS}
    maps["enhancement_peak"][:] = peak
    maps["enhancement_120s"][:] = peak
    maps["enhancement_420s"][:] = peak + late
    maps["pre_relative"][:] = 1.0
    maps["late_coverage"][:] = 1.0
    return maps


def ball_and_vessel():
    """A 6 mm radius ball (p 0.9) and a 1-voxel-thick 30 mm vessel (p 0.6) on a 20 x 60 x 60 grid."""
    p = np.zeros((20, 60, 60), np.float32)
    z, y, x = np.ogrid[:20, :60, :60]
    p[((z - 10) * 2.0) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 36] = 0.9
    p[10, 45, 10:40] = 0.6
    return p


def test_descriptors_tell_a_ball_from_a_vessel():
    cands = find_candidates(ball_and_vessel(), channels((20, 60, 60)), SPACING)
    assert cands.count == 2
    f = {name: cands.features[:, i] for i, name in enumerate(FEATURES)}
    ball, vessel = (0, 1) if f["max_probability"][0] > f["max_probability"][1] else (1, 0)
    assert f["elongation"][ball] < 1.5 < 10 < f["elongation"][vessel]
    ball_ml = (cands.labels == ball + 1).sum() * 2.0 / 1000
    assert f["log_volume_ml"][ball] == pytest.approx(np.log10(ball_ml))
    assert f["relative_max"][ball] == 1.0 and f["relative_max"][vessel] == pytest.approx(0.6 / 0.9)
    assert f["late_change"][ball] == pytest.approx(-0.3 / 1.5, rel=1e-5)    # washout, relative to the peak
    assert f["peak_enhancement"][ball] == pytest.approx(1.5)


def test_no_late_phase_reads_as_a_neutral_curve():
    maps = channels((20, 60, 60))
    maps["late_coverage"][:] = 0.0
    cands = find_candidates(ball_and_vessel(), maps, SPACING)
    assert np.all(cands.features[:, FEATURES.index("late_change")] == 0.0)


def test_missing_kinetic_channels_are_named():
    maps = channels((20, 60, 60))
    del maps["enhancement_420s"]
    with pytest.raises(ValueError, match="enhancement_420s"):
        find_candidates(ball_and_vessel(), maps, SPACING)


def test_rejected_candidates_are_cleared_with_their_rim_the_kept_untouched():
    p = ball_and_vessel()
    p[9:12, 44:47, 10:40] = np.maximum(p[9:12, 44:47, 10:40], 0.3)    # a faint rim around the vessel
    cands = find_candidates(p, channels(p.shape), SPACING)
    vessel = 1 + int(np.argmin(cands.features[:, FEATURES.index("max_probability")]))
    scores = np.where(np.arange(1, cands.count + 1) == vessel, 0.1, 0.9)
    out = suppress_rejected(p, cands, scores, 0.5)
    assert np.all(out[9:12, 44:47, 10:40] == 0.0)
    kept = cands.labels == (3 - vessel)
    np.testing.assert_array_equal(out[kept], p[kept])
    far = np.ones(p.shape, bool)
    m = SUPPRESS_MARGIN_VOXELS
    far[10 - m:11 + m, 45 - m:46 + m, 10 - m:40 + m] = False
    np.testing.assert_array_equal(out[far], p[far])


def scorer(bias: float) -> LesionScorer:
    n = len(FEATURES)
    return LesionScorer(np.zeros(n), np.ones(n), np.linspace(-1, 1, n), bias)


def test_the_scorer_file_round_trips_and_is_checked(tmp_path):
    path = tmp_path / "s.safetensors"
    digest = scorer(0.25).save(path)
    features = np.random.default_rng(0).normal(size=(5, len(FEATURES)))
    np.testing.assert_allclose(LesionScorer.load(path, digest).score(features), scorer(0.25).score(features))
    with pytest.raises(ModelError, match="checksum"):
        LesionScorer.load(path, "0" * 64)
    with pytest.raises(ModelError, match="cannot read"):
        LesionScorer.load(tmp_path / "missing.safetensors")


def test_a_card_field_for_the_scorer_is_validated(tmp_path):
    base = {"name": "m", "version": "1", "architecture": "hirsch_unet3d", "hyperparameters": {},
            "inputs": list(KINETIC_CHANNELS), "min_phases": 2, "needs_times": True, "normalization": "kinetic",
            "working_spacing_mm": [2.0, 2.0, 2.0], "patch_size": [16, 16, 16], "overlap": 0.25, "output_channel": 1,
            "threshold": 0.5, "relative_threshold": False, "weights": "m.safetensors", "sha256": "",
            "trained_on": "nothing"}
    good = {"weights": "m.lesions.safetensors", "sha256": "a" * 64, "keep_probability": 0.5}
    assert card_from_json(dict(base, lesion_scorer=good), tmp_path, "card").lesion_scorer == dict(good, keep_best=False)
    best = dict(good, keep_best=True)
    assert card_from_json(dict(base, lesion_scorer=best), tmp_path, "card").lesion_scorer == best
    for bad in ({"weights": "../x.safetensors", "sha256": "a" * 64, "keep_probability": 0.5},
                dict(good, keep_best="yes"), dict(good, keep_best=1), dict(good, extra=0),
                {"weights": "x.safetensors", "sha256": "a" * 64, "keep_probability": 2},
                {"weights": "x.safetensors", "sha256": "a" * 64}):
        with pytest.raises(ModelError, match="lesion_scorer"):
            card_from_json(dict(base, lesion_scorer=bad), tmp_path, "card")
    with pytest.raises(ModelError, match="kinetic"):
        card_from_json(dict(base, normalization="pre_contrast_p95", inputs=["dce_in"], lesion_scorer=good),
                       tmp_path, "card")


def test_keep_best_keeps_the_most_likely_candidate_of_a_study():
    settings = {"keep_probability": 0.5, "keep_best": True}
    assert study_keep_probability(settings, np.array([0.1, 0.3, 0.2])) == pytest.approx(0.3)
    assert study_keep_probability(settings, np.array([0.1, 0.7, 0.9])) == 0.5
    assert study_keep_probability(settings, np.array([])) == 0.5
    assert study_keep_probability(dict(settings, keep_best=False), np.array([0.1, 0.3])) == 0.5
    assert study_keep_probability({"keep_probability": 0.5}, np.array([0.1, 0.3])) == 0.5


def kinetic_model(folder, name, scorer_bias: float | None, keep_best: bool = False):
    """A tiny kinetic U-Net whose probability is sigmoid(6) ~ 0.998 everywhere, with a scorer
    that keeps every candidate (bias +20), rejects every one (bias -20), or none (None)."""
    torch.manual_seed(0)
    network = build_network("hirsch_unet3d", in_channels=len(KINETIC_CHANNELS), out_channels=2, base_channels=2,
                            depth=3)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor([-3.0, 3.0]))
    fields = {"version": "0", "architecture": "hirsch_unet3d", "hyperparameters": network.hyperparameters(),
              "inputs": list(KINETIC_CHANNELS), "min_phases": 2, "needs_times": True, "normalization": "kinetic",
              "working_spacing_mm": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16], "overlap": 0.25,
              "output_channel": 1, "threshold": 0.5, "relative_threshold": False, "trained_on": "nothing"}
    if scorer_bias is not None:
        file = f"{name}.lesions.safetensors"
        n = len(FEATURES)
        digest = LesionScorer(np.zeros(n), np.ones(n), np.zeros(n), scorer_bias).save(folder / file)
        fields["lesion_scorer"] = {"weights": file, "sha256": digest, "keep_probability": 0.5, "keep_best": keep_best}
    card = save_model(network, fields, folder, name)
    register_model(card, folder)
    return card


def test_the_pipeline_applies_the_cards_scorer_and_records_it(tmp_path, monkeypatch):
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.reporting.outputs import measurement_record

    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    for name, bias, best in (("plain", None, False), ("keeps", 20.0, False), ("rejects", -20.0, False),
                             ("keeps-best", -20.0, True)):
        kinetic_model(tmp_path, name, bias, best)
    phantom = generate_phantom(3, size=(96, 96, 24), spacing=(3.0, 3.0, 6.0), n_phases=3)
    results = {name: segment_study(phantom.study, load_model(name), device="cpu")
               for name in ("plain", "keeps", "rejects", "keeps-best")}
    assert results["plain"].mask.any() and results["plain"].lesions is None
    # where the network ran and marked the kept candidate, the map is the network's (grown
    # neighbours, at most the lesion's maximum, blend in through the resampling by ~1e-5)
    inside = (results["plain"].probability >= 0.9975) & (results["keeps"].probability >= 0.9975)
    assert results["keeps"].mask.any() and inside.any()
    np.testing.assert_allclose(results["keeps"].probability[inside], results["plain"].probability[inside], atol=1e-4)
    assert np.all(results["keeps"].probability <= results["plain"].probability + 1e-6)
    assert results["keeps"].lesions["candidates"] == results["keeps"].lesions["kept"] >= 1
    assert results["rejects"].lesions["kept"] == 0 and not results["rejects"].mask.any()
    assert results["rejects"].probability.max() < 0.5
    # the same scorer, but the study holds a known cancer: its most likely candidate stays
    assert results["keeps-best"].lesions["kept"] >= 1 and results["keeps-best"].mask.any()
    record = measurement_record(phantom.study, results["rejects"], {})
    assert record["lesion_candidates"] == results["rejects"].lesions and "lesion_filter" in record["timings_s"]


def test_candidates_of_an_empty_map():
    cands = find_candidates(np.zeros((4, 4, 4), np.float32), channels((4, 4, 4)), SPACING)
    assert cands.count == 0 and scorer(0.0).score(cands.features).shape == (0,)
    out = suppress_rejected(np.zeros((4, 4, 4), np.float32), Candidates(cands.labels, cands.features), np.zeros(0), 0.5)
    assert not out.any()


def test_fitting_separates_tumor_from_look_alikes():
    from breasttumorseg.training.lesion_scorer import fit_scorer, tumor_labels

    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, len(FEATURES)))
    labels = (features[:, FEATURES.index("late_change")] < -0.5).astype(float)   # washout = tumor, ~30 %
    scores = fit_scorer(features, labels).score(features)
    assert ((scores >= 0.5) == (labels > 0)).mean() > 0.97
    with pytest.raises(ValueError, match="both"):
        fit_scorer(features, np.zeros(400))
    case = {"overlap": np.array([0, 5, 50]), "sizes": np.array([10, 100, 60])}
    np.testing.assert_array_equal(tumor_labels(case), [0.0, 0.0, 1.0])


def test_fit_lesion_scorer_command_resumes_from_its_cache_and_names_the_scorer(tmp_path, monkeypatch, capsys):
    """The command on a tiny kinetic network (constant output: one candidate per phantom, not
    tumor): one line when there is nothing to learn, the phantoms it ran cached; with a third
    phantom's candidates in the cache (written here), it fits from the cache alone, writes the
    scorer beside the weights and names it in the card."""
    from breasttumorseg.cli.main import main

    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    kinetic_model(tmp_path, "tiny", None)
    cache = tmp_path / "cache"
    assert main(["fit-lesion-scorer", "tiny", "--cases", "2", "--cache", str(cache), "--quiet"]) == 2
    assert "are all not tumor: nothing to learn" in capsys.readouterr().err
    assert load_model("tiny").card.lesion_scorer is None and not (tmp_path / "tiny.lesions.safetensors").exists()
    cached = sorted(p.name for p in cache.iterdir())
    assert cached == ["case_70000.npz", "case_70001.npz"]
    stamps = [(cache / name).stat().st_mtime_ns for name in cached]
    rng = np.random.default_rng(0)
    np.savez(cache / "case_70002.npz", features=rng.normal(size=(4, len(FEATURES))), overlap=np.array([30, 0, 0, 0]),
             sizes=np.array([40, 10, 12, 9]))
    assert main(["fit-lesion-scorer", "tiny", "--cases", "3", "--cache", str(cache), "--quiet"]) == 0
    assert [(cache / name).stat().st_mtime_ns for name in cached] == stamps     # read back, not recomputed
    card = load_model("tiny").card
    assert card.lesion_scorer["weights"] == "tiny.lesions.safetensors" and card.lesion_scorer["keep_probability"] == 0.5
    assert card.metrics["lesion_scorer"]["n_cases"] == 3 and card.metrics["lesion_scorer"]["n_tumor_candidates"] == 1
    LesionScorer.load(tmp_path / card.lesion_scorer["weights"], card.lesion_scorer["sha256"])
