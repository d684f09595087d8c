"""Lesion growth: a lesion takes in its enhancing rim and no more; the card field; the pipeline's use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breasttumorseg.core.errors import ModelError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.segmentation.lesion_growth import (
    GROW_ENHANCEMENT, GROW_MM, grow_all_lesions, grow_lesions, lesion_floor)
from breasttumorseg.segmentation.models import card_from_json, load_model, register_model, save_model
from breasttumorseg.segmentation.networks import build_network
from breasttumorseg.segmentation.pipeline import predict_probability, segment_study
from breasttumorseg.segmentation.postprocess import ThresholdSettings, connected_components, segment_probability

SPACING = (1.5, 1.5, 1.5)   # z, y, x mm


def tumor_with_a_confident_core(core_probability: float):
    """An enhancing tumor (r 8 mm, peak +200 %) whose core (r 4 mm) the network marks with
    ``core_probability`` and whose rim it misses (0.02); enhancing tissue beyond the growth
    zone, a weaker half-shell (below GROW_ENHANCEMENT x the core) and a second, faint lesion."""
    z, y, x = np.ogrid[:40, :60, :60]
    r = np.sqrt((z - 20.0) ** 2 + (y - 30.0) ** 2 + (x - 20.0) ** 2) * 1.5
    p = np.where(r <= 4, core_probability, 0.02).astype(np.float32)
    peak = np.where(r <= 8, 2.0, 0.3).astype(np.float32)
    far = (r > GROW_MM + 4 + 3) & (r < 40)           # enhancing, but not connected through the rim
    peak[far & (np.abs(z - 20) < 3)] = 2.0
    weak = (r > 6) & (r <= 8) & (x < 20)
    peak[weak] = 0.9 * GROW_ENHANCEMENT * 2.0
    rim = (r > 4) & (r <= 8) & ~weak
    return p, peak, r, rim, weak, far


def test_a_lesion_grows_into_its_enhancing_rim_and_no_further():
    """The rim joins the lesion at probabilities between the floor and the lesion's maximum,
    graded by enhancement; what lies beyond the zone or enhances too weakly is untouched."""
    p, peak, r, rim, weak, far = tumor_with_a_confident_core(0.9)
    labels, count = connected_components(p >= 0.5)
    assert count == 1
    out = grow_lesions(p, labels, [1], peak, SPACING, floor=0.5)
    assert np.all(out[rim] >= 0.5) and np.all(out[rim] <= 0.9)
    np.testing.assert_array_equal(out[weak], p[weak])
    np.testing.assert_array_equal(out[far], p[far])
    np.testing.assert_array_equal(out[r <= 4], p[r <= 4])
    assert out.dtype == np.float32 and p[rim].max() == np.float32(0.02)   # the input is not changed


@pytest.mark.parametrize("core", [0.3, 0.7, 0.1234567, 1.0])
def test_a_relative_card_shows_the_grown_lesion_at_its_default_threshold(core):
    """Hirsch et al.'s relative rule (0.5 x max, seeded): a lesion the network marks weakly
    still grows, the grown voxels pass the default threshold however the floor rounds in
    float32, the maximum stays and a lesion under the floor does not grow."""
    p, peak, r, rim, weak, far = tumor_with_a_confident_core(core)
    p[20, 30, 50] = 0.4 * core                      # a second lesion, under 0.5 x max
    peak[18:23, 28:33, 48:53] = 2.0
    floor = lesion_floor(p, 0.5, True)
    assert floor == pytest.approx(0.5 * core)
    out = grow_all_lesions(p, peak, SPACING, floor)
    assert out.max() == p.max()
    geometry = Geometry(size=p.shape[::-1], spacing=SPACING, origin=(0.0, 0.0, 0.0))
    mask = segment_probability(out, geometry, ThresholdSettings(threshold=0.5, relative=True, fill_holes=False)) > 0
    np.testing.assert_array_equal(mask, (r <= 4) | rim)
    assert out[20, 30, 50] == p[20, 30, 50] and out[20, 30, 49] == p[20, 30, 49]


def test_a_map_without_lesions_is_returned_as_it_is():
    empty = np.zeros((5, 6, 7), np.float32)
    assert not grow_all_lesions(empty, np.ones_like(empty), SPACING, lesion_floor(empty, 0.5, True)).any()
    faint = np.full((5, 6, 7), 0.1, np.float32)
    np.testing.assert_array_equal(grow_all_lesions(faint, np.ones_like(faint), SPACING, 0.5), faint)


def test_the_peak_enhancement_of_a_box_is_that_of_the_kinetic_maps():
    """Growth reads the peak enhancement on the study's grid over the lesions' box only:
    the same numbers as the kinetic channel over the whole study."""
    from breasttumorseg.exam.kinetic_maps import kinetic_channels, peak_enhancement
    from breasttumorseg.phantom import generate_phantom

    study = generate_phantom(5, size=(64, 64, 20), spacing=(3.0, 3.0, 6.0), n_phases=4).study
    whole = kinetic_channels(study, ("enhancement_peak",))[0]
    box = (slice(3, 15), slice(10, 40), slice(20, 64))
    np.testing.assert_array_equal(peak_enhancement(study, box), whole[box])
    np.testing.assert_array_equal(peak_enhancement(study), whole)


def card_fields(**changes):
    fields = {"version": "0", "architecture": "hirsch_unet3d", "hyperparameters": {},
              "inputs": ["first_post_contrast", "dce_in", "dce_out"], "min_phases": 2, "needs_times": True,
              "normalization": "pre_contrast_p95", "working_spacing_mm": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16],
              "overlap": 0.25, "output_channel": 1, "threshold": 0.5, "relative_threshold": True,
              "trained_on": "nothing"}
    return dict(fields, **changes)


def test_the_card_field_is_validated(tmp_path):
    base = dict(card_fields(), name="m", weights="m.safetensors", sha256="")
    good = {"grow_mm": 7.5, "enhancement_fraction": 0.7}
    assert card_from_json(dict(base, lesion_growth=good), tmp_path, "card").lesion_growth == good
    assert card_from_json(base, tmp_path, "card").lesion_growth is None
    for bad in ({"grow_mm": 7.5}, dict(good, extra=1), dict(good, grow_mm=0), dict(good, grow_mm=31),
                dict(good, enhancement_fraction=1.5), dict(good, enhancement_fraction=True), [7.5, 0.7]):
        with pytest.raises(ModelError, match="lesion_growth"):
            card_from_json(dict(base, lesion_growth=bad), tmp_path, "card")
    with pytest.raises(ModelError, match="lesion_growth.*tumor models"):
        card_from_json(dict(base, lesion_growth=good, task="breast"), tmp_path, "card")


def test_the_pipeline_grows_the_lesions_of_a_card_that_asks_for_it(tmp_path, monkeypatch):
    """The same random network with and without ``lesion_growth``: growth only raises the
    probability, grown voxels pass the card's default threshold, and the timing is recorded."""
    from breasttumorseg.phantom import generate_phantom

    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    for name, growth in (("plain", None), ("grows", {"grow_mm": 8.0, "enhancement_fraction": 0.5})):
        torch.manual_seed(0)
        network = build_network("hirsch_unet3d", in_channels=3, out_channels=2, base_channels=2, depth=3)
        fields = card_fields(hyperparameters=network.hyperparameters())
        if growth:
            fields["lesion_growth"] = growth
        register_model(save_model(network, fields, tmp_path, name), tmp_path)
    phantom = generate_phantom(3, size=(96, 96, 24), spacing=(3.0, 3.0, 6.0), n_phases=3)
    plain, grown = (segment_study(phantom.study, load_model(name), device="cpu") for name in ("plain", "grows"))
    assert "lesion_growth" in grown.timings_s and "lesion_growth" not in plain.timings_s
    assert np.all(grown.probability >= plain.probability - 1e-6)
    assert grown.mask.sum() > plain.mask.sum() > 0
    # with a region (the breast prior), lesions grow within it only
    region = np.zeros(phantom.study.geometry.shape_zyx, bool)
    region[:, :, :48] = True
    probability, _, timings = predict_probability(phantom.study, load_model("grows"), device="cpu", region=region)
    assert "lesion_growth" in timings and probability[region].max() > 0 and not probability[~region].any()
