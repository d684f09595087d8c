"""nnU-Net v2 trained-model folders as models: found, read safely, built, bound to phases.

A trained nnU-Net v2 model is a folder ``<trainer>__<plans>__<configuration>/`` holding
``dataset.json`` (channel names, labels, licence, reference), ``plans.json`` (spacing,
patch size, normalisation, resampling, network architecture per configuration) and one
``fold_<k>/checkpoint_final.pth`` per trained fold. Users unzip an archive somewhere above
it, so :func:`find_model_folder` searches down for it.

Checkpoints are PyTorch files (pickles). They are read with ``torch.load(weights_only=True)``
and an explicit allow-list of the plain numpy types nnU-Net's trainer writes: nothing else
is ever unpickled, and a checkpoint needing any other type is refused in one line naming
it. The network is built from the plans by nnU-Net's own builder
(``get_network_from_plans``), its class restricted to ``dynamic_network_architectures``
and its layer types to ``torch.nn``. Preprocessing, the sliding window and the export
back onto the study's grid are ours (:mod:`.nnunet_inference`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

try:  # the numpy reconstructors nnU-Net's pickled checkpoints name (the module moved in numpy 2)
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct, scalar

from ..exam.channels import bind_channels, check_phases, phases_needed
from ..core.errors import ModelError
from .nnunet_inference import predict_probability
from ..exam.breast_classical import CLASSICAL_BREAST_MASK
from .models import NNUNET_REGIONS, ModelCard

if TYPE_CHECKING:  # torch and nnunetv2 are imported when a folder is loaded
    import torch

    from .models import ModelCard

log = logging.getLogger("breasttumorseg")

DATASET_FILE = "dataset.json"
PLANS_FILE = "plans.json"
CHECKPOINT_FILE = "checkpoint_final.pth"
PREFERRED_CONFIGURATIONS = ("3d_fullres", "3d_lowres", "2d")
#: Where the plans may take the network class and its layer types from.
NETWORK_MODULES = ("dynamic_network_architectures.",)
LAYER_MODULES = ("torch.nn.",)
NNUNET_REQUIREMENT = "nnunetv2==2.8.1"
#: Folders walked at most while searching down for a model folder.
_MAX_FOLDERS = 2000


# ----------------------------------------------------------------------------- finding
def is_model_folder(path: Path) -> bool:
    return (path / DATASET_FILE).is_file() and (path / PLANS_FILE).is_file()


def looks_like_nnunet(reference) -> bool:
    """Whether a ``--model`` value names a folder (an nnU-Net model folder or one above it)."""
    return reference is not None and Path(os.path.expanduser(os.fspath(reference))).is_dir()


def find_model_folder(path, configuration: str | None = None) -> Path:
    """The trained-model folder at or below ``path`` (the one of ``configuration`` when
    given, else the only one, else the first of 3d_fullres, 3d_lowres, 2d)."""
    root = Path(os.path.expanduser(os.fspath(path)))
    if not root.is_dir():
        raise ModelError("model folder not found", root)
    found = []
    for count, (folder, subfolders, _) in enumerate(os.walk(root, followlinks=False)):
        subfolders.sort()
        if count > _MAX_FOLDERS:
            break
        if is_model_folder(Path(folder)):
            found.append(Path(folder))
            subfolders[:] = []  # fold folders below need no search
    if not found:
        raise ModelError(f"no nnU-Net v2 model below this folder (expected a folder holding {DATASET_FILE} and "
                         f"{PLANS_FILE} with fold_<k>/{CHECKPOINT_FILE})", root)
    if configuration is not None:
        matching = [f for f in found if f.name.split("__")[-1] == configuration]
        if not matching:
            raise ModelError(f"no model folder of configuration {configuration!r} (found: "
                             f"{', '.join(_configuration_of(f) for f in found)})", root)
        found = matching
    if len(found) > 1:
        for preferred in PREFERRED_CONFIGURATIONS:
            matching = [f for f in found if _configuration_of(f) == preferred]
            if len(matching) == 1:
                return matching[0]
        names = ", ".join(str(f.relative_to(root)) for f in found)
        raise ModelError(f"{len(found)} model folders below this folder ({names}); "
                         "choose one with --model DIR or --configuration NAME", root)
    return found[0]


def _configuration_of(folder: Path) -> str:
    return folder.name.split("__")[-1]


def available_folds(folder: Path) -> list[str]:
    """The folds with a final checkpoint, as nnU-Net names them (``"0"`` ... or ``"all"``)."""
    folds = []
    for child in sorted(folder.glob("fold_*")):
        fold = child.name[len("fold_"):]
        if (child / CHECKPOINT_FILE).is_file() and (fold.isdigit() or fold == "all"):
            folds.append(fold)
    folds.sort(key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0))
    return folds


def choose_folds(folder: Path, folds) -> tuple[str, ...]:
    """The folds to average: ``folds`` when given (each must exist), else every numbered fold present
    (``all`` when it is the only one), as nnU-Net's predictor does."""
    present = available_folds(folder)
    if folds:
        chosen = tuple(str(f) for f in folds)
        for fold in chosen:
            if fold not in present:
                raise ModelError(f"fold {fold} has no {CHECKPOINT_FILE} "
                                 f"(folds present: {', '.join(present) or 'none'})",
                                 folder)
        return chosen
    numbered = tuple(f for f in present if f.isdigit())
    if numbered:
        return numbered
    if present:
        return tuple(present)
    raise ModelError(f"no fold_<k>/{CHECKPOINT_FILE} in the model folder", folder)


