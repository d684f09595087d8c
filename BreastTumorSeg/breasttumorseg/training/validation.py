"""Validation during training and the held-out figures written into a model card.

During training: the sliding-window engine with the card's patch and overlap on each
validation case's working grid, the card's threshold, Dice against the resampled mask.
Held-out figures: the full inference path (:func:`breasttumorseg.segmentation.pipeline.segment_study`)
on the validation studies at their original grids.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..core.progress import CancelToken, report
from ..evaluation.metrics import dice
from ..exam.loading import load_study, read_mask
from ..phantom import generate_phantom
from ..segmentation.breast import largest_components
from ..segmentation.models import ModelCard
from ..segmentation.pipeline import predict_probability, segment_study, threshold_settings
from ..segmentation.postprocess import ThresholdSettings, segment_probability
from .cases import PreparedCase, case_protocol
from .datasets import CaseFiles


def validate_cases(network, cases: list[PreparedCase], card: ModelCard, device, batch_size: int = 2,
                   cancel: CancelToken | None = None) -> list[float]:
    """Dice per case: sliding window + card threshold on each case's working grid."""
    import torch  # torch waits: this module imports without it (Slicer installs torch on first use)

    from ..segmentation.inference import SlidingWindowConfig, sliding_window_probability

    settings = threshold_settings(card)
    config = SlidingWindowConfig(patch_size=tuple(card.patch_size), overlap=card.overlap, batch_size=batch_size)
    scores = []
    with torch.no_grad():
        for case in cases:
            runner = network.bind_acquisition(case.times_s) if card.takes_phase_series else network
            probability = sliding_window_probability(
                runner, case.inputs.astype(np.float32), config, device=device, foreground=case.body,
                to_probability=lambda logits: logits.float().softmax(dim=1)[:, card.output_channel],
                cancel=cancel, warn=lambda message: None)
            if card.task == "breast":
                mask = probability >= 0.5
            else:
                mask = segment_probability(probability, case.geometry, settings)
            scores.append(float(dice(mask, case.target)))
    return scores


def held_out_figures(model, loaders, *, device="cpu", progress=None, cancel=None) -> dict:
    """Dice per case through the full inference path, and its median, mean and IQR.

    ``loaders``: callables returning ``(row fields, study, reference mask on the study's
    grid)``, called one at a time. A tumor model runs :func:`pipeline.segment_study` (its
    breast prior included) and is also scored with two alternative thresholds (absolute
    0.5, relative 0.5 with seeds) for choosing the default; a breast-mask model is scored
    on its probability >= 0.5, large components kept.
    """

    card = model.card
    alternatives = {} if card.task == "breast" else {"absolute_0.5": ThresholdSettings(0.5, relative=False),
                                                     "relative_0.5": ThresholdSettings(0.5, relative=True)}
    rows = []
    for i, load in enumerate(loaders):
        report(progress, "final evaluation", i / len(loaders), cancel)
        fields, study, truth = load()
        row = dict(fields, n_phases=study.n_phases)
        volume_ml = float(truth.sum() * study.geometry.voxel_volume_ml)
        if card.task == "breast":
            probability, _, _ = predict_probability(study, model, device=device, cancel=cancel)
            row.update(breast_ml=round(volume_ml, 1), dice=round(float(dice(largest_components(probability >= 0.5),
                                                                                truth)), 4))
        else:
            result = segment_study(study, model, device=device, cancel=cancel)
            row.update(tumor_ml=round(volume_ml, 3), dice=round(float(dice(result.mask, truth)), 4))
            for key, settings in alternatives.items():
                row[f"dice_{key}"] = round(float(dice(segment_probability(result.probability, study.geometry,
                                                                          settings), truth)), 4)
        rows.append(row)
    report(progress, "final evaluation", 1.0, cancel)
    scores = np.array([r["dice"] for r in rows])
    summary = {"n_cases": len(rows), "median_dice": round(float(np.median(scores)), 4),
               "mean_dice": round(float(np.mean(scores)), 4),
               "iqr_dice": [round(float(np.percentile(scores, 25)), 4), round(float(np.percentile(scores, 75)), 4)]}
    for key in alternatives:
        summary[f"median_dice_{key}"] = round(float(np.median([r[f"dice_{key}"] for r in rows])), 4)
    summary["cases"] = rows
    return summary


def evaluate_on_studies(model, seeds: list[int], *, device="cpu", progress=None, cancel=None,
                        n_phases: int | None = None) -> dict:
    """Held-out figures (:func:`held_out_figures`) on regenerated phantom studies.

    ``n_phases`` overrides the number of phases each seed draws.
    """
    card = model.card

    def loader(seed: int):
        def load():

            protocol = case_protocol(seed, card.working_spacing_mm)
            if n_phases is not None:
                protocol["n_phases"] = int(n_phases)
            case = generate_phantom(seed, **protocol)
            truth = case.breast_mask if card.task == "breast" else case.tumor_mask
            return {"seed": seed, "layout": protocol["layout"]}, case.study, truth > 0
        return load

    return held_out_figures(model, [loader(seed) for seed in seeds], device=device, progress=progress, cancel=cancel)


def evaluate_on_cases(model, cases: Sequence[CaseFiles], *, device="cpu", progress=None, cancel=None) -> dict:
    """Held-out figures (:func:`breasttumorseg.training.validation.held_out_figures`) on real cases at
    their own grids; rows name the case."""

    def loader(case: CaseFiles):
        def load():
            study = load_study(list(case.phases), times_s=case.times_s)
            return {"case": case.name}, study, read_mask(case.target_path(model.card.task), study.geometry) > 0
        return load

    return held_out_figures(model, [loader(case) for case in cases], device=device, progress=progress, cancel=cancel)
