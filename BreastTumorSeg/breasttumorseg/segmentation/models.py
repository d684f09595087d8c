# Over 500 lines: card format, registry file and weights I/O share one set of checks (checksum, architecture).
"""The model registry: model cards, safetensors weights and their checksums.

A model is two files side by side: the weights ``<name>.safetensors`` (learned tensors
only; never a pickle) and a card that says how to use them (:class:`ModelCard`). The
bundled models are listed in the registry ``Resources/Models/models.json``::

    {"format": 1, "default": "hirsch-unet3d-phantom",
     "models": [{"name": ..., "version": ..., "architecture": ..., ...card fields...}]}

A user's own model is a ``.safetensors`` file with a sidecar card ``<stem>.json`` that
holds the same fields (``breasttumorseg train`` writes both).

Loading is defensive, because a weights file may come from anywhere: the sha256 of the
file is checked against the card *before* any tensor is read; the network is built from
the card's architecture and hyperparameters (:func:`breasttumorseg.segmentation.networks.build_network`);
the tensors are read with ``safetensors`` (no code execution) and must match the network
key by key and shape by shape. Every failure is a :class:`~breasttumorseg.core.errors.ModelError`
with one line naming the file or registry entry.

This module does not import torch at import time (the Slicer panel lists the models
without paying for it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import atomic
from ..core.errors import InputError, ModelError
from ..core.resources import BUNDLED_MODELS
from ..exam.channels import parse_channel_option
from ..exam.kinetic_maps import KINETIC_CHANNELS
from ..exam.maps import CHANNELS, PHASE_SERIES

if TYPE_CHECKING:  # torch is imported lazily
    import torch

#: Environment variable naming another registry folder (holding ``models.json``).
MODELS_ENV = "BREASTTUMORSEG_MODELS"
REGISTRY_FILE = "models.json"
REGISTRY_FORMAT = 1
NORMALIZATIONS = ("pre_contrast_p95", "post1_minmax", "kinetic")
#: what a model predicts: the tumor, or the whole breasts (the spatial prior of tumor models)
TASKS = ("tumor", "breast")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: Registry entries holding this key point at nnU-Net v2 model folders (:func:`nnunet_entries`).
NNUNET_FOLDER_KEY = "nnunet_folder"
NNUNET_OPTIONS = ("configuration", "folds", "channels", "mirroring", "whole_image", "region")
#: Where an nnU-Net model folder's tiles run: every tile (as nnU-Net), the tiles inside the body
#: (the default), or the tiles inside the breasts found by the model-free classical mask.
NNUNET_REGIONS = ("whole", "body", "breasts")


@dataclass(frozen=True)
class ModelCard:
    """What a weights file is and how to feed it.

    Attributes:
        name, version: registry name (also the stem of the weights file) and version.
        architecture: key of :data:`breasttumorseg.segmentation.networks.ARCHITECTURES`.
        hyperparameters: constructor arguments of the architecture.
        inputs: model input channels in order (names of :data:`breasttumorseg.exam.maps.CHANNELS`):
            ``pre_contrast``, ``first_post_contrast``, ``dce_in`` (post1 - pre), ``dce_out``
            (washout slope in signal units per second times the post-contrast window
            last - first post-contrast time in s, i.e. the fitted change over that window;
            0 with a single post-contrast phase), ``subtraction_last``; or the single name
            ``phases`` (:data:`breasttumorseg.exam.maps.PHASE_SERIES`): every phase in acquisition
            order, one channel each, for networks that take any number of phases with
            their acquisition times (at most ``hyperparameters["max_phases"]``); or, with the
            ``kinetic`` normalisation, names of :data:`breasttumorseg.exam.kinetic_maps.KINETIC_CHANNELS`.
        min_phases: phases the study needs, pre-contrast included.
        needs_times: whether the inputs need acquisition times (DCE-out does).
        normalization: ``pre_contrast_p95`` (every channel divided by the 95th percentile
            of the pre-contrast inside the body; Hirsch et al.), ``post1_minmax``
            (Zhang et al.) or ``kinetic`` (relative enhancement on a fixed time axis,
            :mod:`breasttumorseg.exam.kinetic_maps`).
        working_spacing_mm: spacing (x, y, z) in mm of the grid the network works on.
        patch_size: tile size (z, y, x) in voxels of the working grid.
        overlap: fraction of a tile shared with its neighbours at inference.
        output_channel: softmax channel holding the tumor probability.
        threshold, relative_threshold: default post-processing (absolute probability, or
            a fraction of the maximum with seeded components when relative).
        weights: file name of the ``.safetensors`` weights, relative to :attr:`folder`.
        sha256: hex sha256 of the weights file ("" while the weights do not exist yet).
        trained_on: what the model saw in training, in words.
        description: one paragraph for people.
        metrics: held-out figures as measured (e.g. median Dice, number of cases, seeds).
        card_path: the Markdown model card, or None.
        task: ``tumor`` (probability of tumor) or ``breast`` (whole-breast mask).
        breast_mask: registry name of the breast-mask model whose mask (with a margin)
            restricts this tumor model's tiles and detections, ``"classical"`` for the
            model-free mask of :mod:`breasttumorseg.exam.breast_classical`, or None.
        lesion_scorer: the false-positive filter of a kinetic tumor model
            (:mod:`breasttumorseg.segmentation.lesion_candidates`): ``{"weights": file name
            beside the model's weights, "sha256": its hex digest, "keep_probability": 0..1,
            "keep_best": whether the most likely candidate is kept even under keep_probability}``,
            or None.
        lesion_growth: for a card without a lesion scorer, ``{"grow_mm": mm > 0,
            "enhancement_fraction": 0..1}``: every lesion of the default threshold grows into its
            enhancing neighbours (:mod:`breasttumorseg.segmentation.lesion_growth`), or None.
        lesion_choice: for a card with ``lesion_growth``, ``{"weights": file name beside the
            model's weights, "sha256": its hex digest, "keep_probability": 0..1}``: which of the
            grown lesions the default threshold keeps stay (the most likely one always;
            :mod:`breasttumorseg.segmentation.lesion_choice`), or None.
        folder: where ``weights`` (and ``card_path``) are looked up.
    """

    name: str
    version: str
    architecture: str
    hyperparameters: dict
    inputs: tuple[str, ...]
    min_phases: int
    needs_times: bool
    normalization: str
    working_spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    overlap: float
    output_channel: int
    threshold: float
    relative_threshold: bool
    weights: str
    sha256: str
    trained_on: str
    description: str = ""
    metrics: dict = field(default_factory=dict)
    card_path: Path | None = None
    task: str = "tumor"
    breast_mask: str | None = None
    lesion_scorer: dict | None = None
    lesion_growth: dict | None = None
    lesion_choice: dict | None = None
    folder: Path | None = field(default=None, compare=False)

    @property
    def takes_phase_series(self) -> bool:
        """Whether the network takes the phases themselves (any number) with their times."""
        return tuple(self.inputs) == (PHASE_SERIES,)

    @property
    def max_phases(self) -> int | None:
        """Most phases the model takes (None: any number)."""
        return int(self.hyperparameters["max_phases"]) if self.takes_phase_series else None

    @property
    def weights_path(self) -> Path:
        """Absolute path of the weights file."""
        return (self.folder or Path.cwd()) / self.weights

    def to_json(self) -> dict:
        """The card as JSON-ready fields (paths relative to :attr:`folder`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "folder":
                continue
            value = getattr(self, f.name)
            if f.name == "card_path":
                value = None if value is None else _relative_name(Path(value), self.folder)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass
class LoadedModel:
    """A model card with its network built, weights loaded (eval mode) and on a device."""

    card: ModelCard
    network: "torch.nn.Module"
    weights_path: Path


# ----------------------------------------------------------------------------- registry
def registry_folder() -> Path:
    """Folder of the registry: ``$BREASTTUMORSEG_MODELS`` or the bundled Resources/Models."""
    override = os.environ.get(MODELS_ENV)
    if override:
        return Path(override).expanduser()
    return BUNDLED_MODELS


def registry_path() -> Path:
    """The registry file ``models.json`` (see :func:`registry_folder`)."""
    return registry_folder() / REGISTRY_FILE


def read_registry(path: str | Path | None = None) -> dict:
    """The registry JSON as a dict ``{"format", "default", "models": [...]}``.

    A missing file reads as an empty registry; a malformed one is a ModelError.
    """
    path = Path(path) if path is not None else registry_path()
    if not path.exists():
        return {"format": REGISTRY_FORMAT, "default": None, "models": []}
    data = _read_json(path, "model registry")
    if not isinstance(data, dict) or not isinstance(data.get("models", []), list):
        raise ModelError("model registry must be a JSON object with a list \"models\"", path)
    if data.get("default") is not None and not isinstance(data["default"], str):
        raise ModelError("model registry field 'default' must be a model name", path)
    by_phases = data.get("default_by_phases")
    if by_phases is not None and not (isinstance(by_phases, dict) and all(
            k.isdigit() and isinstance(v, str) for k, v in by_phases.items())):
        raise ModelError("model registry field 'default_by_phases' must map phase counts (\"2\".."
                         "\"8\") to model names", path)
    data.setdefault("models", [])
    data.setdefault("default", None)
    return data


def list_models(task: str | None = None) -> list[ModelCard]:
    """Every model card of the registry (of ``task`` when given), in registry order (weights need not exist)."""
    path = registry_path()
    data = read_registry(path)
    cards = []
    for index, entry in enumerate(data["models"]):
        if isinstance(entry, dict) and NNUNET_FOLDER_KEY in entry:
            continue  # an nnU-Net folder: see nnunet_entries()
        where = f"{path} (entry {index + 1}" + (f", {entry['name']!r})" if isinstance(entry, dict)
                                              and isinstance(entry.get("name"), str) else ")")
        cards.append(card_from_json(entry, path.parent, where))
    names = [c.name for c in cards]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelError(f"model registry lists {', '.join(duplicates)} more than once", path)
    return [c for c in cards if task is None or c.task == task]


def nnunet_entries() -> list[dict]:
    """The registry's entries that point at nnU-Net v2 model folders, validated::

        {"name": "mama-mia", "nnunet_folder": "~/models/mamamia",   # relative to the registry
         "configuration": "3d_fullres", "folds": ["0", "1"], "channels": ["DCE=post1"], "mirroring": false,
         "whole_image": false, "region": "breasts", "description": "..."}

    Folds are returned as text (``"0"`` or ``"all"``). A malformed entry is one line naming
    it and its key; the folder itself is read only when the model is loaded.
    """
    path = registry_path()
    entries = []
    for index, entry in enumerate(read_registry(path)["models"]):
        if isinstance(entry, dict) and NNUNET_FOLDER_KEY in entry:
            entries.append(_checked_nnunet_entry(entry, f"entry {index + 1}", path))
    names = [e["name"] for e in entries]
    if entries:
        names += [c.name for c in list_models()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelError(f"model registry lists {', '.join(duplicates)} more than once", path)
    return entries


def _checked_nnunet_entry(entry: dict, where: str, path: Path) -> dict:
    """``entry`` with its options checked (one line naming the entry and key otherwise)."""
    name, folder = entry.get("name"), entry[NNUNET_FOLDER_KEY]
    if not isinstance(name, str) or not name.strip() or _looks_like_path(name):
        raise ModelError(f"{where}: an nnU-Net entry needs a \"name\" (text, not a path), got {name!r}", path)
    where = f"entry {name!r}"
    if not isinstance(folder, str) or not folder.strip():
        raise ModelError(f"{where}: {NNUNET_FOLDER_KEY!r} must be a folder path (text), got {folder!r}", path)
    unknown = sorted(set(entry) - {"name", NNUNET_FOLDER_KEY, *NNUNET_OPTIONS, "description"})
    if unknown:
        raise ModelError(f"{where}: unknown key {unknown[0]!r} (known: name, {NNUNET_FOLDER_KEY}, "
                         f"{', '.join(NNUNET_OPTIONS)}, description)", path)
    checked = dict(entry)
    for key in ("configuration", "description"):
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise ModelError(f"{where}: {key!r} must be text, got {entry[key]!r}", path)
    for key in ("mirroring", "whole_image"):
        if key in entry and not isinstance(entry[key], bool):
            raise ModelError(f"{where}: {key!r} must be true or false, got {entry[key]!r}", path)
    if "region" in entry and entry["region"] not in NNUNET_REGIONS:
        raise ModelError(f"{where}: 'region' must be one of {', '.join(NNUNET_REGIONS)}, got {entry['region']!r}",
                         path)
    if "folds" in entry:
        folds = entry["folds"]
        valid = isinstance(folds, list) and folds and all(
            (isinstance(f, int) and not isinstance(f, bool) and f >= 0) or (isinstance(f, str) and
                                                                           (f.isdigit() or f == "all"))
            for f in folds)
        if not valid:
            raise ModelError(f"{where}: 'folds' must be a non-empty list of fold numbers or \"all\", got {folds!r}",
                             path)
        checked["folds"] = [str(f) for f in folds]
    if "channels" in entry:
        channels = entry["channels"]
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            raise ModelError(f"{where}: 'channels' must be a non-empty list of \"NAME=ROLE\" texts, got "
                             f"{channels!r}", path)
        for binding in channels:
            try:
                parse_channel_option(binding)
            except InputError as error:
                raise ModelError(f"{where}: 'channels': {error.message}", path) from None
    return checked


def nnunet_folder_of(entry: dict) -> Path:
    """The model folder an nnU-Net registry entry points at (relative paths: to the registry's folder)."""
    folder = Path(entry[NNUNET_FOLDER_KEY]).expanduser()
    return folder if folder.is_absolute() else registry_folder() / folder


def nnunet_entry(reference) -> tuple[Path | None, dict]:
    """(model folder, options) when ``reference`` is a folder or names a registry entry
    pointing at an nnU-Net model folder; (None, {}) otherwise."""
    if reference is None:
        return None, {}
    text = os.fspath(reference)
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser(), {}
    if _looks_like_path(text):
        return None, {}
    for entry in nnunet_entries():
        if entry["name"] == text:
            options = {key: (tuple(entry[key]) if isinstance(entry[key], list) else entry[key])
                       for key in NNUNET_OPTIONS if key in entry}
            return nnunet_folder_of(entry), options
    return None, {}


def default_model_name(n_phases: int | None = None) -> str:
    """The registry's default tumor model for a study of ``n_phases`` phases.

    The registry's ``"default_by_phases"`` entry for that count when there is one (chosen
    from the held-out figures per phase count in the model cards), else its
    ``"default"``, else its first model.
    """
    path = registry_path()
    data = read_registry(path)
    by_phases = data.get("default_by_phases") or {}
    if n_phases is not None and str(int(n_phases)) in by_phases:
        return by_phases[str(int(n_phases))]
    if data.get("default"):
        return data["default"]
    if data["models"] and isinstance(data["models"][0], dict) and isinstance(data["models"][0].get("name"), str):
        return data["models"][0]["name"]
    raise ModelError("model registry lists no model (train one with `breasttumorseg train --install`)", path)


def register_model(card: ModelCard, folder: str | Path | None = None, *, make_default: bool | None = None) -> Path:
    """Add or replace ``card`` in the registry of ``folder`` (atomically); returns its path.

    The card's weights (and Markdown card) must already be in ``folder``. With
    ``make_default`` None the model becomes the default only when the registry has none.
    """
    folder = Path(folder) if folder is not None else registry_folder()
    path = folder / REGISTRY_FILE
    data = read_registry(path)
    entry = card.to_json()
    entry["weights"] = Path(card.weights).name
    models = [m for m in data["models"] if not (isinstance(m, dict) and m.get("name") == card.name)]
    position = next((i for i, m in enumerate(data["models"]) if isinstance(m, dict) and m.get("name") == card.name),
                    len(models))
    models.insert(position, entry)
    data["models"] = models
    data["format"] = REGISTRY_FORMAT
    if make_default or (make_default is None and not data.get("default")):
        data["default"] = card.name
    atomic.write_text(path, json.dumps(data, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- finding
def _looks_like_path(text: str) -> bool:
    return (text.endswith((".safetensors", ".json")) or os.sep in text or "/" in text
            or (os.altsep is not None and os.altsep in text))


def find_model(name_or_path: str | os.PathLike | None = None, *, n_phases: int | None = None) -> ModelCard:
    """The card of a model, validated (the weights file is not read here).

    ``None`` is the registry's default (for ``n_phases`` phases when given, see
    :func:`default_model_name`); a name is looked up in the registry; a path to
    a ``.safetensors`` file uses its sidecar card ``<stem>.json`` (a path to the card
    ``.json`` itself works too).
    """
    if name_or_path is None or (isinstance(name_or_path, str) and not name_or_path.strip()):
        name_or_path = default_model_name(n_phases)
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text) or Path(text).is_file():
        return _card_from_user_path(Path(text).expanduser())
    cards = list_models()
    for card in cards:
        if card.name == text:
            return card
    known = ", ".join([c.name for c in cards] + [e["name"] for e in nnunet_entries()]) or "none"
    raise ModelError(f"unknown model {text!r} (known models: {known}; or give the path of a .safetensors "
                     f"file with its <name>.json card beside it)", registry_path())


def _card_from_user_path(path: Path) -> ModelCard:
    if path.suffix == ".json":
        card_file, weights = path, None
    else:
        card_file, weights = path.with_suffix(".json"), path
        if not path.is_file():
            raise ModelError("weights file not found", path)
    if not card_file.is_file():
        raise ModelError(f"no model card beside the weights (expected {card_file.name} with the model's "
                         f"architecture, inputs and sha256)", path)
    data = _read_json(card_file, "model card")
    card = card_from_json(data, card_file.parent, str(card_file))
    if weights is not None and weights.name != card.weights:
        # the user chose this file; the checksum in the card still guards its content
        card = _replace(card, weights=weights.name)
    return card


def _replace(card: ModelCard, **changes) -> ModelCard:
    values = {f.name: getattr(card, f.name) for f in fields(card)}
    values.update(changes)
    return ModelCard(**values)


def _read_json(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ModelError(f"{what} cannot be read ({error.strerror or error})", path) from None
    except UnicodeDecodeError:
        raise ModelError(f"{what} is not UTF-8 text", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"{what} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
                         path) from None


# ----------------------------------------------------------------------------- card validation
_REQUIRED = ("name", "version", "architecture", "hyperparameters", "inputs", "min_phases", "needs_times",
             "normalization", "working_spacing_mm", "patch_size", "overlap", "output_channel", "threshold",
             "relative_threshold", "weights", "sha256", "trained_on")


def card_from_json(data, folder: str | Path, where: str) -> ModelCard:
    """A validated :class:`ModelCard` from JSON fields; ``where`` names the file/entry in errors."""
    folder = Path(folder)

    def bad(name: str, expected: str, value=None) -> ModelError:
        shown = json.dumps(value) if value is not None else "nothing"
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return ModelError(f"model card field '{name}' must be {expected}, got {shown}", where)

    if not isinstance(data, dict):
        raise ModelError("model card must be a JSON object", where)
    missing = [name for name in _REQUIRED if name not in data]
    if missing:
        raise ModelError(f"model card lacks the field(s) {', '.join(repr(m) for m in missing)}", where)

    def text(name: str, allow_empty: bool = False) -> str:
        value = data.get(name)
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise bad(name, "a non-empty string" if not allow_empty else "a string", value)
        return value

    def integer(name: str, low: int) -> int:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(name, f"an integer >= {low}", value)
        return value

    def number(name: str, low: float, high: float, high_open: bool = False) -> float:
        value = data.get(name)
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and low <= value and (value < high if high_open else value <= high))
        if not ok:
            raise bad(name, f"a number in [{low:g}, {high:g}{')' if high_open else ']'}", value)
        return float(value)

    def boolean(name: str) -> bool:
        value = data.get(name)
        if not isinstance(value, bool):
            raise bad(name, "true or false", value)
        return value

    name = text("name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise bad("name", "letters, digits, '.', '_', '+' or '-'", name)
    version = text("version")
    architecture = text("architecture")
    hyperparameters = data.get("hyperparameters")
    if not isinstance(hyperparameters, dict):
        raise bad("hyperparameters", "an object of the architecture's arguments", hyperparameters)

    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise bad("inputs", "a non-empty list of channel names", inputs)
    if PHASE_SERIES in inputs:
        if inputs != [PHASE_SERIES]:
            raise ModelError(f"model card field 'inputs': {PHASE_SERIES!r} stands alone (every phase is a channel)",
                             where)
        max_phases = hyperparameters.get("max_phases")
        if isinstance(max_phases, bool) or not isinstance(max_phases, int) or max_phases < 2:
            raise ModelError("a model taking the phase series needs hyperparameters.max_phases >= 2", where)
    else:
        known = KINETIC_CHANNELS if data.get("normalization") == "kinetic" else tuple(CHANNELS)
        unknown = [i for i in inputs if i not in known]
        if unknown:
            raise ModelError(f"model card field 'inputs' names unknown channel(s) {', '.join(unknown)} "
                             f"(known: {', '.join(known)}, or {PHASE_SERIES} alone)", where)
        in_channels = hyperparameters.get("in_channels")
        if in_channels is not None and in_channels != len(inputs):
            raise ModelError(f"model card says in_channels={in_channels} but lists {len(inputs)} inputs", where)
    min_phases = integer("min_phases", 2)
    needs_times = boolean("needs_times")
    normalization = text("normalization")
    if normalization not in NORMALIZATIONS:
        raise bad("normalization", " or ".join(NORMALIZATIONS), normalization)

    spacing = data.get("working_spacing_mm")
    if (not isinstance(spacing, list) or len(spacing) != 3
            or not all(not isinstance(s, bool) and isinstance(s, (int, float)) and math.isfinite(s) and s > 0
                       for s in spacing)):
        raise bad("working_spacing_mm", "three positive spacings (x, y, z) in mm", spacing)
    patch = data.get("patch_size")
    if (not isinstance(patch, list) or len(patch) != 3
            or not all(not isinstance(p, bool) and isinstance(p, int) and p > 0 for p in patch)):
        raise bad("patch_size", "three positive voxel counts (z, y, x)", patch)
    overlap = number("overlap", 0.0, 1.0, high_open=True)
    output_channel = integer("output_channel", 0)
    out_channels = hyperparameters.get("out_channels")
    if isinstance(out_channels, int) and output_channel >= out_channels:
        raise ModelError(f"model card field 'output_channel' is {output_channel} but the network has "
                         f"{out_channels} output channels", where)
    relative = boolean("relative_threshold")
    threshold = number("threshold", 0.0, 1.0)
    if relative and threshold <= 0:
        raise bad("threshold", "above 0 for a relative threshold", data.get("threshold"))
    weights = text("weights")
    if Path(weights).name != weights or not weights.endswith(".safetensors"):
        raise bad("weights", "a .safetensors file name (no folder)", weights)
    sha256 = text("sha256", allow_empty=True).lower()
    if sha256 and not _HEX64.match(sha256):
        raise bad("sha256", "64 hexadecimal digits", data.get("sha256"))
    trained_on = text("trained_on")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise bad("description", "a string", description)
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        raise bad("metrics", "an object", metrics)
    task = data.get("task", "tumor")
    if task not in TASKS:
        raise bad("task", " or ".join(TASKS), task)
    breast_mask = data.get("breast_mask")
    if breast_mask is not None and (not isinstance(breast_mask, str) or not breast_mask.strip()):
        raise bad("breast_mask", "the name of a breast-mask model, or null", breast_mask)
    if breast_mask is not None and task != "tumor":
        raise ModelError("model card field 'breast_mask' belongs to tumor models only", where)
    lesion_scorer = _lesion_scorer_field(data.get("lesion_scorer"), normalization, bad)
    lesion_growth = _lesion_growth_field(data.get("lesion_growth"), bad)
    if lesion_growth is not None and (task != "tumor" or lesion_scorer is not None):
        raise bad("lesion_growth", "absent: it belongs to tumor models without a lesion scorer (the scorer grows "
                  "the lesions it keeps)", data.get("lesion_growth"))
    lesion_choice = _lesion_choice_field(data.get("lesion_choice"), bad)
    if lesion_choice is not None and lesion_growth is None:
        raise bad("lesion_choice", "absent: it chooses among grown lesions, and this card has no lesion_growth",
                  data.get("lesion_choice"))
    card_path = data.get("card_path")
    if card_path is not None:
        if not isinstance(card_path, str) or Path(card_path).name != card_path:
            raise bad("card_path", "a file name beside the weights (no folder)", card_path)
        card_path = folder / card_path
    return ModelCard(
        name=name, version=version, architecture=architecture, hyperparameters=dict(hyperparameters),
        inputs=tuple(inputs), min_phases=min_phases, needs_times=needs_times, normalization=normalization,
        working_spacing_mm=tuple(float(s) for s in spacing), patch_size=tuple(int(p) for p in patch),
        overlap=overlap, output_channel=output_channel, threshold=threshold, relative_threshold=relative,
        weights=weights, sha256=sha256, trained_on=trained_on, description=description, metrics=dict(metrics),
        card_path=card_path, task=task, breast_mask=breast_mask, lesion_scorer=lesion_scorer,
        lesion_growth=lesion_growth, lesion_choice=lesion_choice, folder=folder.resolve())


def _lesion_scorer_field(value, normalization: str, bad) -> dict | None:
    """The card's ``lesion_scorer`` checked (see :class:`ModelCard`), or None."""
    if value is None:
        return None
    expected = ('an object {"weights": "<file>.safetensors", "sha256": "<hex>", "keep_probability": 0..1, '
                'optionally "keep_best": true|false}')
    required = {"weights", "sha256", "keep_probability"}
    if not isinstance(value, dict) or not required <= set(value) <= required | {"keep_best"}:
        raise bad("lesion_scorer", expected, value)
    weights, digest, keep = value["weights"], value["sha256"], value["keep_probability"]
    keep_best = value.get("keep_best", False)
    if (not isinstance(weights, str) or Path(weights).name != weights or not weights.endswith(".safetensors")
            or not isinstance(digest, str) or not _HEX64.match(digest.lower())
            or isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0
            or not isinstance(keep_best, bool)):
        raise bad("lesion_scorer", expected, value)
    if normalization != "kinetic":
        raise bad("lesion_scorer", "absent: it reads the kinetic maps, which this card's inputs are not", value)
    return {"weights": weights, "sha256": digest.lower(), "keep_probability": float(keep), "keep_best": keep_best}


def _lesion_choice_field(value, bad) -> dict | None:
    """The card's ``lesion_choice`` checked (see :class:`ModelCard`), or None."""
    if value is None:
        return None
    expected = '{"weights": "<file>.safetensors", "sha256": "<hex>", "keep_probability": 0..1}'
    if not isinstance(value, dict) or set(value) != {"weights", "sha256", "keep_probability"}:
        raise bad("lesion_choice", expected, value)
    weights, digest, keep = value["weights"], value["sha256"], value["keep_probability"]
    if (not isinstance(weights, str) or Path(weights).name != weights or not weights.endswith(".safetensors")
            or not isinstance(digest, str) or not _HEX64.match(digest.lower())
            or isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 <= keep <= 1.0):
        raise bad("lesion_choice", expected, value)
    return {"weights": weights, "sha256": digest.lower(), "keep_probability": float(keep)}


def _lesion_growth_field(value, bad) -> dict | None:
    """The card's ``lesion_growth`` checked (see :class:`ModelCard`), or None."""
    if value is None:
        return None
    expected = 'an object {"grow_mm": 0-30 (mm), "enhancement_fraction": 0-1}'
    if not isinstance(value, dict) or set(value) != {"grow_mm", "enhancement_fraction"}:
        raise bad("lesion_growth", expected, value)
    grow_mm, fraction = value["grow_mm"], value["enhancement_fraction"]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (grow_mm, fraction))
    if not numbers or not 0.0 < grow_mm <= 30.0 or not 0.0 < fraction <= 1.0:
        raise bad("lesion_growth", expected, value)
    return {"grow_mm": float(grow_mm), "enhancement_fraction": float(fraction)}


# ----------------------------------------------------------------------------- weights
def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise ModelError(f"weights file cannot be read ({error.strerror or error})", path) from None
    return digest.hexdigest()


def load_model(name_or_path: str | os.PathLike | None = None, *, device="cpu",
               n_phases: int | None = None) -> LoadedModel:
    """Find a model, verify its weights' sha256, build its network and load the weights.

    ``name_or_path`` None picks the registry's default for ``n_phases`` phases.

    The network is returned in eval mode on ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``
    or a ``torch.device``).
    """
    card = find_model(name_or_path, n_phases=n_phases)
    path = card.weights_path
    if not path.is_file():
        hint = (" (the bundled default is produced by `breasttumorseg train ... --install`)"
                if not card.sha256 else "")
        raise ModelError(f"weights file of model {card.name} not found{hint}", path)
    if not card.sha256:
        raise ModelError(f"model card of {card.name} has no sha256 for its weights; refusing to load them", path)
    actual = sha256_of(path)
    if actual != card.sha256:
        raise ModelError(f"checksum mismatch: expected {card.sha256[:12]}..., got {actual[:12]}... "
                         f"(the weights are not the ones model {card.name}'s card describes)", path)

    from safetensors import SafetensorError  # safetensors (torch's) waits: installed on first use in Slicer
    from safetensors.torch import load_file

    from ..core.device import resolve_device
    from .networks import build_network

    try:
        network = build_network(card.architecture, **card.hyperparameters)
    except ModelError as error:
        raise ModelError(f"model {card.name}: {error}", card.card_path or path) from None
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"not a readable safetensors file ({' '.join(str(error).split())})", path) from None
    check_state_dict(network, tensors, card, path)
    network.load_state_dict(tensors, strict=True)
    network.eval()
    network.to(resolve_device(device))
    return LoadedModel(card=card, network=network, weights_path=path)


def check_state_dict(network, tensors: dict, card: ModelCard, path: str | Path) -> None:
    """Raise ModelError unless ``tensors`` has exactly the network's keys and shapes."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    shapes = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if not (missing or extra or shapes):
        return
    settings = ", ".join(f"{k}={v}" for k, v in sorted(card.hyperparameters.items()))
    problems = []
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} tensor shape(s) differ, e.g. {k} is {list(tensors[k].shape)} in the file "
                        f"but {list(expected[k].shape)} in the network")
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    raise ModelError(f"weights do not match architecture {card.architecture} ({settings}): "
                     + "; ".join(problems), path)


def save_model(network, card_fields: dict, folder: str | Path, name: str) -> ModelCard:
    """Write ``<name>.safetensors`` and its card ``<name>.json`` into ``folder``, atomically.

    ``card_fields`` holds every :class:`ModelCard` field except ``name``, ``weights`` and
    ``sha256`` (computed here; ``folder`` is ignored). ``card_path`` may name a Markdown
    card in ``folder``. Returns the validated card as it will be read back.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    weights_name = f"{name}.safetensors"
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()}
    fields_out = {k: v for k, v in dict(card_fields).items() if k not in ("folder", "name", "weights", "sha256")}
    fields_out = json.loads(json.dumps(fields_out, default=_json_default))
    if fields_out.get("card_path") is not None:
        fields_out["card_path"] = Path(str(fields_out["card_path"])).name
    card_json = {"name": name, **fields_out, "weights": weights_name, "sha256": "0" * 64}
    card_json = {**{k: card_json[k] for k in _REQUIRED if k in card_json},
                 **{k: v for k, v in card_json.items() if k not in _REQUIRED}}
    card_file = folder / f"{name}.json"
    card_from_json(card_json, folder, str(card_file))  # a bad field fails before anything is written
    metadata = {"format": "pt", "name": str(name), "architecture": str(card_json["architecture"])}
    weights_path = folder / weights_name
    with atomic.atomic_path(weights_path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    card_json["sha256"] = sha256_of(weights_path)
    atomic.write_text(card_file, json.dumps(card_json, indent=2) + "\n")
    return card_from_json(card_json, folder, str(card_file))


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _relative_name(path: Path, folder: Path | None) -> str:
    if folder is not None:
        try:
            return str(path.resolve().relative_to(Path(folder).resolve()))
        except ValueError:
            pass
    return path.name
