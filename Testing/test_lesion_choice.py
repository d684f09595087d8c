"""Lesion choice (segmentation/lesion_choice.py): which of the grown lesions that a relative
threshold keeps stay, by a real logistic scorer whose weights are set here."""

import numpy as np
import pytest
import torch

from breasttumorseg.core.errors import ModelError
from breasttumorseg.exam.kinetic_maps import kinetic_channels
from breasttumorseg.segmentation.lesion_candidates import FEATURES, NEEDED_CHANNELS, LesionScorer
from breasttumorseg.segmentation.lesion_choice import LEFT_OUT_FRACTION, RIM_VOXELS, choose_lesions, kept_by_default
from breasttumorseg.segmentation.models import card_from_json, load_model, register_model
from breasttumorseg.segmentation.networks import build_network
from breasttumorseg.segmentation.pipeline import predict_probability
from breasttumorseg.training.publishing import save_model

SPACING = (2.0, 1.0, 1.0)


def washout_scorer(weight: float = -20.0) -> LesionScorer:
    """P(tumor) from the washout alone: about 1 where the late change is negative, 0 where positive."""
    n = len(FEATURES)
    weights = np.zeros(n)
    weights[FEATURES.index("late_change")] = weight
    return LesionScorer(np.zeros(n), np.ones(n), weights, 0.0)


def two_lesion_map():
    """Two saturated blobs (a faint rim round each), the first washing out, the second persistent,
    and a weak third blob without a seed."""
    shape = (12, 40, 60)
    z, y, x = np.indices(shape)
    probability = np.zeros(shape, np.float32)
    late = np.zeros(shape, np.float32)
    peak = np.full(shape, 0.2, np.float32)
    for cx, value, washout in ((12, 1.0, True), (32, 0.99, False), (50, 0.6, False)):
        r = np.sqrt(((z - 6) * 2.0) ** 2 + (y - 20) ** 2 + (x - cx) ** 2)
        probability = np.maximum(probability, np.where(r <= 4, value, np.where(r <= 6, 0.2, 0.0)).astype(np.float32))
        peak[r <= 4] = 2.0
        late[r <= 4] = 0.6 if washout else 1.6
    channels = {"pre_relative": np.ones(shape, np.float32), "enhancement_120s": np.ones(shape, np.float32),
                "enhancement_420s": late, "enhancement_peak": peak, "late_coverage": np.ones(shape, np.float32)}
    return probability, channels, x


def test_a_relative_threshold_keeps_the_seeded_lesions_an_absolute_one_all():
    probability, _, _ = two_lesion_map()
    from breasttumorseg.segmentation.postprocess import connected_components
    labels, count = connected_components(probability >= 0.5)
    assert count == 3
    np.testing.assert_array_equal(kept_by_default(probability, labels, count, relative=True), [True, True, False])
    assert kept_by_default(probability, labels, count, relative=False).all()


def test_the_likelier_lesion_stays_and_the_other_is_scaled_below_the_floor():
    probability, channels, x = two_lesion_map()
    out, summary = choose_lesions(probability, channels, SPACING, 0.5, True, washout_scorer(), 0.5)
    assert summary == {"candidates": 2, "kept": 1}
    first, second, third = x < 22, (x >= 22) & (x < 42), x >= 42
    np.testing.assert_array_equal(out[first], probability[first])      # the washout lesion, untouched
    np.testing.assert_array_equal(out[third], probability[third])      # not kept by the threshold: not judged
    assert out[second].max() == pytest.approx(LEFT_OUT_FRACTION * 0.5, rel=1e-6)
    assert out[second].max() < 0.5 and (out[second] > 0).sum() == (probability[second] > 0).sum()
    # its rim is scaled with it, so no ring stands above the lesion in the overlay
    rim = second & (probability == np.float32(0.2))
    assert rim.any() and np.all(out[rim] <= out[second].max() * 0.2 / 0.99 + 1e-7)
    assert RIM_VOXELS >= 2


