"""The Slicer logic's threshold slider on the standard case, on maps that hold a tumor.

Two probability maps on the standard grid (448 x 448 x 160 voxels of 0.75 x 0.75 x 2.0 mm):

* **generated**, the worst case we generate: a 25 mm tumor (peak 0.97), twelve enhancing foci
  spread over the grid (so every mask's bounding box is most of the grid) and smooth noise
  of about 0.05 everywhere;
* **phantom**: the map the default model writes for the standard case's phantom (seed 9001),
  made first by ``breasttumorseg segment`` in a child process (not timed), or read from
  ``--probability FILE``. The Dice of its 0.5 mask against the phantom's tumor is printed.

Each map gets real MRML nodes from slicer-core through ``BreastTumorSegLogic.addResult``;
then, per mode (absolute; relative to the maximum with Hirsch's seed rule; absolute with
the smallest piece >= 0.1 mL), thresholds sweep up and down, each change timed twice:

* **fast**: ``logic.updateSegmentation`` (the map's ThresholdIndex; changed voxels written
  into the segment in place);
* **direct**: what it did before, on a second segmentation: ``segment_probability`` on the
  whole map, ``setSegmentFromArray`` and the display threshold from the map's maximum.

Both masks are compared voxel for voxel at every change. Printed per mode: median and worst
ms per change of both, their ratio, and the first change after switching to the mode (it
builds that mode's image once per map), beside the target (median <= 100 ms); per map: the
index's build time (once per map, inside ``addResult``) and size.

    python Testing/benchmarks/bench_threshold_update.py [--repeats N] [--probability FILE] [--skip-phantom]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))
sys.path.insert(0, str(ROOT / "Testing"))

import standard_case  # beside this script

TARGET_MS = 100.0
MODES = (("absolute", False, 0.0), ("relative (Hirsch seeds)", True, 0.0), ("absolute, >= 0.1 mL", False, 0.1))
SWEEP = (0.2, 0.35, 0.5, 0.65, 0.8, 0.65, 0.5, 0.35)


def generated_map(shape_zyx, spacing_xyz, rng) -> np.ndarray:
    """A smooth probability: one 25 mm tumor (peak 0.97), twelve small enhancing foci, noise."""
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


def phantom_map(args):
    """The default model's probability for the standard phantom: ``(probability, geometry, Dice at 0.5)``."""
    from breasttumorseg.exam.loading import read_image
    from breasttumorseg.evaluation.metrics import dice

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "case"
        case = standard_case.write(folder, args)
        phases = sorted(str(p) for p in folder.glob("phase_*.nii.gz"))
        started = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "BreastTumorSeg") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run([sys.executable, "-m", "breasttumorseg", "segment", *phases, "--output",
                               str(Path(tmp) / "out"), "--device", "cpu", "--quiet"],
                              capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"breasttumorseg segment failed on the phantom: {done.stderr.strip()[-500:]}")
        print(f"default model on the phantom: {time.perf_counter() - started:.1f} s (not part of the timing)")
        probability, geometry = read_image(Path(tmp) / "out" / "probability.nii.gz")
        probability = probability.astype(np.float32)
        return probability, geometry, dice(probability >= 0.5, case.tumor_mask > 0)


