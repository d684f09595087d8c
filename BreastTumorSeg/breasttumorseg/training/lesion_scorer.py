"""Fit a kinetic tumor model's lesion scorer (:mod:`breasttumorseg.segmentation.lesion_candidates`),
or the lesion choice of a card with lesion growth (:mod:`breasttumorseg.segmentation.lesion_choice`).

The trained network runs, exactly as at inference (its breast prior, its tiles), on phantoms
that neither its training (seeds below 70000) nor any benchmark (from 500000) uses, each with
a drawn protocol and a randomised appearance. Each candidate lesion of its raw output (with
lesion growth: each grown lesion that the default threshold keeps) is a sample: tumor when at
least :data:`TUMOR_OVERLAP` of its voxels lie in the true tumor. A logistic regression
(L2-penalised, the two classes weighted equally, fitted by Newton's method) learns P(tumor)
from the candidate descriptors. Each case's candidates are cached
(``case_<seed>.npz``), so an interrupted collection resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core import atomic
from ..core.progress import CancelToken, ProgressCallback, report
from ..exam.breast_classical import CLASSICAL_BREAST_MASK
from ..phantom import generate_phantom
from ..phantom.randomize import randomize_appearance
from ..segmentation.breast import classical_breast_region
from ..segmentation.lesion_candidates import FEATURES, NEEDED_CHANNELS, LesionScorer, find_candidates
from ..segmentation.lesion_choice import kept_lesions
from ..segmentation.lesion_growth import lesion_floor
from ..segmentation.models import LoadedModel, register_model
from ..segmentation.pipeline import lesion_channels, network_output, predict_probability, to_working_grid
from ..segmentation.postprocess import bounding_box
from .cases import case_protocol

#: first phantom seed of the scorer's cases (training uses lower seeds, benchmarks 500000 on)
SCORER_SEED_START = 70000
#: a candidate is tumor when this fraction of its voxels is true tumor
TUMOR_OVERLAP = 0.1
#: L2 penalty of the logistic regression (on standardised descriptors)
L2_PENALTY = 1.0


#: how the scorer's phantoms look: ``randomized`` (drawn protocol and randomised appearance, as in
#: training) or ``protocol`` (drawn protocol only, as the held-out benchmark draws its cases)
APPEARANCES = ("randomized", "protocol")


def case_candidates(model: LoadedModel, seed: int, *, appearance: str = "randomized",
                    cancel: CancelToken | None = None) -> dict:
    """Descriptors of the candidates of phantom ``seed`` and their overlap with its tumor:
    ``{"features": [n, F], "overlap": [n] voxels in tumor, "sizes": [n] voxels, "tumor": [1]
    tumor voxels}``. For a card with ``lesion_growth`` the candidates are the grown lesions that
    its default threshold keeps, on the study's grid (what its ``lesion_choice`` chooses among);
    else each candidate of the raw map on the working grid (what a ``lesion_scorer`` judges)."""
    card = model.card
    case = generate_phantom(seed, **case_protocol(seed, card.working_spacing_mm))
    if appearance == "randomized":
        case = randomize_appearance(case, np.random.default_rng([int(seed), 5151]))
    region = classical_breast_region(case.study) if card.breast_mask == CLASSICAL_BREAST_MASK else None
    if card.lesion_growth is not None:
        return _grown_candidates(model, case, region, cancel)
    output = network_output(case.study, model, device="cpu", region=region, cancel=cancel, warn=lambda _: None)
    probability = np.where(output.searched, output.probability, np.float32(0.0))
    channels = {name: output.inputs[list(card.inputs).index(name)] for name in NEEDED_CHANNELS}
    candidates = find_candidates(probability, channels, output.working.spacing[::-1])
    truth = to_working_grid(case.tumor_mask.astype(np.uint8), case.study.geometry, output.working, "nearest") > 0
    counts = candidates.count + 1
    return {"features": candidates.features,
            "overlap": np.bincount(candidates.labels[truth], minlength=counts)[1:],
            "sizes": np.bincount(candidates.labels.ravel(), minlength=counts)[1:],
            "tumor": np.array([np.count_nonzero(truth)])}


def _grown_candidates(model: LoadedModel, case, region, cancel) -> dict:
    """:func:`case_candidates` for a card with ``lesion_growth``: the model runs as in
    :func:`.pipeline.segment_study` without its lesion choice."""
    card = model.card
    study = case.study
    plain = LoadedModel(replace(card, lesion_choice=None), model.network, model.weights_path)
    probability, _, _ = predict_probability(study, plain, device="cpu", region=region, cancel=cancel,
                                            warn=lambda _: None)
    floor = lesion_floor(probability, card.threshold, card.relative_threshold)
    tumor = np.array([np.count_nonzero(case.tumor_mask)])
    box = bounding_box(probability >= floor) if floor > 0 else None
    if box is None:
        return {"features": np.zeros((0, len(FEATURES))), "overlap": np.zeros(0, int), "sizes": np.zeros(0, int),
                "tumor": tumor}
    candidates, kept = kept_lesions(probability[box], lesion_channels(study, box), study.geometry.spacing[::-1],
                                    floor, card.relative_threshold)
    counts = candidates.count + 1
    overlap = np.bincount(candidates.labels[case.tumor_mask[box] > 0], minlength=counts)[1:]
    sizes = np.bincount(candidates.labels.ravel(), minlength=counts)[1:]
    return {"features": candidates.features[kept], "overlap": overlap[kept], "sizes": sizes[kept], "tumor": tumor}


def collect_candidates(model: LoadedModel, seeds, cache: Path, *, appearances=("randomized",),
                       progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> list[dict]:
    """:func:`case_candidates` of every seed in each of ``appearances`` (:data:`APPEARANCES`),
    read from ``cache`` when already there (``case_<seed>.npz`` randomized,
    ``case_<seed>_protocol.npz`` with the protocol's appearance)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    jobs = [(seed, appearance) for seed in seeds for appearance in appearances]
    for index, (seed, appearance) in enumerate(jobs):
        report(progress, f"phantom {seed}", index / max(len(jobs), 1), cancel)
        path = cache / (f"case_{seed}.npz" if appearance == "randomized" else f"case_{seed}_{appearance}.npz")
        if not path.exists():
            arrays = case_candidates(model, seed, appearance=appearance, cancel=cancel)
            with atomic.atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **arrays)
        with np.load(path) as data:
            out.append({key: data[key] for key in ("features", "overlap", "sizes", "tumor") if key in data})
    return out


