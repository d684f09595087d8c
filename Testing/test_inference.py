"""Sliding-window engine: tiling, blending, skipping, progress, cancellation, OOM fallback, devices."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from breasttumorseg.core.device import describe_device, resolve_device
from breasttumorseg.core.errors import BreastTumorSegError, Cancelled
from breasttumorseg.segmentation.inference import (BUSY_LOAD_PER_CORE, SlidingWindowConfig, central_bounds,
                                                   foreground_tile_starts, importance_map,
                                                   sliding_window_probability, tile_starts, uses_tile_thread)
from breasttumorseg.segmentation.networks import HirschUNet3D
from breasttumorseg.core.progress import CancelToken


def pointwise_network(seed=0):
    """A 1x1x1 convolution: exactly translation-equivariant, so tiling must not matter."""
    torch.manual_seed(seed)
    return nn.Conv3d(3, 2, kernel_size=1)


def direct_probability(network, image):
    with torch.no_grad():
        return torch.softmax(network(torch.from_numpy(image)[None]), dim=1)[0, 1].numpy()


def random_image(shape=(3, 23, 37, 30), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


class CountingNetwork(nn.Module):
    """Wraps a network and records the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.inner(x)


class OutOfMemoryNetwork(CountingNetwork):
    """Raises CUDA out-of-memory for batches above ``max_batch`` and for the first
    ``fail_single`` single-tile calls, like a GPU that is too small."""

    def __init__(self, inner, max_batch=1, fail_single=0):
        super().__init__(inner)
        self.max_batch = max_batch
        self.fail_single = fail_single

    def forward(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        if self.fail_single > 0:
            self.fail_single -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


# ---------------------------------------------------------------- tiling


@pytest.mark.parametrize("shape, patch, overlap", [
    ((23, 37, 30), (8, 16, 16), 0.5), ((64, 128, 128), (64, 128, 128), 0.5), ((100, 7, 33), (16, 8, 32), 0.25),
    ((214, 224, 224), (64, 128, 128), 0.5), ((50, 50, 50), (16, 16, 16), 0.0), ((31, 29, 17), (8, 8, 8), 0.9)])
def test_tile_starts_cover_every_voxel_with_the_requested_step(shape, patch, overlap):
    starts = tile_starts(shape, patch, overlap)
    covered = np.zeros(shape, dtype=np.int32)
    for z, y, x in starts:
        assert all(0 <= s and s + p <= n or (s == 0 and n <= p) for s, p, n in zip((z, y, x), patch, shape))
        covered[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += 1
    assert covered.min() >= 1
    for axis in range(3):
        axis_starts = sorted({s[axis] for s in starts})
        step = max(1, int(patch[axis] * (1 - overlap)))
        assert axis_starts[0] == 0
        if shape[axis] > patch[axis]:
            assert axis_starts[-1] == shape[axis] - patch[axis]  # last tile flush to the end
            gaps = np.diff(axis_starts)
            assert (gaps[:-1] == step).all() and 0 < gaps[-1] <= step  # neighbours share >= overlap
            assert len(axis_starts) == int(np.ceil((shape[axis] - patch[axis]) / step)) + 1
        else:
            assert axis_starts == [0]
    assert len(starts) == len(set(starts))


def test_importance_map_is_a_centred_gaussian():
    weights = importance_map((8, 16, 12), "gaussian", 0.125).numpy()
    assert weights.dtype == np.float32 and weights.shape == (8, 16, 12)
    assert weights.max() == pytest.approx(1.0)
    assert weights.min() > 0
    for axis in range(3):
        assert np.allclose(weights, np.flip(weights, axis=axis), atol=1e-7)
    assert weights[4, 8, 6] > weights[4, 8, 1] > weights[4, 8, 0]
    # sigma = 0.125 * p = 1.5 voxels along x, centred at 5.5 (between voxels 5 and 6)
    profile = weights[3, 7, :]
    assert profile[0] / profile[5] == pytest.approx(np.exp(-0.5 * (5.5 ** 2 - 0.5 ** 2) / 1.5 ** 2), rel=1e-4)
    assert np.array_equal(importance_map((4, 4, 4), "constant").numpy(), np.ones((4, 4, 4), np.float32))


# ---------------------------------------------------------------- engine correctness


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape", [(3, 23, 37, 30), (3, 5, 9, 40)])  # the second is smaller than a patch
def test_engine_equals_the_direct_forward_of_a_pointwise_network(blend, shape):
    network = pointwise_network()
    image = random_image(shape)
    config = SlidingWindowConfig(patch_size=(8, 16, 16), overlap=0.5, batch_size=3, blend=blend)
    probability = sliding_window_probability(network, image, config, device="cpu")
    assert probability.shape == shape[1:] and probability.dtype == np.float32
    np.testing.assert_allclose(probability, direct_probability(network, image), atol=2e-6)


def test_single_tile_of_the_unet_equals_its_forward_pass():
    torch.manual_seed(3)
    network = HirschUNet3D(base_channels=4, depth=3).eval()
    image = random_image((3, 8, 16, 12))
    config = SlidingWindowConfig(patch_size=(8, 16, 12), batch_size=1)
    probability = sliding_window_probability(network, image, config, device="cpu")
    np.testing.assert_allclose(probability, direct_probability(network, image), atol=1e-5)
    # the network is handed back in its former state and memory layout, still trainable
    network.train()
    sliding_window_probability(network, image, config, device="cpu")
    assert network.training
    assert network.encoder[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)  # the U-Net's own layout
    network(torch.from_numpy(image)[None]).sum().backward()
    assert network.head.weight.grad is not None


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_the_engine_gives_the_network_back_in_its_own_layout(layout):
    """With or without ``cpu_channels_last`` the network leaves the engine in the memory layout it came in,
    and the result does not depend on the layout."""
    torch.manual_seed(4)
    network = HirschUNet3D(base_channels=4, depth=3).eval().to(memory_format=layout)
    image = random_image((3, 16, 16, 16))
    results = []
    for channels_last in (False, True):
        config = SlidingWindowConfig(patch_size=(8, 16, 8), batch_size=2, cpu_channels_last=channels_last)
        results.append(sliding_window_probability(network, image, config, device="cpu"))
        weight = network.encoder[0][0].weight
        assert weight.is_contiguous(memory_format=layout)
        assert weight.is_contiguous() == (layout == torch.contiguous_format)
    np.testing.assert_allclose(results[0], results[1], atol=1e-5)


class TileMeanNetwork(nn.Module):
    """Probability of every voxel of a tile = the sigmoid of the tile's mean of channel 0:
    tiles disagree, so the output shows exactly how tiles are blended."""

    def forward(self, x):
        logit = x[:, 0].mean(dim=(1, 2, 3))
        ones = torch.ones_like(x[:, 0])
        return torch.stack([torch.zeros_like(ones), ones * logit[:, None, None, None]], dim=1)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_blending_is_the_importance_weighted_mean_of_the_tiles(blend):
    image = random_image((3, 20, 24, 18), seed=4)
    patch = (8, 16, 8)
    config = SlidingWindowConfig(patch_size=patch, overlap=0.5, batch_size=2, blend=blend)
    probability = sliding_window_probability(TileMeanNetwork(), image, config, device="cpu")
    weights = importance_map(patch, blend, config.sigma_scale).numpy().astype(np.float64)
    numerator = np.zeros(image.shape[1:])
    denominator = np.zeros(image.shape[1:])
    for z, y, x in tile_starts(image.shape[1:], patch, 0.5):
        region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
        tile_probability = 1 / (1 + np.exp(-image[0][region].astype(np.float64).mean()))
        numerator[region] += tile_probability * weights
        denominator[region] += weights
    np.testing.assert_allclose(probability, numerator / denominator, atol=1e-5)
    # Gaussian blending is not a plain average wherever tiles overlap
    plain = sliding_window_probability(TileMeanNetwork(), image, SlidingWindowConfig(
        patch_size=patch, overlap=0.5, blend="constant"), device="cpu")
    assert (blend == "constant") == bool(np.allclose(plain, probability, atol=1e-6))


@pytest.mark.parametrize("compact", [False, True])
def test_foreground_skipping_computes_fewer_tiles_and_zeroes_only_skipped_regions(compact):
    """With ``compact_tiling`` (nnU-Net folders) the engine computes the compact tiles, without
    it (our own models) the single grid over the foreground's box; either way fewer tiles."""
    image = random_image((3, 24, 40, 40), seed=5)
    foreground = np.zeros(image.shape[1:], dtype=bool)
    foreground[2:9, 5:14, 30:36] = True
    foreground[20, 30, 3] = True
    patch = (8, 16, 16)
    config = SlidingWindowConfig(patch_size=patch, overlap=0.5, batch_size=2, compact_tiling=compact)
    full_network = CountingNetwork(pointwise_network())
    full = sliding_window_probability(full_network, image, config, device="cpu")
    skipping_network = CountingNetwork(pointwise_network())
    skipped = sliding_window_probability(skipping_network, image, config, device="cpu", foreground=foreground)
    all_tiles = tile_starts(image.shape[1:], patch, 0.5)
    kept = foreground_tile_starts(foreground, patch, 0.5, per_part=compact, drop_redundant=compact)
    single_grid = foreground_tile_starts(foreground, patch, 0.5, per_part=False, drop_redundant=False)
    assert (len(kept) < len(single_grid)) == compact   # two parts far apart: compact tiling needs fewer
    assert sum(full_network.calls) == len(all_tiles)
    assert sum(skipping_network.calls) == len(kept) < len(all_tiles) // 2
    computed = np.zeros(image.shape[1:], dtype=bool)
    for z, y, x in kept:
        tile = foreground[z:z + 8, y:y + 16, x:x + 16]
        assert tile.shape == patch and tile.any()
        computed[z:z + 8, y:y + 16, x:x + 16] = True
    assert computed[foreground].all()  # every foreground voxel is predicted
    assert (~computed).sum() > computed.sum()
    assert np.all(skipped[~computed] == 0)
    np.testing.assert_allclose(skipped[computed], full[computed], atol=2e-6)
    # no foreground at all: nothing is computed
    none_network = CountingNetwork(pointwise_network())
    empty = sliding_window_probability(none_network, image, config, device="cpu",
                                       foreground=np.zeros(image.shape[1:], dtype=bool))
    assert none_network.calls == [] and not empty.any() and empty.shape == image.shape[1:]


def test_foreground_tiles_cover_the_foreground_box_only():
    foreground = np.zeros((40, 50, 60), dtype=bool)
    foreground[10:30, 0:34, 5:55] = True
    patch = (16, 16, 16)
    starts = foreground_tile_starts(foreground, patch, 0.5)
    covered = np.zeros(foreground.shape, dtype=bool)
    for z, y, x in starts:
        covered[z:z + 16, y:y + 16, x:x + 16] = True
    assert covered[foreground].all()
    assert min(s[0] for s in starts) == 10 and max(s[0] for s in starts) + 16 == 30
    assert max(s[1] for s in starts) + 16 == 34
    assert len(starts) < len([s for s in tile_starts(foreground.shape, patch, 0.5)
                              if foreground[s[0]:s[0] + 16, s[1]:s[1] + 16, s[2]:s[2] + 16].any()])
    # a foreground smaller than a patch gets one patch around it, inside the volume
    small = np.zeros((40, 50, 60), dtype=bool)
    small[38, 2, 30] = True
    assert foreground_tile_starts(small, patch, 0.5) == [(24, 0, 22)]
    assert foreground_tile_starts(np.zeros((8, 8, 8), dtype=bool), (8, 8, 8), 0.5) == []


def ellipsoid(shape, centre, radii):
    """Bool mask of an axis-aligned ellipsoid (voxels, z y x); it may reach beyond the volume."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def tile_boxes(starts, patch):
    return [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in starts]


def assert_sound_tiling(foreground, patch, overlap=0.5, tiling="engine"):
    """The rules of ``foreground_tile_starts``, checked voxel by voxel; returns (kept, grid)."""
    shape = foreground.shape
    grid = foreground_tile_starts(foreground, patch, overlap, tiling, drop_redundant=False)
    kept = foreground_tile_starts(foreground, patch, overlap, tiling)
    assert kept == sorted(set(kept)) and set(kept) <= set(grid)
    held = np.zeros(shape, dtype=np.int32)  # kept tiles holding the voxel
    centred = np.zeros(shape, dtype=bool)  # voxel in the central part of a kept tile
    for start, box in zip(kept, tile_boxes(kept, patch)):
        # inside the volume (an axis shorter than a patch: start 0, the engine pads the volume)
        assert all(0 <= s and (s + p <= n or s == 0 < n < p) for s, p, n in zip(start, patch, shape))
        assert foreground[box].any()  # no tile without foreground
        held[box] += 1
        centred[central_bounds(start, patch, shape, overlap)] = True
    assert (held[foreground] > 0).all()  # every foreground voxel is predicted
    # well weighted: a voxel that lost a grid tile lies in the central part of a kept tile
    held_by_grid = np.zeros(shape, dtype=np.int32)
    for box in tile_boxes(grid, patch):
        held_by_grid[box] += 1
    lost = foreground & (held < held_by_grid)
    assert centred[lost].all()
    return kept, grid


def test_central_bounds_are_the_middle_half_and_reach_the_volume_edges():
    assert central_bounds((0, 10, 36), (8, 16, 16), (40, 50, 52), 0.5) == (slice(0, 6), slice(14, 22), slice(40, 52))
    # the regular grid's central parts cover the whole volume: a voxel keeps a central tile
    shape, patch = (23, 37, 30), (8, 16, 16)
    for tiling in ("engine", "nnunet"):
        covered = np.zeros(shape, dtype=bool)
        for start in tile_starts(shape, patch, 0.5, tiling):
            covered[central_bounds(start, patch, shape, 0.5)] = True
        assert covered.all()
    # the Gaussian keeps at least exp(-2) of its peak along each axis inside the central part
    weights = importance_map((16, 16, 16))
    assert weights[4:12, 8, 8].min() >= np.exp(-2.0) * weights.max() * 0.95


def test_far_apart_parts_are_tiled_each_on_its_own():
    shape, patch = (32, 96, 192), (16, 32, 32)
    foreground = ellipsoid(shape, (16, 48, 24), (10, 30, 14)) | ellipsoid(shape, (16, 48, 168), (10, 30, 14))
    for tiling in ("engine", "nnunet"):
        kept, grid = assert_sound_tiling(foreground, patch, tiling=tiling)
        single_box = [s for s in tile_starts(shape, patch, 0.5, tiling)
                      if foreground[tuple(slice(a, a + p) for a, p in zip(s, patch))].any()]
        assert len(kept) <= len(grid) < len(single_box)
        assert all(x + 32 <= 64 or x >= 128 for _, _, x in kept)  # no tile in the gap between the parts


def test_a_region_wrapping_round_an_empty_middle_needs_fewer_tiles():
    """A shell like the breast region round the thorax: tiles whose share of the shell lies in
    other tiles' central parts are dropped, every voxel keeps a well-weighted tile."""
    shape, patch = (40, 120, 160), (16, 48, 48)
    outer = ellipsoid(shape, (20, 110, 80), (30, 100, 75))
    foreground = outer & ~ellipsoid(shape, (20, 110, 80), (30, 88, 63))
    for tiling in ("engine", "nnunet"):
        kept, grid = assert_sound_tiling(foreground, patch, tiling=tiling)
        assert len(kept) < len(grid)


@pytest.mark.parametrize("seed", range(12))
def test_tiling_rules_hold_for_random_regions(seed):
    """Adversarial regions: blobs touching the borders, specks, parts smaller than a patch,
    overlaps of 0.25 and 0.5, both tile layouts."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(12, 60, size=3))
    patch = tuple(int(p) for p in rng.choice([8, 16], size=3))
    foreground = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(1, 6))):
        centre = [rng.uniform(-3, n + 3) for n in shape]  # some outside: blobs cut by the border
        foreground |= ellipsoid(shape, centre, rng.uniform(1, 14, size=3))
    foreground[tuple(rng.integers(0, n) for n in shape)] = True  # a speck
    overlap = float(rng.choice([0.25, 0.5]))
    for tiling in ("engine", "nnunet"):
        kept, grid = assert_sound_tiling(foreground, patch, overlap, tiling)
        assert len(kept) <= len(grid)


def test_region_at_the_border_and_smaller_than_a_patch_is_covered_by_the_engine():
    """Through the engine, a pointwise network (tiling cannot change it) gives the full
    image's numbers on every foreground voxel, also when the volume is smaller than a patch."""
    network = pointwise_network(3)
    for shape, patch in (((3, 30, 40, 44), (8, 16, 16)), ((3, 6, 12, 40), (8, 16, 16))):
        image = random_image(shape, seed=4)
        foreground = ellipsoid(shape[1:], (0, 0, 3), (5, 9, 7)) | ellipsoid(shape[1:], (3, 6, 38), (2, 2, 3))
        config = SlidingWindowConfig(patch_size=patch, overlap=0.5)
        full = sliding_window_probability(network, image, config, device="cpu")
        skipped = sliding_window_probability(network, image, config, device="cpu", foreground=foreground)
        np.testing.assert_allclose(skipped[foreground], full[foreground], atol=2e-6)


def test_custom_probability_function_and_amp_flag_on_cpu():
    network = pointwise_network()
    image = random_image()
    config = SlidingWindowConfig(patch_size=(8, 16, 16), amp=True)
    probability = sliding_window_probability(network, image, config, device="cpu",
                                             to_probability=lambda logits: torch.softmax(logits, 1)[:, 0])
    np.testing.assert_allclose(probability, 1 - direct_probability(network, image), atol=2e-6)


# ---------------------------------------------------------------- progress and cancellation


def test_progress_is_reported_after_every_batch():
    image = random_image()
    config = SlidingWindowConfig(patch_size=(8, 16, 16), batch_size=4)
    calls = []
    sliding_window_probability(pointwise_network(), image, config, device="cpu",
                               progress=lambda step, fraction: calls.append((step, fraction)))
    tiles = len(tile_starts(image.shape[1:], (8, 16, 16), 0.5))
    assert {step for step, _ in calls} == {"inference"}
    fractions = [f for _, f in calls]
    assert fractions[0] == 0.0 and fractions[-1] == pytest.approx(1.0)
    assert fractions == sorted(fractions)
    assert len(fractions) == 1 + int(np.ceil(tiles / 4))


def test_cancellation_stops_the_run_and_restores_the_network():
    image = random_image()
    config = SlidingWindowConfig(patch_size=(8, 16, 16), batch_size=1)
    token = CancelToken()
    network = CountingNetwork(pointwise_network()).train()

    def progress(step, fraction):
        if fraction > 0:
            token.cancel()

    with pytest.raises(Cancelled):
        sliding_window_probability(network, image, config, device="cpu", progress=progress, cancel=token)
    assert network.calls == [1]
    assert network.training


class FailingNetwork(CountingNetwork):
    """Raises on its ``fail_at``-th call (a bug in a network, not an out-of-memory)."""

    def __init__(self, inner, fail_at=2):
        super().__init__(inner)
        self.fail_at = fail_at

    def forward(self, x):
        self.calls.append(x.shape[0])
        if len(self.calls) == self.fail_at:
            raise RuntimeError("network failed")
        return self.inner(x)


def tile_threads():
    return [thread for thread in threading.enumerate() if thread.name == "breasttumorseg-tiles"]


def test_the_tile_slicing_thread_ends_with_the_run_also_when_cancelled_or_failed():
    image = random_image(shape=(3, 40, 64, 64))
    config = SlidingWindowConfig(patch_size=(8, 16, 16), batch_size=1, tile_thread="always")
    assert len(tile_starts(image.shape[1:], (8, 16, 16), 0.5)) > 4 * config.batch_size  # the feeder runs ahead
    sliding_window_probability(pointwise_network(), image, config, device="cpu")
    assert not tile_threads()
    token = CancelToken()
    with pytest.raises(Cancelled):
        sliding_window_probability(pointwise_network(), image, config, device="cpu", cancel=token,
                                   progress=lambda step, fraction: token.cancel() if fraction > 0 else None)
    assert not tile_threads()
    network = FailingNetwork(pointwise_network(), fail_at=3)
    with pytest.raises(RuntimeError, match="network failed"):
        sliding_window_probability(network, image, config, device="cpu")
    assert network.calls == [1, 1, 1] and not tile_threads()


def test_tiles_sliced_in_line_or_by_the_thread_give_the_same_result():
    image = random_image(shape=(3, 20, 40, 36), seed=4)
    network = pointwise_network()
    results = {}
    for mode in ("always", "never", "auto"):
        config = SlidingWindowConfig(patch_size=(8, 16, 16), batch_size=2, tile_thread=mode)
        results[mode] = sliding_window_probability(network, image, config, device="cpu")
    assert np.array_equal(results["always"], results["never"]) and np.array_equal(results["auto"], results["never"])
    auto = SlidingWindowConfig(tile_thread="auto")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_tile_thread(auto, cpu, load=1.9, cores=2)      # our engine alone on 2 cores: in line
    assert uses_tile_thread(auto, cpu, load=BUSY_LOAD_PER_CORE * 2 + 0.1, cores=2)  # others compete: the thread
    assert uses_tile_thread(auto, cuda, load=0.0, cores=2)
    assert uses_tile_thread(SlidingWindowConfig(tile_thread="always"), cpu, load=0.0, cores=2)
    assert not uses_tile_thread(SlidingWindowConfig(tile_thread="never"), cuda, load=9.0, cores=2)
    with pytest.raises(BreastTumorSegError, match="tile_thread must be one of auto, always, never"):
        SlidingWindowConfig(tile_thread="sometimes").validate()


# ---------------------------------------------------------------- out of memory


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    image = random_image(seed=6)
    config = SlidingWindowConfig(patch_size=(8, 16, 16), batch_size=4)
    expected = sliding_window_probability(pointwise_network(), image, config, device="cpu")
    network = OutOfMemoryNetwork(pointwise_network(), max_batch=1)
    messages = []
    probability = sliding_window_probability(network, image, config, device="cpu", warn=messages.append)
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    assert network.calls[:3] == [4, 2, 1] and set(network.calls[3:]) == {1}
    assert len(messages) == 2
    assert "out of memory" in messages[0] and "retrying with 2" in messages[0]
    assert "retrying with 1" in messages[1]


def test_out_of_memory_with_single_tiles_falls_back_to_the_cpu(caplog):
    image = random_image(seed=7)
    config = SlidingWindowConfig(patch_size=(8, 16, 16), batch_size=2)
    expected = sliding_window_probability(pointwise_network(), image, config, device="cpu")
    network = OutOfMemoryNetwork(pointwise_network(), max_batch=1, fail_single=1)
    with caplog.at_level("WARNING", logger="breasttumorseg"):
        probability = sliding_window_probability(network, image, config, device="cpu")  # default warn: the logger
    np.testing.assert_allclose(probability, expected, atol=1e-6)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "retrying with 1" in messages[0]
    assert "continuing the inference on the CPU" in messages[1]
    # still out of memory on the CPU: one clear error, not an endless loop
    network = OutOfMemoryNetwork(pointwise_network(), max_batch=1, fail_single=10)
    with pytest.raises(BreastTumorSegError, match="out of memory even with one tile"):
        sliding_window_probability(network, image, config, device="cpu", warn=lambda message: None)


# ---------------------------------------------------------------- configuration and devices


@pytest.mark.parametrize("changes, message", [
    ({"overlap": 1.0}, "overlap"), ({"overlap": -0.1}, "overlap"), ({"batch_size": 0}, "batch_size"),
    ({"blend": "median"}, "blend"), ({"patch_size": (8, 16)}, "patch_size"), ({"sigma_scale": 0.0}, "sigma_scale")])
def test_bad_configuration_is_refused_in_one_line(changes, message):
    config = SlidingWindowConfig(patch_size=(8, 16, 16))
    for key, value in changes.items():
        setattr(config, key, value)
    with pytest.raises(BreastTumorSegError, match=message) as info:
        sliding_window_probability(pointwise_network(), random_image(), config, device="cpu")
    assert "\n" not in str(info.value)


def test_patch_size_must_suit_the_network():
    network = HirschUNet3D(base_channels=4, depth=4)
    with pytest.raises(BreastTumorSegError, match="not divisible by 8"):
        sliding_window_probability(network, random_image(), SlidingWindowConfig(patch_size=(8, 12, 16)), device="cpu")


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert describe_device("cpu") == f"CPU ({torch.get_num_threads()} threads)"
    with pytest.raises(BreastTumorSegError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(BreastTumorSegError, match="CUDA is not available") as info:
            resolve_device("cuda")
        assert "\n" not in str(info.value)
        with pytest.raises(BreastTumorSegError):
            sliding_window_probability(pointwise_network(), random_image(), SlidingWindowConfig(patch_size=(8, 16, 16)),
                                       device="cuda")
    else:
        assert describe_device(resolve_device("cuda"))
