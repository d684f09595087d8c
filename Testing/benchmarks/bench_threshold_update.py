"""The Slicer logic's threshold slider on the standard grid, against real MRML nodes.

Builds the standard case's reference grid (448 x 448 x 160 voxels of 0.75 x 0.75 x 2.0 mm)
in a Slicer core scene (PyPI slicer-core), a smooth probability map holding a tumor-like
blob and enhancing structures, and the result nodes through ``BreastTumorSegLogic.addResult``;
then times ``updateSegmentation`` (threshold -> tumor segment + overlay display threshold)
at a sweep of absolute and relative thresholds, with and without a minimum component size.
Prints the median and the worst time per change beside the target (<= 100 ms).
``--probability FILE`` uses a real map instead (``probability.nii.gz`` written by
``breasttumorseg segment``, e.g. on the standard case by bench_end_to_end.py --keep).

    python Testing/benchmarks/bench_threshold_update.py [--size X Y Z] [--repeats N] [--probability FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))
sys.path.insert(0, str(ROOT / "Testing"))

TARGET_MS = 100.0


def probability_map(shape_zyx, spacing_xyz, rng) -> np.ndarray:
    """A smooth probability: one 25 mm tumor (peak 0.97), a few small enhancing foci, noise."""
    from scipy import ndimage

    z, y, x = np.ogrid[:shape_zyx[0], :shape_zyx[1], :shape_zyx[2]]
    sx, sy, sz = spacing_xyz
    centre = np.array(shape_zyx) // 2
    distance = np.sqrt(((z - centre[0]) * sz) ** 2 + ((y - centre[1]) * sy) ** 2 + ((x - centre[2]) * sx) ** 2)
    probability = 0.97 / (1.0 + np.exp((distance - 12.5) / 1.5))
    for _ in range(12):
        c = [rng.integers(10, n - 10) for n in shape_zyx]
        d = np.sqrt(((z - c[0]) * sz) ** 2 + ((y - c[1]) * sy) ** 2 + ((x - c[2]) * sx) ** 2)
        probability = np.maximum(probability, rng.uniform(0.3, 0.8) / (1.0 + np.exp((d - 3.0) / 1.0)))
    noise = ndimage.gaussian_filter(rng.random(shape_zyx, dtype=np.float32), 2.0) * 0.1
    return np.clip(probability + noise, 0, 1).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(448, 448, 160), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.75, 0.75, 2.0), metavar=("X", "Y", "Z"))
    parser.add_argument("--repeats", type=int, default=2, help="sweeps over the thresholds")
    parser.add_argument("--probability", type=Path, help="a probability map file to use instead of the synthetic one")
    args = parser.parse_args()

    from slicer_harness import create_slicer_core

    from BreastTumorSegLib import BreastTumorSegLogic, nodes
    from breasttumorseg.geometry import Geometry

    core = create_slicer_core()
    if args.probability:
        from breasttumorseg.loading import read_image

        probability, geometry = read_image(args.probability)
        probability = probability.astype(np.float32)
        print(f"probability map {args.probability}")
    else:
        geometry = Geometry(tuple(args.size), tuple(args.spacing), (-168.0, -168.0, -160.0))
        probability = probability_map(geometry.shape_zyx, geometry.spacing, np.random.default_rng(0))
    phases = [nodes.newScalarVolumeNode((probability * 100 * (i + 1)).astype(np.float32), geometry,
                                        f"phase {i}", core.scene) for i in range(2)]
    logic = BreastTumorSegLogic()
    probability_node, segmentation_node = logic.addResult(phases, probability)
    print(f"grid {' x '.join(map(str, geometry.size))} voxels ({geometry.shape_zyx[0] * geometry.shape_zyx[1] * geometry.shape_zyx[2] / 1e6:.1f} M)")
    rows = []
    for label, relative, minimum in (("absolute", False, 0.0), ("relative", True, 0.0), ("absolute, >= 0.1 mL", False, 0.1)):
        times = []
        for _ in range(args.repeats):
            for threshold in (0.2, 0.35, 0.5, 0.65, 0.8):
                start = time.perf_counter()
                logic.updateSegmentation(probability_node, segmentation_node, threshold, relative=relative,
                                         minComponentMl=minimum)
                times.append((time.perf_counter() - start) * 1000.0)
        rows.append((label, float(np.median(times)), float(np.max(times))))
    print(f"{'threshold change':<22} {'median ms':>10} {'worst ms':>10} {'target ms':>10}")
    for label, median, worst in rows:
        print(f"{label:<22} {median:>10.1f} {worst:>10.1f} {TARGET_MS:>10.0f}")
    met = all(median <= TARGET_MS for _, median, _ in rows)
    print(f"target (median <= {TARGET_MS:.0f} ms per change): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
