"""Conventional tumor segmentations to compare a model against (no training, no weights).

Both baselines work on a :class:`~breasttumorseg.exam.dce_exam.DCEStudy` inside a *region*: the
breast mask when one is known (the phantom writes ``breast_mask.nii.gz``), else the inside
of the body (:func:`breasttumorseg.segmentation.pipeline.body_mask`, which also holds the heart and the
large vessels: without a breast mask both baselines tend to pick the heart). Masks are
uint8 ``[z, y, x]`` on ``study.geometry``.

* :func:`percent_enhancement_baseline`: the I-SPY / ACRIN 6657 rule of the functional
  tumor volume applied to the whole region (S0 above 60 % of its 95th percentile in the
  region, PE = 100 (S1 - S0) / S0 >= 70 % at the phase closest to 150 s, at least 4 of
  the 26 neighbours passing too; :func:`breasttumorseg.reporting.measurements.functional_tumor_mask`),
  then the connected component around the strongest enhancement (see :func:`seed_component`).
  Needs acquisition times (for the early phase).

* :func:`fuzzy_c_means_baseline`: fuzzy c-means on the enhancement curves, the conventional
  method Hirsch et al. 2022 compared against (after Chen et al. 2006). Our choices:
  features per voxel = the post-contrast signal minus the pre-contrast, one per
  post-contrast phase, divided by the 95th percentile of the pre-contrast in the region
  (so the features are comparable across scanners); :data:`FCM_CLUSTERS` clusters,
  fuzzifier m = 2; centroids fitted on at most :data:`FCM_MAX_SAMPLES` region voxels taken
  at a fixed stride, started by farthest-point selection from the voxel of median
  enhancement (no random numbers: the result is deterministic); every region voxel then gets the cluster of its largest
  membership; the tumor candidates are the cluster whose centroid has the highest initial
  enhancement (the first post-contrast feature); the component around the strongest
  enhancement is kept and its holes filled. Needs no acquisition times.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..exam.maps import dce_in, percent_enhancement, early_and_late_phases
from ..segmentation.postprocess import bounding_box, connected_components, fill_holes
from ..exam.dce_exam import DCEStudy
from ..reporting.measurements import functional_tumor_mask
from ..segmentation.pipeline import body_mask

#: Percent enhancement threshold of the PE baseline (%), the I-SPY default.
PE_THRESHOLD_PERCENT = 70.0
#: Fuzzy c-means: number of clusters, fuzzifier, iterations, convergence and sample size.
FCM_CLUSTERS = 4
FCM_FUZZIFIER = 2.0
FCM_MAX_ITERATIONS = 100
FCM_TOLERANCE = 1e-5
FCM_MAX_SAMPLES = 200_000

BASELINES = ("pe", "fcm")


def baseline_region(study: DCEStudy, breast_mask=None) -> np.ndarray:
    """Where the baselines look (bool ``[z, y, x]``): the breast mask if given, else the body."""
    if breast_mask is not None:
        region = np.asarray(breast_mask) > 0
        if region.shape != study.geometry.shape_zyx:
            raise ValueError(f"breast mask {region.shape} is not on the study's grid {study.geometry.shape_zyx}")
        if region.any():
            return region

    return body_mask(study)


def seed_component(candidates: np.ndarray, enhancement: np.ndarray) -> np.ndarray:
    """The 26-connected component of ``candidates`` holding the strongest enhancement.

    ``enhancement`` is smoothed (Gaussian, sigma 1 voxel) before its maximum over the
    candidates is taken, so a single noisy voxel does not choose the component. Holes are
    filled. Empty candidates give an empty mask (uint8).
    """
    candidates = np.asarray(candidates, dtype=bool)
    box = bounding_box(candidates)
    out = np.zeros(candidates.shape, dtype=np.uint8)
    if box is None:
        return out
    inside = candidates[box]
    smooth = ndimage.gaussian_filter(np.asarray(enhancement, dtype=np.float32)[box], sigma=1.0)
    labels, _ = connected_components(inside, 26)
    peak = np.argmax(np.where(inside, smooth, -np.inf))
    chosen = labels == labels.ravel()[peak]
    out[box] = fill_holes(chosen)
    return out


def percent_enhancement_baseline(study: DCEStudy, region, *, pe_threshold_percent: float = PE_THRESHOLD_PERCENT,
                                 early_time_s: float = 150.0) -> np.ndarray:
    """Tumor mask (uint8) from the I-SPY percent-enhancement rule in ``region``, the component
    around the strongest enhancement kept. Raises :class:`MissingTimesError` without times."""
    passing, _ = functional_tumor_mask(study, region, pe_threshold_percent=pe_threshold_percent,
                                       early_time_s=early_time_s)
    early, _ = early_and_late_phases(study.require_times("the percent-enhancement baseline"), early_time_s)
    return seed_component(passing, percent_enhancement(study.pre_contrast, study.phases[early]) * passing)


def enhancement_features(study: DCEStudy, region: np.ndarray) -> np.ndarray:
    """``[n_voxels, n_post]`` float32: (S_t - S0) / p95(S0 in region) for each post-contrast
    phase t, for the region's voxels in C order."""
    region = np.asarray(region, dtype=bool)
    pre = study.pre_contrast[region]
    scale = float(np.percentile(pre, 95)) if pre.size else 1.0
    scale = scale if scale > 0 else 1.0
    return np.stack([(phase[region] - pre) / scale for phase in study.post_contrast], axis=1).astype(np.float32)


