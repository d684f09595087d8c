"""The Model section's list and text, without Qt: registry models first (the default on top),
then the user's own weights files; one short label per model, its inputs in plain words."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("breasttumorseg")

#: The model inputs in a radiologist's words (registry input names -> what the panel shows).
INPUT_NAMES = {
    "phases": "all phases with their times",
    "pre_contrast": "pre-contrast",
    "first_post_contrast": "first post-contrast",
    "dce_in": "early uptake (post 1 - pre)",
    "dce_out": "washout slope",
    "subtraction_last": "last subtraction",
    "pre_relative": "anatomy (pre-contrast)",
    "enhancement_60s": "enhancement at 60 s",
    "enhancement_120s": "at 120 s",
    "enhancement_240s": "at 240 s",
    "enhancement_420s": "at 420 s",
    "enhancement_peak": "peak enhancement",
    "late_coverage": "late-phase coverage",
}


@dataclass(frozen=True)
class ModelEntry:
    label: str  # short: the combo box must not widen the panel
    data: str  # registry name, a weights file's path, or "" (the default model)
    tooltip: str


def inputsText(inputs) -> str:
    """A model's inputs in plain words: "first post-contrast, early uptake (post 1 - pre), washout slope"."""
    return ", ".join(INPUT_NAMES.get(name, name.replace("_", " ")) for name in inputs)


def trainedOnSynthetic(card) -> bool:
    trainedOn = getattr(card, "trained_on", None)
    if isinstance(trainedOn, bool):
        return trainedOn
    return any(word in str(trainedOn or "").lower() for word in ("synthetic", "phantom"))


def modelEntries(userModels: dict) -> tuple:
    """``(entries, cards by name)``: the registry's tumor models (the default first; a single
    "Default model" entry while the registry cannot be read yet), then ``userModels`` (label -> path)."""
    cards = []
    default = None
    try:
        from breasttumorseg.segmentation.models import default_model_name, list_models

        cards = list(list_models(task="tumor"))
        default = default_model_name()
    except Exception as error:  # noqa: BLE001 - e.g. the backend's packages are not installed yet
        log.info(f"BreastTumorSeg: model registry not readable yet ({error})")
    cards = sorted(cards, key=lambda card: card.name != default)
    entries = []
    for card in cards:
        entries.append(ModelEntry(f"{card.name} {card.version}", card.name,
                                  f"{card.name} {card.version}: inputs {inputsText(card.inputs)}; "
                                  f"trained on {card.trained_on}."))
    if not cards:
        entries.append(ModelEntry("Default model", "", "The registry's default model."))
    entries += [ModelEntry(label, path, path) for label, path in userModels.items()]
    return entries, {card.name: card for card in cards}


def modelInfoText(card, data: str) -> str:
    """The lines under the model list: inputs, phases needed, accuracy, what it was trained on."""
    if card is None:
        return (f"Your model: {data}" if data else
                "The default model; the model list appears once the backend's packages are installed.")
    from breasttumorseg.segmentation.model_cards import headline

    text = (f"Uses: {inputsText(card.inputs)} (at least {card.min_phases} phases).\n"
            f"Accuracy: {headline(card)}.")
    if trainedOnSynthetic(card):
        text += "\nTrained on synthetic phantoms only: no clinical accuracy is claimed."
    else:
        text += f"\nTrained on: {card.trained_on}."
    return text


# ----------------------------------------------------------------------------- nnU-Net v2 model folders
@dataclass(frozen=True)
class FolderModel:
    """An nnU-Net v2 trained-model folder as the panel shows it: one row per input channel."""

    folder: str  # the trained-model folder found at or below the folder the user chose
    channels: tuple  # channel names in dataset.json's order
    roles: tuple  # the default role of each channel (the preset's), "" where none applies
    preset: str  # the preset's name when it applies, else ""
    licence: str
    reference: str


def folderModel(path) -> FolderModel:
    """Read an nnU-Net v2 model folder's ``dataset.json`` (the folder found as the CLI's
    ``--model DIR`` finds it); the default roles are the CLI's when no ``--channel`` is given.
    Raises the backend's one-line error for a folder that holds no model."""
    from breasttumorseg.exam.channels import bind_channels
    from breasttumorseg.core.errors import InputError
    from breasttumorseg.segmentation.nnunet_folder import (DATASET_FILE, _channel_names, find_model_folder,
                                                           licence_text, read_json_file)

    folder = find_model_folder(path)
    dataset = read_json_file(folder / DATASET_FILE, "dataset.json")
    names = _channel_names(dataset, folder)
    try:
        roles, preset = bind_channels(names, ())
    except InputError:
        roles, preset = ("",) * len(names), ""
    licence, reference = licence_text(dataset)
    return FolderModel(str(folder), tuple(names), tuple(roles), preset, licence, reference)


def folderModelText(model: FolderModel) -> str:
    """The lines under the model list for a model folder: what it is, its licence, how channels are bound."""
    lines = [f"nnU-Net v2 model: {model.folder}",
             f"Licence: {model.licence or 'not stated in dataset.json'}"
             + (" (non-commercial: research use only)" if "nc" in model.licence.lower().replace("-", " ").split()
                else "")]
    if model.reference:
        lines.append(f"Reference: {model.reference}")
    lines.append(f"Channels: {model.preset} by default." if model.preset
                 else "Choose the DCE image each model channel receives.")
    return "\n".join(lines)


def channelRoles(nPhases: int) -> list:
    """The roles a channel can take for a study of ``nPhases`` phases, with their labels:
    ``[(role, label), ...]`` (pre, post1 ... postN, last, sub1 ... subN)."""
    posts = max(1, nPhases - 1)
    roles = [("pre", "pre-contrast")]
    roles += [(f"post{k}", f"post-contrast {k}") for k in range(1, posts + 1)]
    roles += [("last", "last phase")]
    roles += [(f"sub{k}", f"subtraction {k} (post {k} - pre)") for k in range(1, posts + 1)]
    return roles


def channelBindings(model: FolderModel, roles) -> list:
    """``["NAME=ROLE", ...]`` for the request, checked: one line naming the channel when a
    channel is left without a role or a role is unknown."""
    from breasttumorseg.exam.channels import bind_channels

    bindings = [f"{name}={role}" for name, role in zip(model.channels, roles) if role]
    bind_channels(list(model.channels), bindings)
    return bindings
