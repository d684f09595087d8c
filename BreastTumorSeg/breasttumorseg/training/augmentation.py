"""Training-time augmentation of patches: flips, small rotations and scaling, a smooth bias
field, intensity scale and shift. Deterministic given the ``numpy.random.Generator``.

Coordinates: patches are arrays ``[C, z, y, x]`` (labels ``[z, y, x]``) on the model's
working grid, whose axes are the scanner's axes of the study (close to the patient's axes
for axial and sagittal acquisitions); spacings are in mm, ``(z, y, x)`` order here.

* **Rotation and scaling** act on image and label together, about the patch centre and in
  physical space (an anisotropic working grid is not sheared): a rotation about each of
  the three axes by an angle uniform in ``[-max_rotation_deg, +max_rotation_deg]``, and an
  isotropic zoom uniform in ``scaling_range`` (> 1 enlarges the anatomy). The patch is
  resampled from the case's volume (not from a cut patch, so no corners go empty inside
  the body): linear interpolation for the images, nearest neighbour for the labels;
  outside the case, images are 0 (as the padding of patches at the edge) and labels
  background.
* **Bias field**: one smooth multiplicative field for all channels of a patch, a
  quadratic polynomial of the patch coordinates with random coefficients, scaled so that
  it lies in ``[1 - a, 1 + a]`` with ``a`` uniform in ``[0, bias_field_strength]``
  (MR receive-coil inhomogeneity varies slowly over a patch).
* **Flips** along the patient's left-right and superior-inferior axes (never
  anterior-posterior: the chest wall stays behind the breast), **intensity** scale
  ``x exp(N(0, 0.1))`` and shift ``N(0, 0.05)`` (normalised units) per channel, or one
  for all channels of a phase series (its kinetics stay intact).

A probability of 0 draws nothing from the generator, so with ``rotation_probability``,
``scaling_probability`` and ``bias_field_probability`` at 0 the random stream is that of
the flips-and-intensity recipe that came before (older checkpoints resume exactly).

Cost on one CPU core (float32, 32 x 64 x 64 patch): see :func:`benchmark`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

#: standard deviations of the per-channel log intensity scale and of the shift (normalised units)
INTENSITY_SCALE_SD = 0.1
INTENSITY_SHIFT_SD = 0.05
FLIP_PROBABILITY = 0.5


@dataclass(frozen=True)
class AugmentationSettings:
    """What :func:`augment_patch` may do; probabilities are per patch, angles in degrees."""

    rotation_probability: float = 0.0
    max_rotation_deg: float = 10.0
    scaling_probability: float = 0.0
    scaling_range: tuple = (0.9, 1.1)
    bias_field_probability: float = 0.0
    bias_field_strength: float = 0.15
    flips: bool = True
    intensity: bool = True

    @property
    def spatial(self) -> bool:
        """Whether a patch may be rotated or scaled."""
        return (self.rotation_probability > 0 and self.max_rotation_deg > 0) or (
            self.scaling_probability > 0 and tuple(self.scaling_range) != (1.0, 1.0))


#: the recipe before rotations, scaling and bias fields: flips and intensity only
LEGACY = AugmentationSettings()


# ----------------------------------------------------------------------------- spatial
def draw_spatial_transform(rng: np.random.Generator, settings: AugmentationSettings,
                           spacing_zyx=(1.0, 1.0, 1.0)) -> Optional[np.ndarray]:
    """A 3x3 matrix mapping an output voxel offset from the patch centre to the input voxel
    offset (index space, ``(z, y, x)``), or None when this patch is neither rotated nor scaled.

    Draws from ``rng`` only for the parts whose probability is above 0.
    """
    rotation = np.eye(3)
    zoom = 1.0
    changed = False
    if settings.rotation_probability > 0 and rng.random() < settings.rotation_probability:
        angles = np.radians(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg, size=3))
        rotation = _rotation_matrix(angles)
        changed = True
    if settings.scaling_probability > 0 and rng.random() < settings.scaling_probability:
        low, high = settings.scaling_range
        zoom = float(rng.uniform(low, high))
        changed = True
    if not changed:
        return None
    spacing = np.asarray(spacing_zyx, dtype=float)
    # physical offset d = S o; the content at output offset d comes from input offset R d / zoom
    return (np.diag(1.0 / spacing) @ rotation @ np.diag(spacing)) / zoom


def _rotation_matrix(angles_rad) -> np.ndarray:
    """Rotation about the z, y and x axes (in that order of application: x first)."""
    a, b, c = angles_rad
    about_z = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    about_y = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    about_x = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def transformed_patch(inputs: np.ndarray, target: np.ndarray, start, patch, matrix: np.ndarray):
    """Resample a patch of ``inputs`` ``[C, z, y, x]`` (linear) and ``target`` ``[z, y, x]``
    (nearest) under ``matrix`` about the centre of the box ``start .. start + patch``.

    Only the block of the case that the transformed patch covers is read (``inputs`` may be
    a float16 memory map); the sampling is torch's ``grid_sample`` on the CPU (three times
    faster than ``scipy.ndimage.affine_transform`` per channel). Returns (float32
    ``[C, *patch]``, int64 ``[*patch]``).
    """
    import torch  # torch waits: this module imports without it (Slicer installs torch on first use)
    import torch.nn.functional as F

    patch = np.asarray(patch, dtype=int)
    shape = np.asarray(target.shape)
    centre_out = (patch - 1) / 2.0
    centre_in = np.asarray(start, dtype=float) + centre_out
    corners = np.array(np.meshgrid(*[[0, p - 1] for p in patch], indexing="ij")).reshape(3, -1).T
    mapped = centre_in + (corners - centre_out) @ matrix.T
    lo = np.clip(np.floor(mapped.min(axis=0)).astype(int) - 1, 0, shape)
    hi = np.clip(np.ceil(mapped.max(axis=0)).astype(int) + 2, 0, shape)
    channels = inputs.shape[0]
    if any(b - a < 2 for a, b in zip(lo, hi)):
        return np.zeros((channels,) + tuple(patch), dtype=np.float32), np.zeros(tuple(patch), dtype=np.int64)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    block = torch.from_numpy(np.asarray(inputs[(slice(None),) + box], dtype=np.float32))[None]
    labels = torch.from_numpy(np.asarray(target[box], dtype=np.float32))[None, None]
    # block voxel coordinates of every output voxel, then grid_sample's [-1, 1] (x, y, z order)
    grid = _offsets(tuple(int(p) for p in patch)) @ matrix.T.astype(np.float32)
    grid += (centre_in - lo).astype(np.float32)
    grid *= (2.0 / (hi - lo - 1)).astype(np.float32)
    grid -= np.float32(1.0)
    grid = torch.from_numpy(np.ascontiguousarray(grid[..., ::-1]))[None]
    image = F.grid_sample(block, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    label = F.grid_sample(labels, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
    return image.numpy(), (label.numpy() > 0.5).astype(np.int64)


@lru_cache(maxsize=8)
def _offsets(patch: tuple) -> np.ndarray:
    """Voxel offsets from the patch centre, float32 ``[*patch, 3]`` (z, y, x); read-only."""
    axes = [np.arange(p, dtype=np.float32) - np.float32((p - 1) / 2.0) for p in patch]
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    offsets.setflags(write=False)
    return offsets


# ----------------------------------------------------------------------------- bias field
@lru_cache(maxsize=8)
def _quadratic_terms(shape: tuple) -> tuple:
    """The 9 non-constant monomials of degree <= 2 in coordinates scaled to [-1, 1], per axis."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32) for n in shape]
    u = axes[0][:, None, None]
    v = axes[1][None, :, None]
    w = axes[2][None, None, :]
    return (u, v, w, u * u, v * v, w * w, u * v, u * w, v * w)


