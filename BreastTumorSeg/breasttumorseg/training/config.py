"""The settings of a training run, checked in one place (:class:`TrainingConfig`), and read from JSON.

Units: ``working_spacing_mm`` (x, y, z) in mm; ``patch_size`` and ``window_size`` (z, y, x) in
voxels of the working grid; ``time_jitter_s`` in seconds; ``max_rotation_deg`` in degrees.
Phantom seeds below :data:`RESERVED_SEEDS` train and validate; the benchmarks use the seeds above.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields as dataclass_fields
from pathlib import Path
from typing import Optional

from ..core.errors import InputError
from ..exam.loading import read_json
from ..exam.maps import PHASE_SERIES
from ..segmentation.models import TASKS
from .augmentation import AugmentationSettings
from .datasets import DatasetSettings, parse_dataset_settings
from .losses import LOSSES


DEFAULT_INPUTS = ("first_post_contrast", "dce_in", "dce_out")


#: seeds at or above this are reserved for benchmarks (never used in training)
RESERVED_SEEDS = 100000


def _default_hyperparameters() -> dict:
    return {"base_channels": 16, "depth": 4, "convs_per_level": 2}


@dataclass
class TrainingConfig:
    """Everything a training run depends on (see the module docstring for the recipe).

    ``window_size`` is the sliding window of inference and validation, written into the card
    (default: ``patch_size``; the network is fully convolutional, and a larger window
    computes fewer overlapping voxels). Units: ``working_spacing_mm`` (x, y, z) in mm;
    ``patch_size`` and ``window_size`` (z, y, x) in voxels of
    the working grid; ``learning_rate`` per step; ``max_rotation_deg`` in degrees;
    ``time_jitter_s`` in seconds. ``batch_size`` is per process (times ``WORLD_SIZE``
    under torchrun). ``dataset``: :class:`~breasttumorseg.training.datasets.DatasetSettings` (or
    its JSON object); ``n_train_cases``, ``n_val_cases`` and the seed starts apply to
    phantoms only.
    """

    output: Path
    name: str = "hirsch-unet3d-phantom"
    version: str = "1.0.0"
    architecture: str = "hirsch_unet3d"
    hyperparameters: dict = field(default_factory=_default_hyperparameters)
    n_train_cases: int = 48
    n_val_cases: int = 8
    seed: int = 0
    steps: int = 2000
    batch_size: int = 2
    patch_size: tuple = (64, 96, 96)
    window_size: Optional[tuple] = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    foreground_fraction: float = 0.33
    hard_negative_fraction: float = 0.0
    loss: str = "dice_ce"
    task: str = "tumor"
    breast_mask: Optional[str] = None
    phase_dropout: float = 0.5
    time_jitter_s: float = 5.0
    validate_every: int = 250
    checkpoint_every: int = 250
    threads: Optional[int] = None
    device: str = "auto"
    workers: int = 1
    inputs: tuple = DEFAULT_INPUTS
    normalization: str = "pre_contrast_p95"
    working_spacing_mm: tuple = (1.5, 1.5, 1.5)
    overlap: float = 0.5
    threshold: float = 0.5
    relative_threshold: bool = False
    lesion_growth: Optional[dict] = None
    train_seed_start: int = 10000
    val_seed_start: int = 60000
    overwrite: bool = False
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    augment: bool = True
    rotation_probability: float = 0.2
    max_rotation_deg: float = 10.0
    scaling_probability: float = 0.2
    scaling_range: tuple = (0.9, 1.1)
    bias_field_probability: float = 0.3
    bias_field_strength: float = 0.15

    def __post_init__(self):
        self.output = Path(self.output)
        self.dataset = parse_dataset_settings(self.dataset)
        self.scaling_range = tuple(float(s) for s in self.scaling_range)
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.window_size = tuple(int(p) for p in (self.window_size or self.patch_size))
        self.working_spacing_mm = tuple(float(s) for s in self.working_spacing_mm)
        self.inputs = tuple(self.inputs)
        hyper = ({"max_phases": 8, "out_channels": 2} if self.takes_phase_series
                 else {"in_channels": len(self.inputs), "out_channels": 2})
        hyper.update(self.hyperparameters or {})
        self.hyperparameters = hyper

    @property
    def takes_phase_series(self) -> bool:

        return self.inputs == (PHASE_SERIES,)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the option for settings that cannot work."""
        def positive(option: str, value) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{option} must be a positive integer, got {value!r}")

        positive("--steps", self.steps)
        positive("--train-cases", self.n_train_cases)
        positive("--val-cases", self.n_val_cases)
        positive("--batch-size", self.batch_size)
        positive("--validate-every", self.validate_every)
        positive("checkpoint_every", self.checkpoint_every)
        positive("--workers", self.workers)
        if self.threads is not None:
            positive("--threads", self.threads)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise InputError(f"--patch must be three positive voxel counts (z y x), got {self.patch_size}")
        if len(self.window_size) != 3 or min(self.window_size) < 1:
            raise InputError(f"--window must be three positive voxel counts (z y x), got {self.window_size}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise InputError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if not 0.0 <= self.hard_negative_fraction <= 1.0 - self.foreground_fraction:
            raise InputError(f"hard_negative_fraction must be in [0, 1 - foreground_fraction], got "
                             f"{self.hard_negative_fraction}")
        if self.hard_negative_fraction and "enhancement_peak" not in self.inputs:
            raise InputError("hard_negative_fraction needs the kinetic input 'enhancement_peak' (it finds the "
                             "strongly enhancing voxels that are not tumor)")
        if not 0.0 <= self.phase_dropout <= 1.0:
            raise InputError(f"phase_dropout must be in [0, 1], got {self.phase_dropout}")
        if not (self.time_jitter_s >= 0 and math.isfinite(self.time_jitter_s)):
            raise InputError(f"time_jitter_s must be >= 0 seconds, got {self.time_jitter_s}")
        for name in ("rotation_probability", "scaling_probability", "bias_field_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.max_rotation_deg <= 45.0:
            raise InputError(f"max_rotation_deg must be in [0, 45] degrees, got {self.max_rotation_deg}")
        if len(self.scaling_range) != 2 or not 0.5 <= self.scaling_range[0] <= self.scaling_range[1] <= 2.0:
            raise InputError(f"scaling_range must be two factors 0.5 <= low <= high <= 2, "
                             f"got {list(self.scaling_range)}")
        if not 0.0 <= self.bias_field_strength <= 0.5:
            raise InputError(f"bias_field_strength must be in [0, 0.5], got {self.bias_field_strength}")

        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not self.dataset.is_phantom:
            return
        train = range(self.train_seed_start, self.train_seed_start + self.n_train_cases)
        val = range(self.val_seed_start, self.val_seed_start + self.n_val_cases)
        if min(train.start, val.start) < 0 or max(train.stop, val.stop) > RESERVED_SEEDS:
            raise InputError(f"phantom seeds must lie in 0..{RESERVED_SEEDS - 1} (benchmarks use the seeds above)")
        if train.start < val.stop and val.start < train.stop:
            raise InputError(f"training seeds {train.start}-{train.stop - 1} overlap validation seeds "
                             f"{val.start}-{val.stop - 1}")

    def seeds(self) -> tuple[list[int], list[int]]:
        """(training seeds, validation seeds)."""
        return (list(range(self.train_seed_start, self.train_seed_start + self.n_train_cases)),
                list(range(self.val_seed_start, self.val_seed_start + self.n_val_cases)))

    def augmentation(self) -> Optional[AugmentationSettings]:
        """What :func:`sample_batch` does to patches (None: nothing, ``augment=False``)."""
        if not self.augment:
            return None
        return AugmentationSettings(rotation_probability=self.rotation_probability,
                                    max_rotation_deg=self.max_rotation_deg,
                                    scaling_probability=self.scaling_probability, scaling_range=self.scaling_range,
                                    bias_field_probability=self.bias_field_probability,
                                    bias_field_strength=self.bias_field_strength)

    def fingerprint(self) -> dict:
        """The settings a checkpoint must agree with to be resumed."""
        keys = ("architecture", "hyperparameters", "inputs", "normalization", "working_spacing_mm", "patch_size",
                "n_train_cases", "n_val_cases", "train_seed_start", "val_seed_start", "seed", "batch_size", "loss",
                "task", "phase_dropout", "time_jitter_s", "augment", "rotation_probability", "max_rotation_deg",
                "scaling_probability", "scaling_range", "bias_field_probability", "bias_field_strength",
                "hard_negative_fraction")
        values = {k: getattr(self, k) for k in keys}
        values["dataset"] = self.dataset.fingerprint()
        if not self.dataset.is_phantom:
            for key in ("n_train_cases", "n_val_cases", "train_seed_start", "val_seed_start"):
                values.pop(key)
        return json.loads(json.dumps(values))


def read_config_file(path) -> dict:
    """The JSON object of a ``train --config FILE`` (one-line InputError for an unreadable or malformed file)."""

    path = Path(path)
    data = read_json(path, "training config")
    if not isinstance(data, dict):
        raise InputError("training config must be a JSON object of settings", path)
    return data


def config_from_settings(settings: dict, where="train") -> TrainingConfig:
    """A validated :class:`TrainingConfig` from a mapping of its field names (e.g. a config file).

    Unknown keys and values of the wrong type are refused with one line naming ``where``.
    """

    known = {f.name: f for f in dataclass_fields(TrainingConfig)}
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise InputError(f"unknown training setting(s) {', '.join(map(repr, unknown))} (known: "
                         f"{', '.join(sorted(known))})", where)
    sequences = {"patch_size": 3, "window_size": 3, "working_spacing_mm": 3, "scaling_range": 2}
    for name, value in settings.items():
        if value is None:
            continue
        if name in sequences and (not isinstance(value, (list, tuple)) or len(value) != sequences[name]
                                  or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise InputError(f"training setting {name!r} must be {sequences[name]} numbers, got {value!r}", where)
        if name == "inputs" and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
            raise InputError(f"training setting 'inputs' must be a list of input names, got {value!r}", where)
        if name in ("hyperparameters", "lesion_growth") and not isinstance(value, dict):
            raise InputError(f"training setting {name!r} must be an object, got {value!r}", where)
        if name in ("augment", "relative_threshold", "overwrite") and not isinstance(value, bool):
            raise InputError(f"training setting {name!r} must be true or false, got {value!r}", where)
        if name in ("name", "version", "architecture", "loss", "task", "normalization", "device") and (
                not isinstance(value, str)):
            raise InputError(f"training setting {name!r} must be text, got {value!r}", where)
        if name in ("steps", "n_train_cases", "n_val_cases", "batch_size", "seed", "validate_every",
                    "checkpoint_every", "workers", "train_seed_start", "val_seed_start") and (
                isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"training setting {name!r} must be an integer, got {value!r}", where)
        if name in ("learning_rate", "weight_decay", "foreground_fraction", "hard_negative_fraction", "overlap",
                    "threshold",
                    "phase_dropout", "time_jitter_s", "rotation_probability", "max_rotation_deg",
                    "scaling_probability", "bias_field_probability", "bias_field_strength") and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InputError(f"training setting {name!r} must be a number, got {value!r}", where)
    if "output" not in settings:
        raise InputError("training setting 'output' (the folder for weights and checkpoints) is missing", where)
    if "dataset" in settings:
        settings = dict(settings, dataset=parse_dataset_settings(settings["dataset"], where))
    try:
        config = TrainingConfig(**settings)
    except (TypeError, ValueError) as error:
        raise InputError(f"bad training settings ({' '.join(str(error).split())})", where) from None
    config.validate()
    return config
