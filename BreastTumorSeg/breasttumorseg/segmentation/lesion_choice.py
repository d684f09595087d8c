"""Lesion choice: which of the lesions a card's default threshold keeps are shown.

Hirsch et al.'s relative threshold keeps every lesion that holds a voxel above 0.95 x the
map's maximum. Our tumor network saturates (maximum ~1.0) on the cancer and on look-alikes
alike (a benign enhancing lesion, a knot of vessels), so the rule cannot tell them apart:
on the tuning phantoms (seeds 70000 and up, never benchmarked) a false lesion was kept
beside the tumor in about one study in four. The kinetics can tell them apart where the
network cannot: a cancer tends to wash out, a fibroadenoma keeps enhancing (Kuhl et al.,
Radiology 1999), and a lesion that stands out from the rest of the study's enhancement is
the likelier cancer. So each kept lesion (after :mod:`.lesion_growth`) is described by the
descriptors of :mod:`.lesion_candidates` (volume, the network's confidence, peak
enhancement, washout, pre-contrast anatomy, shape; and relative to the study's other
lesions) and scored by a logistic :class:`.lesion_candidates.LesionScorer` fitted on those
tuning phantoms (the card's ``lesion_choice``: weights, checksum, ``keep_probability``):

* the most likely lesion is always kept (the study holds a known cancer);
* another kept lesion stays when its P(tumor) is at least ``keep_probability``;
* a lesion left out is not erased: its probability is scaled so that its maximum is
  :data:`LEFT_OUT_FRACTION` x the floor. It stays visible in the probability overlay and
  comes back with an absolute threshold below it, but the default mask leaves it out.

Works on the study's own grid over the lesions' box (``[z, y, x]``; spacing in mm), on the
probability after growth; the kinetic channels are those of
:func:`breasttumorseg.exam.kinetic_maps.kinetic_channels` over the same box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .lesion_candidates import Candidates, find_candidates
from .lesion_growth import lesion_floor
from .postprocess import connected_components

#: a lesion left out keeps its shape in the map, scaled to at most this fraction of the floor
LEFT_OUT_FRACTION = 0.9
#: ... together with its rim this many voxels wide (26-connected steps; outside every lesion)
RIM_VOXELS = 2
_CUBE = np.ones((3, 3, 3), dtype=bool)


def kept_by_default(probability: np.ndarray, labels: np.ndarray, count: int, relative: bool,
                    seed_fraction: float = 0.95) -> np.ndarray:
    """Bool ``[count]``: which lesions (1..count of ``labels``) the default threshold keeps:
    with a relative threshold those holding a seed (``> seed_fraction x max``), else all."""
    if not relative or count == 0:
        return np.ones(count, dtype=bool)
    maxima = ndimage.maximum(probability, labels, np.arange(1, count + 1))
    return np.asarray(maxima) > seed_fraction * float(probability.max())


def kept_lesions(probability: np.ndarray, channels: dict[str, np.ndarray], spacing_zyx_mm, floor: float,
                 relative: bool) -> tuple[Candidates, np.ndarray]:
    """The lesions of ``probability`` at ``floor`` (> 0; :func:`.lesion_growth.lesion_floor`),
    described (:func:`.lesion_candidates.find_candidates`), and which of them the default
    threshold keeps (:func:`kept_by_default`): what the choice chooses among, and what
    ``fit-lesion-scorer`` learns from."""
    candidates = find_candidates(probability, channels, spacing_zyx_mm, threshold=floor)
    return candidates, kept_by_default(probability, candidates.labels, candidates.count, relative)


def choose_lesions(probability: np.ndarray, channels: dict[str, np.ndarray], spacing_zyx_mm, threshold: float,
                   relative: bool, scorer, keep_probability: float) -> tuple[np.ndarray, dict]:
    """``probability`` (float32, after growth) with the lesions that the default threshold
    (``threshold``, a fraction of the maximum when ``relative``) keeps but the scorer finds
    unlikely scaled below its floor (module docstring). Returns it and a summary
    ``{"candidates": lesions kept by the threshold, "kept": lesions still kept}``.

    With a relative threshold, a lesion left out may have held the map's maximum: the floor
    and the seed level then fall a little, and a lesion that had no seed may gain one. Such
    a lesion, never judged, is left out too: the choice never adds a lesion to the mask."""
    out = np.array(probability, dtype=np.float32, copy=True)
    floor = lesion_floor(out, threshold, relative)
    if not floor > 0:
        return out, {"candidates": 0, "kept": 0}
    candidates, kept = kept_lesions(out, channels, spacing_zyx_mm, floor, relative)
    if kept.sum() <= 1:
        return out, {"candidates": int(kept.sum()), "kept": int(kept.sum())}
    scores = np.where(kept, scorer.score(candidates.features), -np.inf)
    stays = kept & (scores >= keep_probability)
    stays[int(np.argmax(scores))] = True   # the likeliest (the first of equals)
    _leave_out(out, candidates.labels, np.flatnonzero(kept & ~stays) + 1, floor)
    if relative:
        staying = np.isin(candidates.labels, np.flatnonzero(stays) + 1)
        floor = lesion_floor(out, threshold, relative)
        labels, count = connected_components(out >= floor)
        now_kept = np.flatnonzero(kept_by_default(out, labels, count, relative)) + 1
        _leave_out(out, labels, [n for n in now_kept if not staying[labels == n].any()], floor)
    return out, {"candidates": int(kept.sum()), "kept": int(stays.sum())}


def _leave_out(probability: np.ndarray, labels: np.ndarray, numbers, floor: float) -> None:
    """Scale the lesions ``numbers`` of ``labels`` (and their rim) in place so that their
    maximum is :data:`LEFT_OUT_FRACTION` x ``floor``."""
    boxes = ndimage.find_objects(labels)
    for number in numbers:
        box = tuple(slice(max(0, s.start - RIM_VOXELS), s.stop + RIM_VOXELS) for s in boxes[number - 1])
        lesion = labels[box] == number
        # the lesion and its faint rim, so that no ring of the rim stands above the scaled lesion
        zone = ndimage.binary_dilation(lesion, _CUBE, iterations=RIM_VOXELS) & (lesion | (labels[box] == 0))
        window = probability[box]
        window[zone] *= np.float32(LEFT_OUT_FRACTION * floor / float(window[lesion].max()))
