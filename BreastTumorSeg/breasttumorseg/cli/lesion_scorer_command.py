"""``breasttumorseg fit-lesion-scorer``: fit a tumor model's false-positive filter or lesion choice.

See :mod:`breasttumorseg.training.lesion_scorer` for what is fitted on which phantoms.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..segmentation.lesion_candidates import FEATURES
from ..segmentation.models import load_model
from ..training.lesion_scorer import (
    APPEARANCES, L2_PENALTY, SCORER_SEED_START, collect_candidates, fit_scorer, publish_scorer, tumor_labels)
from .console import info, progress_bar


def add_fit_lesion_scorer(commands, common) -> None:
    p = commands.add_parser(
        "fit-lesion-scorer", parents=[common], help="fit a tumor model's lesion scorer (or lesion choice) on phantoms",
        description="Run a tumor model on phantoms that neither its training nor the benchmarks use, describe "
                    "each candidate lesion it marks, fit a logistic scorer (tumor or not) and name it in the "
                    "model's card: as the lesion scorer of a model with kinetic inputs, or as the lesion choice "
                    "of a model with lesion growth (candidates: the grown lesions its default threshold keeps; "
                    "the likeliest always stays). Cached per phantom: an interrupted run resumes.")
    p.add_argument("model", help="registry name of a tumor model with kinetic inputs or with lesion growth")
    p.add_argument("--cases", type=int, default=32, help="phantoms to learn from (default 32)")
    p.add_argument("--seed-start", type=int, default=SCORER_SEED_START,
                   help=f"first phantom seed (default {SCORER_SEED_START})")
    p.add_argument("--cache", type=Path, help="folder of the per-phantom candidates "
                                              "(default: training-cache/<model>-lesions)")
    p.add_argument("--appearance", choices=APPEARANCES + ("both",), default="randomized",
                   help="the phantoms' look: randomized appearance as in training (default), the drawn protocol's "
                        "own (as the held-out benchmark draws its cases), or both (each seed twice)")
    p.add_argument("--keep", type=float, default=0.5, help="P(tumor) from which a candidate is kept (default 0.5)")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=True,
                   help="keep each study's most likely candidate even under --keep: the study holds a known "
                        "cancer (default on)")
    p.add_argument("--l2", type=float, default=L2_PENALTY, help=f"L2 penalty (default {L2_PENALTY:g})")
    p.set_defaults(run=run_fit_lesion_scorer)


def run_fit_lesion_scorer(args) -> int:
    if args.cases < 2:
        raise InputError(f"--cases must be at least 2, got {args.cases}", "fit-lesion-scorer")
    if not 0.0 < args.keep < 1.0:
        raise InputError(f"--keep must be between 0 and 1, got {args.keep:g}", "fit-lesion-scorer")
    model = load_model(args.model, device="cpu")
    card = model.card
    if card.task != "tumor" or (card.normalization != "kinetic" and card.lesion_growth is None):
        raise InputError(f"model {args.model} is neither a tumor model with kinetic inputs nor one with lesion "
                         f"growth", "fit-lesion-scorer")
    seeds = list(range(args.seed_start, args.seed_start + args.cases))
    cache = args.cache or Path("training-cache") / f"{args.model}-lesions"
    with progress_bar(args, "candidates") as progress:
        appearances = APPEARANCES if args.appearance == "both" else (args.appearance,)
        cases = collect_candidates(model, seeds, cache, appearances=appearances, progress=progress)
    features = np.concatenate([c["features"] for c in cases])
    labels = np.concatenate([tumor_labels(c) for c in cases])
    if labels.min(initial=1) == labels.max(initial=0):
        kind = "tumor" if labels.size and labels.min() > 0 else "not tumor"
        raise InputError(f"the network's {len(labels)} candidate lesions on {len(cases)} phantoms are all {kind}: "
                         f"nothing to learn a scorer from (more --cases?)", str(cache))
    scorer = fit_scorer(features, labels, l2=args.l2)
    kept = scorer.score(features) >= args.keep
    metrics = {"seeds": [seeds[0], seeds[-1]], "appearance": args.appearance, "n_cases": len(cases),
               "n_candidates": int(len(labels)),
               "n_tumor_candidates": int(labels.sum()), "keep_probability": args.keep,
               **({"keep_best": True} if card.lesion_growth is not None else {}),
               "fit_sensitivity": round(float(kept[labels > 0].mean()), 3),
               "fit_specificity": round(float((~kept)[labels == 0].mean()), 3),
               "weights": {name: round(float(w), 3) for name, w in zip(FEATURES, scorer.weights)}}
    path = publish_scorer(model, scorer, {"keep_probability": args.keep, "keep_best": args.keep_best}, metrics)
    info(f"{len(labels)} candidates ({int(labels.sum())} tumor) on {len(cases)} phantoms; on them the scorer keeps "
         f"{metrics['fit_sensitivity']:.0%} of tumor candidates and rejects {metrics['fit_specificity']:.0%} of the "
         f"others; wrote {path}")
    return 0
