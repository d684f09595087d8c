"""Human-readable model cards (Markdown) and one-paragraph descriptions, from a card alone.

Everything shown comes from the :class:`~breasttumorseg.segmentation.models.ModelCard` and its
``metrics``: ``metrics["training"]`` holds the recipe (steps, seeds, patches, loss...),
the held-out figures sit beside it, and the optional ``metrics["by_phases"]`` and
``metrics["by_size_band"]`` (written by ``Testing/benchmarks/bench_accuracy.py
--update-cards``) hold figures per number of phases and per T category. So a card can
be rewritten after new measurements without the training run at hand.
"""

from __future__ import annotations

from ..exam.breast_classical import CLASSICAL_BREAST_MASK
from .lesion_growth import GROW_MM
from .models import ModelCard

_CREDIT = {
    "hirsch_unet3d": (
        "Architecture (and, for the Hirsch inputs, the DCE-in/DCE-out maps) after L. Hirsch, Y. Huang, S. Luo, et al., "
        "\"Radiologist-level performance by "
        "using deep learning for segmentation of breast cancers on MRI scans\", Radiology: Artificial Intelligence "
        "4(1), 2022 (arXiv 2009.09827); reimplemented in PyTorch (our own code, not their weights)."),
    "st_transformer3d": (
        "Design after S. Zhang, Z. Li, H.-Y. Zhou, et al., \"A robust and efficient AI assistant for breast tumor "
        "segmentation from DCE-MRI via a spatial-temporal framework\", Patterns 4(9), 2023: shared residual "
        "encoder on [x_t, x_t - x_0], spatial and temporal transformers at the bottleneck, missing phases masked. "
        "Our own compact PyTorch implementation (about 0.5 M parameters instead of their ~175 M), not their "
        "weights; the acquisition-time embedding in seconds is our choice."),
}

_BREAST_CREDIT = (" The whole-breast mask as a spatial prior that removes detections outside the breasts follows "
                  "Hirsch et al. 2022 (a separate low-resolution U-Net) and Zhang et al. 2023.")

_NETWORK = {
    "hirsch_unet3d": (
        "A 3D U-Net after Hirsch et al. 2022: two 3x3x3 convolutions + {norm} + ReLU per level, 3x3x3 average "
        "pooling with stride 2, stride-2 transposed convolutions with fixed trilinear weights, concatenated skips, "
        "softmax over 2 classes. Deviation: same-padded convolutions{norm_deviation}."),
    "st_transformer3d": (
        "A spatial-temporal transformer after Zhang et al. 2023: every phase enters a shared residual 3D encoder "
        "as [x_t, x_t - x_0]; at the bottleneck, tokens get an embedding of the acquisition time in seconds, and "
        "a spatial transformer (tokens = positions, per phase) and a temporal transformer (tokens = phases, per "
        "position; absent phases masked out of the attention) run side by side; masked mean and maximum over the "
        "phases feed a U-Net decoder; softmax over 2 classes. Takes 2 to max_phases phases at any timing."),
}

_INPUTS = {
    "phases": "every phase in acquisition order (pre-contrast first) with its acquisition time in seconds",
    "pre_contrast": "the pre-contrast phase",
    "first_post_contrast": "the first post-contrast phase",
    "dce_in": "DCE-in (first post-contrast - pre-contrast)",
    "dce_out": ("DCE-out (least-squares washout slope over the post-contrast phases, signal units per second, "
                "times the post-contrast window, last - first post-contrast time in s; 0 with one post-contrast "
                "phase)"),
    "subtraction_last": "the last post-contrast phase - pre-contrast",
    "pre_relative": "the pre-contrast relative to its median in the body (anatomy)",
    "enhancement_60s": "relative enhancement (S - S0) / max(S0, R/2) at 60 s after injection",
    "enhancement_120s": "the same at 120 s",
    "enhancement_240s": "at 240 s",
    "enhancement_420s": "at 420 s (interpolated along the measured curve, held after the last phase)",
    "enhancement_peak": "the peak relative enhancement over the post-contrast phases",
    "late_coverage": "how much of a 300 s late window the study observed (0 with 2 phases)",
}