def test_likely_lesions_all_stay_and_a_lone_lesion_is_not_judged():
    probability, channels, x = two_lesion_map()
    # P = 0.5 for both: both >= 0.4
    out, summary = choose_lesions(probability, channels, SPACING, 0.5, True, washout_scorer(weight=0.0), 0.4)
    assert summary == {"candidates": 2, "kept": 2}
    np.testing.assert_array_equal(out, probability)
    lone = np.where(x < 22, probability, 0.0).astype(np.float32)
    out, summary = choose_lesions(lone, channels, SPACING, 0.5, True, washout_scorer(), 0.5)
    assert summary == {"candidates": 1, "kept": 1}
    np.testing.assert_array_equal(out, lone)
    empty = np.zeros_like(lone)
    assert choose_lesions(empty, channels, SPACING, 0.5, True, washout_scorer(), 0.5)[1] == \
        {"candidates": 0, "kept": 0}


def test_the_kinetic_channels_of_a_box_are_those_of_the_whole_study():
    from breasttumorseg.phantom import generate_phantom

    study = generate_phantom(5, size=(64, 64, 20), spacing=(3.0, 3.0, 6.0), n_phases=4).study
    whole = kinetic_channels(study, NEEDED_CHANNELS)
    box = (slice(3, 15), slice(10, 40), slice(20, 64))
    np.testing.assert_array_equal(kinetic_channels(study, NEEDED_CHANNELS, box), whole[(slice(None),) + box])


def card_fields(**changes):
    fields = {"version": "0", "architecture": "hirsch_unet3d", "hyperparameters": {},
              "inputs": ["first_post_contrast", "dce_in", "dce_out"], "min_phases": 2, "needs_times": True,
              "normalization": "pre_contrast_p95", "working_spacing_mm": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16],
              "overlap": 0.25, "output_channel": 1, "threshold": 0.5, "relative_threshold": True,
              "trained_on": "nothing", "lesion_growth": {"grow_mm": 8.0, "enhancement_fraction": 0.5}}
    return dict(fields, **changes)


def test_the_card_field_is_validated(tmp_path):
    base = dict(card_fields(), name="m", weights="m.safetensors", sha256="")
    good = {"weights": "m.lesions.safetensors", "sha256": "b" * 64, "keep_probability": 0.5}
    assert card_from_json(dict(base, lesion_choice=good), tmp_path, "card").lesion_choice == good
    assert card_from_json(base, tmp_path, "card").lesion_choice is None
    for bad in (dict(good, keep_probability=1.5), dict(good, keep_probability=True), dict(good, extra=1),
                dict(good, weights="../m.safetensors"), dict(good, sha256="xyz"), {"weights": "m.safetensors"}):
        with pytest.raises(ModelError, match="lesion_choice"):
            card_from_json(dict(base, lesion_choice=bad), tmp_path, "card")
    with pytest.raises(ModelError, match="lesion_choice.*lesion_growth"):
        card_from_json(dict(base, lesion_growth=None, lesion_choice=good), tmp_path, "card")


