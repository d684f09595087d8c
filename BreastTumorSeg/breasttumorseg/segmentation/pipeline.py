"""From a DCE exam in memory to a tumor probability map and segmentation on its grid.

1. :func:`prepare` resamples the phases onto the model's working grid (same field of view
   and orientation, the card's spacing), derives the channels the model card asks for
   (:mod:`breasttumorseg.exam.maps`, :mod:`breasttumorseg.exam.kinetic_maps`), normalises
   them (:mod:`breasttumorseg.exam.normalization`) and marks the inside of the body, so the
   engine skips tiles of air.
2. When the model card names a breast-mask model (or ``classical``, the model-free mask of
   :mod:`breasttumorseg.exam.breast_classical`), the breasts it finds (grown by a margin,
   :func:`breast_region_of`) narrow the tiles further, and the probability outside them is
   set to 0 (the heart and the thorax enhance strongly and are never breast tumor).
3. The sliding-window engine (:mod:`.inference`) predicts the tumor probability. A card with
   a lesion scorer then clears the candidate lesions it judges not tumor
   (:mod:`.lesion_candidates`: vessels, benign lesions, background enhancement) and lets
   the kept ones grow.
4. The probability is resampled back onto the exam's reference grid (linear). There a card
   with ``lesion_growth`` lets every lesion of its default threshold grow into the enhancing
   tissue around it (:mod:`.lesion_growth`) and, with ``lesion_choice``, keeps the likeliest of
   the lesions that threshold keeps and those scored likely enough (:mod:`.lesion_choice`).
   Then the probability is post-processed into a mask (:mod:`.postprocess`).

Every array returned lies on ``study.geometry`` (the first post-contrast phase's grid, LPS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..exam import maps
from ..exam.breast_classical import CLASSICAL_BREAST_MASK
from .breast import BREAST_MARGIN_MM, breast_region, classical_breast_region
from ..core.errors import InputError, ModelError
from ..core.geometry import Geometry, resample, resample_stack
from ..core.morphology import dilate_cross, fill_enclosed, large_components, open_cross
from ..exam.kinetic_maps import candidate_region, kinetic_channels, peak_enhancement
from ..exam.normalization import normalize_post1_minmax, normalize_pre_contrast_p95
from ..core.progress import CancelToken, ProgressCallback, report, scaled
from ..exam.dce_exam import DCEStudy
from .lesion_candidates import NEEDED_CHANNELS, filter_lesions, scorer_of
from .lesion_choice import choose_lesions
from .lesion_growth import grow_all_lesions, growth_margin_voxels, lesion_floor
from .postprocess import ThresholdSettings, bounding_box, segment_probability
from .models import load_model

if TYPE_CHECKING:  # imported lazily at run time: torch is slow to import
    from .models import LoadedModel, ModelCard
    from .postprocess import ThresholdSettings


@dataclass
class SegmentationResult:
    """The outputs of :func:`segment_study`, all on ``geometry`` (the study's grid)."""

    probability: np.ndarray          # float32 [z, y, x], tumor probability 0..1
    mask: np.ndarray                 # uint8 [z, y, x], 1 = tumor
    geometry: Geometry
    settings: "ThresholdSettings"
    model: "ModelCard"
    device: str
    timings_s: dict = field(default_factory=dict)
    breast_region: np.ndarray | None = None   # bool [z, y, x]: breasts + margin, when a breast model ran
    breast_model: "ModelCard | None" = None
    lesions: dict | None = None      # {"candidates": n, "kept": k} of the card's lesion scorer or choice


def working_geometry(geometry: Geometry, spacing_mm) -> Geometry:
    """The grid covering ``geometry``'s field of view at the model's spacing (x, y, z mm)."""
    return geometry.with_spacing(tuple(float(s) for s in spacing_mm))


def to_working_grid(array_zyx: np.ndarray, study_geometry: Geometry, working: Geometry,
                    interpolation: str = "linear") -> np.ndarray:
    """Resample one array from the study grid onto the working grid."""
    return resample(array_zyx, study_geometry, working, interpolation=interpolation)


def resample_study(study: DCEStudy, target: Geometry) -> DCEStudy:
    """The study with every phase resampled (linear) onto ``target``."""
    phases = resample_stack(study.phases, study.geometry, target)
    return DCEStudy(phases, target, study.times_s, list(study.phase_names), study.source)


def body_mask(study: DCEStudy) -> np.ndarray:
    """Inside of the body on the study's grid (bool ``[z, y, x]``).

    Threshold of the maximum over phases at 8 % of its 99th percentile (air holds only
    noise; fat-suppressed fat is darker than tissue but brighter than air), small specks
    removed, the large components kept, enclosed holes filled, and a 2-voxel margin.
    """
    peak = study.phases.max(axis=0)
    level = 0.08 * float(np.percentile(peak, 99))
    mask = large_components(open_cross(peak > level, iterations=1), 0.05)
    if not mask.any():
        return np.ones(study.geometry.shape_zyx, dtype=bool)
    return dilate_cross(fill_enclosed(mask), iterations=2)


def _check_study_for(card: "ModelCard", study: DCEStudy) -> None:
    if study.n_phases < card.min_phases:
        raise InputError(f"model {card.name} needs at least {card.min_phases} phases, got {study.n_phases}",
                         study.source)
    if card.max_phases is not None and study.n_phases > card.max_phases:
        raise InputError(f"model {card.name} takes at most {card.max_phases} phases, got {study.n_phases}",
                         study.source)
    if card.needs_times:
        study.require_times(f"model {card.name} (its inputs {', '.join(card.inputs)})")


def _channels(study: DCEStudy, card: "ModelCard", body: np.ndarray) -> np.ndarray:
    """Model input channels ``[C, z, y, x]`` of a study already on the working grid."""
    if card.normalization == "kinetic":
        return kinetic_channels(study, card.inputs)
    if card.takes_phase_series:
        if card.normalization == "post1_minmax":
            return normalize_post1_minmax(study.phases, study.first_post_contrast)
        return normalize_pre_contrast_p95(study.phases.astype(np.float32), study.pre_contrast, body, study.source)
    if card.normalization == "pre_contrast_p95":
        channels = np.stack([maps.channel(study, name) for name in card.inputs])
        return normalize_pre_contrast_p95(channels, study.pre_contrast, body, study.source)
    if card.normalization == "post1_minmax":
        scaled_study = study.with_phases(normalize_post1_minmax(study.phases, study.first_post_contrast))
        return np.stack([maps.channel(scaled_study, name) for name in card.inputs])
    raise InputError(f"unknown normalisation {card.normalization!r} in model card {card.name}")


def prepare(study: DCEStudy, card: "ModelCard") -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Model inputs ``[C, z, y, x]``, body mask and working grid, in one pass."""
    _check_study_for(card, study)
    working = working_geometry(study.geometry, card.working_spacing_mm)
    on_working = resample_study(study, working)
    body = body_mask(on_working)
    return _channels(on_working, card, body), body, working


def acquisition_times_s(study: DCEStudy) -> np.ndarray:
    """Acquisition times in seconds after the pre-contrast (what phase-series networks take)."""
    times = study.require_times("the acquisition-time embedding of a phase-series model")
    return np.asarray(times, dtype=float) - float(times[0])


def network_for_study(network, card: "ModelCard", study: DCEStudy):
    """The module the engine runs on this study's tiles: phase-series networks get the study's times."""
    if card.takes_phase_series:
        return network.bind_acquisition(acquisition_times_s(study))
    return network


def threshold_settings(card: "ModelCard", threshold: float | None = None, relative: bool | None = None,
                       min_component_ml: float = 0.0) -> "ThresholdSettings":
    """Post-processing settings: the card's defaults unless the user chose otherwise."""
    return ThresholdSettings(
        threshold=card.threshold if threshold is None else float(threshold),
        relative=card.relative_threshold if relative is None else bool(relative),
        min_component_ml=float(min_component_ml),
    )


def predict_probability(study: DCEStudy, model: "LoadedModel", *, device="auto", batch_size: int | None = None,
                        region: np.ndarray | None = None, progress: ProgressCallback | None = None,
                        cancel: CancelToken | None = None, warn=None) -> tuple[np.ndarray, str, dict]:
    """The model's output probability on the study's grid (float32 ``[z, y, x]``, 0..1).

    ``region`` (bool, study grid) limits the tiles to it (on top of the body) and zeroes
    the probability outside it. Returns (probability, device description, timings in s; with
    a lesion scorer also ``timings["lesions"]``, its summary, which :func:`segment_study` moves
    to :attr:`SegmentationResult.lesions`).
    A model that brings its own preprocessing (an nnU-Net folder, :mod:`.nnunet_folder`)
    predicts through its ``predict_probability``.
    """
    if hasattr(model, "predict_probability"):
        return model.predict_probability(study, device=device, batch_size=batch_size, region=region,
                                         progress=progress, cancel=cancel, warn=warn)
    output = _scored_output(study, model, device=device, batch_size=batch_size, region=region, progress=progress,
                            cancel=cancel, warn=warn)
    timings = output.timings
    report(progress, "resampling to the reference grid", 0.95, cancel)
    start = time.perf_counter()
    probability = resample(output.probability, output.working, study.geometry)  # a fresh array
    in_place = probability if probability.dtype == np.float32 else None  # 128 MB less to allocate on the standard grid
    probability = np.clip(probability, 0.0, 1.0, out=in_place).astype(np.float32, copy=False)
    if region is not None:
        probability[~region] = 0.0
    timings["resample"] = time.perf_counter() - start
    if model.card.lesion_growth is not None:
        start = time.perf_counter()
        probability, chosen = _grown_on_study_grid(probability, study, model.card, region)
        timings["lesion_growth"] = time.perf_counter() - start
        if chosen is not None:
            timings["lesions"] = chosen
    return probability, output.device, timings


def probability_on_working_grid(study: DCEStudy, model: "LoadedModel", *, device="auto",
                                batch_size: int | None = None, region: np.ndarray | None = None,
                                progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                                warn=None) -> tuple[np.ndarray, Geometry, str, dict]:
    """The model's probability on its working grid, after its lesion scorer when the card has
    one (a card's lesion growth acts on the study's grid: :func:`predict_probability`):
    (probability ``[z, y, x]``, working grid, device description, timings in s).
    ``region`` as in :func:`predict_probability`."""
    output = _scored_output(study, model, device=device, batch_size=batch_size, region=region, progress=progress,
                            cancel=cancel, warn=warn)
    return output.probability, output.working, output.device, output.timings


def _scored_output(study: DCEStudy, model: "LoadedModel", **options) -> "NetworkOutput":
    """:func:`network_output`, its probability passed through the card's lesion scorer when it has one."""
    output = network_output(study, model, **options)
    if model.card.lesion_scorer is not None:
        start = time.perf_counter()
        output.probability, output.timings["lesions"] = filter_lesions(
            output.probability, output.inputs, model.card, output.searched, output.working.spacing[::-1])
        output.timings["lesion_filter"] = time.perf_counter() - start
    return output


def _grown_on_study_grid(probability: np.ndarray, study: DCEStudy, card: "ModelCard",
                         region: np.ndarray | None) -> tuple[np.ndarray, dict | None]:
    """``probability`` (on the study's grid) with every lesion of the card's default
    threshold grown (:mod:`.lesion_growth`), within ``region`` when given (the breast prior,
    outside which the probability is already 0). On the study's own grid and by its own peak
    enhancement (computed over the lesions' box only), not the working grid's: resampling a
    grown map back would shave about half a working voxel off every border, much of a
    small tumor (3 held-out phantoms: Dice 0.73 / 0.57 / 0.42 grown on the working grid,
    0.78 / 0.77 / 0.42 by the working grid's peak resampled, 0.93 / 0.79 / 0.64 as here).

    With the card's ``lesion_choice`` the grown lesions that the default threshold keeps are then
    chosen among (:mod:`.lesion_choice`); returns the probability and that choice's summary
    ``{"candidates", "kept"}`` (None without a choice)."""
    growth = card.lesion_growth
    floor = lesion_floor(probability, card.threshold, card.relative_threshold)
    spacing = study.geometry.spacing[::-1]
    if not floor > 0:
        return probability, None if card.lesion_choice is None else {"candidates": 0, "kept": 0}
    box = bounding_box(probability >= floor, margin=growth_margin_voxels(spacing, growth["grow_mm"]))
    channels = lesion_channels(study, box) if card.lesion_choice is not None else {
        "enhancement_peak": peak_enhancement(study, box)}
    grown = grow_all_lesions(probability[box], channels["enhancement_peak"], spacing, floor, growth["grow_mm"],
                             growth["enhancement_fraction"])
    if region is not None:   # only the lesions' box changed: keep it inside the region there
        grown[~region[box]] = 0.0
    chosen = None
    if card.lesion_choice is not None:
        grown, chosen = choose_lesions(grown, channels, spacing, card.threshold, card.relative_threshold,
                                       scorer_of(card, "lesion_choice"), card.lesion_choice["keep_probability"])
    probability[box] = grown
    return probability, chosen


def lesion_channels(study: DCEStudy, box) -> dict[str, np.ndarray]:
    """The kinetic channels that describe a lesion (:data:`.lesion_candidates.NEEDED_CHANNELS`)
    over ``box`` of the study's grid, by name."""
    return dict(zip(NEEDED_CHANNELS, kinetic_channels(study, NEEDED_CHANNELS, box)))


@dataclass
class NetworkOutput:
    """The network's raw output on its working grid (before any lesion scorer)."""

    probability: np.ndarray   # float32 [z, y, x]
    inputs: np.ndarray        # the card's channels [C, z, y, x]
    searched: np.ndarray      # bool [z, y, x]: where the tiles had to look (body, region, candidates)
    working: Geometry
    device: str
    timings: dict


def network_output(study: DCEStudy, model: "LoadedModel", *, device="auto", batch_size: int | None = None,
                   region: np.ndarray | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, warn=None) -> NetworkOutput:
    """Prepare the inputs and run the sliding window (steps 1 and 3 of the module docstring)."""
    # core.device imports torch at its top; this module imports without torch
    from ..core.device import describe_device, resolve_device
    from .inference import SlidingWindowConfig, sliding_window_probability

    card = model.card
    timings = {}
    start = time.perf_counter()
    report(progress, "preparing inputs", 0.0, cancel)
    inputs, body, working = prepare(study, card)
    if region is not None:
        body &= to_working_grid(region.astype(np.uint8), study.geometry, working, "nearest") > 0
    if "enhancement_peak" in card.inputs:   # kinetic inputs: skip tiles without an enhancing candidate
        peak = inputs[list(card.inputs).index("enhancement_peak")]
        body &= candidate_region(peak, working.spacing[::-1])
    timings["prepare"] = time.perf_counter() - start

    torch_device = resolve_device(device)
    config = SlidingWindowConfig(patch_size=tuple(card.patch_size), overlap=card.overlap,
                                 batch_size=batch_size or default_batch_size(torch_device))
    start = time.perf_counter()
    probability = sliding_window_probability(
        network_for_study(model.network, card, study), inputs, config, device=torch_device, foreground=body,
        to_probability=lambda logits: logits.float().softmax(dim=1)[:, card.output_channel],
        progress=scaled(progress, 0.05, 0.95, "inference"), cancel=cancel, warn=warn)
    timings["inference"] = time.perf_counter() - start
    return NetworkOutput(probability, inputs, body, working, describe_device(torch_device), timings)


def default_batch_size(device) -> int:
    """Tiles per network call: 4 on a GPU; 2 on the CPU, where PyTorch sends a single tile's
    3x3x3 convolutions on small feature maps (batch x channels x z x y <= 20480) to its
    slow reference kernel instead of oneDNN: two tiles a call took 35-40 % less time per tile
    for the kinetic U-Net's 48 x 64 x 64 windows and 8 % less for Hirsch's 96 x 128 x 128
    (2 cores)."""
    return 4 if device.type == "cuda" else 2


def breast_region_of(study: DCEStudy, model: "LoadedModel", *, device="auto", margin_mm: float = BREAST_MARGIN_MM,
                     progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                     warn=None) -> np.ndarray:
    """Bool ``[z, y, x]`` on ``study.geometry``: the breasts the breast-mask ``model`` finds, grown by
    ``margin_mm`` (:func:`.breast.breast_region`)."""
    probability, working, _, _ = probability_on_working_grid(study, model, device=device, progress=progress,
                                                             cancel=cancel, warn=warn)
    return breast_region(probability, working, study.geometry, margin_mm=margin_mm, source=study.source,
                         model_name=model.card.name, warn=warn)


def segment_study(study: DCEStudy, model: "LoadedModel", *, device="auto",
                  settings: "ThresholdSettings | None" = None, batch_size: int | None = None,
                  breast_model="auto", progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                  warn=None) -> SegmentationResult:
    """Segment the tumor in ``study`` with ``model``; outputs on the study's grid.

    ``breast_model``: ``"auto"`` loads the breast-mask model the card names (if any);
    a loaded breast-mask model uses that one; None runs without a breast prior.
    """
    card = model.card
    settings = settings or threshold_settings(card)
    region, timings = None, {}
    share = 0.0
    if breast_model == "auto" and card.breast_mask == CLASSICAL_BREAST_MASK:
        start = time.perf_counter()
        region = classical_breast_region(study, warn=warn)
        timings["breast_mask"] = time.perf_counter() - start
        breast_model = None
    elif breast_model == "auto":
        breast_model = _load_breast_model(card, device)
    if breast_model is not None:
        share = 0.15
        start = time.perf_counter()
        region = breast_region_of(study, breast_model, device=device, cancel=cancel, warn=warn,
                                  progress=scaled(progress, 0.0, share, "breast mask"))
        timings["breast_mask"] = time.perf_counter() - start
    probability, device_used, more = predict_probability(
        study, model, device=device, batch_size=batch_size, region=region,
        progress=scaled(progress, share, 0.92), cancel=cancel, warn=warn)
    lesions = more.pop("lesions", None)
    timings.update(more)
    start = time.perf_counter()
    mask = segment_probability(probability, study.geometry, settings)
    timings["postprocess"] = timings.pop("resample") + time.perf_counter() - start
    report(progress, "done", 1.0, cancel)
    return SegmentationResult(probability, mask, study.geometry, settings, card, device_used, timings,
                              breast_region=region, breast_model=None if breast_model is None else breast_model.card,
                              lesions=lesions)


def _load_breast_model(card: "ModelCard", device) -> "LoadedModel | None":
    """The breast-mask model the tumor model's card names, loaded (None when it names none)."""
    if not card.breast_mask:
        return None

    breast = load_model(card.breast_mask, device=device)
    if breast.card.task != "breast":
        raise ModelError(f"model {card.name} names {card.breast_mask} as its breast mask, but that model's task "
                         f"is {breast.card.task!r}", breast.card.card_path or breast.weights_path)
    return breast