_NORMALIZATION = {
    "pre_contrast_p95": "every channel divided by the 95th percentile of the pre-contrast inside the body",
    "post1_minmax": ("clipped at the 0.5th and 99.5th percentiles of the first post-contrast phase and min-max "
                     "scaled with that range, the same range for every phase (Zhang et al.)"),
    "kinetic": ("dimensionless kinetic maps: signal shifted so air is 0, ratios to the pre-contrast floored at half "
                "its median in the body, times in seconds after injection; invariant to units, offsets, the "
                "pre-contrast's timing convention and 2-8 phases (breasttumorseg.exam.kinetic_maps)"),
}


def _network_text(card: ModelCard) -> str:
    """The architecture's paragraph, naming the normalisation the card's network uses."""
    instance = card.hyperparameters.get("norm") == "instance"
    return _NETWORK.get(card.architecture, "").format(
        norm="InstanceNorm" if instance else "BatchNorm",
        norm_deviation="; instance instead of batch normalisation (as nnU-Net)" if instance else "")


def description(card: ModelCard) -> str:
    """One paragraph for people (what the registry and the Slicer panel show)."""
    training = card.metrics.get("training", {})
    spacing = "x".join(f"{s:g}" for s in card.working_spacing_mm)
    kind = {"hirsch_unet3d": "3D U-Net after Hirsch et al. 2022",
            "st_transformer3d": "Spatial-temporal transformer after Zhang et al. 2023"}.get(card.architecture,
                                                                                          card.architecture)
    what = ("Whole-breast mask (a spatial prior for the tumor models)" if card.task == "breast"
            else "Breast tumor segmentation")
    trained = (f", trained for {training['steps']} steps on {training['n_train_cases']} synthetic DCE-MRI phantoms"
               if training else ", trained on synthetic DCE-MRI phantoms")
    lesions = ""
    if card.lesion_growth is not None:
        rule = "a relative threshold (Hirsch et al.)" if card.relative_threshold else "its threshold"
        lesions = (f" Lesions found by {rule} grow into the enhancing tissue within "
                   f"{card.lesion_growth['grow_mm']:g} mm"
                   f"{'; a scorer of their kinetics and shape chooses among them' if card.lesion_choice else ''}.")
    return (f"{what}: {kind}{trained}. Inputs {', '.join(card.inputs)}, {_NORMALIZATION.get(card.normalization, '')}, "
            f"on a {spacing} mm grid.{lesions} No claim of clinical accuracy.")


def headline(card: ModelCard) -> str:
    """The accuracy figure users see first (``models``, the Slicer panel): the benchmark's
    median Dice with its n and data, never the validation figure that chose the checkpoint
    (that one is named as such when no benchmark exists)."""
    bench = card.metrics.get("held_out_benchmark")
    if bench:
        data = bench.get("data") or "held-out synthetic phantoms"
        seeds = bench.get("seeds")
        where = f", seeds {seeds[0]}-{seeds[1]}" if seeds else ""
        text = f"benchmark median Dice {bench['median_dice']:.2f} on {bench['n_cases']} {data}{where}"
        stress = card.metrics.get("stress_benchmark")
        if stress:
            text += f"; stress set median {stress['median_dice']:.2f} (n={stress['n_cases']})"
        return text
    median = card.metrics.get("median_dice")
    if isinstance(median, (int, float)):
        return (f"no benchmark yet (validation median Dice {median:.2f} on {card.metrics.get('n_cases')} phantoms "
                f"that also chose the checkpoint)")
    return "no benchmark yet"


