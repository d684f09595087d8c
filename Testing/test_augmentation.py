"""Patch augmentation: labels follow the image under rotation and scaling, the bias field is
smooth and bounded, everything is deterministic given the generator, and the settings are
part of what a resumed run must agree with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from breasttumorseg.training.augmentation import (AugmentationSettings, bias_field, draw_spatial_transform,
                                         transformed_patch)
from breasttumorseg.core.errors import InputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.training.cases import PreparedCase
from breasttumorseg.training.config import TrainingConfig
from breasttumorseg.training.sampling import sample_batch

EVERYTHING = AugmentationSettings(rotation_probability=1.0, scaling_probability=1.0, bias_field_probability=1.0)


def cube_case(spacing=(2.0, 2.0, 4.0)) -> PreparedCase:
    """Body of value 1, a bright off-centre cube of value 3 and its label; 2 channels."""
    shape = (24, 48, 48)
    body = np.zeros(shape, bool)
    body[2:22, 4:44, 4:44] = True
    cube = np.zeros(shape, bool)
    cube[8:16, 14:26, 24:36] = True
    inputs = np.where(body, 1.0, 0.0)[None].repeat(2, axis=0).astype(np.float16)
    inputs[:, cube] = 3.0
    return PreparedCase(0, inputs, body, cube, Geometry((48, 48, 24), spacing, (0, 0, 0)), (0, 2), {})


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


@pytest.mark.parametrize("angles_deg, zoom", [((10, 0, 0), 1.0), ((-7, 9, 10), 1.1), ((0, 0, 0), 0.9)])
def test_the_label_follows_the_bright_cube_under_rotation_and_scaling(angles_deg, zoom):
    from breasttumorseg.training.augmentation import _rotation_matrix

    case = cube_case()
    spacing = np.array([4.0, 2.0, 2.0])                       # (z, y, x) mm: not isotropic
    matrix = np.diag(1 / spacing) @ _rotation_matrix(np.radians(angles_deg)) @ np.diag(spacing) / zoom
    start, patch = (4, 8, 14), (16, 32, 32)
    image, label = transformed_patch(case.inputs, case.target, start, patch, matrix)
    assert image.shape == (2, 16, 32, 32) and image.dtype == np.float32 and label.dtype == np.int64
    bright = image[0] > 2.0
    overlap = 2 * (bright & (label == 1)).sum() / (bright.sum() + label.sum())
    assert overlap > 0.85, overlap
    assert np.abs(centroid(bright) - centroid(label == 1)).max() < 0.6
    assert np.allclose(image[0], image[1])                    # every channel moves the same way
    # the volume in mm^3 scales with the zoom cubed (content enlarged by zoom)
    expected = case.target.sum() * zoom ** 3
    assert abs(label.sum() - expected) < 0.12 * expected


def test_identity_and_physical_rotation():
    case = cube_case()
    image, label = transformed_patch(case.inputs, case.target, (4, 8, 14), (16, 32, 32), np.eye(3))
    assert np.allclose(image, case.inputs[:, 4:20, 8:40, 14:46].astype(np.float32), atol=1e-3)
    assert np.array_equal(label, case.target[4:20, 8:40, 14:46])
    rng = np.random.default_rng(0)
    matrix = draw_spatial_transform(rng, AugmentationSettings(rotation_probability=1.0, max_rotation_deg=0.0),
                                    (4.0, 2.0, 2.0))
    assert np.allclose(matrix, np.eye(3))
    assert draw_spatial_transform(rng, AugmentationSettings()) is None
    # rotations are rigid in mm on an anisotropic grid (no shear): lengths and angles kept
    spacing = np.diag([4.0, 2.0, 2.0])
    for _ in range(5):
        matrix = draw_spatial_transform(rng, AugmentationSettings(rotation_probability=1.0), (4.0, 2.0, 2.0))
        physical = spacing @ matrix @ np.linalg.inv(spacing)
        assert np.allclose(physical @ physical.T, np.eye(3), atol=1e-9) and not np.allclose(physical, np.eye(3))
        assert np.degrees(np.arccos(np.clip((np.trace(physical) - 1) / 2, -1, 1))) <= np.sqrt(3) * 10 + 1e-6


def test_the_bias_field_is_smooth_bounded_and_varied():
    rng = np.random.default_rng(3)
    fields = [bias_field((32, 64, 64), rng, 0.15) for _ in range(20)]
    for field in fields:
        assert field.dtype == np.float32 and field.shape == (32, 64, 64)
        assert 0.85 - 1e-6 <= field.min() and field.max() <= 1.15 + 1e-6
        steps = max(np.abs(np.diff(field, axis=a)).max() for a in range(3))
        assert steps < 0.15 * 2 * 4 / 31                        # quadratic on [-1, 1]: no jumps between voxels
    spreads = [float(f.max() - f.min()) for f in fields]
    assert max(spreads) > 0.1 and len({round(s, 6) for s in spreads}) == 20


def test_batches_are_deterministic_given_the_generator():
    case = cube_case()
    first = sample_batch([case], np.random.default_rng(7), 6, (16, 32, 32), 0.5, augmentation=EVERYTHING)
    second = sample_batch([case], np.random.default_rng(7), 6, (16, 32, 32), 0.5, augmentation=EVERYTHING)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    other = sample_batch([case], np.random.default_rng(8), 6, (16, 32, 32), 0.5, augmentation=EVERYTHING)
    assert not np.array_equal(first.images, other.images)
    # the labels stay on the bright voxels in the augmented batch (bias field <= 15 %, scale and shift small)
    for image, label in zip(first.images, first.labels):
        if label.sum() > 50:
            bright = image[0] > 0.5 * (image[0].max() + np.median(image[0]))
            assert 2 * (bright & (label == 1)).sum() / (bright.sum() + label.sum()) > 0.7


def test_unused_settings_draw_nothing():
    """With probabilities 0 the generator stream does not depend on the other settings
    (so checkpoints from before these settings existed resume exactly)."""
    case = cube_case()
    plain = sample_batch([case], np.random.default_rng(1), 4, (16, 32, 32), 0.5)
    zeroed = AugmentationSettings(max_rotation_deg=30.0, scaling_range=(0.5, 2.0), bias_field_strength=0.4)
    same = sample_batch([case], np.random.default_rng(1), 4, (16, 32, 32), 0.5, augmentation=zeroed)
    assert np.array_equal(plain.images, same.images) and np.array_equal(plain.labels, same.labels)
    off = sample_batch([case], np.random.default_rng(1), 4, (16, 32, 32), 0.5, augment=False, augmentation=EVERYTHING)
    assert set(np.unique(off.images)) <= {0.0, 1.0, 3.0}     # augment=False: no augmentation at all


def test_augmentation_settings_are_validated_and_fingerprinted(tmp_path):
    config = TrainingConfig(output=tmp_path)
    assert config.augmentation().rotation_probability == 0.2 and config.augmentation().spatial
    assert TrainingConfig(output=tmp_path, augment=False).augmentation() is None
    fingerprint = config.fingerprint()
    for key in ("augment", "rotation_probability", "max_rotation_deg", "scaling_probability", "scaling_range",
                "bias_field_probability", "bias_field_strength"):
        assert key in fingerprint
    assert fingerprint["dataset"] == {"kind": "phantom"}
    for bad, message in (({"rotation_probability": 1.5}, "rotation_probability must be in"),
                         ({"max_rotation_deg": 90}, "max_rotation_deg must be in"),
                         ({"scaling_range": (1.2, 0.9)}, "scaling_range must be two factors"),
                         ({"bias_field_strength": 0.9}, "bias_field_strength must be in")):
        with pytest.raises(InputError, match=message):
            TrainingConfig(output=tmp_path, **bad).validate()


def test_a_checkpoint_from_before_these_settings_continues_without_them(tmp_path):
    from breasttumorseg.training.datasets import open_dataset
    from breasttumorseg.training.distributed import Distributed
    from breasttumorseg.training.checkpoints import check_resumable, settings_for_checkpoint
    from breasttumorseg.training.publishing import provisional_card

    config = TrainingConfig(output=tmp_path)
    old = {k: v for k, v in config.fingerprint().items()
           if k not in ("augment", "rotation_probability", "max_rotation_deg", "scaling_probability", "scaling_range",
                        "bias_field_probability", "bias_field_strength", "dataset")}
    split = open_dataset(config.dataset, provisional_card(config), seeds=config.seeds())
    scalars = {"fingerprint": old}
    where = Path("checkpoint.safetensors")
    # left at their defaults, the new settings take the values the checkpoint was made with
    messages = []
    adopted = settings_for_checkpoint(config, scalars, messages.append)
    assert (adopted.rotation_probability, adopted.scaling_probability, adopted.bias_field_probability) == (0, 0, 0)
    assert messages == ["the checkpoint predates bias_field_probability, rotation_probability, scaling_probability: "
                        "continuing as it was made (bias_field_probability=0.0, rotation_probability=0.0, "
                        "scaling_probability=0.0)"]
    check_resumable(adopted, scalars, split, Distributed(), where)
    # changed on purpose: refused, saying what the checkpoint was made with
    chosen = TrainingConfig(output=tmp_path, rotation_probability=0.5)
    chosen = settings_for_checkpoint(chosen, scalars, messages.append)
    assert chosen.rotation_probability == 0.5 and chosen.scaling_probability == 0
    with pytest.raises(InputError) as caught:
        check_resumable(chosen, scalars, split, Distributed(), where)
    assert ("other settings (rotation_probability); the checkpoint predates rotation_probability, which resume "
            "exactly as rotation_probability=0.0") in str(caught.value)
    with pytest.raises(InputError, match="made by 2 process"):
        check_resumable(adopted, dict(scalars, world_size=2), split, Distributed(), where)
    assert settings_for_checkpoint(config, {"fingerprint": config.fingerprint()}) is config
