"""Training checkpoints: one safetensors file, written atomically, and the rules for resuming.

Model, best model and optimiser tensors, with the scalar state (step, history, every
process's random generator states, optimiser settings) as JSON in the safetensors metadata;
no pickle anywhere. A run resumes only with the settings of :meth:`TrainingConfig.fingerprint`,
the same cases and the same number of processes, and then continues exactly; a checkpoint
made before a setting existed continues with the value it was made with when the setting is
left at its default (:func:`settings_for_checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import replace, fields as dataclass_fields
from pathlib import Path
from typing import Callable

from ..core import atomic
from ..core.errors import InputError, ModelError
from .config import TrainingConfig
from .datasets import DatasetSplit


CHECKPOINT_FILE = "checkpoint.safetensors"


#: values of settings that older checkpoints do not record (they were made before the setting existed)
_LEGACY_FINGERPRINT = {"augment": True, "rotation_probability": 0.0, "max_rotation_deg": 10.0,
                       "scaling_probability": 0.0, "scaling_range": [0.9, 1.1], "bias_field_probability": 0.0,
                       "bias_field_strength": 0.15, "dataset": {"kind": "phantom"},
                       "hard_negative_fraction": 0.0}


def save_checkpoint(path: Path, network, optimizer, best_state: dict | None, scalars: dict,
                    torch_rng_states: list | None = None) -> None:
    """Write model, best model and optimiser tensors + JSON scalars as one safetensors file.

    ``torch_rng_states``: every process's torch CPU generator state (rank order) when
    training on several processes; else this process's state is stored.
    """
    import torch  # torch waits: this module imports without it (Slicer installs torch on first use)
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in network.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best/{k}": v.detach().cpu().contiguous().clone() for k, v in best_state.items()})
    state = optimizer.state_dict()
    optimizer_scalars = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                optimizer_scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state().clone()
    for rank, rng_state in enumerate(torch_rng_states or []):
        tensors[f"rng/torch/{rank}"] = rng_state.detach().cpu().clone()
    scalars = dict(scalars, param_groups=state["param_groups"], optimizer_scalars=optimizer_scalars)
    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"training_state": json.dumps(scalars)})


def load_checkpoint(path: Path, network, optimizer, rank: int = 0) -> tuple[dict | None, dict]:
    """Restore ``network`` and ``optimizer`` from :func:`save_checkpoint` and the torch
    generator of process ``rank``; returns (best_state, scalars)."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        scalars = json.loads(metadata["training_state"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise ModelError(f"not a readable training checkpoint ({' '.join(str(error).split())})", path) from None
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    best_state = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")} or None
    try:
        network.load_state_dict(model_state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"checkpoint does not match the network: {' '.join(str(error).split())[:200]}",
                         path) from None
    optimizer_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for index, values in scalars.get("optimizer_scalars", {}).items():
        optimizer_state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": scalars["param_groups"]})
    rng_key = f"rng/torch/{rank}" if f"rng/torch/{rank}" in tensors else "rng/torch"
    if rng_key in tensors:
        torch.set_rng_state(tensors[rng_key].to(torch.uint8))
    return best_state, scalars


def settings_for_checkpoint(config: TrainingConfig, scalars: dict, log: Callable = print) -> TrainingConfig:
    """``config`` with the settings a checkpoint predates (it records no value for them) at the
    values it was made with, where ``config`` leaves them at their defaults: such a run
    continues as it began (exactly), e.g. without the rotations, scaling and bias field that
    came later. Settings changed from their defaults are left for :func:`check_resumable`."""

    recorded = scalars.get("fingerprint") or {}
    defaults = {f.name: f.default for f in dataclass_fields(TrainingConfig)}
    adopted = {}
    for key, legacy in _LEGACY_FINGERPRINT.items():
        if key in recorded or key == "dataset" or key not in defaults:
            continue
        current = getattr(config, key)
        default = defaults[key]
        if json.loads(json.dumps(current)) == json.loads(json.dumps(default)) and current != (
                tuple(legacy) if isinstance(legacy, list) else legacy):
            adopted[key] = tuple(legacy) if isinstance(legacy, list) else legacy
    if not adopted:
        return config
    log(f"the checkpoint predates {', '.join(sorted(adopted))}: continuing as it was made "
        f"({', '.join(f'{k}={v}' for k, v in sorted(adopted.items()))})")
    return replace(config, **adopted)


def check_resumable(config: TrainingConfig, scalars: dict, split: DatasetSplit, context, path: Path) -> None:
    """Refuse a checkpoint made with other settings, cases or number of processes (one line)."""
    recorded = dict(_LEGACY_FINGERPRINT, **(scalars.get("fingerprint") or {}))
    current = config.fingerprint()
    changed = sorted(k for k, v in current.items() if recorded.get(k) != v)
    if changed:
        legacy = [k for k in changed if k in _LEGACY_FINGERPRINT and k not in (scalars.get("fingerprint") or {})]
        hint = (f"; the checkpoint predates {', '.join(legacy)}, which resume exactly as "
                f"{', '.join(f'{k}={json.dumps(_LEGACY_FINGERPRINT[k])}' for k in legacy)}" if legacy else "")
        raise InputError(f"cannot resume: the checkpoint was made with other settings ({', '.join(changed)}){hint}",
                         path)
    if scalars.get("dataset_cases", split.case_digest) != split.case_digest:
        raise InputError("cannot resume: the data set's training or validation cases changed since the checkpoint",
                         path)
    made_with = int(scalars.get("world_size", 1))
    if made_with != context.world_size:
        raise InputError(f"cannot resume: the checkpoint was made by {made_with} process(es), this run has "
                         f"{context.world_size} (start torchrun with --nproc-per-node {made_with})", path)