def test_the_pipeline_applies_the_cards_choice_and_records_it(tmp_path, monkeypatch):
    """A network whose probability is ~0.998 everywhere, inside a region of two boxes apart (two
    equally saturated lesions), grown; with a choice that keeps every kept lesion and one that
    keeps only the likeliest: the first changes nothing, the second leaves the other lesion below
    the floor, and both record their summary."""
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.segmentation.lesion_growth import lesion_floor
    from breasttumorseg.segmentation.postprocess import connected_components

    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    n = len(FEATURES)
    for name, bias in (("grows", None), ("keeps", 20.0), ("likeliest", -20.0)):
        torch.manual_seed(0)
        network = build_network("hirsch_unet3d", in_channels=3, out_channels=2, base_channels=2, depth=3)
        with torch.no_grad():
            network.head.weight.zero_()
            network.head.bias.copy_(torch.tensor([-3.0, 3.0]))
        fields = card_fields(hyperparameters=network.hyperparameters())
        if bias is not None:
            file = f"{name}.lesions.safetensors"
            digest = LesionScorer(np.zeros(n), np.ones(n), np.zeros(n), bias).save(tmp_path / file)
            fields["lesion_choice"] = {"weights": file, "sha256": digest, "keep_probability": 0.5}
        register_model(save_model(network, fields, tmp_path, name), tmp_path)
    study = generate_phantom(3, size=(96, 96, 24), spacing=(3.0, 3.0, 6.0), n_phases=3).study
    region = np.zeros(study.geometry.shape_zyx, bool)
    region[4:20, 20:40, 10:30] = region[4:20, 50:70, 60:85] = True
    maps = {name: predict_probability(study, load_model(name), device="cpu", region=region)
            for name in ("grows", "keeps", "likeliest")}
    grown = maps["grows"][0]
    assert "lesions" not in maps["grows"][2]
    np.testing.assert_array_equal(maps["keeps"][0], grown)
    floor = lesion_floor(grown, 0.5, True)
    labels, count = connected_components(grown >= floor)
    kept = kept_by_default(grown, labels, count, relative=True)
    assert maps["keeps"][2]["lesions"] == {"candidates": int(kept.sum()), "kept": int(kept.sum())}
    assert kept.sum() == 2
    chosen, _, timings = maps["likeliest"]
    assert timings["lesions"] == {"candidates": 2, "kept": 1}
    assert np.all(chosen <= grown)
    np.testing.assert_array_equal(chosen[labels == 1], grown[labels == 1])   # the likeliest (first of equals)
    new_floor = lesion_floor(chosen, 0.5, True)
    left, left_count = connected_components(chosen >= new_floor)
    assert left_count == 1 and chosen[labels == 2].max() == pytest.approx(LEFT_OUT_FRACTION * floor, rel=1e-5)


def test_leaving_out_the_strongest_lesion_brings_no_unjudged_lesion_into_the_mask():
    """Relative threshold: the persistent lesion held the maximum (1.0), the washout one stays
    (0.97); a third (0.93) had no seed (<= 0.95) but would have one under the new maximum
    (> 0.95 x 0.97): it is left out too, and the mask holds the washout lesion alone."""
    from breasttumorseg.segmentation.postprocess import ThresholdSettings, segment_probability
    from breasttumorseg.core.geometry import Geometry

    probability, channels, x = two_lesion_map()
    strongest, staying, unseeded = x < 22, (x >= 22) & (x < 42), x >= 42
    probability = np.where(strongest, probability, np.where(staying, probability * 0.97 / 0.99,
                                                            probability * 0.93 / 0.6)).astype(np.float32)
    channels = dict(channels, enhancement_420s=np.where(staying, 0.6, np.where(strongest, 1.6, 0.8)).astype(np.float32)
                    * (channels["enhancement_420s"] > 0))
    geometry = Geometry(size=probability.shape[::-1], spacing=SPACING[::-1], origin=(0.0, 0.0, 0.0))
    settings = ThresholdSettings(threshold=0.5, relative=True)
    assert segment_probability(probability, geometry, settings)[unseeded].sum() == 0   # no seed before
    out, summary = choose_lesions(probability, channels, SPACING, 0.5, True, washout_scorer(), 0.5)
    assert summary == {"candidates": 2, "kept": 1}
    mask = segment_probability(out, geometry, settings) > 0
    assert mask[staying].any() and not mask[strongest].any() and not mask[unseeded].any()
    np.testing.assert_array_equal(out[staying], probability[staying])
    assert out[unseeded].max() < 0.5 * out.max()