def time_map(core, label: str, probability: np.ndarray, geometry, repeats: int) -> bool:
    """Print one map's table; returns whether every mode's fast median met the target."""
    from breasttumorseg.segmentation.postprocess import ThresholdSettings, segment_probability
    from breasttumorseg.segmentation.threshold_index import ThresholdIndex
    from BreastTumorSegLib import BreastTumorSegLogic, nodes

    phases = [nodes.newScalarVolumeNode((probability * 100 * (i + 1)).astype(np.float32), geometry,
                                        f"{label} phase {i}", core.scene) for i in range(2)]
    logic = BreastTumorSegLogic()
    started = time.perf_counter()
    index = ThresholdIndex(probability, geometry)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    probability_node, fast_segmentation = logic.addResult(phases, probability)
    add_result_s = time.perf_counter() - started
    direct_probability_node, direct_segmentation = BreastTumorSegLogic().addResult(phases, probability,
                                                                                   name=f"{label} direct")
    view = nodes.readOnlyVolumeView(direct_probability_node)
    direct_id = nodes.tumorSegmentId(direct_segmentation)

    def direct(settings):
        mask = segment_probability(view, geometry, settings)
        nodes.setSegmentFromArray(direct_segmentation, direct_id, mask, geometry)
        peak = float(np.max(view))
        nodes.setDisplayThreshold(direct_probability_node, settings.threshold * peak if settings.relative
                                  else settings.threshold)
        return mask

    universe = len(index.voxels)
    print(f"\n{label}: {universe} voxels indexed ({100 * universe / probability.size:.2f} % of the grid, "
          f"probability >= {float(index.floor):.3f}, holes filled); index built in {build_s:.2f} s, "
          f"addResult (index, first write) {add_result_s:.2f} s")
    print(f"{'threshold change':<26}{'fast median':>12}{'fast worst':>11}{'direct median':>14}{'direct worst':>13}"
          f"{'speed-up':>9}{'first in mode':>14}{'target':>8}")
    def change(mode, threshold, relative, smallest, timed=None):
        """One slider change, fast then direct; both masks must be equal. Returns the fast ms."""
        settings = ThresholdSettings(threshold, relative, min_component_ml=smallest)
        started = time.perf_counter()
        fast = logic.updateSegmentation(probability_node, fast_segmentation, threshold, relative=relative,
                                        minComponentMl=smallest)
        fast_ms = (time.perf_counter() - started) * 1000.0
        started = time.perf_counter()
        expected = direct(settings)
        direct_ms = (time.perf_counter() - started) * 1000.0
        if not np.array_equal(fast, expected):
            raise SystemExit(f"{label}, {mode}, threshold {threshold}: the fast mask differs from the direct one")
        if timed is not None:
            timed.append((fast_ms, direct_ms))
        return fast_ms

    met = True
    for mode, relative, smallest in MODES:
        first_ms = change(mode, 0.45 if mode == "absolute" else 0.5, relative, smallest)
        times = []
        for _ in range(repeats):
            for threshold in SWEEP:
                change(mode, threshold, relative, smallest, times)
        fast = np.array([t[0] for t in times])
        slow = np.array([t[1] for t in times])
        in_segment = slicer_segment(fast_segmentation, phases[1])
        if not np.array_equal(in_segment, segment_probability(probability, geometry, ThresholdSettings(
                SWEEP[-1], relative, min_component_ml=smallest))):
            raise SystemExit(f"{label}, {mode}: the segment node does not hold the mask")
        met &= bool(np.median(fast) <= TARGET_MS)
        print(f"{mode:<26}{np.median(fast):>12.1f}{fast.max():>11.1f}{np.median(slow):>14.1f}{slow.max():>13.1f}"
              f"{np.median(slow) / np.median(fast):>8.1f}x{first_ms:>14.1f}{TARGET_MS:>8.0f}")
    return met


def slicer_segment(segmentation_node, reference_node) -> np.ndarray:
    import slicer
    from BreastTumorSegLib import nodes

    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, nodes.tumorSegmentId(segmentation_node),
                                                      reference_node)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    standard_case.add_options(parser)
    parser.add_argument("--repeats", type=int, default=2, help="sweeps over the thresholds per mode")
    parser.add_argument("--probability", type=Path, help="the phantom's probability map (probability.nii.gz) "
                                                         "instead of running the default model")
    parser.add_argument("--skip-phantom", action="store_true", help="time the generated map only")
    args = parser.parse_args()

    from breasttumorseg.core.geometry import Geometry
    from slicer_harness import create_slicer_core

    core = create_slicer_core()
    geometry = Geometry(tuple(args.size), tuple(args.spacing), (-168.0, -168.0, -160.0))
    print(f"grid {' x '.join(map(str, geometry.size))} voxels ({np.prod(geometry.size) / 1e6:.1f} M); "
          f"sweep {SWEEP} x {args.repeats} per mode; {os.cpu_count()} CPUs")
    maps = [("generated worst case", lambda: (generated_map(geometry.shape_zyx, geometry.spacing,
                                                            np.random.default_rng(0)), geometry))]
    if args.probability:
        from breasttumorseg.exam.loading import read_image

        maps.append((f"phantom map {args.probability.name}",
                     lambda: tuple(np.asarray(a, dtype=np.float32) if i == 0 else a
                                   for i, a in enumerate(read_image(args.probability)))))
    elif not args.skip_phantom:
        def phantom():
            probability, phantom_geometry, score = phantom_map(args)
            print(f"default model's map on the phantom (seed {args.seed}): Dice {score:.3f} at 0.5 "
                  f"against the phantom's tumor; maximum {float(probability.max()):.3f}")
            return probability, phantom_geometry

        maps.append((f"phantom map (default model, seed {args.seed})", phantom))
    met = True
    for label, make in maps:
        probability, map_geometry = make()
        met &= time_map(core, label, probability, map_geometry, args.repeats)
    print(f"\ntarget (fast median <= {TARGET_MS:.0f} ms per change, every mode and map): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
