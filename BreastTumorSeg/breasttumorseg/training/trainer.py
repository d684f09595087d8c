"""Training segmentation networks on synthetic DCE-MRI phantoms or on your own cases.

Three kinds of model come out of this loop (the networks: :mod:`breasttumorseg.segmentation.networks`):
Hirsch et al.'s 3D U-Net on derived maps (``task="tumor"``, inputs such as DCE-in and
DCE-out), the spatial-temporal transformer after Zhang et al. on the phase series
(input ``phases``, any 2 to 8 phases with their acquisition times), and the
whole-breast mask U-Net (``task="breast"``, pre-contrast at low resolution; its target
is the breast mask instead of the tumor). The recipe (our own):

* **Data.** By default phantom studies (:func:`breasttumorseg.phantom.generate_phantom`)
  from fixed seed ranges: training seeds ``train_seed_start ..`` and disjoint validation
  seeds ``val_seed_start ..`` (both below 100000; the accuracy benchmark uses 500000 and up).
  Each seed also draws its protocol: layout (2/3 axial bilateral, 1/3 sagittal
  unilateral), 2 to 8 phases, in-plane spacing 0.6-1.0 x and slice spacing 1-2 x the
  working spacing (0.9-1.5 mm and 1.5-3 mm at the default 1.5 mm), a clinical field of
  view. The setting ``dataset`` chooses real cases instead, in a folder of cases or the
  MAMA-MIA layout, with a deterministic validation split (:mod:`breasttumorseg.training.datasets`).
  Each study is turned into model inputs by :func:`breasttumorseg.segmentation.pipeline.prepare`,
  the very code that runs at inference (resampling to the working grid, DCE-in, DCE-out,
  normalisation); the target mask is resampled onto the working grid (nearest). Cases are
  cropped to the body and cached as float16 (in memory, or memory-mapped from the
  data set's ``cache`` folder).
* **Patches.** With probability ``foreground_fraction`` a patch is centred near a random
  target voxel (jitter up to a quarter patch), with probability ``hard_negative_fraction``
  (kinetic inputs) on a strongly enhancing voxel that is not tumor (heart, vessels, benign
  lesions, parenchymal enhancement), otherwise on a random voxel inside the body.
  Augmentation (:mod:`breasttumorseg.training.augmentation`, off with ``augment=False``):
  with probability ``rotation_probability`` a rotation by up to ``max_rotation_deg``
  degrees about each axis and with probability ``scaling_probability`` a zoom in
  ``scaling_range``, of image (linear) and label (nearest) together; flips along the
  patient's left-right and superior-inferior axes (never anterior-posterior: the chest
  wall stays behind the breast); with probability ``bias_field_probability`` a smooth
  multiplicative bias field of up to +/- ``bias_field_strength``; per channel a random
  intensity scale (x exp(N(0, 0.1))) and shift (N(0, 0.05), in units of the normalised
  signal). Phase-series models get one scale and shift per patch (the kinetics stay
  intact), **phase dropout** (with probability ``phase_dropout`` only the pre-contrast
  and a random ordered subset of the post-contrast phases, 2 phases at least, are kept;
  the others are masked, not zeroed) and **time jitter** (every post-contrast time moves
  by N(0, ``time_jitter_s``) seconds, order kept).
* **Loss.** Cross-entropy plus, by default (``loss="dice_ce"``), the soft Dice of the
  tumor over the whole batch. ``"generalized_dice_ce"`` uses Hirsch et al.'s generalized
  Dice instead (Sudre et al. 2017; class weights 1 / reference volume^2, a class absent
  from the batch gets the largest weight of the present ones). We default to the batch
  Dice because the phantom's many small tumors (a few dozen working-grid voxels) drowned
  in false positives under the generalized Dice (validation median Dice 0.003 after 1000
  steps, base 8): in a batch without tumor its weights make false positives almost free
  (a cost of FP / N), while the batch Dice charges them fully.
* **Optimiser.** AdamW (weight decay 1e-4), linear warm-up over the first 5 % of the
  steps, then cosine decay to 2 % of the learning rate. Seeds: ``torch.manual_seed`` and a
  ``numpy.random.Generator``, both from ``seed``; mixed precision (bfloat16) on CUDA.
* **Several processes** (torchrun, ``WORLD_SIZE`` > 1; :mod:`breasttumorseg.training.distributed`):
  DistributedDataParallel, each process samples ``batch_size`` patches from its own
  generator (the effective batch is ``batch_size`` x ``WORLD_SIZE``; the learning rate is
  not scaled); only rank 0 logs, validates and writes.
* **Validation** every ``validate_every`` steps: the sliding-window engine with the
  card's patch and overlap on each validation case's working grid, the card's threshold,
  Dice against the resampled mask; the weights with the best median Dice are kept.
  The final figures in the card come from the full inference path,
  :func:`breasttumorseg.segmentation.pipeline.segment_study`, on the validation studies at their
  original grids (which therefore also selected the checkpoint; the accuracy benchmark
  measures on phantoms never seen).
* **Checkpoints** ``checkpoint.safetensors`` (written atomically): model, best model and
  optimiser tensors, with the scalar state (step, history, every process's random
  generator states, optimiser settings) as JSON in the safetensors metadata. No pickle
  anywhere. A run resumes only with the settings of :meth:`TrainingConfig.fingerprint`,
  the same cases and the same number of processes, and then continues exactly; a
  checkpoint made before a setting existed continues with the value it was made with
  when the setting is left at its default (:func:`settings_for_checkpoint`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..core import atomic
from ..segmentation import model_cards
from .augmentation import AugmentationSettings, augment_intensity, draw_spatial_transform, transformed_patch
from .datasets import DatasetSettings, DatasetSplit, parse_dataset_settings
from ..core.errors import BreastTumorSegError, Cancelled, InputError, ModelError, OutputError
from ..core.geometry import Geometry
from ..segmentation.models import (
    ModelCard,
    card_from_json,
    read_registry,
    register_model,
    registry_folder,
    save_model,
    sha256_of,
)
from ..core.progress import CancelToken, ProgressCallback, report

TRAINED_ON = "synthetic DCE-MRI phantom (no real patient data)"
CHECKPOINT_FILE = "checkpoint.safetensors"
DEFAULT_INPUTS = ("first_post_contrast", "dce_in", "dce_out")
#: seeds at or above this are reserved for benchmarks (never used in training)
RESERVED_SEEDS = 100000


def _default_hyperparameters() -> dict:
    return {"base_channels": 16, "depth": 4, "convs_per_level": 2}


#: values of settings that older checkpoints do not record (they were made before the setting existed)
_LEGACY_FINGERPRINT = {"augment": True, "rotation_probability": 0.0, "max_rotation_deg": 10.0,
                       "scaling_probability": 0.0, "scaling_range": [0.9, 1.1], "bias_field_probability": 0.0,
                       "bias_field_strength": 0.15, "dataset": {"kind": "phantom"},
                       "hard_negative_fraction": 0.0}


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
        from ..exam.maps import PHASE_SERIES

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
        from ..segmentation.models import TASKS

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
    from ..exam.loading import read_json

    path = Path(path)
    data = read_json(path, "training config")
    if not isinstance(data, dict):
        raise InputError("training config must be a JSON object of settings", path)
    return data


def config_from_settings(settings: dict, where="train") -> TrainingConfig:
    """A validated :class:`TrainingConfig` from a mapping of its field names (e.g. a config file).

    Unknown keys and values of the wrong type are refused with one line naming ``where``.
    """
    from dataclasses import fields as dataclass_fields

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
        if name == "hyperparameters" and not isinstance(value, dict):
            raise InputError(f"training setting 'hyperparameters' must be an object, got {value!r}", where)
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


@dataclass
class PreparedCase:
    """One phantom or real case on the model's working grid (LPS), cropped to the body.

    The arrays may be read-only memory maps (a data set's ``cache``).
    """

    seed: int                   # the phantom's seed; -1 for a real case
    inputs: np.ndarray          # float16 [C, z, y, x], normalised channels (phase series: C = phases)
    body: np.ndarray            # bool [z, y, x]
    target: np.ndarray          # bool [z, y, x], what the model learns: the tumor or the breasts
    geometry: Geometry          # the cropped working grid
    flip_axes: tuple            # array axes along patient left-right and superior-inferior
    protocol: dict
    times_s: Optional[np.ndarray] = None   # phase series: seconds after the pre-contrast
    name: str = ""              # a real case's name ("" for phantoms)


@dataclass
class PatchBatch:
    """Training patches: images float32 [N, C, z, y, x], labels int64 [N, z, y, x];
    phase series also times [N, T] (s after the pre-contrast) and valid [N, T] (bool)."""

    images: np.ndarray
    labels: np.ndarray
    times_s: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None


# ----------------------------------------------------------------------------- cases
def case_protocol(seed: int, working_spacing_mm=(1.5, 1.5, 1.5)) -> dict:
    """Layout, phases, matrix and spacing of the phantom with ``seed`` (deterministic).

    In-plane spacing 0.6-1.0 x and slice spacing 1.0-2.0 x the working spacing (mm);
    fields of view: axial 300-360 mm in-plane, 150-190 mm head-foot; sagittal 170-210 mm
    in-plane, a 150-190 mm slab. Returns keyword arguments of ``generate_phantom``.
    """
    rng = np.random.default_rng([int(seed), 20220101])
    layout = "sagittal" if rng.random() < 1.0 / 3.0 else "axial"
    n_phases = int(rng.integers(2, 9))
    inplane = float(rng.uniform(0.6, 1.0)) * float(working_spacing_mm[0])
    through = float(rng.uniform(1.0, 2.0)) * float(working_spacing_mm[2])
    fov_in = float(rng.uniform(300, 360) if layout == "axial" else rng.uniform(170, 210))
    fov_through = float(rng.uniform(150, 190))
    n_in = max(16, int(round(fov_in / inplane)))
    n_through = max(8, int(round(fov_through / through)))
    return {"layout": layout, "n_phases": n_phases, "size": (n_in, n_in, n_through),
            "spacing": (round(inplane, 3), round(inplane, 3), round(through, 3))}


def _patient_axes(geometry: Geometry) -> tuple:
    """Array axes (0 = z, 1 = y, 2 = x) closest to the patient's L-R and S-I directions."""
    direction = np.abs(geometry.direction_matrix)  # rows: L, P, S; columns: i, j, k
    left_right = 2 - int(np.argmax(direction[0]))
    superior_inferior = 2 - int(np.argmax(direction[2]))
    return tuple(sorted({left_right, superior_inferior}))


def prepare_case(seed: int, card: ModelCard, randomize: bool = False) -> PreparedCase:
    """Generate the phantom ``seed`` and turn it into model inputs exactly as at inference.

    The target is the tumor mask, or the breast mask for a breast-mask model (``card.task``).
    ``randomize`` draws the case's appearance (:mod:`breasttumorseg.phantom.randomize`) from
    the seed before the inputs are derived.
    """
    from ..phantom import generate_phantom
    from ..phantom.randomize import randomize_appearance
    from ..segmentation.pipeline import acquisition_times_s, prepare, to_working_grid

    protocol = case_protocol(seed, card.working_spacing_mm)
    case = generate_phantom(seed, **protocol)
    if randomize:
        case = randomize_appearance(case, np.random.default_rng([int(seed), 5151]))
    inputs, body, working = prepare(case.study, card)
    reference = case.breast_mask if card.task == "breast" else case.tumor_mask
    target = to_working_grid(reference.astype(np.uint8), case.study.geometry, working, "nearest") > 0
    info = dict(protocol, target_voxels=int(target.sum()), kinetic=case.info.get("kinetic_type"),
                appearance=case.info.get("appearance"))
    times = acquisition_times_s(case.study) if card.takes_phase_series else None
    return crop_prepared_case(inputs, body, target, working, info, times, seed=seed)


def crop_prepared_case(inputs: np.ndarray, body: np.ndarray, target: np.ndarray, working: Geometry, info: dict,
                       times_s, *, seed: int, name: str = "") -> PreparedCase:
    """A :class:`PreparedCase` of model inputs on the working grid, cropped to the body and
    target (with a 4-voxel margin); inputs stored as float16."""
    keep = body | target
    if keep.any():
        lo = np.maximum(np.argwhere(keep).min(axis=0) - 4, 0)
        hi = np.minimum(np.argwhere(keep).max(axis=0) + 5, keep.shape)
    else:
        lo, hi = np.zeros(3, int), np.array(keep.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    origin = working.index_to_physical(np.array([lo[2], lo[1], lo[0]], dtype=float))
    cropped = Geometry((int(hi[2] - lo[2]), int(hi[1] - lo[1]), int(hi[0] - lo[0])), working.spacing,
                       tuple(origin), working.direction)
    info = dict(info, target_voxels=int(target.sum()))
    return PreparedCase(seed, np.ascontiguousarray(inputs[(slice(None),) + box], dtype=np.float16),
                        np.ascontiguousarray(body[box]), np.ascontiguousarray(target[box]), cropped,
                        _patient_axes(working), info, times_s, name)


def run_in_workers(function: Callable, arguments: list[tuple], *, workers: int = 1, progress=None, cancel=None,
                   label: str = "preparing") -> list:
    """``function(*args)`` for every tuple of ``arguments``, results in order; ``workers`` > 1
    uses that many processes (spawned: no fork of a process holding torch/ITK threads)."""
    out: dict[int, object] = {}
    if workers <= 1 or len(arguments) <= 1:
        for i, args in enumerate(arguments):
            report(progress, label, i / len(arguments), cancel)
            out[i] = function(*args)
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(arguments)), mp_context=context) as pool:
            pending = {pool.submit(function, *args): i for i, args in enumerate(arguments)}
            waiting = set(pending)
            try:
                while waiting:
                    done, waiting = wait(waiting, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        out[pending[future]] = future.result()
                    report(progress, label, len(out) / len(arguments), cancel)
            except BaseException:
                for future in waiting:
                    future.cancel()
                raise
    report(progress, label, 1.0, cancel)
    return [out[i] for i in range(len(arguments))]


def prepare_cases(seeds: list[int], card: ModelCard, *, workers: int = 1, progress=None, cancel=None,
                  label: str = "generating phantoms", randomize: bool = False,
                  cache: Path | None = None) -> list[PreparedCase]:
    """:func:`prepare_case` for every seed, in seed order; ``workers`` > 1 uses processes.

    With a ``cache`` folder each prepared case is stored there (float16 inputs, read back as
    memory maps) and a resumed or repeated run prepares only the cases still missing.
    """
    if cache is None:
        return run_in_workers(prepare_case, [(seed, card, randomize) for seed in seeds], workers=workers,
                              progress=progress, cancel=cancel, label=label)
    from .datasets import load_cached_case, prepare_phantom_into_cache

    folders = run_in_workers(prepare_phantom_into_cache, [(seed, card, randomize, Path(cache)) for seed in seeds],
                             workers=workers, progress=progress, cancel=cancel, label=label)
    return [load_cached_case(folder) for folder in folders]


# ----------------------------------------------------------------------------- patches
#: peak relative enhancement (1.0 = 100 %) from which a voxel outside the tumor is a hard negative
HARD_NEGATIVE_ENHANCEMENT = 1.0


def sample_batch(cases: list[PreparedCase], rng: np.random.Generator, batch_size: int, patch_size,
                 foreground_fraction: float, augment: bool = True, *, phase_series: bool = False,
                 phase_dropout: float = 0.0, time_jitter_s: float = 0.0,
                 augmentation: Optional[AugmentationSettings] = None, hard_negative_fraction: float = 0.0,
                 hard_negative_channel: Optional[int] = None) -> PatchBatch:
    """A batch of patches (see :class:`PatchBatch`); ``phase_series`` pads phases to the batch's most.

    A patch is centred near the target with probability ``foreground_fraction``, on a hard
    negative with probability ``hard_negative_fraction`` (a voxel outside the target whose
    input channel ``hard_negative_channel``, the peak relative enhancement, is at least
    :data:`HARD_NEGATIVE_ENHANCEMENT`: heart, vessels, benign lesions, marked parenchymal
    enhancement), else on a random voxel of the body.

    With ``augment``: ``augmentation`` (default: flips and intensity scale/shift only; the
    training loop passes :meth:`TrainingConfig.augmentation`), and for phase series phase
    dropout and time jitter. Deterministic given ``rng``.
    """
    patch = np.array(patch_size, dtype=int)
    settings = (augmentation or AugmentationSettings()) if augment else None
    images, labels, times = [], [], []
    for _ in range(batch_size):
        case = cases[int(rng.integers(len(cases)))]
        image, label = _patch(case, rng, patch, foreground_fraction, settings, hard_negative_fraction,
                              hard_negative_channel)
        case_times = case.times_s
        if phase_series and augment:
            image, case_times = _drop_and_jitter_phases(image, case_times, rng, phase_dropout, time_jitter_s)
        if augment:
            image, label = augment_intensity(image, label, rng, settings, case.flip_axes, one_scale=phase_series)
        images.append(np.ascontiguousarray(image))
        labels.append(np.ascontiguousarray(label))
        times.append(case_times)
    if not phase_series:
        return PatchBatch(np.stack(images), np.stack(labels))
    most = max(len(image) for image in images)
    padded = np.zeros((batch_size, most) + tuple(patch), dtype=np.float32)
    time_array = np.zeros((batch_size, most), dtype=np.float32)
    valid = np.zeros((batch_size, most), dtype=bool)
    for n, (image, case_times) in enumerate(zip(images, times)):
        padded[n, :len(image)] = image
        time_array[n, :len(image)] = case_times
        valid[n, :len(image)] = True
    return PatchBatch(padded, np.stack(labels), time_array, valid)


def _patch(case: PreparedCase, rng: np.random.Generator, patch: np.ndarray, foreground_fraction: float,
           augmentation: Optional[AugmentationSettings] = None, hard_negative_fraction: float = 0.0,
           hard_negative_channel: Optional[int] = None):
    """One patch of inputs (float32 [C, ...]) and labels (int64), centred near the target, on a hard
    negative or in the body (see :func:`sample_batch`); rotated and scaled about its centre when
    ``augmentation`` draws so."""
    shape = np.array(case.body.shape)
    draw = rng.random()
    near_target = draw < foreground_fraction and case.target.any()
    source = case.target if near_target else case.body
    if not near_target and hard_negative_channel is not None and draw >= foreground_fraction and (
            draw < foreground_fraction + hard_negative_fraction):
        hard = (case.inputs[hard_negative_channel] >= HARD_NEGATIVE_ENHANCEMENT) & ~case.target
        source = hard if hard.any() else source
    if not source.any():
        source = np.ones(case.body.shape, dtype=bool)
    flat = np.flatnonzero(source.ravel())
    centre = np.array(np.unravel_index(int(flat[rng.integers(len(flat))]), source.shape))
    if near_target:
        centre = centre + rng.integers(-(patch // 4), patch // 4 + 1)
    start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
    if augmentation is not None and augmentation.spatial:
        matrix = draw_spatial_transform(rng, augmentation, tuple(reversed(case.geometry.spacing)))
        if matrix is not None:
            return transformed_patch(case.inputs, case.target, start, patch, matrix)
    box = tuple(slice(int(a), int(a + p)) for a, p in zip(start, patch))
    image = case.inputs[(slice(None),) + box].astype(np.float32)
    label = case.target[box].astype(np.int64)
    pad = [(0, int(p - s)) for p, s in zip(patch, label.shape)]
    if any(after for _, after in pad):
        image = np.pad(image, [(0, 0)] + pad)
        label = np.pad(label, pad)
    return image, label


def _drop_and_jitter_phases(image: np.ndarray, times_s: np.ndarray, rng: np.random.Generator,
                            phase_dropout: float, time_jitter_s: float):
    """Phase dropout (pre-contrast + an ordered random subset of >= 1 post-contrast phase) and time jitter."""
    count = image.shape[0]
    keep = np.arange(count)
    if count > 2 and rng.random() < phase_dropout:
        n_post = int(rng.integers(1, count))          # 1 .. count - 1 post-contrast phases
        keep = np.concatenate([[0], np.sort(rng.choice(np.arange(1, count), size=n_post, replace=False))])
    times = np.asarray(times_s, dtype=float)[keep].copy()
    if time_jitter_s > 0 and len(times) > 1:
        times[1:] = np.maximum.accumulate(np.maximum(times[1:] + rng.normal(0.0, time_jitter_s, len(times) - 1),
                                                     1.0))
    return image[keep], times.astype(np.float32)


# ----------------------------------------------------------------------------- loss
def generalized_dice_loss(logits, target, eps: float = 1e-5):
    """Generalized Dice loss of softmax(logits) [N, K, ...] against integer labels [N, ...].

    Class weights 1 / (reference volume)^2 over the whole batch; a class absent from the
    batch gets the largest weight of the present classes (no division by zero).
    """
    import torch
    import torch.nn.functional as F

    probabilities = torch.softmax(logits.float(), dim=1)
    classes = logits.shape[1]
    onehot = F.one_hot(target, classes).movedim(-1, 1).float()
    dims = [0] + list(range(2, logits.ndim))
    reference = onehot.sum(dims)
    weights = 1.0 / reference.clamp(min=1.0) ** 2
    present = reference > 0
    if present.any():
        weights = torch.where(present, weights, weights[present].max())
    intersection = (probabilities * onehot).sum(dims)
    total = (probabilities + onehot).sum(dims)
    return 1.0 - (2.0 * (weights * intersection).sum() + eps) / ((weights * total).sum() + eps)


def tumor_dice_loss(logits, target, eps: float = 1.0):
    """Soft Dice loss of the tumor class (channel 1) over the whole batch ("batch Dice").

    False positives cost as much as missed tumor voxels of the same count, also in a
    batch without tumor (where the generalized Dice charges only FP / N); ``eps``
    (voxels) keeps a tumor-free batch finite.
    """
    import torch

    probability = torch.softmax(logits.float(), dim=1)[:, 1]
    reference = (target == 1).float()
    intersection = (probability * reference).sum()
    return 1.0 - (2.0 * intersection + eps) / (probability.sum() + reference.sum() + eps)


LOSSES = ("dice_ce", "generalized_dice_ce")


def segmentation_loss(logits, target, kind: str = "dice_ce"):
    """Cross-entropy + a Dice loss (both from the logits): ``dice_ce`` the tumor's batch
    Dice (the default), ``generalized_dice_ce`` the generalized Dice of Hirsch et al."""
    import torch.nn.functional as F

    dice = tumor_dice_loss(logits, target) if kind == "dice_ce" else generalized_dice_loss(logits, target)
    return dice + F.cross_entropy(logits.float(), target)


def learning_rate_at(step: int, config: TrainingConfig) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to 2 % of the peak."""
    warmup = max(1, int(0.05 * config.steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    floor = 0.02
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- validation
def validate_cases(network, cases: list[PreparedCase], card: ModelCard, device, batch_size: int = 2,
                   cancel: CancelToken | None = None) -> list[float]:
    """Dice per case: sliding window + card threshold on each case's working grid."""
    import torch

    from ..segmentation.inference import SlidingWindowConfig, sliding_window_probability
    from ..evaluation.metrics import dice
    from ..segmentation.pipeline import threshold_settings
    from ..segmentation.postprocess import segment_probability

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


def evaluate_on_studies(model, seeds: list[int], *, device="cpu", progress=None, cancel=None,
                        n_phases: int | None = None) -> dict:
    """Held-out figures (:func:`held_out_figures`) on regenerated phantom studies.

    ``n_phases`` overrides the number of phases each seed draws.
    """
    card = model.card

    def loader(seed: int):
        def load():
            from ..phantom import generate_phantom

            protocol = case_protocol(seed, card.working_spacing_mm)
            if n_phases is not None:
                protocol["n_phases"] = int(n_phases)
            case = generate_phantom(seed, **protocol)
            truth = case.breast_mask if card.task == "breast" else case.tumor_mask
            return {"seed": seed, "layout": protocol["layout"]}, case.study, truth > 0
        return load

    return held_out_figures(model, [loader(seed) for seed in seeds], device=device, progress=progress, cancel=cancel)


def held_out_figures(model, loaders, *, device="cpu", progress=None, cancel=None) -> dict:
    """Dice per case through the full inference path, and its median, mean and IQR.

    ``loaders``: callables returning ``(row fields, study, reference mask on the study's
    grid)``, called one at a time. A tumor model runs :func:`pipeline.segment_study` (its
    breast prior included) and is also scored with two alternative thresholds (absolute
    0.5, relative 0.5 with seeds) for choosing the default; a breast-mask model is scored
    on its probability >= 0.5, large components kept.
    """
    from ..segmentation.breast import largest_components
    from ..evaluation.metrics import dice
    from ..segmentation.pipeline import predict_probability, segment_study
    from ..segmentation.postprocess import ThresholdSettings, segment_probability

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


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, network, optimizer, best_state: dict | None, scalars: dict,
                    torch_rng_states: list | None = None) -> None:
    """Write model, best model and optimiser tensors + JSON scalars as one safetensors file.

    ``torch_rng_states``: every process's torch CPU generator state (rank order) when
    training on several processes; else this process's state is stored.
    """
    import torch
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


# ----------------------------------------------------------------------------- the run
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
        breast_mask=config.breast_mask, folder=config.output)


def train_on_phantom(config: TrainingConfig, *, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None, log: Callable = print, resume: bool = False) -> TrainingResult:
    """Train, validate and write ``<name>.safetensors``, ``<name>.json`` and ``<name>.md`` into ``config.output``.

    Trains on the data set of ``config.dataset`` (phantoms by default; the name is kept
    from when phantoms were the only data). With ``resume`` the run continues from
    ``config.output/checkpoint.safetensors`` (whose settings must match ``config``;
    ``steps`` may be raised). Without it an output folder that already holds a run is
    refused unless ``config.overwrite``. Bad input (settings, data set) is refused before
    anything is written. On cancellation a checkpoint is written and :class:`Cancelled` is
    raised. Under torchrun (``WORLD_SIZE`` > 1) every process calls this; see
    :mod:`breasttumorseg.training.distributed`. Every process returns the same result.
    """
    from .distributed import distributed_session

    config.validate()
    with distributed_session(config.device) as context:
        return _train(config, context, progress, cancel, log, resume)


#: the same function under a name that does not suggest phantoms only
train_model = train_on_phantom


def _train(config: TrainingConfig, context, progress, cancel, log, resume) -> TrainingResult:
    import torch

    from .datasets import open_dataset, prepare_real_cases
    from .distributed import write_rank_digest
    from ..segmentation.networks import build_network
    from ..core.progress import scaled

    if not context.is_main:
        log, progress = (lambda *a, **k: None), None
    output = config.output
    checkpoint_path = output / CHECKPOINT_FILE
    _check_output(config, resume)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = context.device

    torch.manual_seed(config.seed)
    network = build_network(config.architecture, **config.hyperparameters)
    hyperparameters = network.hyperparameters() if hasattr(network, "hyperparameters") else config.hyperparameters
    divisor = int(getattr(network, "size_divisor", 1))
    for option, size in (("--patch", config.patch_size), ("--window", config.window_size)):
        if any(p % divisor for p in size):
            raise InputError(f"{option} {' '.join(map(str, size))}: every size must be a multiple of "
                             f"{divisor} for this network (depth {hyperparameters.get('depth')})")
    card = provisional_card(config, hyperparameters)
    split = open_dataset(config.dataset, card, seeds=config.seeds())
    network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # one process: the generator of the single-process recipe; several: one stream per rank
    rng = np.random.default_rng([config.seed, 1] if not context.enabled else [config.seed, 1, context.rank])

    step, history, best_state, best_dice, best_step = 0, [], None, -1.0, 0
    if resume:
        best_state, scalars = load_checkpoint(checkpoint_path, network, optimizer, rank=context.rank)
        config = settings_for_checkpoint(config, scalars, log)
        _check_resumable(config, scalars, split, context, checkpoint_path)
        step, history = int(scalars["step"]), list(scalars["history"])
        best_dice, best_step = float(scalars["best_dice"]), int(scalars["best_step"])
        states = scalars.get("numpy_rng_ranks") or [scalars["numpy_rng"]]
        rng.bit_generator.state = states[context.rank]
        network.to(device)
        log(f"resuming from step {step} of {config.steps} (best validation median Dice {best_dice:.3f} "
            f"at step {best_step})")

    started = time.perf_counter()
    preparing = scaled(progress, 0.0, 0.15, "preparing the data")
    if split.is_phantom:
        train_seeds, val_seeds = split.train, split.val
        log(f"preparing {len(train_seeds)} training phantoms (seeds {train_seeds[0]}-{train_seeds[-1]}) and "
            f"{len(val_seeds)} validation phantoms (seeds {val_seeds[0]}-{val_seeds[-1]}) on a "
            f"{'x'.join(f'{s:g}' for s in config.working_spacing_mm)} mm grid")
        cases = prepare_cases(train_seeds + val_seeds, card, workers=config.workers, progress=preparing,
                              cancel=cancel, randomize=config.dataset.domain_randomization,
                              cache=config.dataset.cache)
    else:
        log(f"preparing the {split.description} on a {'x'.join(f'{s:g}' for s in config.working_spacing_mm)} "
            f"mm grid{'' if config.dataset.cache is None else f' (cache {config.dataset.cache})'}")
        cases = prepare_real_cases(split.train + split.val, card, workers=config.workers, cache=config.dataset.cache,
                                   shard=(context.rank, context.world_size), barrier=context.barrier,
                                   progress=preparing, cancel=cancel)
    train_cases, val_cases = cases[:len(split.train)], cases[len(split.train):]
    megabytes = sum(c.inputs.nbytes + c.body.nbytes + c.target.nbytes for c in cases
                    if not isinstance(c.inputs, np.memmap)) / 2 ** 20
    log(f"data ready in {time.perf_counter() - started:.0f} s ({megabytes:.0f} MB in memory)")
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
    model = context.wrap(network)
    if context.enabled:
        log(f"training on {context.world_size} processes ({context.backend}): effective batch "
            f"{config.batch_size} x {context.world_size} = {config.batch_size * context.world_size} patches per step")

    def checkpoint() -> None:
        states = context.gather((rng.bit_generator.state, torch.get_rng_state()))
        if not context.is_main:
            return
        scalars = {"step": step, "history": history, "best_dice": best_dice, "best_step": best_step,
                   "numpy_rng": states[0][0], "fingerprint": config.fingerprint(), "world_size": context.world_size,
                   "dataset_cases": split.case_digest}
        if context.enabled:
            scalars["numpy_rng_ranks"] = [state for state, _ in states]
        save_checkpoint(checkpoint_path, network, optimizer, best_state, scalars,
                        torch_rng_states=[state for _, state in states] if context.enabled else None)

    use_amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    augmentation = config.augmentation()
    hard_negative_channel = (list(config.inputs).index("enhancement_peak") if config.hard_negative_fraction
                             else None)
    train_progress = scaled(progress, 0.15, 0.95, "training")
    log_every = max(1, min(50, config.steps // 20))
    losses: list[float] = []
    network.train()
    started = time.perf_counter()
    try:
        while step < config.steps:
            report(train_progress, "training", step / config.steps, cancel)
            lr = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = sample_batch(train_cases, rng, config.batch_size, config.patch_size, config.foreground_fraction,
                                 augment=config.augment, phase_series=config.takes_phase_series,
                                 phase_dropout=config.phase_dropout, time_jitter_s=config.time_jitter_s,
                                 augmentation=augmentation, hard_negative_fraction=config.hard_negative_fraction,
                                 hard_negative_channel=hard_negative_channel)
            images = torch.from_numpy(batch.images).to(device)
            labels = torch.from_numpy(batch.labels).to(device)
            extra = (() if batch.times_s is None else
                     (torch.from_numpy(batch.times_s).to(device), torch.from_numpy(batch.valid).to(device)))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(images, *extra)
            loss = segmentation_loss(logits, labels, config.loss)
            if not context.all_true(bool(torch.isfinite(loss))):
                raise BreastTumorSegError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                                          f"try a lower --learning-rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.item()))
            if step % log_every == 0 or step == config.steps:
                mean_loss = context.mean(float(np.mean(losses)))
                history.append({"step": step, "loss": round(mean_loss, 5), "lr": lr,
                                "elapsed_s": round(time.perf_counter() - started, 1)})
                log(f"step {step}/{config.steps}: loss {mean_loss:.4f}, lr {lr:.2e}")
                losses = []
            if step % config.validate_every == 0 or step == config.steps:
                if context.is_main:
                    scores = validate_cases(network, val_cases, card, device, cancel=cancel)
                    median = float(np.median(scores))
                    history.append({"step": step, "val_dice_median": round(median, 4),
                                    "val_dice_mean": round(float(np.mean(scores)), 4),
                                    "val_dice": [round(s, 4) for s in scores]})
                    if median > best_dice:
                        best_dice, best_step = median, step
                        best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                    log(f"step {step}: validation median Dice {median:.3f} (best {best_dice:.3f} at step "
                        f"{best_step})")
                    network.train()
                context.barrier()
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
    except Cancelled:
        if step > 0:
            checkpoint()
            log(f"cancelled at step {step}; resume with --resume")
        raise

    context.sync_buffers(network)
    write_rank_digest(context, network, step)
    result = None
    if context.is_main:
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        result = _finish(config, card, network, history, best_step, split, context, device,
                         scaled(progress, 0.95, 1.0, "final evaluation"), cancel, log, checkpoint_path)
    context.barrier()
    return result if result is not None else _result_from_outputs(config, checkpoint_path)


def settings_for_checkpoint(config: TrainingConfig, scalars: dict, log: Callable = print) -> TrainingConfig:
    """``config`` with the settings a checkpoint predates (it records no value for them) at the
    values it was made with, where ``config`` leaves them at their defaults: such a run
    continues as it began (exactly), e.g. without the rotations, scaling and bias field that
    came later. Settings changed from their defaults are left for :func:`_check_resumable`."""
    from dataclasses import fields as dataclass_fields, replace

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


def _check_resumable(config: TrainingConfig, scalars: dict, split: DatasetSplit, context, path: Path) -> None:
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


def _result_from_outputs(config: TrainingConfig, checkpoint_path: Path) -> TrainingResult:
    """What rank 0 wrote, read back (the result of the other processes)."""
    from ..segmentation.models import load_model

    card = load_model(config.output / f"{config.name}.safetensors").card
    metrics = card.metrics
    return TrainingResult(model_card=card, history=[], val_dice_median=float(metrics.get("median_dice", float("nan"))),
                          val_dice_mean=float(metrics.get("mean_dice", float("nan"))),
                          best_step=int(metrics.get("best_step", 0)), weights_path=card.weights_path,
                          markdown_path=config.output / f"{config.name}.md", checkpoint_path=checkpoint_path)


def _check_output(config: TrainingConfig, resume: bool) -> None:
    """Refuse an output that cannot take this run; creates nothing (the folder is made
    once the data are ready, so that bad input leaves nothing behind)."""
    output = config.output
    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", output)
    checkpoint_path = output / CHECKPOINT_FILE
    if resume:
        if not checkpoint_path.is_file():
            raise OutputError(f"no {CHECKPOINT_FILE} to resume from", output)
        return
    existing = [p.name for p in (checkpoint_path, output / f"{config.name}.safetensors") if p.exists()]
    if existing and not config.overwrite:
        raise OutputError(f"already holds a training run ({', '.join(existing)}); use --resume to continue it "
                          f"or choose another folder", output)
    parent = output
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot be created ({parent} is not writable)", output)


def _finish(config, card, network, history, best_step, split: DatasetSplit, context, device, progress, cancel, log,
            checkpoint_path) -> TrainingResult:
    from .datasets import card_description, card_markdown, evaluate_on_cases, trained_on
    from ..segmentation.models import LoadedModel, load_model

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
    from dataclasses import replace

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


__all__ = ["TrainingConfig", "read_config_file", "config_from_settings", "TrainingResult", "PreparedCase",
           "case_protocol", "prepare_case", "prepare_cases", "crop_prepared_case", "run_in_workers", "train_model",
           "PatchBatch", "sample_batch", "generalized_dice_loss", "tumor_dice_loss", "segmentation_loss", "LOSSES",
           "learning_rate_at", "validate_cases", "evaluate_on_studies", "held_out_figures", "save_checkpoint",
           "load_checkpoint", "provisional_card", "train_on_phantom", "settings_for_checkpoint",
           "training_recipe", "install_into_registry", "TRAINED_ON", "CHECKPOINT_FILE"]
