"""Stress set: tumor models, the PE and FCM baselines and two breast masks past the training ranges.

Cases: :mod:`breasttumorseg.phantom.stress`, one axis at a time from a base case (axial,
5 phases, field of view 300 x 300 x 150 mm at 1.25 x 1.25 x 2.0 mm: 240 x 240 x 75
voxels; the slice and field-of-view axes change that grid), seeds 700000 and up (never
trained on, disjoint from the accuracy benchmark's 500000 and up). Every axis uses the
same seeds, so seed ``s`` is the same patient on every axis.

On every case:

* each tumor model through the real pipeline (:func:`breasttumorseg.segmentation.pipeline.segment_study`,
  the breast prior its card names included): Dice, lesion detection (the case counts as
  detected when a predicted component overlaps the tumor), false-positive lesions (predicted
  components that touch no tumor voxel), seconds;
* the two conventional baselines of :mod:`breasttumorseg.evaluation.baselines` (percent enhancement
  >= 70 % with the I-SPY background rule; fuzzy c-means as in Hirsch et al.) inside the
  classical breast mask grown by 10 mm (a conventional pipeline end to end; it holds
  where the breast-mask network does not, see below);
* the whole-breast mask: Dice of the registry's breast-mask model
  (``breast-mask-unet3d-phantom``: probability >= 0.5, largest components, no margin) and
  of :func:`breasttumorseg.exam.breast_classical.classical_breast_mask`, against the phantom's
  breast mask.

Prints one row per case as it goes, then one table per axis (n, median Dice of each model
and baseline, detection rate, false-positive lesions per case, mean seconds per case,
median breast-mask Dice of both methods) and the overall medians.

    python Testing/benchmarks/bench_stress.py [--model NAME ...] [--seeds-per-axis 3] [--skip-seeds 0] [--axes AXIS ...]
                                              [--inplane-mm 1.25] [--slice-mm 2.0] [--json FILE] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "BreastTumorSeg"))

BASELINES = ("pe", "fcm")
SHORT = {"pe": "PE", "fcm": "FCM"}
BASELINE_MARGIN_MM = 10.0


def lesion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[bool, int]:
    """(tumor detected, false-positive lesions): predicted 26-connected components that
    overlap the tumor / that touch no tumor voxel."""
    from scipy import ndimage

    labels, count = ndimage.label(pred, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return False, 0
    hit = np.unique(labels[truth & (labels > 0)])
    return bool(len(hit)), int(count - len(hit))


def score_case(case, models, breast_model, device) -> dict:
    """Every method's figures on one stress case."""
    from breasttumorseg.evaluation.baselines import baseline_region, run_baseline
    from breasttumorseg.segmentation.breast import grow, largest_components
    from breasttumorseg.exam.breast_classical import classical_breast_mask
    from breasttumorseg.core.geometry import resample
    from breasttumorseg.evaluation.metrics import dice
    from breasttumorseg.segmentation.pipeline import probability_on_working_grid, segment_study

    study = case.study
    truth = case.tumor_mask > 0
    row = {"tumor_ml": float(truth.sum() * study.geometry.voxel_volume_ml), "dice": {}, "detected": {},
           "false_positive_lesions": {}, "seconds": {}, "breast_dice": {}}
    for model in models:
        start = time.perf_counter()
        result = segment_study(study, model, device=device)
        row["seconds"][model.card.name] = time.perf_counter() - start
        pred = result.mask > 0
        row["dice"][model.card.name] = float(dice(pred, truth))
        row["detected"][model.card.name], row["false_positive_lesions"][model.card.name] = lesion_counts(pred, truth)

    reference_breast = case.breast_mask > 0
    start = time.perf_counter()
    classical = classical_breast_mask(study)
    row["seconds"]["classical breast mask"] = time.perf_counter() - start
    row["breast_dice"]["classical"] = float(dice(classical, reference_breast))
    if breast_model is not None:
        start = time.perf_counter()
        probability, working, _, _ = probability_on_working_grid(study, breast_model, device=device)
        found = resample(largest_components(probability >= 0.5).astype(np.uint8), working, study.geometry,
                         interpolation="nearest") > 0
        row["seconds"][breast_model.card.name] = time.perf_counter() - start
        row["breast_dice"][breast_model.card.name] = float(dice(found, reference_breast))

    grown = grow(classical, study.geometry.spacing, BASELINE_MARGIN_MM) if classical.any() else None
    region = baseline_region(study, grown)
    for name in BASELINES:
        start = time.perf_counter()
        pred = run_baseline(name, study, region) > 0
        row["seconds"][name] = time.perf_counter() - start
        row["dice"][name] = float(dice(pred, truth))
        row["detected"][name], row["false_positive_lesions"][name] = lesion_counts(pred, truth)
    return row


def axis_table(rows: list[dict], methods: list[str], breast_methods: list[str]) -> dict:
    """Per-axis figures: n, median Dice per method, detection rate, FP lesions per case,
    mean seconds, median breast-mask Dice per breast method."""
    table = {"n": len(rows)}
    for method in methods:
        table[method] = {
            "median_dice": round(float(np.median([r["dice"][method] for r in rows])), 4),
            "detection_rate": round(float(np.mean([r["detected"][method] for r in rows])), 3),
            "false_positive_lesions_per_case": round(float(np.mean([r["false_positive_lesions"][method]
                                                                    for r in rows])), 2),
            "mean_seconds": round(float(np.mean([r["seconds"][method] for r in rows])), 1)}
    table["breast_mask_median_dice"] = {name: round(float(np.median([r["breast_dice"][name] for r in rows])), 4)
                                        for name in breast_methods}
    return table