def fuzzy_c_means(features: np.ndarray, n_clusters: int = FCM_CLUSTERS, *, fuzzifier: float = FCM_FUZZIFIER,
                  max_iterations: int = FCM_MAX_ITERATIONS, tolerance: float = FCM_TOLERANCE
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fuzzy c-means (Bezdek) of ``features`` ``[n, d]``: centroids ``[c, d]`` and memberships ``[n, c]``.

    Centroids start at the sample of median mean feature, then repeatedly the sample
    farthest from those chosen (deterministic; a small strongly enhancing group gets its
    own cluster from the start). Iterates the usual alternating updates
    u_ik = 1 / sum_j (d_ik / d_ij)^(2 / (m - 1)) and v_k = sum_i u_ik^m x_i / sum_i u_ik^m until
    the largest centroid move is below ``tolerance`` x the features' spread, or ``max_iterations``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty [n, d] array, got shape {x.shape}")
    n_clusters = max(1, min(int(n_clusters), len(x)))
    centroids = _farthest_point_start(x, n_clusters)
    spread = float(x.std()) or 1.0
    exponent = 2.0 / (fuzzifier - 1.0)
    memberships = None
    for _ in range(max_iterations):
        memberships = _memberships(x, centroids, exponent)
        weights = memberships ** fuzzifier
        updated = (weights.T @ x) / np.maximum(weights.sum(axis=0)[:, None], 1e-12)
        moved = float(np.abs(updated - centroids).max())
        centroids = updated
        if moved < tolerance * spread:
            break
    return centroids, _memberships(x, centroids, exponent)


def _farthest_point_start(x: np.ndarray, n_clusters: int) -> np.ndarray:
    """Deterministic start: the sample at the median of the mean feature, then repeatedly the
    sample farthest from every centroid chosen so far (the first one on ties)."""
    first = int(np.argsort(x.mean(axis=1), kind="stable")[len(x) // 2])
    centroids = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(axis=1)
    for _ in range(1, n_clusters):
        pick = int(np.argmax(nearest))
        centroids.append(x[pick])
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(axis=1))
    return np.array(centroids, dtype=np.float64)


def _memberships(x: np.ndarray, centroids: np.ndarray, exponent: float) -> np.ndarray:
    """u_ik = d_ik^-e / sum_j d_ij^-e (the same as 1 / sum_j (d_ik / d_ij)^e), e = 2 / (m - 1)."""
    squared = (np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ centroids.T)
               + np.einsum("ij,ij->i", centroids, centroids)[None, :])
    inverse = np.maximum(squared, 1e-12) ** (-0.5 * exponent)
    return inverse / inverse.sum(axis=1, keepdims=True)


def fuzzy_c_means_baseline(study: DCEStudy, region, *, n_clusters: int = FCM_CLUSTERS,
                           max_samples: int = FCM_MAX_SAMPLES) -> np.ndarray:
    """Tumor mask (uint8) by fuzzy c-means on the enhancement curves in ``region`` (see the module)."""
    region = np.asarray(region, dtype=bool)
    out = np.zeros(region.shape, dtype=np.uint8)
    if not region.any():
        return out
    features = enhancement_features(study, region)
    stride = max(1, -(-len(features) // int(max_samples)))
    centroids, _ = fuzzy_c_means(features[::stride], n_clusters)
    exponent = 2.0 / (FCM_FUZZIFIER - 1.0)
    labels = np.concatenate([np.argmax(_memberships(chunk.astype(np.float64), centroids, exponent), axis=1)
                             for chunk in np.array_split(features, max(1, len(features) // 500_000 + 1))])
    tumor_cluster = int(np.argmax(centroids[:, 0]))
    candidates = np.zeros(region.shape, dtype=bool)
    candidates[region] = labels == tumor_cluster
    return seed_component(candidates, dce_in(study))


def run_baseline(name: str, study: DCEStudy, region) -> np.ndarray:
    """The baseline ``name`` (``"pe"`` or ``"fcm"``) on ``study`` in ``region``."""
    if name == "pe":
        return percent_enhancement_baseline(study, region)
    if name == "fcm":
        return fuzzy_c_means_baseline(study, region)
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
