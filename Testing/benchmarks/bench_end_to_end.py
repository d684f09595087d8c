"""End-to-end benchmark on the standard case: files in -> segmentation + measurements out.

Standard case (DESIGN.md section 7): a synthetic phantom at 448 x 448 x 160 voxels
(0.75 x 0.75 x 2.0 mm), 6 phases, written as NIfTI. Runs the real CLI in a child
process and prints wall time and the child's peak resident memory beside the targets
(<= 60 s and <= 4 GB on CPU; <= 5 s end to end on one H100).

    python Testing/benchmarks/bench_end_to_end.py [--device cpu|cuda] [--size 448 448 160] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))

import standard_case  # noqa: E402  (beside this script)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    standard_case.add_options(parser)
    parser.add_argument("--model", help="a registry name or .safetensors path (default: the registry's default for "
                                        "the number of phases)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the segment outputs here (e.g. for bench_threshold_update.py --probability)")
    args = parser.parse_args()

    from breasttumorseg.metrics import dice
    from breasttumorseg.loading import read_image

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "case"
        case = standard_case.write(folder, args)
        phases = sorted(str(p) for p in folder.glob("phase_*.nii.gz"))
        command = [sys.executable, "-m", "breasttumorseg", "segment", *phases, "--output", str(tmp / "out"),
                   "--device", args.device, "--quiet"] + (["--model", args.model] if args.model else [])
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr)
            return 1
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        label, _ = read_image(tmp / "out" / "tumor_label.nii.gz")
        record = json.loads((tmp / "out" / "measurements.json").read_text())
        score = dice(label > 0.5, case.tumor_mask > 0)
        if args.keep:
            import shutil

            shutil.copytree(tmp / "out", args.keep, dirs_exist_ok=True)

    target_wall = 5.0 if args.device == "cuda" else 60.0
    print(f"{'measure':<34}{'value':>10}{'target':>10}{'ratio':>8}")
    print(f"{'end to end wall time (s)':<34}{wall:>10.1f}{target_wall:>10.1f}{wall / target_wall:>8.2f}")
    print(f"{'peak memory of the process (GB)':<34}{peak_gb:>10.2f}{4.0:>10.1f}{peak_gb / 4.0:>8.2f}")
    print(f"model: {record['model_name']} (breast prior: {record.get('breast_mask_model')}); "
          f"stages (s): {record['timings_s']}; "
          f"device: {record['device']}")
    print(f"Dice against the phantom truth: {score:.3f} (synthetic phantom, seed {args.seed})")
    return 0


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "BreastTumorSeg") + os.pathsep + env.get("PYTHONPATH", "")
    return env


if __name__ == "__main__":
    raise SystemExit(main())