def format_tables(tables: dict, methods: list[str], models: list[str], breast_methods: list[str]) -> str:
    """The per-axis table (Markdown-compatible) followed by the overall row."""
    head = ["axis", "n"] + [f"Dice {SHORT.get(m, m)}" for m in methods]
    for model in models:
        head += [f"detect {model}", f"FP/case {model}", f"s {model}"]
    head += [f"breast Dice {name}" for name in breast_methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for axis, table in tables.items():
        cells = [axis, str(table["n"])] + [f"{table[m]['median_dice']:.3f}" for m in methods]
        for model in models:
            cells += [f"{table[model]['detection_rate']:.2f}", f"{table[model]['false_positive_lesions_per_case']:.1f}",
                      f"{table[model]['mean_seconds']:.0f}"]
        cells += [f"{table['breast_mask_median_dice'][name]:.3f}" for name in breast_methods]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="a tumor model of the registry (repeatable; default: the registry's default)")
    parser.add_argument("--seeds-per-axis", type=int, default=3, help="cases per axis (default 3)")
    parser.add_argument("--skip-seeds", type=int, default=0,
                        help="leave out the first N seeds (to add cases to an earlier run; default 0)")
    parser.add_argument("--axes", nargs="*", help="only these axes, in this order (default: all)")
    parser.add_argument("--inplane-mm", type=float, default=1.25, help="base in-plane spacing (default 1.25 mm)")
    parser.add_argument("--slice-mm", type=float, default=2.0, help="base slice spacing (default 2.0 mm)")
    parser.add_argument("--breast-model", default="breast-mask-unet3d-phantom",
                        help="the breast-mask model to measure ('' for none)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the rows and tables here (after every case)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from breasttumorseg.core import atomic
    from breasttumorseg.segmentation.models import default_model_name, load_model
    from breasttumorseg.phantom.stress import (
        AXIS_NAMES,
        StressBase,
        stress_axis,
        stress_case,
        stress_seeds,
    )

    names = args.models or [default_model_name()]
    axes = [stress_axis(a).name for a in (args.axes or AXIS_NAMES)]
    seeds = stress_seeds(args.skip_seeds + args.seeds_per_axis)[args.skip_seeds:]
    base = StressBase(inplane_mm=args.inplane_mm, slice_mm=args.slice_mm)
    models = [load_model(name, device=args.device) for name in names]
    breast_model = load_model(args.breast_model, device=args.device) if args.breast_model else None
    methods = names + list(BASELINES)
    breast_methods = ([breast_model.card.name] if breast_model else []) + ["classical"]
    size = base.grid()["size"]
    print(f"stress set: {len(axes)} axes x {len(seeds)} seeds ({seeds[0]}-{seeds[-1]}); base grid "
          f"{size[0]} x {size[1]} x {size[2]} at {base.inplane_mm} x {base.inplane_mm} x {base.slice_mm} mm, "
          f"{base.n_phases} phases; models: {', '.join(names)}; baselines inside the classical breast mask + "
          f"{BASELINE_MARGIN_MM:g} mm; device {args.device}", flush=True)
    print(f"{'seed':>7} {'axis':<24} {'mL':>7} " + " ".join(f"{SHORT.get(m, m[:14]):>14}" for m in methods)
          + " " + " ".join(f"{'breast ' + b[:7]:>14}" for b in breast_methods), flush=True)
    rows: list[dict] = []
    started = time.perf_counter()
    for seed in seeds:  # seed-major: a run cut short still covers every axis
        for axis in axes:
            start = time.perf_counter()
            case = stress_case(axis, seed, base)
            row = score_case(case, models, breast_model, args.device)
            row.update(seed=seed, axis=axis, generate_seconds=round(time.perf_counter() - start, 1))
            rows.append(row)
            print(f"{seed:>7} {axis:<24} {row['tumor_ml']:>7.2f} "
                  + " ".join(f"{row['dice'][m]:>14.3f}" for m in methods) + " "
                  + " ".join(f"{row['breast_dice'][b]:>14.3f}" for b in breast_methods), flush=True)
            if args.json:
                atomic.write_text(args.json, json.dumps(_report(rows, axes, methods, names, breast_methods, base),
                                                        indent=2) + "\n")
    report = _report(rows, axes, methods, names, breast_methods, base)
    print(f"\nper axis (median Dice; detection and FP lesions per case for the models; {len(rows)} cases, "
          f"{(time.perf_counter() - started) / 60:.1f} min):")
    print(format_tables(report["tables"], methods, names, breast_methods))
    overall = report["overall"]
    print("overall median Dice: " + ", ".join(f"{SHORT.get(m, m)} {overall[m]:.3f}" for m in methods)
          + "; breast mask: " + ", ".join(f"{b} {overall['breast_mask_' + b]:.3f}" for b in breast_methods))
    print("targets (DESIGN.md section 7): every axis >= the PE and FCM baselines; overall >= 0.75; "
          "breast mask median >= 0.90")
    return 0


def _report(rows, axes, methods, names, breast_methods, base) -> dict:
    tables = {axis: axis_table([r for r in rows if r["axis"] == axis], methods, breast_methods)
              for axis in axes if any(r["axis"] == axis for r in rows)}
    overall = {m: round(float(np.median([r["dice"][m] for r in rows])), 4) for m in methods}
    overall.update({"breast_mask_" + b: round(float(np.median([r["breast_dice"][b] for r in rows])), 4)
                    for b in breast_methods})
    return {"models": names, "methods": methods, "breast_methods": breast_methods,
            "base": {"fov_mm": list(base.fov_mm), "inplane_mm": base.inplane_mm, "slice_mm": base.slice_mm,
                     "n_phases": base.n_phases},
            "n_cases": len(rows), "tables": tables, "overall": overall, "rows": rows}


if __name__ == "__main__":
    raise SystemExit(main())