def markdown(card: ModelCard, n_parameters: int) -> str:
    """The Markdown model card."""
    m = card.metrics
    training = m.get("training", {})
    hyper = ", ".join(f"{k}={v}" for k, v in card.hyperparameters.items())
    spacing = " x ".join(f"{s:g}" for s in card.working_spacing_mm)
    inputs = "; ".join(_INPUTS.get(name, name) for name in card.inputs)
    if card.task == "breast":
        threshold = "probability >= 0.5, components of at least 5 % of the largest, grown by 10 mm before use"
    elif card.relative_threshold:
        threshold = (f"{card.threshold:g} x the maximum probability, components holding a voxel > 0.95 x max "
                     f"(Hirsch et al.)")
    else:
        threshold = f"probability >= {card.threshold:g}"
    source = ("the model-free breast mask (the body in front of the chest wall)"
              if card.breast_mask == CLASSICAL_BREAST_MASK else f"the breast-mask model `{card.breast_mask}`")
    prior = (f"\n- Spatial prior: {source}; tiles outside the breasts (grown by "
             f"10 mm) are skipped and the probability there is 0." if card.breast_mask else "")
    phases = (f"{card.min_phases} to {card.max_phases} phases with their acquisition times" if card.max_phases
              else f">= {card.min_phases} phases{' and the acquisition times' if card.needs_times else ''}")
    synthetic_note = "Trained on synthetic data only; n" if "synthetic" in card.trained_on else "N"
    credit = _CREDIT.get(card.architecture, "Our own network.")
    return f"""# Model card: {card.name} {card.version}

**Research software. {synthetic_note}o claim of clinical accuracy.**

## Model
- Task: {"whole-breast mask" if card.task == "breast" else "tumor probability"} (softmax channel {card.output_channel}).
- Architecture: `{card.architecture}` ({hyper}), {n_parameters:,} trainable parameters.
  {_network_text(card)}
- Inputs: {inputs}. Needs {phases}.
- Normalisation: `{card.normalization}` ({_NORMALIZATION.get(card.normalization, "")}).
- Working grid: the study's field of view and orientation resampled to {spacing} mm (x, y, z);
  sliding window {' x '.join(map(str, card.patch_size))} voxels (z, y, x), overlap {card.overlap:g},
  Gaussian blending; the probability is resampled back to the first post-contrast grid.
- Default threshold: {threshold}.{prior}{_lesion_scorer_text(card)}{_lesion_growth_text(card)}

## Training data
{_training_text(card, training)}

## Held-out figures (as measured)
{_held_out_text(card, m)}
{_ablation_text(m)}
## Intended use and limitations
For research and for testing the BreastTumorSeg software. The figures above are on synthetic phantoms
drawn from the same generator as the training data; they say nothing about real patients.
No claim of clinical accuracy is made. Not for diagnosis or treatment decisions. Real images
differ from the phantom (anatomy, artefacts, protocols, lesion types); retrain or fine-tune on real data
with `breasttumorseg train` before drawing any conclusion.

## Credit
{credit}{_BREAST_CREDIT if card.task == "breast" or card.breast_mask else ""}
"""


def _lesion_scorer_text(card: ModelCard) -> str:
    """The false-positive filter's line of the Model section ("" without one)."""
    if card.lesion_scorer is None:
        return ""
    fit = card.metrics.get("lesion_scorer", {})
    fitted = (f", fitted on {fit['n_candidates']} candidates ({fit['n_tumor_candidates']} tumor) of the network's "
              f"output on {fit['n_cases']} further phantoms (seeds {fit['seeds'][0]}-{fit['seeds'][1]}, never "
              f"trained on nor benchmarked)" if fit else "")
    best = " except the most likely one (the study holds a known cancer)" if card.lesion_scorer.get("keep_best") else ""
    return (f"\n- False-positive filter: every candidate lesion (probability >= 0.5, 26-connected) is described by "
            f"its volume, the network's confidence, its enhancement and late washout (also relative to the study's "
            f"other candidates), its anatomy and its shape; a logistic lesion scorer{fitted} clears the candidates "
            f"with P(tumor) < {card.lesion_scorer['keep_probability']:g}"
            f"{best}"
            f"; each kept lesion grows into its enhancing neighbours within {GROW_MM:g} mm "
            f"(`breasttumorseg.segmentation.lesion_candidates`).")


