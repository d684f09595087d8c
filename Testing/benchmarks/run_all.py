"""Run every benchmark in turn with its defaults (``make benchmark``); prints their figures.

    python Testing/benchmarks/run_all.py [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: (script, takes --device)
BENCHMARKS = (("bench_end_to_end.py", True), ("bench_engine_vs_monai.py", True), ("bench_accuracy.py", True),
              ("bench_models.py", True), ("bench_threshold_update.py", False), ("bench_station.py", True),
              ("bench_reading_room.py", True),
              ("bench_stress.py", True), ("bench_nnunet_vs_predictor.py", True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    failed = []
    for script, on_device in BENCHMARKS:
        options = ["--device", args.device] if on_device else []
        print(f"\n=== {script} {' '.join(options)} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *options], check=False).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
