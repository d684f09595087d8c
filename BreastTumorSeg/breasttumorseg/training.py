"""Training segmentation networks on synthetic DCE-MRI phantoms.

Three kinds of model come out of this loop (the networks: :mod:`breasttumorseg.networks`):
Hirsch et al.'s 3D U-Net on derived maps (``task="tumor"``, inputs such as DCE-in and
DCE-out), the spatial-temporal transformer after Zhang et al. on the phase series
(input ``phases``, any 2 to 8 phases with their acquisition times), and the
whole-breast mask U-Net (``task="breast"``, pre-contrast at low resolution; its target
is the phantom's breast mask instead of the tumor). The recipe (our own):

* **Data.** Phantom studies (:func:`breasttumorseg.phantom.generate_phantom`) from fixed
  seed ranges: training seeds ``train_seed_start ..`` and disjoint validation seeds
  ``val_seed_start ..`` (both below 100000; the accuracy benchmark uses 500000 and up).
  Each seed also draws its protocol: layout (2/3 axial bilateral, 1/3 sagittal
  unilateral), 2 to 8 phases, in-plane spacing 0.6-1.0 x and slice spacing 1-2 x the
  working spacing (0.9-1.5 mm and 1.5-3 mm at the default 1.5 mm), a clinical field of
  view. Each study is turned into model inputs by :func:`breasttumorseg.pipeline.prepare`,
  the very code that runs at inference (resampling to the working grid, DCE-in, DCE-out,
  normalisation); the tumor mask is resampled onto the working grid (nearest). Cases are
  cropped to the body and cached in memory as float16.
* **Patches.** With probability ``foreground_fraction`` a patch is centred near a random
  target voxel (jitter up to a quarter patch), otherwise on a random voxel inside the
  body. Augmentation: flips along the patient's left-right and superior-inferior axes
  (never anterior-posterior: the chest wall stays behind the breast), and per channel a
  random intensity scale (x exp(N(0, 0.1))) and shift (N(0, 0.05), in units of the
  normalised signal). Phase-series models get one scale and shift per patch (the
  kinetics stay intact), **phase dropout** (with probability ``phase_dropout`` only
  the pre-contrast and a random ordered subset of the post-contrast phases, 2 phases
  at least, are kept; the others are masked, not zeroed) and **time jitter** (every
  post-contrast time moves by N(0, ``time_jitter_s``) seconds, order kept).
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
* **Validation** every ``validate_every`` steps: the sliding-window engine with the
  card's patch and overlap on each validation case's working grid, the card's threshold,
  Dice against the resampled mask; the weights with the best median Dice are kept.
  The final figures in the card come from the full inference path,
  :func:`breasttumorseg.pipeline.segment_study`, on the validation studies at their
  original grids (which therefore also selected the checkpoint; the accuracy benchmark
  measures on phantoms never seen).
* **Checkpoints** ``checkpoint.safetensors`` (written atomically): model, best model and
  optimiser tensors, with the scalar state (step, history, random generator states,
  optimiser settings) as JSON in the safetensors metadata. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import atomic, model_cards
from .errors import BreastTumorSegError, Cancelled, InputError, ModelError, OutputError
from .geometry import Geometry
from .models import ModelCard, card_from_json, read_registry, register_model, registry_folder, save_model, sha256_of
from .progress import CancelToken, ProgressCallback, report

TRAINED_ON = "synthetic DCE-MRI phantom (no real patient data)"
CHECKPOINT_FILE = "checkpoint.safetensors"
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
    the working grid; ``learning_rate`` per step.
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

    def __post_init__(self):
        self.output = Path(self.output)
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
        from .maps import PHASE_SERIES

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
        if not 0.0 <= self.phase_dropout <= 1.0:
            raise InputError(f"phase_dropout must be in [0, 1], got {self.phase_dropout}")
        if not (self.time_jitter_s >= 0 and math.isfinite(self.time_jitter_s)):
            raise InputError(f"time_jitter_s must be >= 0 seconds, got {self.time_jitter_s}")
        from .models import TASKS

        if self.task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise InputError(f"--learning-rate must be positive, got {self.learning_rate}")
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

    def fingerprint(self) -> dict:
        """The settings a checkpoint must agree with to be resumed."""
        keys = ("architecture", "hyperparameters", "inputs", "normalization", "working_spacing_mm", "patch_size",
                "n_train_cases", "n_val_cases", "train_seed_start", "val_seed_start", "seed", "batch_size", "loss",
                "task", "phase_dropout", "time_jitter_s")
        return json.loads(json.dumps({k: getattr(self, k) for k in keys}))


def read_config_file(path) -> dict:
    """The JSON object of a ``train --config FILE`` (one-line InputError for an unreadable or malformed file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("training config not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"training config cannot be read ({error})", path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"training config is not valid JSON (line {error.lineno}, column {error.colno}: "
                         f"{error.msg})", path) from None
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
    sequences = {"patch_size": 3, "window_size": 3, "working_spacing_mm": 3}
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
        if name in ("steps", "n_train_cases", "n_val_cases", "batch_size", "seed", "validate_every",
                    "checkpoint_every", "workers", "train_seed_start", "val_seed_start") and (
                isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"training setting {name!r} must be an integer, got {value!r}", where)
        if name in ("learning_rate", "weight_decay", "foreground_fraction", "overlap", "threshold",
                    "phase_dropout", "time_jitter_s") and (isinstance(value, bool)
                                                           or not isinstance(value, (int, float))):
            raise InputError(f"training setting {name!r} must be a number, got {value!r}", where)
    if "output" not in settings:
        raise InputError("training setting 'output' (the folder for weights and checkpoints) is missing", where)
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
    """One phantom on the model's working grid, cropped to the body."""

    seed: int
    inputs: np.ndarray          # float16 [C, z, y, x], normalised channels (phase series: C = phases)
    body: np.ndarray            # bool [z, y, x]
    target: np.ndarray          # bool [z, y, x], what the model learns: the tumor or the breasts
    geometry: Geometry          # the cropped working grid
    flip_axes: tuple            # array axes along patient left-right and superior-inferior
    protocol: dict
    times_s: Optional[np.ndarray] = None   # phase series: seconds after the pre-contrast


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


def prepare_case(seed: int, card: ModelCard) -> PreparedCase:
    """Generate the phantom ``seed`` and turn it into model inputs exactly as at inference.

    The target is the tumor mask, or the breast mask for a breast-mask model (``card.task``).
    """
    from .phantom import generate_phantom
    from .pipeline import acquisition_times_s, prepare, to_working_grid

    protocol = case_protocol(seed, card.working_spacing_mm)
    case = generate_phantom(seed, **protocol)
    inputs, body, working = prepare(case.study, card)
    reference = case.breast_mask if card.task == "breast" else case.tumor_mask
    target = to_working_grid(reference.astype(np.uint8), case.study.geometry, working, "nearest") > 0
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
    info = dict(protocol, target_voxels=int(target.sum()), kinetic=case.info.get("kinetic_type"))
    times = acquisition_times_s(case.study) if card.takes_phase_series else None
    return PreparedCase(seed, np.ascontiguousarray(inputs[(slice(None),) + box], dtype=np.float16),
                        np.ascontiguousarray(body[box]), np.ascontiguousarray(target[box]), cropped,
                        _patient_axes(working), info, times)


def prepare_cases(seeds: list[int], card: ModelCard, *, workers: int = 1, progress=None, cancel=None,
                  label: str = "generating phantoms") -> list[PreparedCase]:
    """:func:`prepare_case` for every seed, in seed order; ``workers`` > 1 uses processes."""
    out: dict[int, PreparedCase] = {}
    if workers <= 1 or len(seeds) <= 1:
        for i, seed in enumerate(seeds):
            report(progress, label, i / len(seeds), cancel)
            out[seed] = prepare_case(seed, card)
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        context = multiprocessing.get_context("spawn")  # no fork of a process holding torch/ITK threads
        with ProcessPoolExecutor(max_workers=min(workers, len(seeds)), mp_context=context) as pool:
            pending = {pool.submit(prepare_case, seed, card) for seed in seeds}
            try:
                while pending:
                    done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        case = future.result()
                        out[case.seed] = case
                    report(progress, label, len(out) / len(seeds), cancel)
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
    report(progress, label, 1.0, cancel)
    return [out[s] for s in seeds]


# ----------------------------------------------------------------------------- patches
def sample_batch(cases: list[PreparedCase], rng: np.random.Generator, batch_size: int, patch_size,
                 foreground_fraction: float, augment: bool = True, *, phase_series: bool = False,
                 phase_dropout: float = 0.0, time_jitter_s: float = 0.0) -> PatchBatch:
    """A batch of patches (see :class:`PatchBatch`); ``phase_series`` pads phases to the batch's most."""
    patch = np.array(patch_size, dtype=int)
    images, labels, times = [], [], []
    for _ in range(batch_size):
        case = cases[int(rng.integers(len(cases)))]
        image, label = _patch(case, rng, patch, foreground_fraction)
        case_times = case.times_s
        if phase_series and augment:
            image, case_times = _drop_and_jitter_phases(image, case_times, rng, phase_dropout, time_jitter_s)
        if augment:
            for axis in case.flip_axes:
                if rng.random() < 0.5:
                    image = np.flip(image, axis=axis + 1)
                    label = np.flip(label, axis=axis)
            channels = 1 if phase_series else image.shape[0]
            scale = np.exp(rng.normal(0.0, 0.1, size=(channels, 1, 1, 1))).astype(np.float32)
            shift = rng.normal(0.0, 0.05, size=(channels, 1, 1, 1)).astype(np.float32)
            image = image * scale + shift
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


def _patch(case: PreparedCase, rng: np.random.Generator, patch: np.ndarray, foreground_fraction: float):
    """One patch of inputs (float32 [C, ...]) and labels (int64), centred near the target or in the body."""
    shape = np.array(case.body.shape)
    near_target = rng.random() < foreground_fraction and case.target.any()
    source = case.target if near_target else case.body
    if not source.any():
        source = np.ones(case.body.shape, dtype=bool)
    flat = np.flatnonzero(source.ravel())
    centre = np.array(np.unravel_index(int(flat[rng.integers(len(flat))]), source.shape))
    if near_target:
        centre = centre + rng.integers(-(patch // 4), patch // 4 + 1)
    start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
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

    from .inference import SlidingWindowConfig, sliding_window_probability
    from .metrics import dice
    from .pipeline import threshold_settings
    from .postprocess import segment_probability

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
    """Held-out figures through :func:`pipeline.segment_study` on regenerated phantom studies.

    Dice on each study's original grid with the card's threshold, and with two
    alternatives (absolute 0.5, relative 0.5 with seeds) for choosing the default. A
    breast-mask model is scored on the phantom's breast mask (probability >= 0.5, its
    large components). ``n_phases`` overrides the number of phases each seed draws.
    """
    from .metrics import dice
    from .phantom import generate_phantom
    from .pipeline import segment_study
    from .postprocess import ThresholdSettings, segment_probability

    card = model.card
    alternatives = {} if card.task == "breast" else {"absolute_0.5": ThresholdSettings(0.5, relative=False),
                                                     "relative_0.5": ThresholdSettings(0.5, relative=True)}
    rows = []
    for i, seed in enumerate(seeds):
        report(progress, "final evaluation", i / len(seeds), cancel)
        protocol = case_protocol(seed, card.working_spacing_mm)
        if n_phases is not None:
            protocol["n_phases"] = int(n_phases)
        case = generate_phantom(seed, **protocol)
        row = {"seed": seed, "layout": protocol["layout"], "n_phases": protocol["n_phases"]}
        if card.task == "breast":
            from .breast import largest_components
            from .pipeline import predict_probability

            truth = case.breast_mask > 0
            probability, _, _ = predict_probability(case.study, model, device=device, cancel=cancel)
            row.update(breast_ml=round(float(truth.sum() * case.study.geometry.voxel_volume_ml), 1),
                       dice=round(float(dice(largest_components(probability >= 0.5), truth)), 4))
            rows.append(row)
            continue
        result = segment_study(case.study, model, device=device, cancel=cancel)
        truth = case.tumor_mask > 0
        row.update(tumor_ml=round(float(truth.sum() * case.study.geometry.voxel_volume_ml), 3),
                   dice=round(float(dice(result.mask, truth)), 4))
        for key, settings in alternatives.items():
            row[f"dice_{key}"] = round(float(dice(segment_probability(result.probability, case.study.geometry,
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
def save_checkpoint(path: Path, network, optimizer, best_state: dict | None, scalars: dict) -> None:
    """Write model, best model and optimiser tensors + JSON scalars as one safetensors file."""
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
    scalars = dict(scalars, param_groups=state["param_groups"], optimizer_scalars=optimizer_scalars)
    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"training_state": json.dumps(scalars)})


def load_checkpoint(path: Path, network, optimizer) -> tuple[dict | None, dict]:
    """Restore ``network`` and ``optimizer`` from :func:`save_checkpoint`; returns (best_state, scalars)."""
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
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"].to(torch.uint8))
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

    With ``resume`` the run continues from ``config.output/checkpoint.safetensors``
    (whose settings must match ``config``; ``steps`` may be raised). Without it an output
    folder that already holds a run is refused unless ``config.overwrite``. On
    cancellation a checkpoint is written and :class:`Cancelled` is raised.
    """
    import torch

    from .device import resolve_device
    from .networks import build_network
    from .progress import scaled

    config.validate()
    output = config.output
    checkpoint_path = output / CHECKPOINT_FILE
    _check_output(config, resume)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = resolve_device(config.device)

    torch.manual_seed(config.seed)
    network = build_network(config.architecture, **config.hyperparameters)
    hyperparameters = network.hyperparameters() if hasattr(network, "hyperparameters") else config.hyperparameters
    divisor = int(getattr(network, "size_divisor", 1))
    for option, size in (("--patch", config.patch_size), ("--window", config.window_size)):
        if any(p % divisor for p in size):
            raise InputError(f"{option} {' '.join(map(str, size))}: every size must be a multiple of "
                             f"{divisor} for this network (depth {hyperparameters.get('depth')})")
    card = provisional_card(config, hyperparameters)
    network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    rng = np.random.default_rng([config.seed, 1])

    step, history, best_state, best_dice, best_step = 0, [], None, -1.0, 0
    if resume:
        best_state, scalars = load_checkpoint(checkpoint_path, network, optimizer)
        if scalars.get("fingerprint") != config.fingerprint():
            changed = sorted(k for k, v in config.fingerprint().items() if scalars.get("fingerprint", {}).get(k) != v)
            raise InputError(f"cannot resume: the checkpoint was made with other settings ({', '.join(changed)})",
                             checkpoint_path)
        step, history = int(scalars["step"]), list(scalars["history"])
        best_dice, best_step = float(scalars["best_dice"]), int(scalars["best_step"])
        rng.bit_generator.state = scalars["numpy_rng"]
        network.to(device)
        log(f"resuming from step {step} of {config.steps} (best validation median Dice {best_dice:.3f} "
            f"at step {best_step})")

    train_seeds, val_seeds = config.seeds()
    log(f"preparing {len(train_seeds)} training phantoms (seeds {train_seeds[0]}-{train_seeds[-1]}) and "
        f"{len(val_seeds)} validation phantoms (seeds {val_seeds[0]}-{val_seeds[-1]}) on a "
        f"{'x'.join(f'{s:g}' for s in config.working_spacing_mm)} mm grid")
    started = time.perf_counter()
    cases = prepare_cases(train_seeds + val_seeds, card, workers=config.workers,
                          progress=scaled(progress, 0.0, 0.15, "generating phantoms"), cancel=cancel)
    train_cases, val_cases = cases[:len(train_seeds)], cases[len(train_seeds):]
    megabytes = sum(c.inputs.nbytes + c.body.nbytes + c.target.nbytes for c in cases) / 2 ** 20
    log(f"phantoms ready in {time.perf_counter() - started:.0f} s ({megabytes:.0f} MB in memory)")

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, network, optimizer, best_state,
                        {"step": step, "history": history, "best_dice": best_dice, "best_step": best_step,
                         "numpy_rng": rng.bit_generator.state, "fingerprint": config.fingerprint()})

    use_amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
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
                                 phase_series=config.takes_phase_series, phase_dropout=config.phase_dropout,
                                 time_jitter_s=config.time_jitter_s)
            images = torch.from_numpy(batch.images).to(device)
            labels = torch.from_numpy(batch.labels).to(device)
            extra = (() if batch.times_s is None else
                     (torch.from_numpy(batch.times_s).to(device), torch.from_numpy(batch.valid).to(device)))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = network(images, *extra)
            loss = segmentation_loss(logits, labels, config.loss)
            if not torch.isfinite(loss):
                raise BreastTumorSegError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                                          f"try a lower --learning-rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.item()))
            if step % log_every == 0 or step == config.steps:
                history.append({"step": step, "loss": round(float(np.mean(losses)), 5), "lr": lr,
                                "elapsed_s": round(time.perf_counter() - started, 1)})
                log(f"step {step}/{config.steps}: loss {np.mean(losses):.4f}, lr {lr:.2e}")
                losses = []
            if step % config.validate_every == 0 or step == config.steps:
                scores = validate_cases(network, val_cases, card, device, cancel=cancel)
                median = float(np.median(scores))
                history.append({"step": step, "val_dice_median": round(median, 4),
                                "val_dice_mean": round(float(np.mean(scores)), 4),
                                "val_dice": [round(s, 4) for s in scores]})
                if median > best_dice:
                    best_dice, best_step = median, step
                    best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                log(f"step {step}: validation median Dice {median:.3f} (best {best_dice:.3f} at step {best_step})")
                network.train()
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
    except Cancelled:
        if step > 0:
            checkpoint()
            log(f"cancelled at step {step}; resume with --resume")
        raise

    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return _finish(config, card, network, history, best_step, val_seeds, train_seeds, device,
                   scaled(progress, 0.95, 1.0, "final evaluation"), cancel, log, checkpoint_path)


def _check_output(config: TrainingConfig, resume: bool) -> None:
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
    output.mkdir(parents=True, exist_ok=True)


def _finish(config, card, network, history, best_step, val_seeds, train_seeds, device, progress, cancel, log,
            checkpoint_path) -> TrainingResult:
    from .models import LoadedModel, load_model

    log(f"measuring the held-out figures with the full inference path on {len(val_seeds)} validation phantoms")
    figures = evaluate_on_studies(LoadedModel(card, network, card.weights_path), val_seeds, device=device,
                                  progress=progress, cancel=cancel)
    n_parameters = int(sum(p.numel() for p in network.parameters() if p.requires_grad))
    metrics = {
        "held_out": f"synthetic phantoms, seeds {val_seeds[0]}-{val_seeds[-1]} (validation set; also chose "
                    f"the checkpoint at step {best_step})",
        "median_dice": figures["median_dice"], "mean_dice": figures["mean_dice"], "iqr_dice": figures["iqr_dice"],
        "n_cases": figures["n_cases"],
        **{k: v for k, v in figures.items() if k.startswith("median_dice_")},
        "train_seeds": [train_seeds[0], train_seeds[-1]], "val_seeds": [val_seeds[0], val_seeds[-1]],
        "steps": config.steps, "best_step": best_step, "n_parameters": n_parameters,
        "training": training_recipe(config, train_seeds, history),
        "cases": figures["cases"],
    }
    fields = card.to_json()
    for key in ("name", "weights", "sha256"):
        fields.pop(key)
    fields.update(metrics=metrics, card_path=f"{config.name}.md")
    described = _replace_card(card, metrics=metrics)
    fields["description"] = model_cards.description(described)
    markdown_path = config.output / f"{config.name}.md"
    atomic.write_text(markdown_path, model_cards.markdown(described, n_parameters))
    saved = save_model(network, fields, config.output, config.name)
    loaded = load_model(saved.weights_path)  # the round trip a user's load will make
    log(f"wrote {saved.weights_path} ({saved.weights_path.stat().st_size / 2 ** 20:.1f} MB, sha256 "
        f"{saved.sha256[:12]}...); held-out median Dice {metrics['median_dice']:.3f} on {metrics['n_cases']} phantoms")
    return TrainingResult(model_card=loaded.card, history=history, val_dice_median=float(metrics["median_dice"]),
                          val_dice_mean=float(metrics["mean_dice"]), best_step=best_step,
                          weights_path=saved.weights_path, markdown_path=markdown_path,
                          checkpoint_path=checkpoint_path)


def training_recipe(config: TrainingConfig, train_seeds: list[int], history: list) -> dict:
    """What a model card records of the training run (see :mod:`breasttumorseg.model_cards`)."""
    elapsed = next((h["elapsed_s"] for h in reversed(history) if "elapsed_s" in h), None)
    return {"steps": config.steps, "n_train_cases": len(train_seeds), "train_seeds": [train_seeds[0], train_seeds[-1]],
            "learning_rate": config.learning_rate, "batch_size": config.batch_size,
            "patch_size": list(config.patch_size), "foreground_fraction": config.foreground_fraction,
            "loss": config.loss, "phase_dropout": config.phase_dropout, "time_jitter_s": config.time_jitter_s,
            "seed": config.seed,
            "elapsed": "" if elapsed is None else f"Training took {elapsed / 60:.0f} min of optimisation."}


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


__all__ = ["TrainingConfig", "read_config_file", "config_from_settings", "TrainingResult", "PreparedCase", "case_protocol", "prepare_case", "prepare_cases",
           "PatchBatch", "sample_batch", "generalized_dice_loss", "tumor_dice_loss", "segmentation_loss", "LOSSES", "learning_rate_at", "validate_cases",
           "evaluate_on_studies", "save_checkpoint", "load_checkpoint", "provisional_card", "train_on_phantom",
           "training_recipe", "install_into_registry", "TRAINED_ON", "CHECKPOINT_FILE"]
