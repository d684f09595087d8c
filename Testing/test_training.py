"""Training on the phantom: loss, patches, checkpoints (no pickle), resume, cancel, model card, install."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from breasttumorseg.core.errors import Cancelled, InputError, OutputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.segmentation.models import find_model, list_models, load_model, sha256_of
from breasttumorseg.segmentation.networks import build_network
from breasttumorseg.core.progress import CancelToken
from breasttumorseg.training.cases import PreparedCase, case_protocol
from breasttumorseg.training.checkpoints import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from breasttumorseg.training.config import TrainingConfig
from breasttumorseg.training.loop import learning_rate_at, train_on_phantom
from breasttumorseg.training.losses import generalized_dice_loss, segmentation_loss
from breasttumorseg.training.publishing import TRAINED_ON, install_into_registry
from breasttumorseg.training.sampling import sample_batch


def tiny_config(output: Path, **changes) -> TrainingConfig:
    """Tiny phantoms (4.5 mm working grid), a 2-channel U-Net of depth 3, 16x32x32 patches."""
    settings = dict(output=output, name="tiny", n_train_cases=2, n_val_cases=1, steps=3, batch_size=1,
                    patch_size=(16, 32, 32), hyperparameters={"base_channels": 2, "depth": 3},
                    validate_every=2, checkpoint_every=2, working_spacing_mm=(4.5, 4.5, 4.5), threads=1,
                    device="cpu")
    settings.update(changes)
    return TrainingConfig(**settings)


# ----------------------------------------------------------------------------- pieces
def test_generalized_dice_loss_bounds():
    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5, 2:5] = 1
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 40 - 20
    assert generalized_dice_loss(perfect, target).item() < 1e-3
    assert generalized_dice_loss(-perfect, target).item() > 0.99
    # a batch without tumor: finite, and it penalises tumor predictions
    empty = torch.zeros_like(target)
    calm = torch.stack([torch.full(target.shape, 20.0), torch.full(target.shape, -20.0)], dim=1)
    noisy = torch.stack([torch.zeros(target.shape), torch.zeros(target.shape)], dim=1)
    assert torch.isfinite(generalized_dice_loss(calm, empty))
    assert generalized_dice_loss(calm, empty) < generalized_dice_loss(noisy, empty)
    logits = torch.randn(1, 2, 8, 8, 8, requires_grad=True)
    segmentation_loss(logits, target[:1]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_tumor_dice_loss_charges_false_positives_like_misses():
    from breasttumorseg.training.losses import tumor_dice_loss

    target = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5, 2:5] = 1                                   # 54 tumor voxels in the batch
    def logits_for(mask):
        return torch.stack([(~mask).float(), mask.float()], dim=1) * 40 - 20
    truth = target == 1
    assert tumor_dice_loss(logits_for(truth), target).item() < 1e-3
    assert tumor_dice_loss(logits_for(~truth), target).item() > 0.99
    extra = truth.clone()
    extra[:, 6:8, 6:8, :] = True                                    # 64 false positives in the batch
    missed = truth.clone()
    missed[:, 2:3, 2:5, 2:5] = False                                # 18 tumor voxels missed in the batch
    # batch Dice: 2*54/(118+54) = 0.63 with the false positives, 2*36/(36+54) = 0.8 with the misses (eps 1 voxel)
    assert tumor_dice_loss(logits_for(extra), target).item() == pytest.approx(1 - 108 / 172, abs=5e-3)
    assert tumor_dice_loss(logits_for(missed), target).item() == pytest.approx(1 - 72 / 90, abs=5e-3)
    # in a batch without tumor, the same false positives cost almost nothing under the generalized Dice
    empty = torch.zeros_like(target)
    assert tumor_dice_loss(logits_for(extra), empty).item() > 0.95
    assert generalized_dice_loss(logits_for(extra), empty).item() < 0.2  # 64 of 1024 voxels wrong
    logits = torch.randn(1, 2, 8, 8, 8, requires_grad=True)
    segmentation_loss(logits, target[:1], "dice_ce").backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(InputError, match="--loss"):
        TrainingConfig(output=Path("unused"), loss="focal").validate()


def test_learning_rate_warms_up_and_decays():
    config = TrainingConfig(output=Path("unused"), steps=1000, learning_rate=1e-3)
    rates = [learning_rate_at(s, config) for s in range(config.steps)]
    assert rates[0] < rates[49] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3) and rates[-1] < 0.05e-3
    assert all(a >= b for a, b in zip(rates[50:], rates[51:]))


def test_case_protocols_vary_and_repeat():
    protocols = [case_protocol(seed) for seed in range(10000, 10060)]
    assert protocols[0] == case_protocol(10000)
    assert {p["layout"] for p in protocols} == {"axial", "sagittal"}
    assert {p["n_phases"] for p in protocols} == set(range(2, 9))
    for p in protocols:
        assert 0.9 - 1e-6 <= p["spacing"][0] <= 1.5 + 1e-6 and 1.5 - 1e-6 <= p["spacing"][2] <= 3.0 + 1e-6
        extent = np.array(p["size"]) * np.array(p["spacing"])
        assert 150 <= extent[2] <= 190.5 and (extent[0] >= 299 if p["layout"] == "axial" else extent[0] <= 211)


def test_config_refuses_overlapping_seeds_and_bad_patches(tmp_path):
    with pytest.raises(InputError, match="overlap validation seeds"):
        TrainingConfig(output=tmp_path, n_train_cases=10, val_seed_start=10005).validate()
    with pytest.raises(InputError, match="--steps"):
        TrainingConfig(output=tmp_path, steps=0).validate()
    with pytest.raises(InputError, match="multiple of 4"):
        train_on_phantom(tiny_config(tmp_path / "run", patch_size=(16, 30, 32)), log=lambda *a: None)
    with pytest.raises(InputError, match="--window 16 32 34: every size must be a multiple of 4"):
        train_on_phantom(tiny_config(tmp_path / "run", window_size=(16, 32, 34)), log=lambda *a: None)


def test_the_card_carries_the_inference_window(tmp_path):
    from breasttumorseg.training.publishing import provisional_card

    assert provisional_card(tiny_config(tmp_path)).patch_size == (16, 32, 32)  # default: the training patch
    wide = tiny_config(tmp_path, window_size=(32, 64, 64), overlap=0.25)
    assert provisional_card(wide).patch_size == (32, 64, 64) and provisional_card(wide).overlap == 0.25
    assert "window_size" not in wide.fingerprint()  # a run may resume with another window


def synthetic_case(seed: int = 0) -> PreparedCase:
    shape = (24, 40, 40)
    body = np.zeros(shape, bool)
    body[2:22, 5:35, 3:37] = True
    tumor = np.zeros(shape, bool)
    tumor[10:13, 20:24, 30:33] = True
    inputs = np.where(body, 1.0, 0.0)[None].repeat(3, axis=0).astype(np.float16)
    inputs[:, tumor] = 3.0
    return PreparedCase(seed, inputs, body, tumor, Geometry((40, 40, 24), (3.0, 3.0, 3.0), (0, 0, 0)), (0, 2), {})


def test_patches_hit_the_tumor_or_the_body():
    case = synthetic_case()
    rng = np.random.default_rng(0)
    batch = sample_batch([case], rng, 16, (16, 32, 32), foreground_fraction=1.0)
    images, labels = batch.images, batch.labels
    assert batch.times_s is None and batch.valid is None
    assert images.shape == (16, 3, 16, 32, 32) and images.dtype == np.float32
    assert labels.shape == (16, 16, 32, 32) and labels.dtype == np.int64
    assert all(label.sum() > 0 for label in labels)
    # the labels move with the image under the flips
    assert all(np.all(image[0][label == 1] > 2.0) for image, label in zip(images, labels))
    images = sample_batch([case], rng, 16, (16, 32, 32), foreground_fraction=0.0, augment=False).images
    assert all((image[0] > 0.5).mean() > 0.3 for image in images)  # patches lie in the body, not in air
    # a case smaller than the patch is padded
    images = sample_batch([case], rng, 2, (32, 48, 48), foreground_fraction=0.5).images
    assert images.shape == (2, 3, 32, 48, 48)


def test_phase_series_batches_drop_phases_keep_order_and_mask_the_padding():
    case = synthetic_case()
    case.inputs = np.stack([case.inputs[0] * (1.0 + k) for k in range(6)]).astype(np.float16)  # phase k = k+1
    case.times_s = np.array([0.0, 60.0, 120.0, 240.0, 360.0, 480.0])
    rng = np.random.default_rng(1)
    counts = set()
    for _ in range(20):
        batch = sample_batch([case], rng, 4, (16, 32, 32), 1.0, phase_series=True, phase_dropout=0.7,
                             time_jitter_s=5.0)
        assert batch.images.shape[:2] == batch.valid.shape == batch.times_s.shape
        for image, times, valid in zip(batch.images, batch.times_s, batch.valid):
            kept = int(valid.sum())
            counts.add(kept)
            assert kept >= 2 and valid[:kept].all() and not valid[kept:].any()   # padding only at the end
            assert np.all(image[kept:] == 0) and times[0] == 0.0
            assert np.all(np.diff(times[:kept]) > 0)                              # order kept under jitter
            levels = [np.median(image[k][image[k] > 0.2]) for k in range(kept)]  # one scale for all phases
            assert np.all(np.diff(levels) > 0)                                    # the phases stay in order
    assert {2, 6} <= counts  # dropout happens and full series are seen


def test_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    network = build_network("hirsch_unet3d", base_channels=2, depth=2)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    x = torch.randn(1, 3, 8, 8, 8)
    target = (x[:, :1, ...].squeeze(1) > 0).long()

    def one_step(net, opt):
        opt.zero_grad()
        segmentation_loss(net(x), target).backward()
        opt.step()

    one_step(network, optimizer)
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, network, optimizer, None, {"step": 1, "note": "scalars"})
    assert path.read_bytes()[:2] != b"\x80\x04" and b"PK" != path.read_bytes()[:2]  # neither pickle nor torch zip
    noise_after_save = torch.rand(3)
    one_step(network, optimizer)
    expected = {k: v.clone() for k, v in network.state_dict().items()}

    torch.manual_seed(123)
    restored = build_network("hirsch_unet3d", base_channels=2, depth=2)
    restored_optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    best, scalars = load_checkpoint(path, restored, restored_optimizer)
    assert best is None and scalars["step"] == 1 and scalars["note"] == "scalars"
    assert torch.equal(torch.rand(3), noise_after_save)  # torch's random state came back
    one_step(restored, restored_optimizer)
    for key, value in expected.items():
        assert torch.allclose(restored.state_dict()[key].float(), value.float(), atol=1e-6), key


# ----------------------------------------------------------------------------- the command
def test_training_smoke_run_cancel_resume_and_install(tmp_path, monkeypatch):
    pytest.importorskip("breasttumorseg.phantom", reason="the phantom generator is not there yet")
    output = tmp_path / "run"
    token = CancelToken()
    training_calls = []

    def progress(step, fraction):
        if step == "training":
            training_calls.append(fraction)
            if len(training_calls) == 2:
                token.cancel()

    # cancelled during training: a checkpoint is left to resume from, no model yet
    with pytest.raises(Cancelled):
        train_on_phantom(tiny_config(output), progress=progress, cancel=token, log=lambda *a: None)
    assert (output / CHECKPOINT_FILE).is_file() and not (output / "tiny.safetensors").exists()
    with pytest.raises(OutputError, match="--resume"):
        train_on_phantom(tiny_config(output), log=lambda *a: None)

    messages = []
    result = train_on_phantom(tiny_config(output), resume=True, log=lambda *a: messages.append(" ".join(map(str, a))))
    assert any("resuming from step 2" in m for m in messages)
    assert [h["step"] for h in result.history if "loss" in h] == [1, 2, 3]
    card = result.model_card
    assert card.trained_on == TRAINED_ON and card.sha256 == sha256_of(output / "tiny.safetensors")
    assert card.metrics["n_cases"] == 1 and card.metrics["val_seeds"] == [60000, 60000]
    assert card.metrics["train_seeds"] == [10000, 10001] and 0.0 <= card.metrics["median_dice"] <= 1.0
    assert result.val_dice_median == card.metrics["median_dice"]
    assert card.hyperparameters["base_channels"] == 2 and card.hyperparameters["in_channels"] == 3
    markdown = (output / "tiny.md").read_text()
    assert "no claim of clinical accuracy" in markdown.lower() and "Hirsch" in markdown
    assert "synthetic" in markdown and "parameters" in markdown
    model = load_model(output / "tiny.safetensors")
    assert model.card.card_path == output / "tiny.md"
    assert json.loads((output / "tiny.json").read_text())["sha256"] == card.sha256

    # more steps from the checkpoint of step 3
    longer = train_on_phantom(tiny_config(output, steps=5), resume=True, log=lambda *a: None)
    assert [h["step"] for h in longer.history if "loss" in h] == [1, 2, 3, 4, 5]
    assert load_model(output / "tiny.safetensors").card.metrics["steps"] == 5
    with pytest.raises(InputError, match="other settings"):
        train_on_phantom(tiny_config(output, steps=6, batch_size=2), resume=True, log=lambda *a: None)

    registry = tmp_path / "registry"
    installed = install_into_registry(longer.model_card, registry)
    assert installed.weights_path == registry / "tiny.safetensors"
    assert sorted(p.name for p in registry.iterdir()) == ["models.json", "tiny.md", "tiny.safetensors"]
    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(registry))
    assert [c.name for c in list_models()] == ["tiny"] and find_model(None).sha256 == longer.model_card.sha256
    assert load_model("tiny").card.metrics == longer.model_card.metrics


def test_an_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    """Cancelled after step 2 and resumed: the same network, bit for bit, as a run never interrupted
    (generator states, optimiser and the augmentation's draws all come back)."""
    from breasttumorseg.training.distributed import ENV_DIGESTS

    digests = tmp_path / "digests"
    monkeypatch.setenv(ENV_DIGESTS, str(digests))
    settings = dict(steps=4, validate_every=2, checkpoint_every=2, rotation_probability=1.0, scaling_probability=1.0,
                    bias_field_probability=1.0)
    straight = train_on_phantom(tiny_config(tmp_path / "straight", **settings), log=lambda *a: None)
    expected = json.loads((digests / "rank-0.json").read_text())["digest"]

    token = CancelToken()

    def progress(step, fraction):
        if step == "training" and fraction >= 0.5:
            token.cancel()

    with pytest.raises(Cancelled):
        train_on_phantom(tiny_config(tmp_path / "resumed", **settings), progress=progress, cancel=token,
                         log=lambda *a: None)
    resumed = train_on_phantom(tiny_config(tmp_path / "resumed", **settings), resume=True, log=lambda *a: None)
    assert json.loads((digests / "rank-0.json").read_text())["digest"] == expected
    # the written weights (the best state) hold the same tensors (the file's bytes may differ: safetensors
    # writes its metadata in hash order)
    from safetensors.torch import load_file

    from breasttumorseg.training.distributed import state_digest

    assert (state_digest(load_file(str(resumed.weights_path)))
            == state_digest(load_file(str(straight.weights_path))))
    assert [h for h in resumed.history if "loss" in h] == [
        dict(h, elapsed_s=r["elapsed_s"]) for h, r in zip([h for h in straight.history if "loss" in h],
                                                          [h for h in resumed.history if "loss" in h])]


def test_bundled_recipes_are_valid_configs_of_the_bundled_models():
    """Each shipped model's recipe parses and describes the network its card loads."""
    from breasttumorseg.segmentation.models import list_models
    from breasttumorseg.training.config import config_from_settings, read_config_file

    folder = Path(__file__).resolve().parents[1] / "BreastTumorSeg" / "Resources" / "Models" / "recipes"
    recipes = sorted(folder.glob("*.json"))
    assert {p.stem for p in recipes} >= {"hirsch-unet3d-phantom", "breast-mask-unet3d-phantom"}
    cards = {card.name: card for card in list_models()}
    for path in recipes:
        config = config_from_settings(dict(read_config_file(path), output="unused"), path)
        assert config.name == path.stem
        if config.name not in cards:  # a recipe for a model not (yet) in the registry
            continue
        card = cards[config.name]
        assert (card.architecture, card.task, card.inputs) == (config.architecture, config.task, config.inputs)
        assert card.hyperparameters == config.hyperparameters and card.normalization == config.normalization
        assert tuple(card.patch_size) == config.window_size and card.breast_mask == config.breast_mask


def test_hard_negative_patches_are_centred_on_enhancing_voxels_that_are_not_tumor():
    from breasttumorseg.exam.kinetic_maps import KINETIC_CHANNELS

    peak = KINETIC_CHANNELS.index("enhancement_peak")
    inputs = np.zeros((len(KINETIC_CHANNELS), 32, 64, 64), np.float16)
    inputs[peak, 20:23, 40:43, 40:43] = 2.0          # a strongly enhancing vessel, not tumor
    inputs[peak, 5:8, 5:8, 5:8] = 2.0                # the tumor: enhancing too, never a hard negative
    target = np.zeros((32, 64, 64), bool)
    target[5:8, 5:8, 5:8] = True
    grid = Geometry((64, 64, 32), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    case = PreparedCase(1, inputs, np.ones_like(target), target, grid, (2, 0), {})
    rng = np.random.default_rng(0)
    batch = sample_batch([case], rng, 8, (16, 16, 16), 0.0, augment=False, hard_negative_fraction=1.0,
                         hard_negative_channel=peak)
    assert all(image[peak].max() == 2.0 for image in batch.images)
    assert batch.labels.sum() == 0
    plain = sample_batch([case], np.random.default_rng(0), 8, (16, 16, 16), 0.0, augment=False)
    assert sum(image[peak].max() == 2.0 for image in plain.images) < 8
    with pytest.raises(InputError, match="enhancement_peak"):
        TrainingConfig(output=Path("unused"), hard_negative_fraction=0.2).validate()
