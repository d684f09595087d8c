"""Held-out phantom accuracy of a model beside a percent-enhancement baseline.

Cases are phantoms from seeds that training never used (training draws seeds below
100000; these start at 500000), their protocols (layout, 2-8 phases, spacing, field of
view) drawn as in training (:func:`breasttumorseg.training.case_protocol`). For each
case: the model's Dice through the real pipeline, and a conventional baseline on the
same case: percent enhancement >= 70 % (first post-contrast) inside the body, largest
connected component. Prints a table, the medians beside the target (>= 0.90) and the
medians per size band of the longest diameter (T1 <= 20 mm, T2 <= 50 mm, T3 above).

    python Testing/benchmarks/bench_accuracy.py [--cases 20] [--model NAME|PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))

HELD_OUT_SEED = 500000


def percent_enhancement_baseline(study, threshold_percent: float = 70.0) -> np.ndarray:
    """PE >= threshold inside the body, largest 26-connected component (uint8)."""
    from scipy import ndimage

    from breasttumorseg.maps import percent_enhancement
    from breasttumorseg.pipeline import body_mask

    candidate = (percent_enhancement(study.pre_contrast, study.first_post_contrast) >= threshold_percent)
    candidate &= body_mask(study)
    labels, count = ndimage.label(candidate, structure=np.ones((3, 3, 3)))
    if count == 0:
        return candidate.astype(np.uint8)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return (labels == largest).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from breasttumorseg.measurements import longest_diameter_mm, t_category
    from breasttumorseg.metrics import dice
    from breasttumorseg.models import load_model
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.pipeline import segment_study
    from breasttumorseg.training import case_protocol

    model = load_model(args.model)
    print(f"model {model.card.name} {model.card.version}; phantoms from seed {HELD_OUT_SEED} on (never trained on), "
          f"protocols drawn as in training")
    rows = []
    print(f"{'seed':>7} {'layout':>9} {'phases':>6} {'tumor mL':>9} {'diam mm':>8} {'model':>7} {'PE>=70%':>8} {'s':>6}")
    for i in range(args.cases):
        seed = HELD_OUT_SEED + i
        protocol = case_protocol(seed, model.card.working_spacing_mm)
        case = generate_phantom(seed, **protocol)
        start = time.perf_counter()
        result = segment_study(case.study, model, device=args.device)
        seconds = time.perf_counter() - start
        truth = case.tumor_mask > 0
        model_dice = dice(result.mask > 0, truth)
        baseline_dice = dice(percent_enhancement_baseline(case.study) > 0, truth)
        volume = truth.sum() * case.study.geometry.voxel_volume_ml
        diameter = longest_diameter_mm(truth, case.study.geometry)
        rows.append((model_dice, baseline_dice, t_category(diameter)))
        print(f"{seed:>7} {protocol['layout']:>9} {protocol['n_phases']:>6} {volume:>9.2f} {diameter:>8.1f} "
              f"{model_dice:>7.3f} {baseline_dice:>8.3f} {seconds:>6.1f}", flush=True)
    model_scores = np.array([r[0] for r in rows])
    baseline_scores = np.array([r[1] for r in rows])
    print(f"\nmedian Dice over {len(rows)} held-out phantoms: model {np.median(model_scores):.3f} "
          f"(IQR {np.percentile(model_scores, 25):.3f}-{np.percentile(model_scores, 75):.3f}; target >= 0.90), "
          f"PE baseline {np.median(baseline_scores):.3f}")
    for band in ("T1", "T2", "T3"):
        chosen = [r for r in rows if r[2] == band]
        if chosen:
            print(f"  size band {band} ({len(chosen)} cases): model {np.median([r[0] for r in chosen]):.3f}, "
                  f"PE baseline {np.median([r[1] for r in chosen]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
