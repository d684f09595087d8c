"""Model registry: cards, safetensors weights, checksums and every way loading can fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from breasttumorseg.core.errors import ModelError
from breasttumorseg.segmentation.models import (
    LoadedModel, ModelCard, default_model_name, find_model, list_models, load_model, register_model, registry_path,
    save_model, sha256_of,
)
from breasttumorseg.segmentation.networks import build_network

BUNDLED = Path(__file__).resolve().parents[1] / "BreastTumorSeg" / "Resources" / "Models"


def card_fields(**changes) -> dict:
    """Card fields of a tiny Hirsch U-Net (2 base channels, depth 3)."""
    fields = {
        "version": "0.0.1", "architecture": "hirsch_unet3d",
        "hyperparameters": {"in_channels": 3, "out_channels": 2, "base_channels": 2, "depth": 3, "convs_per_level": 2},
        "inputs": ["first_post_contrast", "dce_in", "dce_out"], "min_phases": 2, "needs_times": True,
        "normalization": "pre_contrast_p95", "working_spacing_mm": [1.5, 1.5, 1.5], "patch_size": [16, 32, 32],
        "overlap": 0.5, "output_channel": 1, "threshold": 0.5, "relative_threshold": False,
        "trained_on": "nothing (random weights for a test)", "description": "test", "metrics": {"median_dice": 0.0},
    }
    fields.update(changes)
    return fields


def tiny_network(base_channels: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    return build_network("hirsch_unet3d", in_channels=3, out_channels=2, base_channels=base_channels, depth=3)


@pytest.fixture
def saved(tmp_path) -> tuple[ModelCard, torch.nn.Module]:
    network = tiny_network()
    card = save_model(network, card_fields(), tmp_path / "user", "tiny")
    return card, network


@pytest.fixture
def registry(tmp_path, monkeypatch, saved):
    """A registry folder (via BREASTTUMORSEG_MODELS) holding the tiny model."""
    card, _ = saved
    folder = tmp_path / "registry"
    folder.mkdir()
    for name in ("tiny.safetensors",):
        (folder / name).write_bytes((card.folder / name).read_bytes())
    register_model(card, folder)
    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(folder))
    return folder


# ----------------------------------------------------------------------------- bundled registry
def test_bundled_registry_lists_the_default_model(monkeypatch):
    monkeypatch.delenv("BREASTTUMORSEG_MODELS", raising=False)
    assert registry_path() == BUNDLED / "models.json"
    cards = list_models()
    names = [c.name for c in cards]
    assert default_model_name() in names
    default = find_model(None)
    assert default.architecture == "hirsch_unet3d"
    assert default.inputs == ("first_post_contrast", "dce_in", "dce_out")
    assert default.normalization == "pre_contrast_p95" and default.needs_times and default.min_phases == 2
    assert default.working_spacing_mm == (1.5, 1.5, 1.5)
    assert all(p % 8 == 0 for p in default.patch_size)
    assert "synthetic" in default.trained_on and "no real patient data" in default.trained_on
    assert default.weights == f"{default.name}.safetensors"
    # the card's network can be built, and the patch fits its downsampling
    network = build_network(default.architecture, **default.hyperparameters)
    assert all(p % network.size_divisor == 0 for p in default.patch_size)


def test_bundled_default_loads_or_says_its_weights_are_missing(monkeypatch):
    monkeypatch.delenv("BREASTTUMORSEG_MODELS", raising=False)
    card = find_model(None)
    if card.weights_path.is_file():
        model = load_model(None)
        assert sha256_of(model.weights_path) == card.sha256
        assert card.metrics.get("median_dice") is not None
    else:
        with pytest.raises(ModelError, match="not found") as caught:
            load_model(None)
        assert card.weights in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- round trip
def test_save_and_load_round_trip_by_path(saved):
    card, network = saved
    weights = card.folder / "tiny.safetensors"
    assert (card.folder / "tiny.json").is_file()
    assert card.sha256 == sha256_of(weights) and len(card.sha256) == 64
    assert weights.read_bytes()[:8] != b"\x80\x02\x8a\nl\xfc\x9cF"  # not a torch pickle
    model = load_model(weights)
    assert isinstance(model, LoadedModel) and model.card == card and model.weights_path == weights
    assert not model.network.training
    x = torch.randn(1, 3, 16, 32, 32)
    network.eval()
    with torch.no_grad():
        assert torch.equal(model.network(x), network(x))
    # the sidecar card can be named instead of the weights
    assert find_model(str(card.folder / "tiny.json")).sha256 == card.sha256
    # a leftover temporary file would be partial output
    assert sorted(p.name for p in card.folder.iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_registry_by_name(registry, saved):
    card, network = saved
    assert [c.name for c in list_models()] == ["tiny"]
    assert default_model_name() == "tiny"
    model = load_model("tiny")
    assert model.weights_path == registry / "tiny.safetensors"
    for name, tensor in network.state_dict().items():
        assert torch.equal(model.network.state_dict()[name], tensor)
    data = json.loads((registry / "models.json").read_text())
    assert data["default"] == "tiny" and data["models"][0]["sha256"] == card.sha256


def test_unknown_name_lists_the_known_ones(registry):
    with pytest.raises(ModelError) as caught:
        find_model("no-such-model")
    message = str(caught.value)
    assert "no-such-model" in message and "tiny" in message and "models.json" in message and "\n" not in message


# ----------------------------------------------------------------------------- refusals
def test_checksum_mismatch_names_the_file(saved):
    card, _ = saved
    weights = card.folder / "tiny.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # flip one byte of tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as caught:
        load_model(weights)
    message = str(caught.value)
    assert "checksum mismatch" in message and str(weights) in message
    assert card.sha256[:12] in message and sha256_of(weights)[:12] in message


def test_architecture_mismatch_is_refused(tmp_path):
    card = save_model(tiny_network(base_channels=2), card_fields(), tmp_path, "small")
    card_file = tmp_path / "small.json"
    data = json.loads(card_file.read_text())
    data["hyperparameters"]["base_channels"] = 4  # the card lies about the weights
    card_file.write_text(json.dumps(data))
    with pytest.raises(ModelError) as caught:
        load_model(card.weights_path)
    message = str(caught.value)
    assert "weights do not match architecture hirsch_unet3d" in message
    assert "base_channels=4" in message and str(card.weights_path) in message and "\n" not in message


def test_missing_and_extra_tensors_are_refused(tmp_path):
    from safetensors.torch import save_file

    network = tiny_network()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    removed = sorted(state)[0]
    del state[removed]
    state["extra.weight"] = torch.zeros(3)
    card = save_model(network, card_fields(), tmp_path, "tampered")
    save_file(state, str(card.weights_path))
    data = json.loads((tmp_path / "tampered.json").read_text())
    data["sha256"] = sha256_of(card.weights_path)  # a consistent checksum: only the keys are wrong
    (tmp_path / "tampered.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as caught:
        load_model(card.weights_path)
    message = str(caught.value)
    assert "missing" in message and removed in message and "unexpected" in message and "extra.weight" in message


def test_unknown_architecture(tmp_path):
    card = save_model(tiny_network(), card_fields(), tmp_path, "m")
    data = json.loads((tmp_path / "m.json").read_text())
    data["architecture"] = "transformer9000"
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="transformer9000") as caught:
        load_model(card.weights_path)
    assert "m.json" in str(caught.value) or "m.safetensors" in str(caught.value)


@pytest.mark.parametrize("field, value, fragment", [
    ("inputs", "dce_in", "'inputs'"),
    ("inputs", ["first_post_contrast", "dce_in", "t2_weighted"], "t2_weighted"),
    ("patch_size", [16, 32], "'patch_size'"),
    ("working_spacing_mm", [1.5, 0, 1.5], "'working_spacing_mm'"),
    ("normalization", "zscore", "'normalization'"),
    ("threshold", 1.5, "'threshold'"),
    ("min_phases", 1, "'min_phases'"),
    ("sha256", "abc", "'sha256'"),
    ("needs_times", "yes", "'needs_times'"),
    ("output_channel", 2, "'output_channel'"),
])
def test_malformed_card_fields_are_named(saved, field, value, fragment):
    card, _ = saved
    card_file = card.folder / "tiny.json"
    data = json.loads(card_file.read_text())
    data[field] = value
    card_file.write_text(json.dumps(data))
    with pytest.raises(ModelError) as caught:
        load_model(card.folder / "tiny.safetensors")
    message = str(caught.value)
    assert fragment in message and str(card_file) in message and "\n" not in message


def test_card_that_is_not_json_or_lacks_fields(saved):
    card, _ = saved
    card_file = card.folder / "tiny.json"
    card_file.write_text('{"name": "tiny", ')
    with pytest.raises(ModelError, match="not valid JSON") as caught:
        find_model(card.folder / "tiny.safetensors")
    assert str(card_file) in str(caught.value)
    card_file.write_text(json.dumps({"name": "tiny", "version": "1"}))
    with pytest.raises(ModelError, match="lacks the field") as caught:
        find_model(card.folder / "tiny.safetensors")
    assert "'architecture'" in str(caught.value)


def test_weights_without_a_card_or_missing(tmp_path, saved):
    card, _ = saved
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes((card.folder / "tiny.safetensors").read_bytes())
    with pytest.raises(ModelError, match="no model card") as caught:
        load_model(lonely)
    assert "lonely.json" in str(caught.value)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def test_registry_entry_whose_weights_are_missing(registry):
    (registry / "tiny.safetensors").unlink()
    assert [c.name for c in list_models()] == ["tiny"]  # listing does not need the weights
    with pytest.raises(ModelError, match="not found") as caught:
        load_model("tiny")
    assert str(registry / "tiny.safetensors") in str(caught.value)


def test_malformed_registry(registry):
    (registry / "models.json").write_text("[1, 2")
    with pytest.raises(ModelError, match="not valid JSON") as caught:
        list_models()
    assert "models.json" in str(caught.value)
    (registry / "models.json").write_text(json.dumps({"models": [{"name": "x"}]}))
    with pytest.raises(ModelError, match="entry 1") as caught:
        list_models()
    assert "lacks the field" in str(caught.value)


def test_not_a_safetensors_file(tmp_path):
    card = save_model(tiny_network(), card_fields(), tmp_path, "junk")
    card.weights_path.write_bytes(b"\x80\x04not safetensors at all" * 10)  # e.g. a pickle
    data = json.loads((tmp_path / "junk.json").read_text())
    data["sha256"] = sha256_of(card.weights_path)
    (tmp_path / "junk.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="not a readable safetensors file") as caught:
        load_model(card.weights_path)
    assert str(card.weights_path) in str(caught.value)


def test_save_model_refuses_a_bad_card_before_writing(tmp_path):
    with pytest.raises(ModelError, match="'inputs'"):
        save_model(tiny_network(), card_fields(inputs=[]), tmp_path / "out", "bad")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_in_channels_must_match_inputs(tmp_path):
    with pytest.raises(ModelError, match="in_channels=3 but lists 2 inputs"):
        save_model(tiny_network(), card_fields(inputs=["dce_in", "dce_out"]), tmp_path, "m")


def test_loaded_network_predicts_on_the_device(saved):
    card, _ = saved
    model = load_model(card.folder / "tiny.safetensors", device="cpu")
    assert next(model.network.parameters()).device.type == "cpu"
    with torch.no_grad():
        out = model.network(torch.zeros(1, 3, 16, 32, 32))
    assert out.shape == (1, 2, 16, 32, 32) and np.isfinite(out.numpy()).all()


# ----------------------------------------------------------------------------- tasks, phase series, defaults
def test_registry_default_follows_the_number_of_phases(registry, saved, tmp_path):
    card, network = saved
    other = save_model(network, card_fields(), registry, "other")
    register_model(other, registry)
    data = json.loads((registry / "models.json").read_text())
    data["default_by_phases"] = {"2": "other", "3": "other"}
    (registry / "models.json").write_text(json.dumps(data))
    assert default_model_name() == "tiny"
    assert default_model_name(2) == "other" and default_model_name(3) == "other" and default_model_name(6) == "tiny"
    assert load_model(None, n_phases=2).card.name == "other"
    data["default_by_phases"] = {"two": 5}
    (registry / "models.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="default_by_phases"):
        default_model_name(2)


def test_breast_models_are_listed_apart_from_tumor_models(registry, saved):
    _, network = saved
    breast = save_model(network, card_fields(task="breast"), registry, "breasts")
    register_model(breast, registry)
    assert [c.name for c in list_models()] == ["tiny", "breasts"]
    assert [c.name for c in list_models(task="tumor")] == ["tiny"]
    assert [c.name for c in list_models(task="breast")] == ["breasts"]


@pytest.mark.parametrize("changes, fragment", [
    ({"task": "lungs"}, "'task'"),
    ({"breast_mask": 3}, "'breast_mask'"),
    ({"task": "breast", "breast_mask": "x"}, "tumor models only"),
    ({"inputs": ["phases", "dce_in"]}, "stands alone"),
    ({"inputs": ["phases"]}, "max_phases"),
])
def test_task_breast_mask_and_phase_series_fields_are_checked(tmp_path, changes, fragment):
    with pytest.raises(ModelError, match=fragment) as caught:
        save_model(tiny_network(), card_fields(**changes), tmp_path, "bad")
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_phase_series_card_round_trips(tmp_path):
    torch.manual_seed(0)
    network = build_network("st_transformer3d", max_phases=6, base_channels=4, depth=3, heads=2)
    fields = card_fields(architecture="st_transformer3d", hyperparameters=network.hyperparameters(),
                         inputs=["phases"], normalization="post1_minmax", breast_mask="breast-model")
    card = save_model(network, fields, tmp_path, "st")
    loaded = load_model(card.weights_path)
    assert loaded.card.takes_phase_series and loaded.card.max_phases == 6
    assert loaded.card.breast_mask == "breast-model" and loaded.card.task == "tumor"


def test_users_see_the_benchmark_figure_first_never_the_validation_that_chose_the_checkpoint(monkeypatch):
    from dataclasses import replace

    from breasttumorseg.segmentation.model_cards import headline

    monkeypatch.delenv("BREASTTUMORSEG_MODELS", raising=False)
    card = find_model(None)
    bench = card.metrics["held_out_benchmark"]
    text = headline(card)
    assert f"benchmark median Dice {bench['median_dice']:.2f} on {bench['n_cases']}" in text
    assert f"{card.metrics['median_dice']:.2f}" not in text       # the validation figure is not shown
    validation_only = replace(card, metrics={k: v for k, v in card.metrics.items() if k != "held_out_benchmark"})
    assert headline(validation_only).startswith("no benchmark yet (validation median Dice")
    assert headline(replace(card, metrics={})) == "no benchmark yet"