# ----------------------------------------------------------------------------- reading
def read_json_file(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{what} not found", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelError(f"{what} is not readable JSON ({' '.join(str(error).split())})", path) from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} must be a JSON object", path)
    return data


def resolve_configuration(plans: dict, name: str, where: Path) -> dict:
    """A configuration of ``plans.json`` with its ``inherits_from`` chain merged in."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = ", ".join(configurations) if isinstance(configurations, dict) else "none"
        raise ModelError(f"plans.json has no configuration {name!r} (it has: {known})", where)
    chain, current = [], name
    while current is not None:
        if current in chain:
            raise ModelError(f"plans.json: configuration {name!r} inherits from itself", where)
        if current not in configurations:
            raise ModelError(f"plans.json: configuration {chain[-1]!r} inherits from unknown {current!r}", where)
        chain.append(current)
        current = configurations[current].get("inherits_from")
    merged: dict = {}
    for part in reversed(chain):
        merged.update(configurations[part])
    for key in ("spacing", "patch_size", "normalization_schemes", "use_mask_for_norm", "architecture"):
        if key not in merged:
            raise ModelError(f"plans.json: configuration {name!r} has no {key!r}", where)
    return merged


def _allowed_checkpoint_globals() -> list:
    """The plain types nnU-Net's trainer pickles besides tensors: numpy scalars (e.g. the
    best EMA Dice) and their dtypes."""
    allowed = [np.dtype, np.ndarray, scalar, _reconstruct]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType",
                 "UInt8DType"):
        dtype_class = getattr(np.dtypes, name, None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


_GLOBAL = re.compile(r"GLOBAL ([A-Za-z0-9_.]+)")


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's content, read with ``weights_only=True`` and the allow-list; a type
    outside it is refused (one line naming it), and nothing of the file runs."""
    import torch  # torch waits: this module imports without it (Slicer installs torch on first use)

    try:
        with torch.serialization.safe_globals(_allowed_checkpoint_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = " ".join(str(error).split())
        needed = _GLOBAL.search(text)
        if needed:
            raise ModelError(f"checkpoint needs the type {needed.group(1)}, which is not one nnU-Net writes; "
                             "refusing to load it (it was not unpickled)", path) from None
        raise ModelError(f"checkpoint cannot be read safely ({text.split('. ')[0][:200]})", path) from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise ModelError(f"not a readable PyTorch checkpoint ({' '.join(str(error).split())[:200]})", path) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise ModelError("not an nnU-Net checkpoint (no 'network_weights')", path)
    return checkpoint


# ----------------------------------------------------------------------------- the network
def _require_nnunetv2():
    try:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    except ImportError:
        raise ModelError(f"running nnU-Net model folders needs the nnunetv2 package ({NNUNET_REQUIREMENT}); "
                         "install it with pip", "nnunetv2") from None
    return get_network_from_plans


def build_network(configuration: dict, n_inputs: int, n_outputs: int, where: Path):
    """The configuration's network (no deep supervision), built by nnU-Net's own builder
    after checking that the plans name only network and layer classes of the allowed packages."""
    architecture = configuration["architecture"]
    class_name = architecture.get("network_class_name", "")
    keywords = architecture.get("arch_kwargs") or {}
    imported = architecture.get("_kw_requires_import") or []
    if not isinstance(class_name, str) or not class_name.startswith(NETWORK_MODULES):
        raise ModelError(f"plans.json: network class {class_name!r} is not from dynamic_network_architectures; "
                         "refusing to import it", where)
    for key in imported:
        value = keywords.get(key)
        if value is not None and not (isinstance(value, str) and value.startswith(LAYER_MODULES)):
            raise ModelError(f"plans.json: {key} {value!r} is not a torch.nn class; refusing to import it", where)
    get_network_from_plans = _require_nnunetv2()
    try:
        return get_network_from_plans(class_name, keywords, imported, n_inputs, n_outputs, allow_init=False,
                                      deep_supervision=False)
    except (ImportError, TypeError, ValueError, KeyError) as error:
        raise ModelError(f"plans.json: the network cannot be built ({' '.join(str(error).split())[:200]})",
                         where) from None


def fold_ensemble(networks, mirroring_axes):
    """One module averaging the folds' logits, each over the mirrored copies when
    ``mirroring_axes`` (spatial axes 0..2) is given: nnU-Net's fold averaging and test-time
    mirroring, computed tile by tile (the same mean, since both are linear in the logits)."""
    import torch
    from torch import nn

    class FoldEnsemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.folds = nn.ModuleList(networks)
            axes = [a + 2 for a in (mirroring_axes or ())]
            self.flips = [c for i in range(len(axes)) for c in combinations(axes, i + 1)]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            total = None
            for network in self.folds:
                logits = network(x)
                if self.flips:
                    for axes in self.flips:
                        logits = logits + torch.flip(network(torch.flip(x, axes)), axes)
                    logits = logits / (len(self.flips) + 1)
                total = logits if total is None else total + logits
            return total if len(self.folds) == 1 else total / len(self.folds)  # x / 1 is x: no copy

    return FoldEnsemble().eval()


# ----------------------------------------------------------------------------- the model
@dataclass
class NnUNetModel:
    """A loaded nnU-Net v2 model folder, bound to the phases of a DCE study.

    ``weights_path`` is the model folder (a background process loads it again from there).
    """

    card: ModelCard
    network: torch.nn.Module
    weights_path: Path
    plans: dict
    configuration_name: str
    configuration: dict
    dataset: dict
    channel_names: list[str]
    roles: tuple[str, ...]
    mapping_source: str
    folds: tuple[str, ...]
    mirroring_axes: tuple[int, ...] | None
    output_label: int
    n_outputs: int
    licence: str = ""
    reference: str = ""
    fold_networks: list = field(default_factory=list)  # one module per fold (sharing ``network``'s weights)
    region: str = "body"  # where the tiles run: whole, body or breasts (the card's breast_mask is then classical)

    @property
    def folder(self) -> Path:
        return self.weights_path

    @property
    def whole_image(self) -> bool:
        """Every tile runs, as in nnU-Net (``region`` is ``whole``)."""
        return self.region == "whole"

    def check_study(self, study) -> None:
        """Raise (one line naming the channel) when the study's phases cannot feed the channels."""
        check_phases(self.channel_names, self.roles, study.n_phases, study.source)

    def request_options(self) -> dict:
        """The request options that load this model again the same way (a background process does)."""
        return {"configuration": self.configuration_name, "folds": self.folds,
                "mirroring": self.mirroring_axes is not None,
                "channels": tuple(f"{n}={r}" for n, r in zip(self.channel_names, self.roles)),
                "whole_image": self.whole_image, "region": self.region}

    def provenance(self) -> dict:
        """What ``measurements.json`` records about this model beyond its name and version."""
        return {"model_kind": "nnunetv2", "model_folder": str(self.weights_path),
                "model_configuration": self.configuration_name, "model_folds": list(self.folds),
                "model_mirroring": self.mirroring_axes is not None,
                "model_licence": self.licence, "model_reference": self.reference, "model_region": self.region,
                "channel_mapping": dict(zip(self.channel_names, self.roles)),
                "channel_mapping_from": self.mapping_source}

    def predict_probability(self, study, **options):
        """Tumor probability on the study's grid: see :func:`.nnunet_inference.predict_probability`."""
        return predict_probability(self, study, **options)


def check_study_for_folder(path, channels, study, configuration: str | None = None) -> None:
    """Check, from dataset.json alone (no weights read), that the channel mapping binds every
    channel and that the study's phases can give it; one line naming the channel otherwise."""
    folder = find_model_folder(path, configuration)
    names = _channel_names(read_json_file(folder / DATASET_FILE, "dataset.json"), folder)
    roles, _ = bind_channels(names, channels)
    check_phases(names, roles, study.n_phases, study.source)


def _channel_names(dataset: dict, folder: Path) -> list[str]:
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names or not all(str(k).isdigit() for k in names):
        raise ModelError("dataset.json has no 'channel_names' numbered 0, 1, ...", folder / DATASET_FILE)
    return [str(names[k]) for k in sorted(names, key=int)]


def licence_text(dataset: dict) -> tuple[str, str]:
    """(licence, reference) of ``dataset.json`` (empty when absent)."""
    licence = dataset.get("licence", dataset.get("license", ""))
    reference = dataset.get("reference", "")
    return str(licence or "").strip(), str(reference or "").strip()


def licence_notice(model: NnUNetModel) -> str:
    """One line for people: the model, its licence and reference."""
    parts = [f"model {model.card.name}"]
    parts.append(f"licence: {model.licence or 'not stated in dataset.json'}")
    if model.reference:
        parts.append(f"reference: {model.reference}")
    if "nc" in model.licence.lower().replace("-", " ").split():
        parts.append("non-commercial: research use only")
    return "; ".join(parts)


def _tumor_label(labels: dict, where: Path) -> tuple[int, int]:
    """(output channel of the tumor, number of output channels) from dataset.json's labels."""
    if not isinstance(labels, dict) or not labels:
        raise ModelError("dataset.json has no 'labels'", where)
    if any(not isinstance(v, int) for v in labels.values()):
        raise ModelError("dataset.json: region-based labels are not supported (labels must be integers)", where)
    values = sorted(set(labels.values()))
    if values != list(range(len(values))):
        raise ModelError(f"dataset.json: labels must be 0 ... N, got {values}", where)
    for name, value in labels.items():
        if value > 0 and any(word in name.lower() for word in ("tumor", "tumour", "lesion", "cancer")):
            return value, len(values)
    if len(values) < 2:
        raise ModelError("dataset.json: no foreground label", where)
    return 1, len(values)


def load_nnunet_model(path, *, configuration: str | None = None, folds=None, mirroring: bool = False,
                      channels=(), whole_image: bool = False, region: str | None = None,
                      device="cpu") -> NnUNetModel:
    """Find, check and load the nnU-Net v2 model at or below ``path``; bind its channels
    (``channels``: ``NAME=ROLE`` strings, empty for the preset). ``region``: where the tiles
    run, ``whole`` (every tile, as nnU-Net; also ``whole_image``), ``body`` (the default) or
    ``breasts``: the card then names the classical breast mask as its prior, so
    :func:`~.pipeline.segment_study` limits the tiles to the breasts (grown by 10 mm) and
    zeroes the probability outside them, as for our models with that prior."""
    from ..core.device import resolve_device

    if region is None:
        region = "whole" if whole_image else "body"
    if region not in NNUNET_REGIONS:
        raise ModelError(f"region must be one of {', '.join(NNUNET_REGIONS)}, got {region!r}", path)
    if whole_image and region != "whole":
        raise ModelError(f"whole_image runs every tile; it does not go with region {region!r}", path)
    folder = find_model_folder(path, configuration)
    dataset = read_json_file(folder / DATASET_FILE, "dataset.json")
    plans = read_json_file(folder / PLANS_FILE, "plans.json")
    channel_names = _channel_names(dataset, folder)
    roles, mapping_source = bind_channels(channel_names, channels)
    output_label, n_outputs = _tumor_label(dataset.get("labels"), folder / DATASET_FILE)
    chosen = choose_folds(folder, folds)

    checkpoints = [read_checkpoint(folder / f"fold_{fold}" / CHECKPOINT_FILE) for fold in chosen]
    first = checkpoints[0]
    configuration_name = (first.get("init_args") or {}).get("configuration") or _configuration_of(folder)
    resolved = resolve_configuration(plans, configuration_name, folder / PLANS_FILE)
    if resolved.get("previous_stage"):
        raise ModelError(f"configuration {configuration_name!r} is a cascade stage; cascades are not supported",
                         folder)
    axes = first.get("inference_allowed_mirroring_axes")
    mirroring_axes = tuple(int(a) for a in axes) if mirroring and axes else None
    networks = []
    for fold, checkpoint in zip(chosen, checkpoints):
        network = build_network(resolved, len(channel_names), n_outputs, folder / PLANS_FILE)
        try:
            network.load_state_dict(checkpoint["network_weights"], strict=True)
        except RuntimeError as error:
            raise ModelError(f"weights do not fit the network of plans.json ({str(error).splitlines()[0][:200]})",
                             folder / f"fold_{fold}" / CHECKPOINT_FILE) from None
        networks.append(network.eval())
    ensemble = fold_ensemble(networks, mirroring_axes).to(resolve_device(device))
    per_fold = [fold_ensemble([network], mirroring_axes) for network in networks]

    licence, reference = licence_text(dataset)
    name = str(dataset.get("name") or folder.parent.name or folder.name)
    trainer = str(first.get("trainer_name") or folder.name.split("__")[0])
    spacing_zyx = [float(s) for s in resolved["spacing"]]
    backward = plans.get("transpose_backward", [0, 1, 2])
    spacing_xyz = tuple(reversed([spacing_zyx[i] for i in backward]))
    description = str(dataset.get("description") or "").strip()
    card = ModelCard(
        name=name, version=f"nnU-Net v2 {trainer} {configuration_name} folds {','.join(chosen)}"
                           + (" mirrored" if mirroring_axes else ""),
        architecture="nnunetv2", hyperparameters={"network_class_name": resolved["architecture"]["network_class_name"]},
        inputs=tuple(channel_names), min_phases=max([2] + [phases_needed(r) for r in roles]),
        needs_times=False, normalization="nnunet", working_spacing_mm=spacing_xyz,
        patch_size=tuple(int(p) for p in resolved["patch_size"]), overlap=0.5, output_channel=output_label,
        threshold=0.5, relative_threshold=False, weights=folder.name, sha256="",
        trained_on=description or f"nnU-Net dataset {name}", description=description,
        metrics={}, folder=folder.parent, breast_mask=CLASSICAL_BREAST_MASK if region == "breasts" else None)
    return NnUNetModel(card=card, network=ensemble, weights_path=folder, plans=plans,
                       configuration_name=configuration_name, configuration=resolved, dataset=dataset,
                       channel_names=channel_names, roles=roles, mapping_source=mapping_source, folds=chosen,
                       mirroring_axes=mirroring_axes, output_label=output_label, n_outputs=n_outputs,
                       licence=licence, reference=reference, fold_networks=per_fold, region=region)
