"""Training patches drawn from prepared cases.

With probability ``foreground_fraction`` a patch is centred near a random target voxel
(jitter up to a quarter patch), with probability ``hard_negative_fraction`` (kinetic inputs)
on a strongly enhancing voxel that is not tumor (heart, vessels, benign lesions, parenchymal
enhancement), otherwise on a random voxel inside the body. Augmentation is
:mod:`.augmentation`'s. Phase-series models also get **phase dropout** (only the
pre-contrast and a random ordered subset of the post-contrast phases, 2 phases at least, are
kept; the others are masked, not zeroed) and **time jitter** (every post-contrast time moves
by N(0, ``time_jitter_s``) seconds, order kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .augmentation import AugmentationSettings, augment_intensity, draw_spatial_transform, transformed_patch
from .cases import PreparedCase


#: peak relative enhancement (1.0 = 100 %) from which a voxel outside the tumor is a hard negative
HARD_NEGATIVE_ENHANCEMENT = 1.0


@dataclass
class PatchBatch:
    """Training patches: images float32 [N, C, z, y, x], labels int64 [N, z, y, x];
    phase series also times [N, T] (s after the pre-contrast) and valid [N, T] (bool)."""

    images: np.ndarray
    labels: np.ndarray
    times_s: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None


def sample_batch(cases: list[PreparedCase], rng: np.random.Generator, batch_size: int, patch_size,
                 foreground_fraction: float, augment: bool = True, *, phase_series: bool = False,
                 phase_dropout: float = 0.0, time_jitter_s: float = 0.0,
                 augmentation: Optional[AugmentationSettings] = None, hard_negative_fraction: float = 0.0,
                 hard_negative_channel: Optional[int] = None) -> PatchBatch:
    """A batch of patches (see :class:`PatchBatch`); ``phase_series`` pads phases to the batch's most.

    A patch is centred near the target with probability ``foreground_fraction``, on a hard
    negative with probability ``hard_negative_fraction`` (a voxel outside the target whose
    input channel ``hard_negative_channel``, the peak relative enhancement, is at least
    :data:`HARD_NEGATIVE_ENHANCEMENT`: heart, vessels, benign lesions, marked parenchymal
    enhancement), else on a random voxel of the body.

    With ``augment``: ``augmentation`` (default: flips and intensity scale/shift only; the
    training loop passes :meth:`TrainingConfig.augmentation`), and for phase series phase
    dropout and time jitter. Deterministic given ``rng``.
    """
    patch = np.array(patch_size, dtype=int)
    settings = (augmentation or AugmentationSettings()) if augment else None
    images, labels, times = [], [], []
    for _ in range(batch_size):
        case = cases[int(rng.integers(len(cases)))]
        image, label = _patch(case, rng, patch, foreground_fraction, settings, hard_negative_fraction,
                              hard_negative_channel)
        case_times = case.times_s
        if phase_series and augment:
            image, case_times = _drop_and_jitter_phases(image, case_times, rng, phase_dropout, time_jitter_s)
        if augment:
            image, label = augment_intensity(image, label, rng, settings, case.flip_axes, one_scale=phase_series)
        images.append(np.ascontiguousarray(image))
        labels.append(np.ascontiguousarray(label))
        times.append(case_times)
    if not phase_series:
        return PatchBatch(np.stack(images), np.stack(labels))
    most = max(len(image) for image in images)
    padded = np.zeros((batch_size, most) + tuple(patch), dtype=np.float32)
    time_array = np.zeros((batch_size, most), dtype=np.float32)
    valid = np.zeros((batch_size, most), dtype=bool)
    for n, (image, case_times) in enumerate(zip(images, times)):
        padded[n, :len(image)] = image
        time_array[n, :len(image)] = case_times
        valid[n, :len(image)] = True
    return PatchBatch(padded, np.stack(labels), time_array, valid)


def _patch(case: PreparedCase, rng: np.random.Generator, patch: np.ndarray, foreground_fraction: float,
           augmentation: Optional[AugmentationSettings] = None, hard_negative_fraction: float = 0.0,
           hard_negative_channel: Optional[int] = None):
    """One patch of inputs (float32 [C, ...]) and labels (int64), centred near the target, on a hard
    negative or in the body (see :func:`sample_batch`); rotated and scaled about its centre when
    ``augmentation`` draws so."""
    shape = np.array(case.body.shape)
    draw = rng.random()
    near_target = draw < foreground_fraction and case.target.any()
    source = case.target if near_target else case.body
    if not near_target and hard_negative_channel is not None and draw >= foreground_fraction and (
            draw < foreground_fraction + hard_negative_fraction):
        hard = (case.inputs[hard_negative_channel] >= HARD_NEGATIVE_ENHANCEMENT) & ~case.target
        source = hard if hard.any() else source
    if not source.any():
        source = np.ones(case.body.shape, dtype=bool)
    flat = np.flatnonzero(source.ravel())
    centre = np.array(np.unravel_index(int(flat[rng.integers(len(flat))]), source.shape))
    if near_target:
        centre = centre + rng.integers(-(patch // 4), patch // 4 + 1)
    start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
    if augmentation is not None and augmentation.spatial:
        matrix = draw_spatial_transform(rng, augmentation, tuple(reversed(case.geometry.spacing)))
        if matrix is not None:
            return transformed_patch(case.inputs, case.target, start, patch, matrix)
    box = tuple(slice(int(a), int(a + p)) for a, p in zip(start, patch))
    image = case.inputs[(slice(None),) + box].astype(np.float32)
    label = case.target[box].astype(np.int64)
    pad = [(0, int(p - s)) for p, s in zip(patch, label.shape)]
    if any(after for _, after in pad):
        image = np.pad(image, [(0, 0)] + pad)
        label = np.pad(label, pad)
    return image, label


def _drop_and_jitter_phases(image: np.ndarray, times_s: np.ndarray, rng: np.random.Generator,
                            phase_dropout: float, time_jitter_s: float):
    """Phase dropout (pre-contrast + an ordered random subset of >= 1 post-contrast phase) and time jitter."""
    count = image.shape[0]
    keep = np.arange(count)
    if count > 2 and rng.random() < phase_dropout:
        n_post = int(rng.integers(1, count))          # 1 .. count - 1 post-contrast phases
        keep = np.concatenate([[0], np.sort(rng.choice(np.arange(1, count), size=n_post, replace=False))])
    times = np.asarray(times_s, dtype=float)[keep].copy()
    if time_jitter_s > 0 and len(times) > 1:
        times[1:] = np.maximum.accumulate(np.maximum(times[1:] + rng.normal(0.0, time_jitter_s, len(times) - 1),
                                                     1.0))
    return image[keep], times.astype(np.float32)
