"""The fine stage's false-positive filter: lesion candidates of a tumor probability map,
described by what a radiologist looks at, and scored.

The tumor network marks the cancer but also enhancing look-alikes: vessels, benign
lesions, patches of background parenchymal enhancement. Each 26-connected component of
``probability >= CANDIDATE_PROBABILITY`` on the model's working grid is one candidate; it
is described by :data:`FEATURES`:

* ``log_volume_ml``: log10 of its volume (mL);
* ``max_probability`` / ``mean_probability``: the network's confidence;
* ``relative_max``: its maximum over the study's highest maximum (1 for the strongest);
* ``peak_enhancement``: median peak relative enhancement inside it (1.0 = +100 %);
* ``late_change``: median of (enhancement at 420 s - at 120 s) over the peak (negative =
  washout, positive = persistent), times the study's late coverage (0 when the study has
  no late phase, so an unknown curve type reads as neutral);
* ``pre_relative``: median pre-contrast signal over the study's reference level (anatomy);
* ``elongation``: sqrt of the largest over the smallest eigenvalue of its voxel
  coordinates' covariance in mm (vessels are long and thin); 1 for a sphere;
* ``fill``: its voxels over those of its bounding box;

and, relative to the study's other candidates (a cancer stands out from the enhancing
background of the same breast, whatever the protocol makes of absolute values):

* ``peak_vs_others`` / ``late_change_vs_others``: its ``peak_enhancement`` /
  ``late_change`` minus their medians over the study's candidates;
* ``volume_rank``: log2(1 + its rank by volume), 0 for the largest.

A logistic :class:`LesionScorer` (weights in safetensors beside the model's, fitted by
``breasttumorseg fit-lesion-scorer`` on phantoms that neither training nor the benchmarks
use) gives each candidate the probability that it is tumor; :func:`suppress_rejected` sets
the probability map to 0 over candidates it rejects (the threshold slider then acts on the
kept lesions only). A card with ``keep_best`` keeps the most likely candidate whatever its
score: the tool segments a known cancer (:func:`study_keep_probability`).

The network under-segments large tumors (a necrotic or less confident centre, a rim its
window sees only in part), so each kept lesion then grows into its enhancing neighbours
(:func:`.lesion_growth.grow_lesions`, found at probability :data:`CANDIDATE_PROBABILITY`). On
the 28 phantoms the scorer was studied on, with the true tumor candidates kept, this raised
the median Dice from 0.57 to 0.73 (0.71-0.73 for 0.6-0.8 x and 5-12 voxels: not a sharp
optimum). Arrays are ``[z, y, x]``; spacing in mm.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.atomic import write_bytes
from ..core.errors import ModelError
from .lesion_growth import grow_lesions
from .postprocess import connected_components

#: probability from which a voxel belongs to a candidate lesion
CANDIDATE_PROBABILITY = 0.5
#: candidate descriptors, in the scorer's order
OWN_FEATURES = ("log_volume_ml", "max_probability", "mean_probability", "relative_max", "peak_enhancement",
                "late_change", "pre_relative", "elongation", "fill")
FEATURES = OWN_FEATURES + ("peak_vs_others", "late_change_vs_others", "volume_rank")
#: kinetic channels the descriptors read
NEEDED_CHANNELS = ("pre_relative", "enhancement_120s", "enhancement_420s", "enhancement_peak", "late_coverage")
#: a rejected candidate is cleared together with this margin (voxels), so its faint rim does not
#: come back when the user lowers the threshold
SUPPRESS_MARGIN_VOXELS = 2


@dataclass
class Candidates:
    """Candidate lesions of one probability map: ``labels`` (int32 ``[z, y, x]``, 0 = none,
    k = candidate k) and ``features`` (float ``[n, len(FEATURES)]``, row k - 1 = candidate k)."""

    labels: np.ndarray
    features: np.ndarray

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


def find_candidates(probability: np.ndarray, channels: dict[str, np.ndarray], spacing_zyx_mm,
                    threshold: float = CANDIDATE_PROBABILITY) -> Candidates:
    """Label the candidates of ``probability`` and describe each (see the module docstring).

    ``channels`` maps each of :data:`NEEDED_CHANNELS` to its kinetic map on the same grid.
    """
    missing = [name for name in NEEDED_CHANNELS if name not in channels]
    if missing:
        raise ValueError(f"lesion candidates need the kinetic channels {', '.join(missing)}")
    labels, count = connected_components(probability >= threshold, 26)
    features = np.zeros((count, len(OWN_FEATURES)), dtype=np.float64)
    if count == 0:
        return Candidates(labels, np.zeros((0, len(FEATURES))))
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    strongest = float(probability.max())
    coverage = float(np.median(channels["late_coverage"]))
    for index, box in enumerate(ndimage.find_objects(labels)):
        inside = labels[box] == index + 1
        p = probability[box][inside]
        peak = channels["enhancement_peak"][box][inside].astype(np.float64)
        late = (channels["enhancement_420s"][box][inside].astype(np.float64)
                - channels["enhancement_120s"][box][inside])
        features[index] = (
            np.log10(p.size * voxel_ml), p.max(), p.mean(), p.max() / strongest, np.median(peak),
            coverage * np.median(late / np.maximum(peak, 0.1)),
            np.median(channels["pre_relative"][box][inside]), _elongation(inside, spacing),
            p.size / inside.size)
    return Candidates(labels, with_study_context(features))


def with_study_context(own: np.ndarray) -> np.ndarray:
    """:data:`OWN_FEATURES` of one study's candidates ``[n, 9]`` extended by the features
    relative to the others (see the module docstring) to :data:`FEATURES` ``[n, 12]``."""
    column = {name: own[:, i] for i, name in enumerate(OWN_FEATURES)}
    rank = np.empty(len(own))
    rank[np.argsort(-column["log_volume_ml"], kind="stable")] = np.arange(len(own))
    return np.c_[own, column["peak_enhancement"] - np.median(column["peak_enhancement"]),
                 column["late_change"] - np.median(column["late_change"]), np.log2(1.0 + rank)]


def _elongation(inside: np.ndarray, spacing: np.ndarray) -> float:
    """sqrt(largest / smallest eigenvalue) of the voxel coordinates' covariance (mm), floored
    at a quarter voxel so that a one-voxel-thick candidate stays finite."""
    points = np.argwhere(inside) * spacing
    if len(points) < 4:
        return 1.0
    eigenvalues = np.linalg.eigvalsh(np.cov(points.T))
    floor = (0.25 * float(spacing.min())) ** 2
    return float(np.sqrt(max(eigenvalues[-1], floor) / max(eigenvalues[0], floor)))


@dataclass
class LesionScorer:
    """Logistic model: P(tumor) = sigmoid(w . (x - mean) / std + bias) over :data:`FEATURES`."""

    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """P(tumor) of each candidate (float ``[n]``)."""
        if features.shape[0] == 0:
            return np.zeros(0)
        z = (features - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))

    def save(self, path: Path) -> str:
        """Write safetensors (atomically); return its SHA-256."""
        from safetensors.numpy import save  # waits: only the fitting script writes scorers

        tensors = {"mean": self.mean.astype(np.float64), "std": self.std.astype(np.float64),
                   "weights": self.weights.astype(np.float64),
                   "bias": np.array([self.bias], dtype=np.float64)}
        data = save(tensors, metadata={"features": ",".join(FEATURES)})
        write_bytes(Path(path), data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path, sha256: str | None = None) -> "LesionScorer":
        """Read a scorer written by :meth:`save`, checking its checksum and feature list."""
        from safetensors import safe_open  # waits: safetensors is only needed when a card names a scorer

        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ModelError(f"cannot read the lesion scorer: {error.strerror}", path) from None
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ModelError("the lesion scorer's checksum does not match its model card", path)
        with safe_open(str(path), framework="numpy") as f:
            if (f.metadata() or {}).get("features") != ",".join(FEATURES):
                raise ModelError("the lesion scorer was fitted on other candidate features", path)
            return cls(f.get_tensor("mean"), f.get_tensor("std"), f.get_tensor("weights"),
                       float(f.get_tensor("bias")[0]))


def filter_lesions(probability: np.ndarray, inputs: np.ndarray, card, region: np.ndarray,
                   spacing_zyx_mm) -> tuple[np.ndarray, dict]:
    """Apply ``card``'s lesion scorer to a probability map on its working grid.

    ``inputs`` are the card's kinetic channels ``[C, z, y, x]`` on that grid and ``region``
    (bool) where the network ran; outside it the probability becomes 0 (no candidate is judged
    there). Returns the filtered probability and a summary ``{"candidates": n, "kept": k}``.
    """
    channels = {name: inputs[list(card.inputs).index(name)] for name in NEEDED_CHANNELS if name in card.inputs}
    probability = np.where(region, probability, np.float32(0.0)).astype(np.float32)
    candidates = find_candidates(probability, channels, spacing_zyx_mm)
    scores = scorer_of(card).score(candidates.features)
    keep_probability = study_keep_probability(card.lesion_scorer, scores)
    keep = scores >= keep_probability
    filtered = suppress_rejected(probability, candidates, scores, keep_probability)
    filtered = grow_lesions(filtered, candidates.labels, np.flatnonzero(keep) + 1, channels["enhancement_peak"],
                            spacing_zyx_mm, floor=CANDIDATE_PROBABILITY)
    return filtered, {"candidates": candidates.count, "kept": int(keep.sum())}


def study_keep_probability(settings: dict, scores: np.ndarray) -> float:
    """The lowest P(tumor) kept in one study: the card's ``keep_probability``, lowered to the
    best candidate's score when the card says ``keep_best`` (the study holds a known cancer,
    so an empty result is never the most likely answer)."""
    keep = settings["keep_probability"]
    if settings.get("keep_best") and scores.size:
        keep = min(keep, float(scores.max()))
    return keep


_SCORERS: dict[tuple[str, str], LesionScorer] = {}


def scorer_of(card, field: str = "lesion_scorer") -> LesionScorer:
    """The scorer that ``card``'s ``field`` (``lesion_scorer`` or ``lesion_choice``) names, read
    once per file and checksum."""
    named = getattr(card, field)
    path = (card.folder or Path.cwd()) / named["weights"]
    key = (str(path), named["sha256"])
    if key not in _SCORERS:
        _SCORERS[key] = LesionScorer.load(path, named["sha256"])
    return _SCORERS[key]


def suppress_rejected(probability: np.ndarray, candidates: Candidates, scores: np.ndarray,
                      keep_probability: float) -> np.ndarray:
    """``probability`` with every candidate scored below ``keep_probability`` (and a
    :data:`SUPPRESS_MARGIN_VOXELS` margin around it) set to 0; the kept ones untouched."""
    rejected = np.flatnonzero(scores < keep_probability) + 1
    out = probability.copy()
    if rejected.size == 0:
        return out
    clear = np.isin(candidates.labels, rejected)
    kept = (candidates.labels > 0) & ~clear
    clear = ndimage.binary_dilation(clear, iterations=SUPPRESS_MARGIN_VOXELS) & ~kept
    out[clear] = 0.0
    return out
