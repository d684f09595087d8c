"""The whole-breast prior: growing the mask in millimetres, specks dropped, and how it
restricts a tumor model's probability (real networks, real registry files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from breasttumorseg.segmentation.breast import grow, largest_components
from breasttumorseg.core.errors import ModelError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.segmentation.models import load_model, register_model, save_model
from breasttumorseg.segmentation.networks import build_network
from breasttumorseg.segmentation.pipeline import predict_probability, segment_study
from breasttumorseg.exam.dce_exam import DCEStudy

GRID = Geometry((32, 32, 16), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0))


def study() -> DCEStudy:
    rng = np.random.default_rng(0)
    pre = 100 + 5 * rng.standard_normal(GRID.shape_zyx).astype(np.float32)
    post = pre.copy()
    post[6:10, 10:20, 10:20] += 150
    return DCEStudy(np.stack([pre, post, post * 0.95]), GRID, np.array([0.0, 90.0, 180.0]), ["pre", "p1", "p2"],
                    "test study")


def test_grow_uses_millimetres_on_anisotropic_grids():
    mask = np.zeros(GRID.shape_zyx, bool)
    mask[8, 16, 16] = True
    grown = grow(mask, GRID.spacing, 8.0)               # spacing x, y 2 mm, z 4 mm
    assert grown[8, 16, 12] and grown[8, 16, 20] and not grown[8, 16, 11]   # 4 voxels of 2 mm in x
    assert grown[6, 16, 16] and grown[10, 16, 16] and not grown[5, 16, 16]  # 2 voxels of 4 mm in z
    assert np.array_equal(grow(mask, GRID.spacing, 0.0), mask)


def test_specks_are_dropped_breasts_kept():
    mask = np.zeros((20, 40, 40), bool)
    mask[2:18, 5:20, 5:20] = True      # left breast
    mask[2:18, 5:18, 24:38] = True     # right breast, a bit smaller
    mask[0, 39, 39] = True             # a speck
    kept = largest_components(mask)
    assert kept[10, 10, 10] and kept[10, 10, 30] and not kept[0, 39, 39]


def tiny_model(folder, name, task, bias_to_tumor: float, inputs=("first_post_contrast", "dce_in", "dce_out"),
               breast_mask=None):
    """A tiny U-Net whose head is constant: probability of channel 1 = sigmoid(2 x bias)."""
    torch.manual_seed(0)
    network = build_network("hirsch_unet3d", in_channels=len(inputs), out_channels=2, base_channels=2, depth=3)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor([-bias_to_tumor, bias_to_tumor]))
    fields = {"version": "0", "architecture": "hirsch_unet3d", "hyperparameters": network.hyperparameters(),
              "inputs": list(inputs), "min_phases": 2, "needs_times": True, "normalization": "pre_contrast_p95",
              "working_spacing_mm": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16], "overlap": 0.25,
              "output_channel": 1, "threshold": 0.5, "relative_threshold": False, "trained_on": "nothing",
              "task": task, "breast_mask": breast_mask}
    card = save_model(network, fields, folder, name)
    register_model(card, folder)
    return card


def test_a_region_restricts_the_probability(tmp_path):
    card = tiny_model(tmp_path, "everywhere", "tumor", 3.0)
    region = np.zeros(GRID.shape_zyx, bool)
    region[:, :, :16] = True
    probability, _, _ = predict_probability(study(), load_model(card.weights_path), device="cpu", region=region)
    assert np.all(probability[~region] == 0.0) and probability[region].min() > 0.9


def test_the_card_names_the_breast_model_the_engine_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    tiny_model(tmp_path, "no-breast", "breast", -3.0, inputs=("pre_contrast",))
    tiny_model(tmp_path, "all-breast", "breast", 3.0, inputs=("pre_contrast",))
    tiny_model(tmp_path, "tumor", "tumor", 3.0, breast_mask="all-breast")
    result = segment_study(study(), load_model("tumor"), device="cpu")
    assert result.breast_model.name == "all-breast" and result.breast_region.all()
    assert "breast_mask" in result.timings_s

    warnings = []
    data = json.loads((tmp_path / "tumor.json").read_text())
    data["breast_mask"] = "no-breast"
    (tmp_path / "tumor.json").write_text(json.dumps(data))
    registry = json.loads((tmp_path / "models.json").read_text())
    for entry in registry["models"]:
        if entry["name"] == "tumor":
            entry["breast_mask"] = "no-breast"
    (tmp_path / "models.json").write_text(json.dumps(registry))
    result = segment_study(study(), load_model("tumor"), device="cpu", warn=warnings.append)
    assert result.breast_region.all() and "found no breast" in warnings[0]  # never hides a tumor

    without = segment_study(study(), load_model("tumor"), device="cpu", breast_model=None)
    assert without.breast_region is None and without.breast_model is None


def test_a_breast_model_that_is_missing_or_not_a_breast_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    tiny_model(tmp_path, "other-tumor", "tumor", 1.0)
    tiny_model(tmp_path, "a", "tumor", 1.0, breast_mask="other-tumor")
    tiny_model(tmp_path, "b", "tumor", 1.0, breast_mask="absent")
    with pytest.raises(ModelError, match="task is 'tumor'"):
        segment_study(study(), load_model("a"), device="cpu")
    with pytest.raises(ModelError, match="unknown model 'absent'") as caught:
        segment_study(study(), load_model("b"), device="cpu")
    assert "\n" not in str(caught.value)


def test_a_card_may_name_the_classical_breast_mask(tmp_path, monkeypatch):
    """``breast_mask: "classical"``: the model-free mask (grown 10 mm) restricts the tumor model,
    and the record says which prior ran; on a grid with no body the whole grid is searched."""
    from breasttumorseg.segmentation.breast import BREAST_MARGIN_MM
    from breasttumorseg.exam.breast_classical import classical_breast_mask
    from breasttumorseg.reporting.outputs import measurement_record
    from breasttumorseg.phantom import generate_phantom

    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(tmp_path))
    tiny_model(tmp_path, "tumor", "tumor", 3.0, breast_mask="classical")
    phantom = generate_phantom(3, size=(96, 96, 24), spacing=(3.0, 3.0, 6.0), n_phases=3)
    result = segment_study(phantom.study, load_model("tumor"), device="cpu")
    breasts = classical_breast_mask(phantom.study)
    assert result.breast_model is None and "breast_mask" in result.timings_s
    assert np.array_equal(result.breast_region, grow(breasts, phantom.study.geometry.spacing, BREAST_MARGIN_MM))
    assert 0 < result.breast_region.mean() < 1
    assert np.all(result.probability[~result.breast_region] == 0.0)
    assert measurement_record(phantom.study, result, {})["breast_mask_model"] == "classical"

    warnings = []
    flat = study()
    flat.phases[:] = 100.0                                   # nothing but one level: no body, no breast
    result = segment_study(flat, load_model("tumor"), device="cpu", warn=warnings.append)
    assert result.breast_region.all() and "classical breast mask found no breast" in warnings[0]


def test_the_classical_prior_on_blocks_holds_the_fine_mask_and_the_tumor():
    """As a prior the classical mask is found on ~3 mm blocks and grown there: it must still
    hold the voxel-level mask and the tumor, and leave the thorax out."""
    from breasttumorseg.exam.breast_classical import block_expand, block_factors, block_mean, classical_breast_mask
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.segmentation.breast import classical_breast_region

    assert block_factors((0.75, 0.75, 2.0), 3.0) == (1, 4, 4) and block_factors((0.7, 0.7, 3.0), None) == (1, 1, 1)
    image = np.arange(3 * 5 * 7, dtype=np.float32).reshape(3, 5, 7)
    blocks = block_mean(image, (1, 2, 3))
    assert blocks.shape == (3, 2, 2) and blocks[0, 0, 0] == image[0, :2, :3].mean()
    expanded = block_expand(blocks > blocks.mean(), (1, 2, 3), image.shape)
    assert expanded.shape == image.shape and np.array_equal(expanded[:, 4, 6], expanded[:, 3, 5])

    phantom = generate_phantom(500001, size=(192, 192, 40), spacing=(0.9, 0.9, 3.0), n_phases=4)
    region = classical_breast_region(phantom.study)
    fine = classical_breast_mask(phantom.study)
    assert fine.any() and region[fine].mean() >= 0.995
    assert region[phantom.tumor_mask > 0].all()
    assert region.mean() < 0.8
