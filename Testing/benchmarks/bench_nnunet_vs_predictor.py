"""An nnU-Net v2 model folder through our engine against nnU-Net's own ``nnUNetPredictor``, in one run.

The same folder (built here: nnU-Net's PlainConvUNet from its plans, random weights, one fold)
and the same input: a synthetic axial study, chest and two breasts in noisy air (noise, not
zeros, so nnU-Net's crop to the non-zero box does not remove the air). Each side does the
whole prediction: preprocessing (crop, z-score, resampling to the plans' spacing), sliding
window with Gaussian blending and export onto the input grid. Prints the seconds of each,
the speed ratio nnU-Net / ours on identical tiles (``--whole-image``; target >= 1.0), with
our skipping of the tiles outside the body (the default for nnU-Net folders), and with the
tiles limited to a breast region (``region=``, here the synthetic breasts; target >= 2), and
the largest absolute probability difference (everywhere on identical tiles; inside the body
or the breasts with skipping: the skipping runs lay their tiles over the region's bounding
box, so their tiles, and a random network's numbers, differ from nnU-Net's). One warm-up
call per side precedes the timings; the runs then alternate and the fastest of
``--repeats`` counts for each side.

    python Testing/benchmarks/bench_nnunet_vs_predictor.py [--device cpu|cuda] [--size X Y Z]
        [--patch Z Y X] [--features F1 F2 F3] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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
from breasttumorseg.segmentation.nnunet_folder import find_model_folder, load_nnunet_model
from breasttumorseg.segmentation.pipeline import body_mask
from breasttumorseg.exam.dce_exam import DCEStudy
from nnunet_folders import build_model_folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 2.0), metavar=("X", "Y", "Z"),
                        help="input spacing in mm (the plans' spacing is 1.5 1.5 2.0: no resampling by default)")
    parser.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--features", type=int, nargs=3, default=(16, 32, 64), metavar="F")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the fastest counts (default 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = torch.device(args.device)
    shape_zyx = tuple(reversed(args.size))
    image, _ = synthetic_volume(shape_zyx)
    image = 500.0 * image[0]  # one channel, MR-like signal 500 in the body; air is noise (sd 25), never 0
    geometry = Geometry(tuple(args.size), tuple(args.spacing), (0.0, 0.0, 0.0))
    study = DCEStudy(np.stack([image * 0.8, image, image * 0.9]).astype(np.float32), geometry,
                     np.array([0.0, 90.0, 180.0]), ["pre", "post1", "post2"], "synthetic")
    body = body_mask(study)
    breasts = body_parts(shape_zyx)[1]

    with tempfile.TemporaryDirectory() as root:
        folder = build_model_folder(Path(root), folds=(0,), patch_zyx=tuple(args.patch),
                                    spacing_zyx=tuple(reversed(args.spacing)), features=tuple(args.features))
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(find_model_folder(folder)), use_folds=(0,))
        ours_whole = load_nnunet_model(root, whole_image=True, device=device)
        ours_skipping = load_nnunet_model(root, device=device)

        def nnunet():
            return predictor.predict_single_npy_array(image[None].astype(np.float32),
                                                      {"spacing": list(reversed(args.spacing))}, None, None, True)[1][1]

        timings = {}

        def ours(name, model, region=None):
            def run():
                probability, _, spent = model.predict_probability(study, device=device, region=region)
                timings[name] = spent
                return probability

            return run

        sides = {"nnunet": nnunet, "whole": ours("whole", ours_whole), "skipping": ours("skipping", ours_skipping),
                 "breasts": ours("breasts", ours_skipping, breasts)}
        for function in sides.values():
            function()  # warm-up
        best, steps = {}, {}
        for _ in range(args.repeats):  # interleaved, the best of each: other load on the machine shows less
            for name, function in sides.items():
                result, seconds = timed(function, device)
                if name not in best or seconds < best[name][1]:
                    best[name] = (result, seconds)
                    steps[name] = timings.get(name)
        (reference, t_nnunet), (whole, t_whole) = best["nnunet"], best["whole"]
        (skipping, t_skipping), (in_breasts, t_breasts) = best["skipping"], best["breasts"]

    print(f"input {args.size[0]}x{args.size[1]}x{args.size[2]} voxels at {args.spacing} mm, patch {tuple(args.patch)}, "
          f"features {tuple(args.features)}, device {device}, torch threads {torch.get_num_threads()}, "
          f"body {body.mean():.0%} and breasts {breasts.mean():.0%} of the volume")
    print(f"{'':28s}{'seconds':>10s}{'nnU-Net / ours':>17s}{'max |p diff|':>15s}")
    print(f"{'nnUNetPredictor':28s}{t_nnunet:10.2f}")
    print(f"{'ours, identical tiles':28s}{t_whole:10.2f}{t_nnunet / t_whole:16.2f}x"
          f"{np.abs(whole - reference).max():15.2e}   (target >= 1.0x)")
    print(f"{'ours, tiles inside the body':28s}{t_skipping:10.2f}{t_nnunet / t_skipping:16.2f}x"
          f"{np.abs(skipping - reference)[body].max():15.2e}   (difference inside the body)")
    print(f"{'ours, breast region':28s}{t_breasts:10.2f}{t_nnunet / t_breasts:16.2f}x"
          f"{np.abs(in_breasts - reference)[breasts].max():15.2e}   (target >= 2x; difference inside the breasts)")
    print(f"nnU-Net's probability ranges {reference.min():.3f} .. {reference.max():.3f}; "
          "our steps in the fastest runs (s): "
          + "; ".join(f"{name} {_steps(steps[name])}" for name in ("whole", "skipping", "breasts")))
    return 0


def _steps(timings: dict) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in timings.items())


if __name__ == "__main__":
    raise SystemExit(main())
