"""What a finished training run writes: the weights, the model card with its held-out figures,
and the copy into a model registry."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from ..core import atomic
from ..core.errors import ModelError
from ..segmentation import model_cards
from ..segmentation.models import (
    LoadedModel,
    ModelCard,
    card_from_json,
    load_model,
    read_registry,
    register_model,
    registry_folder,
    save_model,
    sha256_of,
)
from .config import TrainingConfig
from .datasets import DatasetSplit
from .validation import evaluate_on_cases, evaluate_on_studies


TRAINED_ON = "synthetic DCE-MRI phantom (no real patient data)"


@dataclass
class TrainingResult:
    """What :func:`train_on_phantom` produced."""

    model_card: ModelCard
    history: list
    val_dice_median: float
    val_dice_mean: float
    best_step: int
    weights_path: Path
    markdown_path: Path
    checkpoint_path: Path


def provisional_card(config: TrainingConfig, hyperparameters: dict | None = None) -> ModelCard:
    """The card of the model being trained (weights and figures not known yet)."""
    return ModelCard(
        name=config.name, version=config.version, architecture=config.architecture,
        hyperparameters=dict(hyperparameters or config.hyperparameters), inputs=tuple(config.inputs),
        min_phases=2, needs_times="dce_out" in config.inputs or config.takes_phase_series,
        normalization=config.normalization,
        working_spacing_mm=tuple(config.working_spacing_mm), patch_size=tuple(config.window_size),
        overlap=float(config.overlap), output_channel=1, threshold=float(config.threshold),
        relative_threshold=bool(config.relative_threshold), weights=f"{config.name}.safetensors", sha256="",
        trained_on=TRAINED_ON, description="", metrics={}, card_path=None, task=config.task,
        breast_mask=config.breast_mask, lesion_growth=config.lesion_growth, folder=config.output)


def publish(config, card, network, history, best_step, split: DatasetSplit, context, device, progress, cancel, log,
            checkpoint_path) -> TrainingResult:

    log(f"measuring the held-out figures with the full inference path on {len(split.val)} validation "
        f"{'phantoms' if split.is_phantom else 'cases'}")
    model = LoadedModel(card, network, card.weights_path)
    if split.is_phantom:
        figures = evaluate_on_studies(model, split.val, device=device, progress=progress, cancel=cancel)
    else:
        figures = evaluate_on_cases(model, split.val, device=device, progress=progress, cancel=cancel)
    n_parameters = int(sum(p.numel() for p in network.parameters() if p.requires_grad))
    recipe = training_recipe(config, split.train, history, world_size=context.world_size)
    summary = {"median_dice": figures["median_dice"], "mean_dice": figures["mean_dice"],
               "iqr_dice": figures["iqr_dice"], "n_cases": figures["n_cases"],
               **{k: v for k, v in figures.items() if k.startswith("median_dice_")}}
    if split.is_phantom:
        val_seeds, train_seeds = split.val, split.train
        metrics = {
            "held_out": f"synthetic phantoms, seeds {val_seeds[0]}-{val_seeds[-1]} (validation set; also chose "
                        f"the checkpoint at step {best_step})",
            **summary,
            "train_seeds": [train_seeds[0], train_seeds[-1]], "val_seeds": [val_seeds[0], val_seeds[-1]],
            "steps": config.steps, "best_step": best_step, "n_parameters": n_parameters,
            "training": recipe, "cases": figures["cases"],
        }
    else:
        split.extra["split"] = ("the cases named in val_cases" if config.dataset.val_cases else
                                f"val_fraction {config.dataset.val_fraction:g}, split_seed {config.dataset.split_seed}")
        metrics = {
            "held_out": f"{len(split.val)} validation cases of the {split.description} (also chose the checkpoint "
                        f"at step {best_step})",
            **summary,
            "dataset": dict(config.dataset.to_json(), path=Path(config.dataset.path).name,
                            n_train_cases=len(split.train), val_cases=split.names("val")),
            "steps": config.steps, "best_step": best_step, "n_parameters": n_parameters,
            "training": recipe, "cases": figures["cases"],
        }
        metrics["dataset"].pop("cache", None)
    fields = card.to_json()
    for key in ("name", "weights", "sha256"):
        fields.pop(key)
    fields.update(metrics=metrics, card_path=f"{config.name}.md")
    described = _replace_card(card, metrics=metrics)
    markdown_path = config.output / f"{config.name}.md"
    if split.is_phantom:
        fields["description"] = model_cards.description(described)
        text = model_cards.markdown(described, n_parameters)
    else:
        fields["trained_on"] = trained_on(split)
        described = _replace_card(described, trained_on=fields["trained_on"])
        fields["description"] = card_description(described, split)
        text = card_markdown(model_cards.markdown(_replace_card(described, metrics={}), n_parameters), described,
                             split)
    atomic.write_text(markdown_path, text)
    saved = save_model(network, fields, config.output, config.name)
    loaded = load_model(saved.weights_path)  # the round trip a user's load will make
    log(f"wrote {saved.weights_path} ({saved.weights_path.stat().st_size / 2 ** 20:.1f} MB, sha256 "
        f"{saved.sha256[:12]}...); held-out median Dice {metrics['median_dice']:.3f} on {metrics['n_cases']} "
        f"{'phantoms' if split.is_phantom else 'cases'}")
    return TrainingResult(model_card=loaded.card, history=history, val_dice_median=float(metrics["median_dice"]),
                          val_dice_mean=float(metrics["mean_dice"]), best_step=best_step,
                          weights_path=saved.weights_path, markdown_path=markdown_path,
                          checkpoint_path=checkpoint_path)


def result_from_outputs(config: TrainingConfig, checkpoint_path: Path) -> TrainingResult:
    """What rank 0 wrote, read back (the result of the other processes)."""

    card = load_model(config.output / f"{config.name}.safetensors").card
    metrics = card.metrics
    return TrainingResult(model_card=card, history=[], val_dice_median=float(metrics.get("median_dice", float("nan"))),
                          val_dice_mean=float(metrics.get("mean_dice", float("nan"))),
                          best_step=int(metrics.get("best_step", 0)), weights_path=card.weights_path,
                          markdown_path=config.output / f"{config.name}.md", checkpoint_path=checkpoint_path)


def training_recipe(config: TrainingConfig, train_cases: list, history: list, world_size: int = 1) -> dict:
    """What a model card records of the training run (see :mod:`breasttumorseg.segmentation.model_cards`).

    ``train_cases``: phantom seeds, or real cases (:class:`~breasttumorseg.training.datasets.CaseFiles`).
    """
    elapsed = next((h["elapsed_s"] for h in reversed(history) if "elapsed_s" in h), None)
    recipe = {"steps": config.steps, "n_train_cases": len(train_cases), "learning_rate": config.learning_rate,
              "batch_size": config.batch_size, "patch_size": list(config.patch_size),
              "foreground_fraction": config.foreground_fraction,
              "hard_negative_fraction": config.hard_negative_fraction, "loss": config.loss,
              "phase_dropout": config.phase_dropout, "time_jitter_s": config.time_jitter_s, "seed": config.seed,
              "elapsed": "" if elapsed is None else f"Training took {elapsed / 60:.0f} min of optimisation."}
    if config.dataset.is_phantom:
        recipe["train_seeds"] = [train_cases[0], train_cases[-1]]
    recipe["world_size"] = int(world_size)
    recipe["effective_batch_size"] = config.batch_size * int(world_size)
    recipe["augmentation"] = ({"augment": False} if not config.augment else
                              {"rotation_probability": config.rotation_probability,
                               "max_rotation_deg": config.max_rotation_deg,
                               "scaling_probability": config.scaling_probability,
                               "scaling_range": list(config.scaling_range),
                               "bias_field_probability": config.bias_field_probability,
                               "bias_field_strength": config.bias_field_strength})
    recipe["augmentation_text"] = _augmentation_text(config)
    return recipe


def _augmentation_text(config: TrainingConfig) -> str:
    if not config.augment:
        return "none"
    parts = ["flips left-right and head-foot"]
    if config.rotation_probability > 0:
        parts.append(f"rotations up to {config.max_rotation_deg:g} degrees (p = {config.rotation_probability:g})")
    if config.scaling_probability > 0:
        parts.append(f"scaling {config.scaling_range[0]:g}-{config.scaling_range[1]:g} "
                     f"(p = {config.scaling_probability:g})")
    if config.bias_field_probability > 0:
        parts.append(f"a smooth bias field up to +/-{config.bias_field_strength:.0%} "
                     f"(p = {config.bias_field_probability:g})")
    parts.append("intensity scale/shift")
    if config.hard_negative_fraction:
        parts.append(f"{config.hard_negative_fraction:.0%} of patches centred on hard negatives (enhancing voxels "
                     f"that are not tumor)")
    if config.dataset.domain_randomization:
        parts.append("and per phantom, before the inputs are derived, domain randomisation of its appearance "
                     "(phantom.randomize: fat suppression on/off/failing in part, bias field, noise, blur, "
                     "ghosting, motion up to 2 mm, units x0.01-x100 with an offset, pre-contrast before injection, "
                     "timing errors)")
    if config.takes_phase_series:
        parts.append(f"phase dropout (p = {config.phase_dropout:g}) and time jitter ({config.time_jitter_s:g} s)")
    return ", ".join(parts)


def _replace_card(card: ModelCard, **changes) -> ModelCard:

    return replace(card, **changes)


def install_into_registry(card: ModelCard, registry_folder_path: str | Path | None = None, *,
                          make_default: bool | None = None) -> ModelCard:
    """Copy a trained model (weights + Markdown card) into a registry folder and register it.

    ``registry_folder_path`` defaults to the bundled ``Resources/Models`` (or
    ``$BREASTTUMORSEG_MODELS``). The copy's sha256 is checked against the card; the
    registry ``models.json`` is rewritten atomically. The model becomes the default when
    the registry has none or already names it (``make_default`` forces either way).
    """
    folder = Path(registry_folder_path) if registry_folder_path is not None else registry_folder()
    folder.mkdir(parents=True, exist_ok=True)
    source = card.weights_path
    if not source.is_file():
        raise ModelError(f"weights file of model {card.name} not found", source)
    if sha256_of(source) != card.sha256:
        raise ModelError(f"checksum mismatch: the weights differ from model {card.name}'s card", source)
    target = folder / card.weights
    _copy_atomic(source, target)
    if sha256_of(target) != card.sha256:
        raise ModelError("checksum mismatch after copying the weights", target)
    card_name = None
    if card.card_path is not None and Path(card.card_path).is_file():
        card_name = Path(card.card_path).name
        _copy_atomic(Path(card.card_path), folder / card_name)
    entry = card.to_json()
    entry["card_path"] = card_name
    installed = card_from_json(entry, folder, str(folder / "models.json"))
    if make_default is None:
        current = read_registry(folder / "models.json").get("default")
        make_default = (not current) or current == card.name
    register_model(installed, folder, make_default=make_default)
    return installed


def _copy_atomic(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    with atomic.atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def trained_on(split: DatasetSplit) -> str:
    """The card's ``trained_on`` for a real data set (its folder's name, not the full path)."""
    label = "folder" if split.settings.kind == "folder" else "MAMA-MIA layout"
    return f"{len(split.train)} cases of the {label} data set '{Path(split.settings.path).name}' (real data)"


def card_description(card, split: DatasetSplit) -> str:
    """One paragraph for people, for a model trained on a real data set."""
    spacing = "x".join(f"{s:g}" for s in card.working_spacing_mm)
    what = ("Whole-breast mask" if card.task == "breast" else "Breast tumor segmentation")
    steps = card.metrics.get("training", {}).get("steps")
    return (f"{what} ({card.architecture}), trained for {steps} steps on {trained_on(split)}. Inputs "
            f"{', '.join(card.inputs)}, on a {spacing} mm grid. Validated on {len(split.val)} held-out cases of the "
            f"same data set; no claim of clinical accuracy.")


def card_markdown(base_markdown: str, card, split: DatasetSplit) -> str:
    """The Markdown card of :mod:`breasttumorseg.segmentation.model_cards` with the sections about the
    training data, the held-out figures and the intended use rewritten for a real data set."""
    m = card.metrics
    training = m.get("training", {})
    label = "folder" if split.settings.kind == "folder" else "MAMA-MIA layout"
    target = "breast masks" if card.task == "breast" else "tumor masks"
    data = (f"{len(split.train)} cases of the {label} data set `{Path(split.settings.path).name}` with their {target} "
            f"(real data provided by the user; see `breasttumorseg.training.datasets`). "
            f"Validation: {len(split.val)} other cases of the same data set (split: {split.extra.get('split', '')}).\n"
            f"Recipe: {training.get('steps')} steps of AdamW (lr {training.get('learning_rate')}, cosine decay), "
            f"batch {training.get('batch_size')} per process x {training.get('world_size', 1)} process(es), patches "
            f"{' x '.join(map(str, training.get('patch_size', [])))}, "
            f"{training.get('foreground_fraction', 0):.0%} centred near the target; augmentation: "
            f"{training.get('augmentation_text', '')}. {training.get('elapsed', '')}").rstrip()
    rows = [f"| {r['case']} | {r['n_phases']} | {r.get('breast_ml' if card.task == 'breast' else 'tumor_ml', 0):.1f} "
            f"| {r['dice']:.3f} |" for r in m.get("cases", [])]
    held_out = [f"{m.get('n_cases')} validation cases (never trained on; they also selected the checkpoint at step "
                f"{m.get('best_step')}), full inference path, Dice on each study's own grid: median "
                f"**{m.get('median_dice', float('nan')):.3f}**, mean {m.get('mean_dice', float('nan')):.3f}, IQR "
                f"{m.get('iqr_dice', [float('nan')] * 2)[0]:.3f}-{m.get('iqr_dice', [float('nan')] * 2)[1]:.3f}."]
    if "median_dice_absolute_0.5" in m:
        held_out.append(f"With an absolute threshold 0.5: median {m['median_dice_absolute_0.5']:.3f}; with a relative "
                        f"threshold 0.5 x max: {m['median_dice_relative_0.5']:.3f}.")
    if rows:
        volume = "breast mL" if card.task == "breast" else "tumor mL"
        held_out += ["", f"| case | phases | {volume} | Dice |", "|---|---|---|---|", *rows]
    sections = {
        "Training data": data,
        "Held-out figures (as measured)": "\n".join(held_out),
        "Intended use and limitations": (
            "For research. The figures above come from validation cases of the training data set (the same "
            "sites, scanners and protocols); they do not show how the model does elsewhere. No claim of clinical "
            "accuracy is made. Not for diagnosis or treatment decisions."),
    }
    parts = base_markdown.split("\n## ")
    out = []
    for part in parts:
        title = part.split("\n", 1)[0].strip()
        if title in sections:
            part = f"{title}\n{sections.pop(title)}\n"
        out.append(part)
    text = "\n## ".join(out)
    for title, body in sections.items():   # a section the base card did not have
        text = text.rstrip("\n") + f"\n\n## {title}\n{body}\n"
    lines = [("**Research software. Trained on real data provided by the user; no claim of clinical accuracy.**"
              if line.startswith("**Research software.") else line) for line in text.split("\n")]
    return "\n".join(lines)