def _lesion_growth_text(card: ModelCard) -> str:
    """The lesion growth's line of the Model section ("" without it)."""
    if card.lesion_growth is None:
        return ""
    return (f"\n- Lesion growth: every lesion of the default threshold takes in the connected tissue within "
            f"{card.lesion_growth['grow_mm']:g} mm that enhances at least "
            f"{card.lesion_growth['enhancement_fraction']:g} x as strongly as its median (peak relative "
            f"enhancement), at a probability between the threshold and the lesion's maximum graded by that "
            f"enhancement (`breasttumorseg.segmentation.lesion_growth`).{_lesion_choice_text(card)}")


def _lesion_choice_text(card: ModelCard) -> str:
    """The lesion choice's sentence of the lesion growth line ("" without one)."""
    if card.lesion_choice is None:
        return ""
    fit = card.metrics.get("lesion_choice", {})
    looks = {"both": "each seed with its protocol's own look and with a randomised one; ",
             "protocol": "with their protocols' own look; "}.get(fit.get("appearance"), "")
    fitted = (f", fitted on {fit['n_candidates']} such lesions ({fit['n_tumor_candidates']} tumor) on "
              f"{fit['n_cases']} further phantoms (seeds {fit['seeds'][0]}-{fit['seeds'][1]}, {looks}never trained "
              f"on nor benchmarked)" if fit else "")
    return (f" When the threshold keeps several grown lesions, a logistic scorer{fitted} rates each by its volume, "
            f"the network's confidence, its enhancement and washout (also relative to the study's other lesions), "
            f"its anatomy and its shape: the likeliest stays, the others stay when P(tumor) >= "
            f"{card.lesion_choice['keep_probability']:g}; a lesion left out stays in the probability map below the "
            f"threshold (`breasttumorseg.segmentation.lesion_choice`).")


