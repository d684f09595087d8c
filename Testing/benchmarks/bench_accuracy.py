"""Held-out phantom accuracy of the tumor models beside two conventional baselines.

Cases are phantoms from seeds that training never used (training draws seeds below
100000; these start at 500000). Two sets, on the same seeds:

* **drawn protocols**: each seed's protocol (layout, 2-8 phases, spacing, field of view)
  drawn as in training (:func:`breasttumorseg.training.cases.case_protocol`);
* **per number of phases** (``--phases``): the first ``--phase-cases`` seeds generated
  with exactly k phases for each k. The generator draws the phases before the anatomy,
  so the anatomy and the tumor differ between values of k too: each k is its own set of
  held-out cases, not the same patient scanned differently.

On every case: each tumor model through the real pipeline (:func:`segment_study`, the
breast prior its card names included), and the two baselines of
:mod:`breasttumorseg.evaluation.baselines` (percent enhancement >= 70 % with the I-SPY background
rule; fuzzy c-means as in Hirsch et al.) inside the breasts found by the breast-mask
model a tumor model names, else by the model-free classical breast mask (both grown by
10 mm, as the stress set does: a conventional pipeline end to end; before 2026-12-07 the
baselines searched the whole body here, where the heart is their largest enhancing component).
Prints per-case rows, medians beside the targets (>= 0.85 with 2 phases, >= 0.90 with 6),
and tables by size band (longest diameter: T1 <= 20 mm, T2 <= 50 mm, T3 above) and by
number of phases.

``--update-cards`` writes the tables into each model's card (metrics ``by_phases``,
``by_size_band``, ``held_out_benchmark``), rewrites its Markdown card, and sets the
registry's ``default_by_phases``: at each count the registry's default, unless another
model's median Dice there is higher by more than ``DEFAULT_MARGIN`` (0.05).

    python Testing/benchmarks/bench_accuracy.py [--cases 20] [--phase-cases 6] [--phases 2 3 4 5 6 7 8]
                                                [--models NAME ...] [--update-cards]
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
BASELINES = ("pe", "fcm")
SHORT = {"pe": "PE", "fcm": "FCM"}
#: median Dice by which a model must beat the registry's default at a phase count to become its default there
DEFAULT_MARGIN = 0.05


def score_case(case, models, breast_model, device) -> dict:
    """Dice of every model and baseline on one phantom case, with its size band."""
    from breasttumorseg.evaluation.baselines import baseline_region, run_baseline
    from breasttumorseg.segmentation.breast import classical_breast_region
    from breasttumorseg.segmentation.pipeline import breast_region_of
    from breasttumorseg.reporting.measurements import longest_diameter_mm, t_category
    from breasttumorseg.evaluation.metrics import dice
    from breasttumorseg.segmentation.pipeline import segment_study

    truth = case.tumor_mask > 0
    diameter = longest_diameter_mm(truth, case.study.geometry)
    row = {"tumor_ml": float(truth.sum() * case.study.geometry.voxel_volume_ml), "diameter_mm": diameter,
           "band": t_category(diameter), "dice": {}, "seconds": {}, "detected": {}, "false_positive_lesions": {}}
    for model in models:
        start = time.perf_counter()
        result = segment_study(case.study, model, device=device)
        row["seconds"][model.card.name] = time.perf_counter() - start
        row["dice"][model.card.name] = float(dice(result.mask > 0, truth))
        row["detected"][model.card.name], row["false_positive_lesions"][model.card.name] = lesion_counts(
            result.mask > 0, truth)
    breasts = (breast_region_of(case.study, breast_model, device=device) if breast_model is not None
               else classical_breast_region(case.study))
    region = baseline_region(case.study, breasts)
    for name in BASELINES:
        row["dice"][name] = float(dice(run_baseline(name, case.study, region) > 0, truth))
    return row


def lesion_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[bool, int]:
    """(whether the largest true lesion is touched by the prediction, number of predicted
    lesions, 26-connected, that touch no true tumor voxel)."""
    from breasttumorseg.segmentation.postprocess import connected_components

    labels, count = connected_components(truth, 26)
    sizes = np.bincount(labels.ravel())[1:]
    detected = bool(count) and bool(pred[labels == int(np.argmax(sizes)) + 1].any())
    predicted, n_predicted = connected_components(pred, 26)
    touching = np.unique(predicted[truth & pred])
    return detected, int(n_predicted - np.count_nonzero(touching))


def summary(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {"n_cases": int(values.size), "median_dice": round(float(np.median(values)), 4),
            "q1": round(float(np.percentile(values, 25)), 4), "q3": round(float(np.percentile(values, 75)), 4),
            "mean_dice": round(float(values.mean()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20, help="seeds with drawn protocols (default 20)")
    parser.add_argument("--phase-cases", type=int, default=6, help="seeds per number of phases (default 6)")
    parser.add_argument("--phases", type=int, nargs="*", default=[2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--models", nargs="*", help="tumor models (default: every tumor model of the registry)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--update-cards", action="store_true",
                        help="write the figures into the registry's cards and choose default_by_phases")
    args = parser.parse_args()

    from breasttumorseg.segmentation.models import list_models, load_model
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.exam.breast_classical import CLASSICAL_BREAST_MASK
    from breasttumorseg.training.cases import case_protocol

    names = args.models or [c.name for c in list_models(task="tumor")]
    models = [load_model(name, device=args.device) for name in names]
    # the baselines' region: a breast-mask model a tumor model names (the model-free prior has no model)
    breast_names = sorted({m.card.breast_mask for m in models
                           if m.card.breast_mask not in (None, CLASSICAL_BREAST_MASK)})
    breast_model = load_model(breast_names[0], device=args.device) if breast_names else None
    methods = names + list(BASELINES)
    where = f"the breasts of {breast_names[0]}" if breast_model else "the classical breast mask + 10 mm"
    print(f"models: {', '.join(names)}; baselines: {', '.join(BASELINES)} inside {where}; phantoms from seed "
          f"{HELD_OUT_SEED} on (never trained on); device {args.device}")

    header = f"{'seed':>7} {'layout':>9} {'ph':>3} {'mL':>7} {'diam':>6} {'band':>4} " + " ".join(
        f"{SHORT.get(m, m[:14]):>14}" for m in methods) + "  seconds per model"
    drawn, by_phases = [], {k: [] for k in args.phases}
    print("\n-- drawn protocols --\n" + header)
    for i in range(args.cases):
        seed = HELD_OUT_SEED + i
        protocol = case_protocol(seed, models[0].card.working_spacing_mm)
        row = score_case(generate_phantom(seed, **protocol), models, breast_model, args.device)
        row.update(seed=seed, layout=protocol["layout"], n_phases=protocol["n_phases"])
        drawn.append(row)
        _print_row(row, methods)
    if args.phases:
        print("\n-- per number of phases (same seeds, k phases) --\n" + header)
    for i in range(args.phase_cases):
        seed = HELD_OUT_SEED + i
        for k in args.phases:
            protocol = dict(case_protocol(seed, models[0].card.working_spacing_mm), n_phases=k)
            row = score_case(generate_phantom(seed, **protocol), models, breast_model, args.device)
            row.update(seed=seed, layout=protocol["layout"], n_phases=k)
            by_phases[k].append(row)
            _print_row(row, methods)

    tables = {}
    if drawn:
        print(f"\nmedian Dice over {len(drawn)} held-out phantoms (drawn protocols):")
        for method in methods:
            s = summary([r["dice"][method] for r in drawn])
            print(f"  {method:<28} {s['median_dice']:.3f} (IQR {s['q1']:.3f}-{s['q3']:.3f}, mean {s['mean_dice']:.3f})")
        for name in names:
            detected = np.mean([r["detected"][name] for r in drawn])
            false_positives = np.mean([r["false_positive_lesions"][name] for r in drawn])
            print(f"  {name}: tumor detected in {detected:.0%} of cases; {false_positives:.2f} false-positive "
                  f"lesions per case (targets >= 95 %, <= 0.2)")
        print("by size band (median Dice; detection rate of the models):")
        for band in ("T1", "T2", "T3"):
            chosen = [r for r in drawn if r["band"] == band]
            if chosen:
                print(f"  {band} ({len(chosen)} cases): " + ", ".join(
                    f"{SHORT.get(m, m)} {np.median([r['dice'][m] for r in chosen]):.3f}" for m in methods) + "; " +
                    ", ".join(f"{m} detected {np.mean([r['detected'][m] for r in chosen]):.0%}" for m in names))
    if any(by_phases.values()):
        print("by number of phases (median Dice; targets: >= 0.85 with 2 phases, >= 0.90 with 6):")
        for k, rows in by_phases.items():
            print(f"  {k} phases ({len(rows)} cases): " + ", ".join(
                f"{SHORT.get(m, m)} {np.median([r['dice'][m] for r in rows]):.3f}" for m in methods))
    for model in models:
        name = model.card.name
        tables[name] = {
            "held_out_benchmark": dict(summary([r["dice"][name] for r in drawn]),
                                       seeds=[HELD_OUT_SEED, HELD_OUT_SEED + len(drawn) - 1],
                                       pe_baseline_median_dice=summary([r["dice"]["pe"]
                                                                        for r in drawn])["median_dice"],
                                       fcm_baseline_median_dice=summary([r["dice"]["fcm"]
                                                                         for r in drawn])["median_dice"],
                                       mean_seconds=round(float(np.mean([r["seconds"][name] for r in drawn])), 1),
                                       detection_rate=round(float(np.mean([r["detected"][name] for r in drawn])), 3),
                                       false_positive_lesions_per_case=round(float(np.mean(
                                           [r["false_positive_lesions"][name] for r in drawn])), 2),
                                       data="held-out synthetic phantoms (protocols drawn as in training)"),
            "by_size_band": {"note": f"held-out phantoms, seeds {HELD_OUT_SEED}-{HELD_OUT_SEED + len(drawn) - 1}, "
                                     f"protocols drawn as in training",
                             "rows": [dict(summary([r["dice"][name] for r in drawn if r["band"] == band]), band=band,
                                           baseline_median_dice=summary([r["dice"]["pe"]
                                                                         for r in drawn if r["band"] == band])
                                           ["median_dice"])
                                      for band in ("T1", "T2", "T3") if any(r["band"] == band for r in drawn)]},
            "by_phases": {"note": f"held-out phantoms, seeds {HELD_OUT_SEED}-{HELD_OUT_SEED + args.phase_cases - 1}, "
                                  f"each generated with k phases (anatomy and tumor differ between k)",
                          "rows": [dict(summary([r["dice"][name] for r in rows]), phases=k,
                                        baseline_median_dice=summary([r["dice"]["pe"]
                                                                      for r in rows])["median_dice"])
                                   for k, rows in by_phases.items() if rows]},
        }
    if args.update_cards:
        update_cards(models, tables)
    return 0


def _print_row(row: dict, methods) -> None:
    seconds = " ".join(f"{s:.0f}" for s in row["seconds"].values())
    print(f"{row['seed']:>7} {row['layout']:>9} {row['n_phases']:>3} {row['tumor_ml']:>7.2f} "
          f"{row['diameter_mm']:>6.1f} "
          f"{row['band']:>4} " + " ".join(f"{row['dice'][m]:>14.3f}" for m in methods) + f"  {seconds}", flush=True)


def update_cards(models, tables: dict) -> None:
    """Write the figures into the registry's cards, their Markdown, and default_by_phases."""
    import json
    from dataclasses import replace

    from breasttumorseg.core import atomic
    from breasttumorseg.segmentation import model_cards
    from breasttumorseg.segmentation.models import default_model_name, read_registry, register_model, registry_path

    for model in models:
        card = model.card
        metrics = dict(card.metrics, **tables[card.name])
        updated = replace(card, metrics=metrics)
        updated = replace(updated, description=model_cards.description(updated))
        register_model(updated, card.folder)
        if card.card_path is not None:
            atomic.write_text(card.card_path, model_cards.markdown(updated, int(metrics.get("n_parameters", 0))))
        print(f"updated the card of {card.name}")
    # the registry's default keeps a phase count unless another model beats it there by a clear margin;
    # a run without the default model measured nothing to compare with, and leaves the defaults alone
    default = default_model_name()
    if default not in {m.card.name for m in models}:
        print(f"default_by_phases unchanged: the default model {default} was not benchmarked in this run")
        return
    figures = {(m.card.name, row["phases"]): row["median_dice"] for m in models
               for row in tables[m.card.name]["by_phases"]["rows"]}
    best = {}
    for (name, phases), median in figures.items():
        incumbent = best.get(phases, (default, figures.get((default, phases), -1.0)))
        margin = 0.0 if incumbent[0] != default else DEFAULT_MARGIN
        best[phases] = (name, median) if median > incumbent[1] + margin else incumbent
    if best:
        path = registry_path()
        data = read_registry(path)
        data["default_by_phases"] = {str(k): name for k, (name, _) in sorted(best.items())}
        atomic.write_text(path, json.dumps(data, indent=2) + "\n")
        print("default_by_phases: " + ", ".join(f"{k}: {name}" for k, (name, _) in sorted(best.items())))


if __name__ == "__main__":
    raise SystemExit(main())
