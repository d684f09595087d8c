"""Our sliding-window engine against MONAI's ``sliding_window_inference``, in one run.

Same network (HirschUNet3D at its default size, random initialisation, eval mode), same
patch size, overlap (0.5), Gaussian blending (same sigma_scale), batch size and input: a
synthetic [3, z, y, x] volume whose body-like foreground (chest plus two breasts, built
here with numpy) fills about 40 % of the volume. Both engines start from a host array
and end with a host array; both run under ``torch.inference_mode`` (and the same
autocast on CUDA). Prints the time of each, the speed ratio MONAI / ours on identical
tiles (target >= 1.0) and with our foreground skipping (target >= 2), and the largest
absolute difference of the probability maps (everywhere without skipping; inside the
foreground with skipping). One warm-up call per engine precedes the timings; with
``--repeats N`` the runs alternate and the fastest of each counts.

Both run the same network object, which keeps its weights in ``channels_last_3d`` and puts
each batch in that layout itself (:mod:`breasttumorseg.segmentation.networks.hirsch_unet`).

    python Testing/benchmarks/bench_engine_vs_monai.py [--device cpu|cuda] [--size X Y Z]
        [--patch Z Y X] [--batch-size N] [--threads N] [--repeats N] [--pointwise]

``--pointwise`` runs a 1x1x1 convolution (3 -> 2 channels) instead of the U-Net: the network's
time is then nearly nil and what is timed is each engine's own work (slicing, softmax,
weighting, sums, the division); it also prints the time per tile.

--size is the working grid in voxels, x y z (the standard case is 224 224 214 at
1.5 mm); the default 160 160 128 keeps the run to a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))

import torch  # noqa: E402

from breasttumorseg.core.device import describe_device, resolve_device  # noqa: E402
from breasttumorseg.segmentation.inference import (SlidingWindowConfig, foreground_tile_starts,  # noqa: E402
                                      sliding_window_probability, tile_starts)
from breasttumorseg.segmentation.networks import build_network  # noqa: E402


def body_parts(shape_zyx):
    """(chest, breasts): bool [z, y, x] masks of the synthetic body (see :func:`synthetic_volume`)."""
    nz, ny, nx = shape_zyx
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(0, 1, ny), np.linspace(-1, 1, nx), indexing="ij",
                          sparse=True)
    chest = np.broadcast_to(((y + 0.1) / 0.5) ** 2 + (x / 0.9) ** 2 <= 1.0, (nz, ny, nx))
    breasts = np.zeros((nz, ny, nx), dtype=bool)
    for side in (-0.45, 0.45):
        breasts |= ((x - side) / 0.33) ** 2 + ((y - 0.4) / 0.4) ** 2 + (z / 0.7) ** 2 <= 1.0
    return chest, breasts


def synthetic_volume(shape_zyx, seed=0):
    """[3, z, y, x] float32 image and its bool body mask (about 40 % of the volume).

    Axial layout: y runs posterior (0) to anterior; the chest is an elliptic cylinder in
    the posterior part, the breasts two ellipsoids in front of it; air elsewhere.
    """
    chest, breasts = body_parts(shape_zyx)
    body = chest | breasts
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.05, size=(3, *shape_zyx)).astype(np.float32)
    image[:, body] += np.array([1.0, 0.3, -0.02], dtype=np.float32)[:, None]
    return image, body


def timed(function, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--size", type=int, nargs=3, default=(160, 160, 128), metavar=("X", "Y", "Z"))
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 96, 96), metavar=("Z", "Y", "X"))
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per call (default 1 on CPU, 4 on CUDA)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sigma-scale", type=float, default=0.125)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--pointwise", action="store_true",
                        help="a 1x1x1 convolution instead of the U-Net: the engines' own work per tile")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed runs per engine, alternating; the fastest counts (default 1)")
    args = parser.parse_args()

    from monai.inferers import sliding_window_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch_size = args.batch_size or (4 if device.type == "cuda" else 1)
    patch = tuple(args.patch)
    shape = (args.size[2], args.size[1], args.size[0])
    image, body = synthetic_volume(shape)
    torch.manual_seed(0)
    if args.pointwise:
        network = torch.nn.Conv3d(3, 2, kernel_size=1).eval().to(device)
    else:
        network = build_network("hirsch_unet3d").eval().to(device)
    config = SlidingWindowConfig(patch_size=patch, overlap=args.overlap, batch_size=batch_size, blend="gaussian",
                                 sigma_scale=args.sigma_scale, amp=True, compact_tiling=True)
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def predictor(batch):
        if amp_dtype is not None:
            with torch.autocast("cuda", dtype=amp_dtype):
                logits = network(batch)
        else:
            logits = network(batch)
        return torch.softmax(logits.float(), dim=1)[:, 1:2]

    def monai_run(volume):
        with torch.inference_mode():
            out = sliding_window_inference(torch.from_numpy(volume)[None], roi_size=patch, sw_batch_size=batch_size,
                                           predictor=predictor, overlap=args.overlap, mode="gaussian",
                                           sigma_scale=args.sigma_scale, sw_device=device, device=device)
            return out[0, 0].float().cpu().numpy()

    def ours(volume, foreground=None):
        return sliding_window_probability(network, volume, config, device=device, foreground=foreground)

    all_tiles = tile_starts(shape, patch, args.overlap)
    touching = [s for s in all_tiles if body[s[0]:s[0] + patch[0], s[1]:s[1] + patch[1], s[2]:s[2] + patch[2]].any()]
    kept = foreground_tile_starts(body, patch, args.overlap)
    print(f"device: {describe_device(device)}   torch {torch.__version__}")
    print(f"working grid z y x = {shape} ({image[0].size / 1e6:.1f} M voxels), patch z y x = {patch}, "
          f"overlap {args.overlap}, Gaussian sigma_scale {args.sigma_scale}, batch {batch_size}, "
          f"network {'1x1x1 convolution' if args.pointwise else 'HirschUNet3D'} "
          f"({sum(p.numel() for p in network.parameters()):,} parameters)")
    print(f"foreground (body) {100 * body.mean():.1f} % of the volume; tiles on the whole volume {len(all_tiles)} "
          f"({len(touching)} touch the body); tiles our skipping computes: {len(kept)}")

    warm = np.ascontiguousarray(image[:, :patch[0], :patch[1], :patch[2]])
    monai_run(warm)
    ours(warm)

    best = {}
    for _ in range(args.repeats):  # interleaved, the best of each: other load on the machine shows less
        for name, function in (("monai", lambda: monai_run(image)), ("ours", lambda: ours(image)),
                               ("skip", lambda: ours(image, body))):
            result, seconds = timed(function, device)
            if name not in best or seconds < best[name][1]:
                best[name] = (result, seconds)
    (monai_out, monai_time), (ours_out, ours_time), (skip_out, skip_time) = best["monai"], best["ours"], best["skip"]
    rows = [("MONAI sliding_window_inference", monai_time, "", ""),
            ("ours, identical tiles", ours_time, f"{monai_time / ours_time:.2f}x (target >= 1.0)",
             f"{np.abs(ours_out - monai_out).max():.2e} (whole volume)"),
            ("ours, foreground skipping", skip_time, f"{monai_time / skip_time:.2f}x (target >= 2)",
             f"{np.abs(skip_out - monai_out)[body].max():.2e} (inside foreground)")]

    print()
    print(f"{'engine':<38} {'time s':>8}   {'speed vs MONAI':<26} max |difference|")
    for name, seconds, ratio, difference in rows:
        print(f"{name:<38} {seconds:>8.2f}   {ratio:<26} {difference}")
    if args.pointwise:
        per_tile = 1000.0 / len(all_tiles)
        print(f"per tile: MONAI {monai_time * per_tile:.1f} ms, ours {ours_time * per_tile:.1f} ms "
              f"({len(all_tiles)} tiles); skipping {1000 * skip_time / len(kept):.1f} ms ({len(kept)} tiles)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