def _ablation_text(m: dict) -> str:
    """The card's ablation table (``metrics["ablation"]``: rows of what each change bought), or ""."""
    rows = m.get("ablation")
    if not rows:
        return ""
    lines = ["", "## Ablation (as measured)", "", m.get("ablation_note", ""), "",
             "| change | measured on | median Dice | false-positive lesions per case | seconds per case |",
             "|---|---|---|---|---|"]
    for row in rows:
        cells = [row["change"], row["data"], f"{row['median_dice']:.3f}",
                 "" if row.get("fp_per_case") is None else f"{row['fp_per_case']:.1f}",
                 "" if row.get("seconds") is None else f"{row['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _training_text(card: ModelCard, training: dict) -> str:
    if not training:
        return "Synthetic breast DCE-MRI phantoms from `breasttumorseg.phantom`. No real patient data."
    target = "the phantom's breast mask" if card.task == "breast" else "the phantom's tumor mask"
    augment = training.get("augmentation_text") or "flips left-right and head-foot, intensity scale/shift"
    if card.max_phases and "augmentation_text" not in training:
        augment += (f", phase dropout (p = {training.get('phase_dropout', 0):g}: pre-contrast + a random ordered "
                    f"subset of the post-contrast phases) and time jitter ({training.get('time_jitter_s', 0):g} s)")
    loss = ("generalized Dice" if training.get("loss") == "generalized_dice_ce" else "batch soft Dice") + \
        " + cross-entropy"
    return (f"Synthetic breast DCE-MRI phantoms from `breasttumorseg.phantom` (anatomy with fibroglandular texture, "
            f"chest wall, heart and vessels; extended-Tofts kinetics with a population AIF; malignant tumors of "
            f"varied shape, benign enhancing lesions, background parenchymal enhancement; noise, bias field, small "
            f"motion). {training['n_train_cases']} training phantoms (seeds {training['train_seeds'][0]}-"
            f"{training['train_seeds'][1]}), protocols drawn per seed: axial bilateral or sagittal unilateral, "
            f"2-8 phases, varied spacing and field of view. Target: {target}. No real patient data.\n"
            f"Recipe: {training['steps']} steps of AdamW (lr {training['learning_rate']:g}, cosine decay), batch "
            f"{training['batch_size']}, patches {' x '.join(map(str, training['patch_size']))}, "
            f"{training['foreground_fraction']:.0%} centred near the target; loss = {loss}; {augment}. "
            f"{training.get('elapsed', '')} {training.get('note', '')}".rstrip())


def _held_out_text(card: ModelCard, m: dict) -> str:
    if "median_dice" not in m:
        return "Not measured yet."
    lines = [f"{m['n_cases']} validation phantoms (seeds {m['val_seeds'][0]}-{m['val_seeds'][1]}, never trained on; "
             f"they also selected the checkpoint at step {m['best_step']}), full inference path, Dice on each "
             f"study's own grid: median **{m['median_dice']:.3f}**, mean {m['mean_dice']:.3f}, IQR "
             f"{m['iqr_dice'][0]:.3f}-{m['iqr_dice'][1]:.3f}."]
    if "median_dice_absolute_0.5" in m:
        lines.append(f"With an absolute threshold 0.5: median {m['median_dice_absolute_0.5']:.3f}; with a relative "
                     f"threshold 0.5 x max: {m['median_dice_relative_0.5']:.3f}.")
    volume = "breast mL" if card.task == "breast" else "tumor mL"
    key = "breast_ml" if card.task == "breast" else "tumor_ml"
    rows = [f"| {r['seed']} | {r['layout']} | {r['n_phases']} | {r.get(key, float('nan')):.1f} | {r['dice']:.3f} |"
            for r in m.get("cases", [])]
    if rows:
        lines += ["", f"| seed | layout | phases | {volume} | Dice |", "|---|---|---|---|---|", *rows]
    bench = m.get("held_out_benchmark")
    if bench:
        lines += ["", f"Benchmark (`Testing/benchmarks/bench_accuracy.py`), {bench['n_cases']} further held-out "
                      f"phantoms (seeds {bench['seeds'][0]}-{bench['seeds'][1]}, protocols drawn as in training): "
                      f"median Dice "
                      f"**{bench['median_dice']:.3f}** (IQR {bench['q1']:.3f}-{bench['q3']:.3f}, mean "
                      f"{bench['mean_dice']:.3f}); on the same cases the percent-enhancement baseline "
                      f"{bench['pe_baseline_median_dice']:.3f} and fuzzy c-means "
                      f"{bench['fcm_baseline_median_dice']:.3f}; "
                      f"{bench['mean_seconds']:.0f} s per case on the benchmark machine."]
    for title, table_key, first in (("By number of phases", "by_phases", "phases"),
                                    ("By T category (longest diameter: T1 <= 20 mm, T2 20-50 mm, T3 > 50 mm)",
                                     "by_size_band", "band")):
        table = m.get(table_key)
        if not table:
            continue
        lines += ["", f"**{title}** ({table.get('note', '')})", "",
                  f"| {first} | cases | median Dice | IQR | PE baseline median Dice |", "|---|---|---|---|---|"]
        for row in table["rows"]:
            baseline = row.get("baseline_median_dice")
            lines.append(f"| {row[first]} | {row['n_cases']} | {row['median_dice']:.3f} | {row['q1']:.3f}-"
                         f"{row['q3']:.3f} | {'' if baseline is None else f'{baseline:.3f}'} |")
    return "\n".join(lines)


__all__ = ["description", "headline", "markdown"]
