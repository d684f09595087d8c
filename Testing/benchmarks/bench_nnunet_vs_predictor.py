"""An nnU-Net v2 model folder through our engine against nnU-Net's own ``nnUNetPredictor``, in one run.

Two inputs, each with its own folder (built here: nnU-Net's PlainConvUNet from its plans,
random weights, one fold, the plans' spacing the input's, so neither side resamples):

- ``synthetic`` (the input of the earlier figures): 128x128x64 voxels at 1.5x1.5x2.0 mm, a
  chest and two breasts in noisy air (noise, not zeros, so nnU-Net's crop to the non-zero box
  does not remove the air), the chest spanning the grid; breast region = the synthetic
  breasts themselves (no margin);
- ``phantom`` (representative of an axial bilateral breast MRI): our phantom generator's
  study (seed 500001, a prone patient sized to a 336x336x160 mm field of view, 160x160x64
  voxels at 2.1x2.1x2.5 mm, so the patch of 32x64x64 voxels is 80x134x134 mm), its first
  post-contrast phase; breast region = what ``--region breasts`` runs: the model-free
  classical breast mask grown by 10 mm, found on the study (its time counted in ours).

Each side does the whole prediction: preprocessing (crop, z-score, resampling), sliding
window with Gaussian blending and export onto the input grid. Per input it prints the
seconds of each, the speed ratio nnU-Net / ours on identical tiles (``--whole-image``; target
>= 1.0), with our skipping of the tiles outside the body (the default for nnU-Net folders),
and with the tiles limited to the breast region (target >= 2), the tiles each runs, and the
largest absolute probability difference (everywhere on identical tiles; inside the body or
the region with skipping: the skipping runs lay their tiles over the region's bounding box, or
each connected part's, and drop the tiles that are not needed (``foreground_tile_starts``), so
their tiles, and a random network's numbers, differ from nnU-Net's). One warm-up call per side
precedes the timings; the runs then alternate and the fastest of ``--repeats`` counts.

    python Testing/benchmarks/bench_nnunet_vs_predictor.py [--device cpu|cuda] [--inputs synthetic phantom]
        [--patch Z Y X] [--features F1 F2 F3] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(HERE))

import torch
from bench_engine_vs_monai import body_parts, synthetic_volume, timed
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.dce_exam import DCEStudy
from breasttumorseg.phantom import generate_phantom
from breasttumorseg.segmentation.breast import classical_breast_region
from breasttumorseg.segmentation.inference import foreground_tile_starts, tile_starts
from breasttumorseg.segmentation.nnunet_folder import find_model_folder, load_nnunet_model
from breasttumorseg.segmentation.pipeline import body_mask
from nnunet_folders import build_model_folder
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor


#: (size x y z in voxels, spacing x y z in mm) of each input
INPUTS = {"synthetic": ((128, 128, 64), (1.5, 1.5, 2.0)), "phantom": ((160, 160, 64), (2.1, 2.1, 2.5))}
PHANTOM_SEED = 500001


def synthetic_input(size, spacing):
    """(study, nnU-Net's one channel [z, y, x], breast region) of the synthetic input."""
    shape_zyx = tuple(reversed(size))
    image, _ = synthetic_volume(shape_zyx)
    image = 500.0 * image[0]  # one channel, MR-like signal 500 in the body; air is noise (sd 25), never 0
    geometry = Geometry(tuple(size), tuple(spacing), (0.0, 0.0, 0.0))
    study = DCEStudy(np.stack([image * 0.8, image, image * 0.9]).astype(np.float32), geometry,
                     np.array([0.0, 90.0, 180.0]), ["pre", "post1", "post2"], "synthetic")
    return study, image.astype(np.float32), lambda _: body_parts(shape_zyx)[1]


def phantom_input(size, spacing):
    """(study, nnU-Net's one channel, breast region function) of the phantom input: the region
    is ``--region breasts``'s, found when called (so its time counts)."""
    phantom = generate_phantom(PHANTOM_SEED, size=tuple(size), spacing=tuple(spacing), n_phases=3)
    study = phantom.study
    return study, np.ascontiguousarray(study.phases[1], dtype=np.float32), classical_breast_region


def compare(name, size, spacing, args, device):
    """Time both sides on one input; print its table."""
    study, image, find_region = (phantom_input if name == "phantom" else synthetic_input)(size, spacing)
    body = body_mask(study)
    breasts = find_region(study)
    patch = tuple(args.patch)

    with tempfile.TemporaryDirectory() as root:
        folder = build_model_folder(Path(root), folds=(0,), patch_zyx=patch,
                                    spacing_zyx=tuple(reversed(spacing)), features=tuple(args.features))
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(find_model_folder(folder)), use_folds=(0,))
        ours_whole = load_nnunet_model(root, whole_image=True, device=device)
        ours_skipping = load_nnunet_model(root, device=device)

        def nnunet():
            return predictor.predict_single_npy_array(image[None], {"spacing": list(reversed(spacing))},
                                                      None, None, True)[1][1]

        timings = {}

        def ours(key, model, region=None):
            def run():
                start = time.perf_counter()
                found = None if region is None else region(study)
                spent_region = time.perf_counter() - start
                probability, _, spent = model.predict_probability(study, device=device, region=found)
                timings[key] = {"region": spent_region, **spent} if region is not None else spent
                return probability

            return run

        sides = {"nnunet": nnunet, "whole": ours("whole", ours_whole), "skipping": ours("skipping", ours_skipping),
                 "breasts": ours("breasts", ours_skipping, find_region)}
        for function in sides.values():
            function()  # warm-up
        best, steps = {}, {}
        for _ in range(args.repeats):  # interleaved, the best of each: other load on the machine shows less
            for key, function in sides.items():
                result, seconds = timed(function, device)
                if key not in best or seconds < best[key][1]:
                    best[key] = (result, seconds)
                    steps[key] = timings.get(key)

    shape = tuple(reversed(size))
    network_grid = ours_whole.card.patch_size
    tiles = {"nnunet": len(tile_starts(shape, network_grid, 0.5, "nnunet")),
             "whole": len(tile_starts(shape, network_grid, 0.5, "nnunet")),
             "skipping": len(foreground_tile_starts(body, network_grid, 0.5, "nnunet")),
             "breasts": len(foreground_tile_starts(body & breasts, network_grid, 0.5, "nnunet"))}
    reference, t_nnunet = best["nnunet"]
    print(f"\n{name}: {size[0]}x{size[1]}x{size[2]} voxels at {spacing} mm, patch {patch}, features "
          f"{tuple(args.features)}, device {device}, torch threads {torch.get_num_threads()}; body {body.mean():.0%} "
          f"and breast region {breasts.mean():.0%} of the volume")
    print(f"{'':28s}{'tiles':>6s}{'seconds':>10s}{'nnU-Net / ours':>17s}{'max |p diff|':>15s}")
    print(f"{'nnUNetPredictor':28s}{tiles['nnunet']:6d}{t_nnunet:10.2f}")
    rows = (("whole", "ours, identical tiles", None, "(target >= 1.0x)"),
            ("skipping", "ours, tiles inside the body", body, "(difference inside the body)"),
            ("breasts", "ours, breast region", breasts, "(target >= 2x; difference inside the region)"))
    ratios = {}
    for key, label, inside, note in rows:
        result, seconds = best[key]
        difference = np.abs(result - reference) if inside is None else np.abs(result - reference)[inside]
        ratios[key] = t_nnunet / seconds
        print(f"{label:28s}{tiles[key]:6d}{seconds:10.2f}{ratios[key]:16.2f}x{difference.max():15.2e}   {note}")
    print(f"nnU-Net's probability ranges {reference.min():.3f} .. {reference.max():.3f}; "
          "our steps in the fastest runs (s): "
          + "; ".join(f"{key} {_steps(steps[key])}" for key in ("whole", "skipping", "breasts")))
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--features", type=int, nargs=3, default=(16, 32, 64), metavar="F")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the fastest counts (default 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    summary = {name: compare(name, *INPUTS[name], args, device) for name in args.inputs}
    print("\nsummary, nnU-Net / ours (identical tiles / inside the body / breast region): "
          + "; ".join(f"{name} {r['whole']:.2f}x / {r['skipping']:.2f}x / {r['breasts']:.2f}x"
                      for name, r in summary.items()))
    return 0


def _steps(timings: dict) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items())


if __name__ == "__main__":
    raise SystemExit(main())