def tumor_labels(case: dict) -> np.ndarray:
    """1.0 for the candidates that are tumor (see :data:`TUMOR_OVERLAP`), else 0.0."""
    return ((case["overlap"] > 0) & (case["overlap"] >= TUMOR_OVERLAP * case["sizes"])).astype(float)


def fit_scorer(features: np.ndarray, labels: np.ndarray, l2: float = L2_PENALTY, iterations: int = 50) -> LesionScorer:
    """Class-balanced, L2-penalised logistic regression of ``labels`` (0/1) on ``features``."""
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("the lesion scorer needs both tumor and non-tumor candidates")
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    z = np.c_[(features - mean) / std, np.ones(len(features))]
    positive = labels.mean()
    sample_weight = np.where(labels > 0, 0.5 / positive, 0.5 / (1.0 - positive))
    penalty = l2 * np.diag(np.r_[np.ones(z.shape[1] - 1), 0.0])
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        gradient = z.T @ (sample_weight * (p - labels)) + penalty @ w
        hessian = (z * (sample_weight * p * (1 - p))[:, None]).T @ z + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return LesionScorer(mean, std, w[:-1], float(w[-1]))


def publish_scorer(model: LoadedModel, scorer: LesionScorer, settings: dict, metrics: dict) -> Path:
    """Write ``<model>.lesions.safetensors`` beside the model's weights and name it in its card
    with ``settings`` (``keep_probability``, ``keep_best``) and the fit's ``metrics``: as its
    ``lesion_choice`` for a card with ``lesion_growth`` (which always keeps the likeliest lesion),
    else as its ``lesion_scorer``; the metrics under ``metrics[<that field>]``. Returns the
    scorer's path."""
    card = model.card
    path = model.weights_path.with_name(f"{card.name}.lesions.safetensors")
    digest = scorer.save(path)
    named = {"weights": path.name, "sha256": digest, "keep_probability": float(settings["keep_probability"])}
    if card.lesion_growth is not None:
        updated = replace(card, lesion_choice=named, metrics=dict(card.metrics, lesion_choice=metrics))
    else:
        updated = replace(card, lesion_scorer=dict(named, keep_best=bool(settings.get("keep_best", False))),
                          metrics=dict(card.metrics, lesion_scorer=metrics))
    register_model(updated, card.folder)
    return path
