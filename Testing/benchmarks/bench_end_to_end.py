"""End-to-end benchmark on the standard case: files in -> segmentation + measurements out.

Standard case (DESIGN.md section 7): a synthetic phantom at 448 x 448 x 160 voxels
(0.75 x 0.75 x 2.0 mm), 6 phases, written as NIfTI. Runs the real CLI in a child
process and prints wall time and the child's peak resident memory beside the targets
(<= 20 s and <= 4 GB on 2 CPU cores; <= 5 s end to end on one H100); ``--model`` repeated
compares models on the same case in one run. ``--baseline DIR`` (a checkout of this repository
at another commit, e.g. ``git worktree add /tmp/base <commit>``) runs every model with that
checkout's package too, alternating with this one on the same case: today's code beside an
earlier version in one run.

    python Testing/benchmarks/bench_end_to_end.py [--device cpu|cuda] [--size 448 448 160]
        [--model NAME ...] [--baseline DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--model", action="append",
                        help="a registry name or .safetensors path; repeat it to compare models side by side on the "
                             "same case (default: the registry's default for the number of phases)")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="a checkout of this repository at another commit: each model also runs with its package")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the first model's segment outputs here (e.g. for bench_threshold_update.py "
                             "--probability); with --baseline, the baseline's outputs into DIR/baseline")
    args = parser.parse_args()

    from breasttumorseg.exam.loading import read_image
    from breasttumorseg.evaluation.metrics import dice

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "case"
        case = standard_case.write(folder, args)
        phases = sorted(str(p) for p in folder.glob("phase_*.nii.gz"))
        trees = [("", ROOT)] + ([(" (baseline)", args.baseline.resolve())] if args.baseline else [])
        runs = [(model, suffix, tree) for model in args.model or [None] for suffix, tree in trees]
        for index, (model, suffix, tree) in enumerate(runs):
            out = tmp / f"out{index}"
            command = [sys.executable, "-m", "breasttumorseg", "segment", *phases, "--output", str(out),
                       "--device", args.device, "--quiet"] + (["--model", model] if model else [])
            start = time.perf_counter()
            with open(tmp / "stderr.txt", "w+") as stderr:
                child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=_env(tree))
                _, status, usage = os.wait4(child.pid, 0)          # this child's own peak memory
                wall = time.perf_counter() - start
                if os.waitstatus_to_exitcode(status) != 0:
                    stderr.seek(0)
                    print(stderr.read())
                    return 1
            label, _ = read_image(out / "tumor_label.nii.gz")
            record = json.loads((out / "measurements.json").read_text())
            record["model_name"] += suffix
            rows.append((record, wall, usage.ru_maxrss / 1024 ** 2, dice(label > 0.5, case.tumor_mask > 0)))
            if args.keep and (index == 0 or (suffix and model == runs[0][0])):
                import shutil

                # the first model's outputs; with --baseline, the baseline's beside them in DIR/baseline
                shutil.copytree(out, args.keep / "baseline" if suffix else args.keep, dirs_exist_ok=True)

    target_wall = 5.0 if args.device == "cuda" else 20.0
    print(f"{'model':<40}{'wall s':>8}{'target':>8}{'ratio':>7}{'peak GB':>9}{'target':>8}{'Dice':>7}")
    for record, wall, peak_gb, score in rows:
        print(f"{record['model_name']:<40}{wall:>8.1f}{target_wall:>8.1f}{wall / target_wall:>7.2f}"
              f"{peak_gb:>9.2f}{4.0:>8.1f}{score:>7.3f}")
    for record, *_ in rows:
        print(f"{record['model_name']}: breast prior {record.get('breast_mask_model')}; stages (s) "
              f"{record['timings_s']}; device {record['device']}")
    print(f"Dice against the phantom truth (synthetic phantom, seed {args.seed}; target >= 0.85)")
    return 0


def _env(tree: Path = ROOT):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree / "BreastTumorSeg") + os.pathsep + env.get("PYTHONPATH", "")
    return env


if __name__ == "__main__":
    raise SystemExit(main())