def test_fit_lesion_scorer_fits_the_lesion_choice_of_a_card_with_growth(tmp_path, monkeypatch):
    """The command on a tiny network with lesion growth (probability ~0.998 everywhere): the
    candidates of each phantom are the grown lesions its relative threshold keeps, on the
    study's grid, with the tumor's voxel count; with a cached third phantom holding a tumor
    lesion it fits, writes the scorer and names it as the card's lesion choice (not as a
    lesion scorer)."""
    from breasttumorseg.cli.main import main

    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    torch.manual_seed(0)
    network = build_network("hirsch_unet3d", in_channels=3, out_channels=2, base_channels=2, depth=3)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor([-3.0, 3.0]))
    register_model(save_model(network, card_fields(hyperparameters=network.hyperparameters()), tmp_path, "tiny"),
                   tmp_path)
    cache = tmp_path / "cache"
    main(["fit-lesion-scorer", "tiny", "--cases", "2", "--cache", str(cache), "--quiet"])
    for seed in (70000, 70001):
        with np.load(cache / f"case_{seed}.npz") as data:
            assert data["features"].shape[1] == len(FEATURES) and data["tumor"][0] > 0
            assert len(data["overlap"]) == len(data["sizes"]) == len(data["features"]) >= 1
    rng = np.random.default_rng(0)
    np.savez(cache / "case_70002.npz", features=rng.normal(size=(3, len(FEATURES))), overlap=np.array([30, 0, 0]),
             sizes=np.array([40, 10, 12]), tumor=np.array([35]))
    np.savez(cache / "case_70003.npz", features=rng.normal(size=(2, len(FEATURES))), overlap=np.array([0, 0]),
             sizes=np.array([40, 10]), tumor=np.array([35]))
    assert main(["fit-lesion-scorer", "tiny", "--cases", "4", "--cache", str(cache), "--quiet"]) == 0
    card = load_model("tiny").card
    assert card.lesion_scorer is None and card.lesion_choice["weights"] == "tiny.lesions.safetensors"
    assert card.metrics["lesion_choice"]["n_cases"] == 4 and card.metrics["lesion_choice"]["keep_best"] is True
    LesionScorer.load(tmp_path / card.lesion_choice["weights"], card.lesion_choice["sha256"])
    # the protocol's own appearance (as the held-out benchmark draws its cases): other phantoms, cached beside
    main(["fit-lesion-scorer", "tiny", "--cases", "2", "--cache", str(cache), "--appearance", "protocol", "--quiet"])
    with np.load(cache / "case_70000.npz") as randomized, np.load(cache / "case_70000_protocol.npz") as protocol:
        assert randomized["tumor"][0] == protocol["tumor"][0]     # the same tumor ...
        assert not np.array_equal(randomized["features"], protocol["features"])   # ... seen otherwise


def test_the_model_card_describes_the_choice_and_where_it_was_fitted(tmp_path):
    from breasttumorseg.segmentation import model_cards

    fit = {"seeds": [70000, 70023], "appearance": "both", "n_cases": 48, "n_candidates": 54,
           "n_tumor_candidates": 45, "keep_probability": 0.5}
    fields = dict(card_fields(), name="m", weights="m.safetensors", sha256="", metrics={"lesion_choice": fit},
                  lesion_choice={"weights": "m.lesions.safetensors", "sha256": "c" * 64, "keep_probability": 0.5})
    card = card_from_json(fields, tmp_path, "card")
    assert "a scorer of their kinetics and shape chooses among them" in model_cards.description(card)
    text = model_cards.markdown(card, 0)
    assert "fitted on 54 such lesions (45 tumor) on 48 further phantoms (seeds 70000-70023, each seed with its " \
           "protocol's own look and with a randomised one" in text and "P(tumor) >= 0.5" in text
    plain = card_from_json(dict(fields, lesion_choice=None), tmp_path, "card")
    assert "chooses" not in model_cards.description(plain) and "lesion_choice" not in model_cards.markdown(plain, 0)
