"""Sliding-window inference: a network applied tile by tile over a whole volume.

The volume (``[C, z, y, x]`` float32, already on the model's working grid and
normalised) is covered by patches at regular starts (:func:`tile_starts`): neighbours
share ``overlap`` of the patch and the last patch of each axis ends flush with the
volume. Each tile's probability map is weighted by an importance map (a Gaussian
centred on the patch, computed once, or constant), summed into a probability
accumulator and a weight accumulator, and the two are divided at the end. A voxel near
the centre of some tile thus counts more than one at a tile's border, which hides the
tile seams of zero-padded convolutions.

Speed and memory (the standard working grid is about 214 x 224 x 224 voxels at 1.5 mm):

- the image and both float32 accumulators live on the compute device as torch tensors
  (about 130 MB for the standard grid); tiles are sliced there, never copied through numpy;
- on a GPU, and on a CPU whose cores are busy with other work, tiles are sliced ahead of
  the network by a background thread (:class:`_TileFeeder`, two batches ahead, as
  nnU-Net's predictor does) and stacked into batches of ``batch_size``. Besides
  overlapping the copies with the network, on loaded CPU cores this halved the network's
  time: with a second thread holding an OpenMP team, GNU OpenMP (torch's CPU builds)
  counts more threads than cores and lets idle workers sleep after a short spin; with one
  team its workers busy-wait between the network's operations and take the cores the
  other thread and other processes need. On cores nobody else uses the spinning is what
  makes the network fast: there the thread cost 10-15 % (27 tiles of a random nnU-Net
  network, 2 cores, load average 1.8: 3.3-3.5 s with the thread, 2.9 s slicing in line,
  2.85-2.9 s for the network alone), so the CPU slices in line unless the load average
  exceeds :data:`BUSY_LOAD_PER_CORE` per core (``config.tile_thread``; README "Running a
  model trained on real data");
- with a ``foreground`` mask the tile grid covers only the foreground's bounding box (each
  connected part's own box when that needs fewer tiles), tiles without any foreground voxel
  (air around the body) are not computed at all, and neither are tiles whose foreground
  voxels all lie in the central part of other tiles (:func:`foreground_tile_starts`); the
  output outside every computed tile is 0;
- on the CPU the engine can put the network in the ``channels_last_3d`` memory format
  (``config.cpu_channels_last``; off by default: for nnU-Net's network it was not
  consistently faster on our 2-core machines). The engine otherwise leaves the network's
  own layout alone: our U-Net keeps itself in ``channels_last_3d``
  (:mod:`.networks.hirsch_unet`), where oneDNN runs its convolutions 1.4-1.9x faster;
  on CUDA it runs under ``torch.autocast`` when ``config.amp`` is set (:func:`autocast_dtype`:
  bfloat16 where supported, else float16, unless the config names one);
- the image is padded only when it is smaller than a patch (then cropped back).

CUDA out of memory: the cache is emptied and the batch is halved and retried, down to
one tile; then the whole computation moves to the CPU. Each step is announced through
``warn``. The network is left on the device that finished the work, in its former
train/eval mode and memory format.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ..core.device import resolve_device
from ..core.errors import BreastTumorSegError
from ..core.progress import CancelToken, ProgressCallback, report

ProbabilityFunction = Callable[[torch.Tensor], torch.Tensor]
#: Tile layouts of :class:`SlidingWindowConfig`.
TILINGS = ("engine", "nnunet")
#: Mixed-precision dtypes of :class:`SlidingWindowConfig` (``auto``: bfloat16 where the GPU has it).
AMP_DTYPES = {"auto": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Choices of :attr:`SlidingWindowConfig.tile_thread`.
TILE_THREADS = ("auto", "always", "never")
#: ``tile_thread="auto"`` on the CPU slices tiles in a background thread when the 1-minute
#: load average exceeds this many runnable threads per core (other work competes for the cores).
BUSY_LOAD_PER_CORE = 1.5
#: :func:`foreground_tile_starts` tiles the connected parts of a foreground one by one when
#: there are at most this many (a mask broken into many specks is tiled as a whole).
MAX_TILED_PARTS = 8


@dataclass
class SlidingWindowConfig:
    """How the engine tiles a volume.

    Attributes:
        patch_size: tile size in voxels, (z, y, x).
        overlap: fraction of the patch that neighbouring tiles share, 0 <= overlap < 1.
        batch_size: tiles per network call.
        blend: ``"gaussian"`` (importance map peaked at the tile centre) or ``"constant"``.
        sigma_scale: Gaussian standard deviation as a fraction of the patch size, per axis.
        amp: mixed precision under ``torch.autocast`` (used on CUDA only).
        amp_dtype: its dtype, ``"auto"`` (bfloat16 where supported, else float16),
            ``"float16"`` (what nnU-Net's predictor runs in) or ``"bfloat16"``.
        cpu_channels_last: run the network in ``channels_last_3d`` on the CPU.
        tiling: ``"engine"`` (regular steps, the last tile flush with the end; a volume
            smaller than a patch padded at the end) or ``"nnunet"`` (nnU-Net v2's layout: the
            tiles spread evenly between both ends, the Gaussian centred on voxel ``p // 2``,
            the padding split between both sides), so that nnU-Net models see the tiles
            nnU-Net's own predictor gives them.
        accumulator: dtype of the sums over tiles, ``"float32"`` or ``"float16"`` (what
            nnU-Net's predictor uses: its results at the image's edges, where the Gaussian
            weights are tiny, carry float16's rounding, and only float16 sums reproduce them).
        tile_thread: slice the tiles in a background thread: ``"always"``, ``"never"`` or
            ``"auto"`` (on a GPU always; on the CPU when its cores are busy with other work,
            :func:`uses_tile_thread`). The same tiles in the same order either way.
        compact_tiling: with a foreground mask, tile each connected part on its own box and
            leave out redundant tiles (:func:`foreground_tile_starts`, both steps); off, the
            single grid over the foreground's box (step 1 without parts). nnU-Net folders use it
            (their 50 % overlap is what its blending argument rests on); our own models, whose
            benchmarks were measured on the single grid at 25 % overlap, do not.
    """

    patch_size: tuple[int, int, int] = (64, 128, 128)
    overlap: float = 0.5
    batch_size: int = 2
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    amp: bool = True
    amp_dtype: str = "auto"
    cpu_channels_last: bool = False
    tiling: str = "engine"
    accumulator: str = "float32"
    tile_thread: str = "auto"
    compact_tiling: bool = False

    def validate(self) -> None:
        """Raise :class:`BreastTumorSegError` (one line) for settings that cannot work."""
        patch = tuple(self.patch_size)
        if len(patch) != 3 or any(isinstance(p, bool) or int(p) != p or p < 1 for p in patch):
            raise BreastTumorSegError(f"sliding window: patch_size must be three positive integers (z, y, x), "
                                      f"got {self.patch_size!r}")
        if not 0.0 <= float(self.overlap) < 1.0:
            raise BreastTumorSegError(f"sliding window: overlap must be in [0, 1), got {self.overlap!r}")
        if isinstance(self.batch_size, bool) or int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise BreastTumorSegError(f"sliding window: batch_size must be a positive integer, got {self.batch_size!r}")
        if self.blend not in ("gaussian", "constant"):
            raise BreastTumorSegError(f"sliding window: blend must be 'gaussian' or 'constant', got {self.blend!r}")
        if self.tiling not in TILINGS:
            raise BreastTumorSegError(f"sliding window: tiling must be one of {', '.join(TILINGS)}, "
                                      f"got {self.tiling!r}")
        if self.amp_dtype not in AMP_DTYPES:
            raise BreastTumorSegError(f"sliding window: amp_dtype must be one of {', '.join(AMP_DTYPES)}, "
                                      f"got {self.amp_dtype!r}")
        if self.accumulator not in ("float32", "float16"):
            raise BreastTumorSegError(f"sliding window: accumulator must be float32 or float16, "
                                      f"got {self.accumulator!r}")
        if self.tile_thread not in TILE_THREADS:
            raise BreastTumorSegError(f"sliding window: tile_thread must be one of {', '.join(TILE_THREADS)}, "
                                      f"got {self.tile_thread!r}")
        if self.blend == "gaussian" and not float(self.sigma_scale) > 0.0:
            raise BreastTumorSegError(f"sliding window: sigma_scale must be positive, got {self.sigma_scale!r}")


def autocast_dtype(device: torch.device, config: SlidingWindowConfig,
                   bf16_supported: bool | None = None) -> torch.dtype | None:
    """The dtype the network runs in under ``torch.autocast`` on ``device``, or None (float32).

    Only CUDA runs mixed precision (CPU autocast is slower than float32 on our machines),
    and only with ``config.amp``; ``"auto"`` takes bfloat16 when the GPU supports it
    (``bf16_supported``; asked of CUDA when None), else float16.
    """
    if device.type != "cuda" or not config.amp:
        return None
    chosen = AMP_DTYPES[config.amp_dtype]
    if chosen is not None:
        return chosen
    supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    return torch.bfloat16 if supported else torch.float16


def uses_tile_thread(config: SlidingWindowConfig, device: torch.device, load: float | None = None,
                     cores: int | None = None) -> bool:
    """Whether the tiles are sliced in a background thread (see the module's docstring):
    ``config.tile_thread`` unless ``"auto"``; then on a GPU yes, on the CPU when the 1-minute
    load average (``load``; asked of the system when None) exceeds :data:`BUSY_LOAD_PER_CORE`
    per core (``cores``: the CPUs this process may use), and where the system has no load
    average (Windows) yes."""
    if config.tile_thread != "auto":
        return config.tile_thread == "always"
    if device.type != "cpu":
        return True
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return True
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return load > BUSY_LOAD_PER_CORE * cores


def tile_starts(shape_zyx: Sequence[int], patch_size: Sequence[int], overlap: float,
                tiling: str = "engine") -> list[tuple[int, int, int]]:
    """Start indices (z, y, x) of the tiles covering a volume of ``shape_zyx``.

    ``engine`` tiling: along each axis the step is ``int(patch * (1 - overlap))`` voxels
    (at least 1); the last tile is shifted back to end exactly at the volume's end, so every
    voxel is covered and no tile leaves the volume. ``nnunet`` tiling: as many tiles as
    steps of ``patch * (1 - overlap)`` need, their starts spread evenly (rounded) from 0 to
    the last possible start. An axis no longer than the patch has the single start 0 (the
    engine pads such volumes to the patch size).
    """
    if len(shape_zyx) != 3 or len(patch_size) != 3:
        raise ValueError("shape_zyx and patch_size must have three entries (z, y, x)")
    per_axis = [_axis_starts(int(size), int(patch), overlap, tiling) for size, patch in zip(shape_zyx, patch_size)]
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]]


def _axis_starts(size: int, patch: int, overlap: float, tiling: str) -> list[int]:
    """Tile starts along one axis of ``size`` voxels (see :func:`tile_starts`)."""
    if size <= patch:
        return [0]
    if tiling == "nnunet":
        count = int(np.ceil((size - patch) / (patch * (1.0 - overlap)))) + 1
        step = (size - patch) / (count - 1)
        return [int(np.round(step * i)) for i in range(count)]
    step = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return sorted({min(i * step, size - patch) for i in range(count)})


def foreground_tile_starts(foreground: np.ndarray, patch_size: Sequence[int], overlap: float,
                           tiling: str = "engine", *, per_part: bool = True,
                           drop_redundant: bool = True) -> list[tuple[int, int, int]]:
    """Starts (z, y, x, sorted) of the tiles the engine computes when a ``foreground`` mask is given.

    1. Grid: the regular grid of :func:`tile_starts` laid over the foreground's bounding box
       (grown to at least one patch around its centre, kept inside the volume), tiles holding
       no foreground voxel dropped. When the foreground falls into 2 to
       :data:`MAX_TILED_PARTS` connected parts (26-connected: e.g. two breasts apart), each
       part also gets such a grid over its own box, and their tiles together (a start shared
       counted once) replace the single grid when they are fewer: no grid spans the gap
       (skipped with ``per_part=False``).
    2. Redundant tiles dropped: in order of fewest foreground voxels (then of start), a tile
       is dropped when every foreground voxel in it lies in the central part
       (:func:`central_bounds`) of another tile still kept. On a breast region, which wraps
       round the thorax, this drops tiles over the thorax whose share of the region (the
       breasts' posterior edge) lies in the central parts of the tiles in front of and beside
       them. Skipped with ``drop_redundant=False``.

    So every foreground voxel lies in some kept tile (voxels outside every kept tile get
    probability 0), and the blending stays that of the grid: a voxel either keeps every grid
    tile that held it, or lies in the central part of a kept tile, where the Gaussian
    importance (sigma 1/8 of the patch) is at least exp(-2) of its peak along each axis at
    50 % overlap, as everywhere on the full regular grid.
    """
    foreground = np.asarray(foreground, dtype=bool)
    if not foreground.any():
        return []
    patch = tuple(int(p) for p in patch_size)
    starts = _box_grid(foreground, patch, overlap, tiling)
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3, 3), dtype=bool)) if per_part else (None, 1)
    if 2 <= count <= MAX_TILED_PARTS:
        parts: set[tuple[int, int, int]] = set()
        for index in range(1, count + 1):
            parts.update(_box_grid(labels == index, patch, overlap, tiling))
        if len(parts) < len(starts):
            starts = sorted(parts)
    if not drop_redundant:  # the grid of step 1 (what step 2 starts from)
        return sorted(starts)
    return sorted(_without_redundant_tiles(foreground, starts, patch, overlap))


def central_bounds(start: Sequence[int], patch_size: Sequence[int], shape: Sequence[int],
                   overlap: float) -> tuple[slice, slice, slice]:
    """The central part of the tile at ``start`` in a volume of ``shape`` (voxels, z y x):
    along each axis the tile less ``floor(patch * overlap / 2)`` voxels at either end (the
    middle half at 50 % overlap, where the regular grid's tiles meet), except at an end where
    the tile is flush with the volume, which no other tile could centre on either."""
    bounds = []
    for first, patch, size in zip(start, patch_size, shape):
        margin = int(int(patch) * float(overlap) / 2)
        low = 0 if first <= 0 else first + margin
        high = int(size) if first + int(patch) >= int(size) else first + int(patch) - margin
        bounds.append(slice(low, high))
    return tuple(bounds)


def _box_grid(foreground: np.ndarray, patch: tuple[int, int, int], overlap: float,
              tiling: str) -> list[tuple[int, int, int]]:
    """The grid of :func:`tile_starts` over the (non-empty) ``foreground``'s bounding box, grown
    to at least one patch around its centre and kept inside the volume: the tiles holding
    foreground."""
    per_axis = []
    for axis, (size, width) in enumerate(zip(foreground.shape, patch)):
        present = np.flatnonzero(foreground.any(axis=tuple(a for a in range(3) if a != axis)))
        first, last = int(present[0]), int(present[-1]) + 1
        if last - first < width:  # grow to one patch around the centre, inside the volume
            first = min(max(0, (first + last - width) // 2), max(0, size - width))
            last = min(size, first + width)
        per_axis.append([first + s for s in _axis_starts(last - first, width, overlap, tiling)])
    pz, py, px = patch
    return [(z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]
            if foreground[z:z + pz, y:y + py, x:x + px].any()]


def _without_redundant_tiles(foreground: np.ndarray, starts: Sequence[tuple[int, int, int]],
                             patch: tuple[int, int, int], overlap: float) -> list[tuple[int, int, int]]:
    """Step 2 of :func:`foreground_tile_starts`."""
    pz, py, px = patch
    inside = [(slice(z, z + pz), slice(y, y + py), slice(x, x + px)) for z, y, x in starts]
    central = [central_bounds(start, patch, foreground.shape, overlap) for start in starts]
    centred_on = np.zeros(foreground.shape, dtype=np.int16)  # kept tiles whose central part holds the voxel
    for bounds in central:
        centred_on[bounds] += 1
    kept = set(range(len(starts)))
    amounts = [int(np.count_nonzero(foreground[box])) for box in inside]
    for index in sorted(kept, key=lambda i: (amounts[i], starts[i])):
        own = np.zeros(centred_on[inside[index]].shape, dtype=np.int16)  # this tile's own central part
        own[tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(central[index], inside[index]))] = 1
        if (foreground[inside[index]] & (centred_on[inside[index]] - own < 1)).any():
            continue  # some foreground voxel here would lose its only central tile
        kept.discard(index)
        centred_on[central[index]] -= 1
    return [starts[i] for i in sorted(kept)]


def importance_map(patch_size: Sequence[int], blend: str = "gaussian", sigma_scale: float = 0.125,
                   tiling: str = "engine") -> torch.Tensor:
    """float32 [z, y, x] tile weights: a Gaussian (maximum 1 at the centre) or ones.

    The Gaussian is separable with standard deviation ``sigma_scale * p`` voxels, centred
    at ``(p - 1) / 2`` along each axis (symmetric under flipping the tile), or with
    ``nnunet`` tiling as nnU-Net's predictor makes it: centred at voxel ``p // 2``, maximum
    10, rounded to float16 with no weight below the smallest non-zero one.
    """
    if blend == "constant":
        return torch.ones(tuple(int(p) for p in patch_size), dtype=torch.float32)
    axes = []
    for p in patch_size:
        centre = int(p) // 2 if tiling == "nnunet" else (int(p) - 1) / 2.0
        coordinate = torch.arange(int(p), dtype=torch.float64) - centre
        sigma = float(sigma_scale) * int(p)
        axes.append(torch.exp(-0.5 * (coordinate / sigma) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    if tiling == "nnunet":
        # nnU-Net keeps the map (maximum 10) in float16, where the corners underflow to 0, and
        # raises those to the smallest weight left: the tiles' edges then blend as there
        weights = (weights * 10.0).to(torch.float16)
        weights[weights == 0] = weights[weights > 0].min()
    return weights.to(torch.float32)


def default_probability(logits: torch.Tensor) -> torch.Tensor:
    """Tumor probability from logits [N, K, z, y, x]: softmax channel 1 (sigmoid when K == 1)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


class _Engine:
    """The mutable state of one sliding-window run (device, batch size, accumulators)."""

    def __init__(self, network: nn.Module, image: np.ndarray, config: SlidingWindowConfig,
                 device: torch.device, to_probability: ProbabilityFunction, warn: Callable[[str], None],
                 channels: int | None = None):
        self.channels = channels  # None: one probability per voxel; K: K outputs (logits) per voxel
        self.network = network
        self.image_cpu = torch.from_numpy(image)
        self.config = config
        self.patch = tuple(int(p) for p in config.patch_size)
        self.to_probability = to_probability
        self.warn = warn
        self.batch_size = int(config.batch_size)
        self.weights_cpu = importance_map(self.patch, config.blend, config.sigma_scale, config.tiling)
        self.fell_back = False
        self.device = device
        self._place(device)

    def _place(self, device: torch.device) -> None:
        """Put the network, image, importance map and accumulators on ``device``."""
        previous_probability = getattr(self, "probability_sum", None)
        previous_weight = getattr(self, "weight_sum", None)
        self.device = device
        self.channels_last = device.type == "cpu" and self.config.cpu_channels_last
        self.amp_dtype = autocast_dtype(device, self.config)
        with torch.inference_mode(False):  # parameters must stay ordinary (trainable) tensors
            if self.channels_last:
                self.network.to(device=device, memory_format=torch.channels_last_3d)
            else:
                self.network.to(device=device)  # the network's own memory layout is left as it is
        self.image = self.image_cpu.to(device)
        self.weights = self.weights_cpu.to(device)
        shape = tuple(self.image_cpu.shape[1:])
        if previous_probability is None:
            outputs = shape if self.channels is None else (self.channels, *shape)
            dtype = torch.float16 if self.config.accumulator == "float16" else torch.float32
            self.probability_sum = torch.zeros(outputs, dtype=dtype, device=device)
            self.weight_sum = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.probability_sum = previous_probability.to(device)
            self.weight_sum = previous_weight.to(device)

    def fall_back_to_cpu(self, reason: str) -> None:
        if self.fell_back:
            raise BreastTumorSegError(f"inference ran out of memory even with one tile per batch on the CPU ({reason})")
        self.fell_back = True
        self.batch_size = 1
        self.warn(f"{reason}: continuing the inference on the CPU (slower)")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._place(torch.device("cpu"))

    def weighted_probabilities(self, tiles: Sequence[torch.Tensor]) -> torch.Tensor:
        """Probability x importance for the ``tiles`` (each ``[C, z, y, x]``):
        [n, z, y, x] float32 (``[n, K, z, y, x]`` with ``channels``)."""
        pz, py, px = self.patch
        batch = tiles[0][None] if len(tiles) == 1 else torch.stack(list(tiles))
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last_3d)
        if self.amp_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                logits = self.network(batch)
        else:
            logits = self.network(batch)
        del batch
        probability = self.to_probability(logits)
        del logits
        if self.channels is None and probability.ndim == 5 and probability.shape[1] == 1:
            probability = probability[:, 0]
        expected = (len(tiles), pz, py, px) if self.channels is None else (len(tiles), self.channels, pz, py, px)
        if tuple(probability.shape) != expected:
            raise BreastTumorSegError(f"inference: the network's output per tile has shape "
                                      f"{tuple(probability.shape)}, expected {expected}")
        return probability.float() * self.weights

    def accumulate(self, starts: Sequence[tuple[int, int, int]], weighted: torch.Tensor) -> None:
        """Add tiles into the accumulators (in place: cannot run out of memory half way)."""
        pz, py, px = self.patch
        for i, (z, y, x) in enumerate(starts):
            self.probability_sum[..., z:z + pz, y:y + py, x:x + px].add_(weighted[i])
            self.weight_sum[z:z + pz, y:y + py, x:x + px].add_(self.weights)

    def result(self, uncovered: Sequence[float] | None = None) -> np.ndarray:
        """The weighted mean, divided in the accumulators' dtype (in place; a float16 quotient
        is rounded as nnU-Net's), as float32; voxels no tile covered get 0 or ``uncovered``."""
        outside = self.weight_sum == 0
        covered_everywhere = not bool(outside.any())
        if not covered_everywhere:
            self.weight_sum.masked_fill_(outside, 1.0)  # uncovered voxels: 0 / 1 = 0
        probability = self.probability_sum.div_(self.weight_sum).float()
        if self.channels is None:
            probability.clamp_(0.0, 1.0)
        elif uncovered is not None and not covered_everywhere:
            probability[:, outside] = torch.tensor(list(uncovered), dtype=probability.dtype,
                                                   device=probability.device)[:, None]
        return probability.cpu().numpy()


class _InlineTiles:
    """The tiles of ``image`` at ``starts``, sliced when taken (no thread): the same
    interface as :class:`_TileFeeder`."""

    def __init__(self, image: torch.Tensor, starts: Sequence[tuple[int, int, int]], patch: tuple[int, int, int],
                 depth: int = 0):
        self.device = image.device
        self._image, self._starts, self._patch, self._next = image, list(starts), patch, 0

    def take(self, count: int) -> list[torch.Tensor]:
        pz, py, px = self._patch
        starts = self._starts[self._next:self._next + count]
        self._next += len(starts)
        return [self._image[:, z:z + pz, y:y + py, x:x + px].clone(memory_format=torch.contiguous_format)
                for z, y, x in starts]

    def close(self) -> None:
        pass


class _TileFeeder:
    """The tiles of ``image [C, z, y, x]`` at ``starts``, sliced in order by a background
    thread and held ``depth`` tiles ahead of the network (contiguous copies on the image's
    device). Why a thread: see the module's docstring. An error while slicing is raised by
    :meth:`take`; :meth:`close` stops the thread (also when the run is cancelled)."""

    def __init__(self, image: torch.Tensor, starts: Sequence[tuple[int, int, int]], patch: tuple[int, int, int],
                 depth: int):
        self.device = image.device
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._slice, args=(image, list(starts), patch), daemon=True,
                                        name="breasttumorseg-tiles")
        self._thread.start()

    def _slice(self, image: torch.Tensor, starts: list, patch: tuple[int, int, int]) -> None:
        pz, py, px = patch
        try:
            with torch.inference_mode():  # grad mode is per thread
                for z, y, x in starts:
                    tile = image[:, z:z + pz, y:y + py, x:x + px].clone(memory_format=torch.contiguous_format)
                    if not self._put(tile):
                        return
        except BaseException as error:  # handed to the network's thread, raised there
            self._put(error)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take(self, count: int) -> list[torch.Tensor]:
        """The next ``count`` tiles (waits for them)."""
        tiles = []
        while len(tiles) < count:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise BreastTumorSegError("inference: the tile slicing thread stopped early") from None
                continue
            if isinstance(item, BaseException):
                raise item
            tiles.append(item)
        return tiles

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def sliding_window_probability(network: nn.Module, image: np.ndarray, config: SlidingWindowConfig, *,
                               device: "str | torch.device" = "auto",
                               foreground: Optional[np.ndarray] = None,
                               to_probability: Optional[ProbabilityFunction] = None,
                               progress: Optional[ProgressCallback] = None,
                               cancel: Optional[CancelToken] = None,
                               warn: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Tumor probability of ``image`` by sliding-window inference with ``network``.

    Args:
        network: maps [N, C, z, y, x] to logits [N, K, z, y, x] of the same spatial size.
        image: float32 [C, z, y, x] on the model's working grid (already normalised).
        config: patch size (voxels, z y x), overlap, batch size, blending, mixed precision.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
        foreground: optional bool [z, y, x] (e.g. the body or breast mask on the working
            grid): the tiles cover the foreground's bounding box only and tiles holding
            no foreground voxel are skipped (:func:`foreground_tile_starts`); voxels
            outside every computed tile get 0.
        to_probability: logits [N, K, z, y, x] -> probabilities [N, z, y, x]; default
            softmax over channels, channel 1.
        progress, cancel: ``report(progress, "inference", tiles_done / tiles, cancel)``
            after every batch; raises :class:`~breasttumorseg.core.errors.Cancelled`.
        warn: receives one sentence per out-of-memory fallback (default: the
            ``breasttumorseg`` logger's ``warning``).

    Returns:
        float32 [z, y, x] probabilities in 0..1 on the grid of ``image``.
    """
    return _sliding_window(network, image, config, device=device, foreground=foreground,
                           to_output=to_probability or default_probability, channels=None, progress=progress,
                           cancel=cancel, warn=warn)


def sliding_window_logits(network: nn.Module, image: np.ndarray, config: SlidingWindowConfig, channels: int, *,
                          device: str | torch.device = "auto", foreground: np.ndarray | None = None,
                          progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                          warn: Callable[[str], None] | None = None,
                          uncovered: Sequence[float] | None = None) -> np.ndarray:
    """The network's ``channels`` outputs (logits) blended over the tiles: float32
    ``[channels, z, y, x]``, each voxel the importance-weighted mean of the tiles covering it;
    where no tile was computed, ``uncovered`` (one value per channel; default 0).
    Other arguments as :func:`sliding_window_probability`."""
    return _sliding_window(network, image, config, device=device, foreground=foreground,
                           to_output=lambda logits: logits.float(), channels=int(channels), progress=progress,
                           cancel=cancel, warn=warn, uncovered=uncovered)


def _sliding_window(network, image, config, *, device, foreground, to_output, channels, progress, cancel, warn,
                    uncovered=None):
    config.validate()
    image = np.asarray(image)
    if image.ndim != 4:
        raise ValueError(f"image must be [C, z, y, x], got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be floating point, got {image.dtype}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    shape = image.shape[1:]
    if foreground is not None:
        foreground = np.asarray(foreground, dtype=bool)
        if foreground.shape != shape:
            raise ValueError(f"foreground shape {foreground.shape} differs from the image's {shape}")
    patch = tuple(int(p) for p in config.patch_size)
    divisor = int(getattr(network, "size_divisor", 1))
    if any(p % divisor for p in patch):
        raise BreastTumorSegError(f"sliding window: patch size {patch} is not divisible by {divisor}, "
                                  "which this network needs")
    warn = warn or logging.getLogger("breasttumorseg").warning
    torch_device = resolve_device(device)

    # Pad only where the volume is smaller than a patch: at the end of the axis, or (nnU-Net
    # tiling) split between both sides.
    missing = [max(0, p - s) for p, s in zip(patch, shape)]
    before = [m // 2 for m in missing] if config.tiling == "nnunet" else [0, 0, 0]
    padding = [(b, m - b) for b, m in zip(before, missing)]
    if any(missing):
        image = np.pad(image, [(0, 0), *padding])
        if foreground is not None:
            foreground = np.pad(foreground, padding)
    padded_shape = image.shape[1:]

    if foreground is None:
        starts = tile_starts(padded_shape, patch, config.overlap, config.tiling)
    else:
        starts = foreground_tile_starts(foreground, patch, config.overlap, config.tiling,
                                        per_part=config.compact_tiling, drop_redundant=config.compact_tiling)
    report(progress, "inference", 0.0, cancel)
    if not starts:
        report(progress, "inference", 1.0, cancel)
        if channels is None:
            return np.zeros(shape, dtype=np.float32)
        fill = np.zeros(channels, np.float32) if uncovered is None else np.asarray(uncovered, np.float32)
        return np.ascontiguousarray(np.broadcast_to(fill[:, None, None, None], (channels, *shape)))

    was_training = network.training
    was_channels_last = _in_channels_last(network)
    network.eval()
    engine = feeder = None
    try:
        with torch.inference_mode():
            out_of_memory = False
            try:
                engine = _Engine(network, image, config, torch_device, to_output, warn, channels)
            except torch.OutOfMemoryError:
                out_of_memory = True
            if out_of_memory:  # handled outside the except block so its frames are freed
                engine = _Engine(network, image, config, torch.device("cpu"), to_output, warn, channels)
                warn(f"CUDA out of memory while placing the volume on {torch_device}: running the inference on the CPU")
            done = 0
            pending: list[torch.Tensor] = []  # tiles taken from the feeder, not yet through the network
            tile_source = _TileFeeder if uses_tile_thread(config, engine.device) else _InlineTiles
            feeder = tile_source(engine.image, starts, engine.patch, depth=2 * engine.batch_size)
            while done < len(starts):
                if cancel is not None:
                    cancel.check()  # stop before starting another batch
                if feeder.device != engine.device:  # fell back to the CPU: slice there, free the GPU
                    feeder.close()
                    pending = [tile.to(engine.device) for tile in pending]
                    tile_source = _TileFeeder if uses_tile_thread(config, engine.device) else _InlineTiles
                    feeder = tile_source(engine.image, starts[done + len(pending):], engine.patch,
                                         depth=2 * engine.batch_size)
                count = min(engine.batch_size, len(starts) - done)
                if len(pending) < count:
                    pending.extend(feeder.take(count - len(pending)))
                chunk = starts[done:done + count]
                out_of_memory = False
                try:
                    weighted = engine.weighted_probabilities(pending[:count])
                except torch.OutOfMemoryError:
                    out_of_memory = True
                if out_of_memory:
                    weighted = None
                    if engine.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if engine.batch_size > 1:
                        engine.batch_size = max(1, engine.batch_size // 2)
                        warn(f"CUDA out of memory with {len(chunk)} tiles per batch: "
                             f"retrying with {engine.batch_size}")
                    else:
                        engine.fall_back_to_cpu("CUDA out of memory with one tile per batch")
                    continue
                engine.accumulate(chunk, weighted)
                del weighted, pending[:count]
                done += len(chunk)
                report(progress, "inference", done / len(starts), cancel)
            probability = engine.result(uncovered)
    finally:
        if feeder is not None:
            feeder.close()
        engine = feeder = pending = None
        network.train(was_training)
        if config.cpu_channels_last:  # give the network back in the layout it came in
            network.to(memory_format=torch.channels_last_3d if was_channels_last else torch.contiguous_format)
    if any(missing):
        probability = probability[..., before[0]:before[0] + shape[0], before[1]:before[1] + shape[1],
                                  before[2]:before[2] + shape[2]]
    return np.ascontiguousarray(probability, dtype=np.float32)


def _in_channels_last(network: nn.Module) -> bool:
    """True when the network's 5D weights are in ``channels_last_3d`` (1x1x1 kernels fit both layouts)."""
    weights = [p for p in network.parameters() if p.dim() == 5]
    return (any(not p.is_contiguous() for p in weights)
            and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights))