def bias_field(shape, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field (float32 ``shape``) within ``[1 - a, 1 + a]``,
    ``a`` uniform in ``[0, strength]``: a quadratic polynomial with N(0, 1) coefficients,
    divided by its largest absolute value over the patch."""
    shape = tuple(int(s) for s in shape)
    coefficients = rng.normal(0.0, 1.0, size=9).astype(np.float32)
    amplitude = float(rng.uniform(0.0, strength))
    poly = np.zeros(shape, dtype=np.float32)
    for coefficient, term in zip(coefficients, _quadratic_terms(shape)):
        poly += coefficient * term
    largest = float(np.abs(poly).max())
    if largest == 0.0:
        return np.ones(shape, dtype=np.float32)
    poly *= np.float32(amplitude / largest)
    poly += np.float32(1.0)
    return poly


# ----------------------------------------------------------------------------- per patch
def augment_intensity(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, settings: AugmentationSettings,
                      flip_axes, one_scale: bool):
    """Flips, bias field, intensity scale and shift of one patch (image ``[C, z, y, x]``),
    in that order; returns (image float32, label)."""
    if settings.flips:
        for axis in flip_axes:
            if rng.random() < FLIP_PROBABILITY:
                image = np.flip(image, axis=axis + 1)
                label = np.flip(label, axis=axis)
    if settings.bias_field_probability > 0 and rng.random() < settings.bias_field_probability:
        image = image * bias_field(image.shape[1:], rng, settings.bias_field_strength)[None]
    if settings.intensity:
        channels = 1 if one_scale else image.shape[0]
        scale = np.exp(rng.normal(0.0, INTENSITY_SCALE_SD, size=(channels, 1, 1, 1))).astype(np.float32)
        shift = rng.normal(0.0, INTENSITY_SHIFT_SD, size=(channels, 1, 1, 1)).astype(np.float32)
        image = image * scale + shift
    return image, label


def benchmark(channels: int = 8, patch=(32, 64, 64), repeats: int = 20, seed: int = 0) -> dict:
    """Milliseconds per patch of a rotation + scaling and of a bias field (for the docs)."""
    rng = np.random.default_rng(seed)
    case_shape = tuple(int(p * 1.6) for p in patch)
    inputs = rng.normal(size=(channels,) + case_shape).astype(np.float16)
    target = np.zeros(case_shape, dtype=bool)
    target[tuple(slice(s // 3, s // 2) for s in case_shape)] = True
    settings = AugmentationSettings(rotation_probability=1.0, scaling_probability=1.0, bias_field_probability=1.0)
    start = [(s - p) // 2 for s, p in zip(case_shape, patch)]
    started = time.perf_counter()
    for _ in range(repeats):
        matrix = draw_spatial_transform(rng, settings, (1.5, 1.5, 1.5))
        image, _ = transformed_patch(inputs, target, start, patch, matrix)
    spatial = (time.perf_counter() - started) / repeats * 1000
    started = time.perf_counter()
    for _ in range(repeats):
        image = image * bias_field(image.shape[1:], rng, 0.15)[None]
    field = (time.perf_counter() - started) / repeats * 1000
    return {"channels": channels, "patch": list(patch), "rotation_scaling_ms": round(spatial, 1),
            "bias_field_ms": round(field, 1)}


__all__ = ["AugmentationSettings", "LEGACY", "draw_spatial_transform", "transformed_patch", "bias_field",
           "augment_intensity", "benchmark"]
