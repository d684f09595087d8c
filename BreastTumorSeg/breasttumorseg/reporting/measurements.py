"""Clinical measurements of a tumor mask on a DCE-MRI study.

Masks are ``[z, y, x]`` arrays (nonzero = tumor) on ``study.geometry``. Volumes are in mL,
lengths in mm (physical, LPS; spacing and direction from the grid), times in seconds.

* tumor volume: voxel count x voxel volume.
* longest 3D diameter: see :func:`longest_diameter_mm`.
* T category by size only: :func:`t_category`.
* lesions: 26-connected components of the mask, those whose voxels come within
  :data:`LESION_GAP_MM` of each other (centre to centre) counted as one lesion (at 2-3 mm slices a spiculated
  tumor's spicules fall apart into fragments one slice apart: they are not lesions). Each lesion has its
  volume, longest diameter, centroid (LPS mm) and side (:func:`lesions`); the largest by volume is the
  index lesion, whose diameter gives the T category, "(m)" added when there are several (AJCC).
* functional tumor volume (I-SPY / ACRIN 6657) and SER band volumes:
  :func:`functional_tumor_volume`.
* mean kinetic curve inside the tumor and its type: :func:`kinetic_curve_type`.
* enhancement statistics inside the tumor: mean/median percent enhancement, mean SER.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..core.errors import MissingTimesError
from ..core.geometry import Geometry
from ..exam.maps import early_and_late_phases, percent_enhancement, signal_enhancement_ratio
from ..segmentation.postprocess import bounding_box, connected_components
from ..exam.curves import delayed_type, early_phase
from ..exam.dce_exam import DCEStudy

#: SER bands commonly shown with the functional tumor volume: (name, low, high], SER units.
SER_BANDS = (
    ("ser_le_0.9_ml", -math.inf, 0.9),
    ("ser_0.9_1.0_ml", 0.9, 1.0),
    ("ser_1.0_1.3_ml", 1.0, 1.3),
    ("ser_1.3_1.75_ml", 1.3, 1.75),
    ("ser_gt_1.75_ml", 1.75, math.inf),
)


def _mask_on(mask, geometry: Geometry) -> np.ndarray:
    mask = np.asarray(mask) > 0
    if mask.shape != geometry.shape_zyx:
        raise ValueError(f"mask shape {mask.shape} does not match grid {geometry.shape_zyx}")
    return mask


# ----------------------------------------------------------------------------- size
def tumor_volume_ml(mask, geometry: Geometry) -> float:
    """Voxel count x voxel volume, mL."""
    return float(int(np.count_nonzero(mask)) * geometry.voxel_volume_ml)


def longest_diameter_mm(mask, geometry: Geometry) -> float:
    """Longest 3D diameter of the mask in mm: the largest distance between the centres of
    two of its surface voxels, in physical space (found among the vertices of their convex
    hull, so it is fast for large tumors).

    Centre to centre, not edge to edge: for smooth shapes the farthest centres lie almost
    on the true boundary, so a discretised sphere of radius r measures about 2r (within one
    voxel, usually much less); adding a voxel would overestimate such shapes by up to a
    voxel diagonal. Thin shapes along a grid axis are measured short by up to one voxel
    (a line of n voxels measures n - 1 spacings). A non-empty mask measures at least its
    largest voxel edge, so a single voxel is not "no tumor". 0.0 for an empty mask.
    """
    mask = _mask_on(mask, geometry)
    box = bounding_box(mask)
    if box is None:
        return 0.0
    return _longest_diameter_of_voxels(mask[box], geometry.spacing)


def _longest_diameter_of_voxels(mask_zyx: np.ndarray, spacing_xyz) -> float:
    """:func:`longest_diameter_mm` of a non-empty bool ``[z, y, x]`` block of any grid with
    that spacing (lengths do not depend on where the block lies or how the grid is turned)."""
    spacing = np.asarray(spacing_xyz, dtype=float)
    cropped = np.pad(mask_zyx, 1)
    surface = cropped & ~ndimage.binary_erosion(cropped, structure=ndimage.generate_binary_structure(3, 1))
    kji = np.argwhere(surface) - 1
    points = kji[:, ::-1].astype(float) * spacing  # (i, j, k) in mm; the direction matrix is a rotation
    candidates = points
    if len(points) > 4:
        try:
            candidates = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # flat (one slice, a line): joggle, vertices stay input points
            try:
                candidates = points[ConvexHull(points, qhull_options="QJ").vertices]
            except (QhullError, ValueError):
                candidates = points
    distance = _farthest_pair(candidates)[2] if len(candidates) > 1 else 0.0
    return float(max(distance, spacing.max()))


def _farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Indices of the two points farthest apart and their distance (blocked brute force)."""
    norms = np.einsum("ij,ij->i", points, points)
    block = max(1, 4_000_000 // len(points))
    best = (0, 0, -1.0)
    for start in range(0, len(points), block):
        chunk = points[start:start + block]
        squared = norms[start:start + block, None] + norms[None, :] - 2.0 * chunk @ points.T
        i, j = divmod(int(np.argmax(squared)), len(points))
        if squared[i, j] > best[2]:
            best = (start + i, j, float(squared[i, j]))
    first, second = best[0], best[1]
    return first, second, float(np.linalg.norm(points[second] - points[first]))


def t_category(longest_diameter_mm: float) -> str:
    """AJCC T category from the longest diameter alone (mm).

    "T0" for no tumor (diameter 0, negative or NaN), "T1" <= 20 mm, "T2" <= 50 mm,
    "T3" > 50 mm. Size only: T4 (extension to the chest wall or skin, inflammatory
    carcinoma) cannot be judged from a size and is never returned; Tis and the T1
    sub-categories are not distinguished either.
    """
    d = float(longest_diameter_mm)
    if not d > 0.0:
        return "T0"
    if d <= 20.0:
        return "T1"
    if d <= 50.0:
        return "T2"
    return "T3"


#: AJCC's suffix to the T category when there is more than one tumor (multiplicity).
MULTIPLE_SUFFIX = " (m)"


def t_category_of_lesions(index_diameter_mm: float, n_lesions: int) -> str:
    """AJCC T category (size only) of a breast with ``n_lesions`` tumors: that of the index
    (largest) lesion's longest diameter (mm), with :data:`MULTIPLE_SUFFIX` when
    ``n_lesions`` > 1, e.g. "T2 (m)"."""
    category = t_category(index_diameter_mm)
    return category + MULTIPLE_SUFFIX if n_lesions > 1 else category


# ----------------------------------------------------------------------------- functional tumor volume
def functional_tumor_mask(study: DCEStudy, region_mask, *, pe_threshold_percent: float = 70.0,
                          background_fraction: float = 0.6, min_neighbours: int = 4,
                          early_time_s: float = 150.0, late_time_s: float = 450.0) -> tuple[np.ndarray, dict]:
    """The functional tumor voxels (bool ``[z, y, x]``) and the facts behind them.

    I-SPY / ACRIN 6657: S0 = pre-contrast, S1 = the post-contrast phase acquired closest to
    ``early_time_s``, S2 = closest to ``late_time_s`` (never earlier than S1). Inside
    ``region_mask`` a voxel counts when S0 > ``background_fraction`` x the 95th percentile
    of S0 in the region, PE = 100 (S1 - S0) / S0 >= ``pe_threshold_percent``, and at least
    ``min_neighbours`` of its 26 neighbours pass the first two tests too (one pass, not
    iterated; neighbours outside the region do not count). Needs acquisition times.
    """
    times = study.require_times("functional tumor volume")
    region = _mask_on(region_mask, study.geometry)
    early, late = early_and_late_phases(times, early_time_s, late_time_s)
    info = {
        "early_phase": int(early),
        "late_phase": int(late),
        "early_phase_time_s": float(times[early]),
        "late_phase_time_s": float(times[late]),
        "pe_threshold_percent": float(pe_threshold_percent),
        "background_fraction": float(background_fraction),
        "min_neighbours": int(min_neighbours),
        "region_volume_ml": tumor_volume_ml(region, study.geometry),
        "background_threshold": None,
    }
    out = np.zeros(region.shape, dtype=bool)
    box = bounding_box(region, margin=1)
    if box is None:
        return out, info
    inside = region[box]
    s0 = study.pre_contrast[box]
    s1, s2 = study.phases[early][box], study.phases[late][box]
    background = float(background_fraction) * float(np.percentile(s0[inside], 95))
    info["background_threshold"] = background
    passing = inside & (s0 > background) & (percent_enhancement(s0, s1) >= pe_threshold_percent)
    kernel = np.ones((3, 3, 3), dtype=np.int32)
    kernel[1, 1, 1] = 0
    neighbours = ndimage.convolve(passing.astype(np.int32), kernel, mode="constant", cval=0)
    out[box] = passing & (neighbours >= int(min_neighbours))
    info["_ser"] = (signal_enhancement_ratio(s0, s1, s2), box)
    return out, info


def functional_tumor_volume(study: DCEStudy, region_mask, *, pe_threshold_percent: float = 70.0,
                            background_fraction: float = 0.6, min_neighbours: int = 4,
                            early_time_s: float = 150.0, late_time_s: float = 450.0) -> dict:
    """Functional tumor volume (FTV, mL) by the I-SPY / ACRIN 6657 definition.

    See :func:`functional_tumor_mask` for which voxels count. FTV = count x voxel volume.
    Returns ``functional_tumor_volume_ml``, the phases used (``early_phase``,
    ``late_phase``: indices into ``study.phases``; their times in s), the thresholds
    (``background_threshold`` in signal units), ``region_volume_ml``, ``mean_ser`` over the
    FTV voxels and the FTV split by SER = (S1 - S0) / (S2 - S0) into the bands
    <= 0.9, (0.9, 1.0], (1.0, 1.3], (1.3, 1.75], > 1.75 (keys ``ser_le_0.9_ml`` ...
    ``ser_gt_1.75_ml``, mL). With one post-contrast phase S1 = S2 and SER is 1.
    Raises :class:`MissingTimesError` without acquisition times.
    """
    ftv_mask, info = functional_tumor_mask(
        study, region_mask, pe_threshold_percent=pe_threshold_percent, background_fraction=background_fraction,
        min_neighbours=min_neighbours, early_time_s=early_time_s, late_time_s=late_time_s)
    voxel_ml = study.geometry.voxel_volume_ml
    ser_and_box = info.pop("_ser", None)
    result = {"functional_tumor_volume_ml": float(np.count_nonzero(ftv_mask) * voxel_ml)}
    result.update(info)
    ser_values = np.zeros(0, dtype=np.float32)
    if ser_and_box is not None:
        ser, box = ser_and_box
        ser_values = ser[ftv_mask[box]]
    result["mean_ser"] = float(ser_values.mean()) if ser_values.size else None
    for name, low, high in SER_BANDS:
        in_band = (ser_values > low) & (ser_values <= high)
        result[name] = float(np.count_nonzero(in_band) * voxel_ml)
    return result


# ----------------------------------------------------------------------------- kinetics
def kinetic_curve_type(study: DCEStudy, mask, *, early_time_s: float = 120.0) -> dict:
    """Mean signal-time curve inside ``mask`` and its delayed-phase type.

    Convention (BI-RADS-like, Kuhl et al. 1999): the early signal S_early is the mean at the
    post-contrast phase acquired closest to ``early_time_s`` (2 min by default; the last
    phase is never used as the early one), the late signal S_late the mean at the last
    phase. The change 100 (S_late - S_early) / S_early in percent is "persistent" when
    > +10 %, "washout" when < -10 %, else "plateau". "undetermined" for an empty mask, a
    single post-contrast phase, or no early signal. Also reports the initial enhancement
    100 (S_early - S0) / S0 and its BI-RADS class (slow < 50 %, medium 50-100 %,
    fast > 100 %). Needs acquisition times (:class:`MissingTimesError` otherwise).
    """
    times = study.require_times("the kinetic curve type")
    mask = _mask_on(mask, study.geometry)
    result = {"kinetic_curve_type": "undetermined", "curve_times_s": [float(t) for t in times],
              "curve_mean_signal": None, "early_phase": None, "late_phase": None,
              "late_change_percent": None, "initial_enhancement_percent": None,
              "initial_enhancement": "undetermined"}
    if not mask.any():
        return result
    box = bounding_box(mask)
    inside = mask[box]
    curve = np.array([float(phase[box][inside].mean()) for phase in study.phases])
    result["curve_mean_signal"] = [float(v) for v in curve]
    if study.n_phases < 3:
        return result
    early = early_phase(times, early_time_s)
    late = study.n_phases - 1
    result.update(early_phase=early, late_phase=late)
    pre, s_early, s_late = curve[0], curve[early], curve[late]
    if pre > 0:
        initial = 100.0 * (s_early - pre) / pre
        result["initial_enhancement_percent"] = float(initial)
        result["initial_enhancement"] = "slow" if initial < 50 else ("medium" if initial <= 100 else "fast")
    if not s_early > 0:
        return result
    change = 100.0 * (s_late - s_early) / s_early
    result["late_change_percent"] = float(change)
    result["kinetic_curve_type"] = delayed_type(change)
    return result


# ----------------------------------------------------------------------------- everything
def ftv_region(mask, geometry: Geometry, margin_mm: float = 5.0) -> np.ndarray:
    """The FTV region for a segmentation: its bounding box grown by ``margin_mm`` on every
    side (the analogue of the rectangular volume of interest a reader draws in I-SPY)."""
    mask = _mask_on(mask, geometry)
    region = np.zeros(mask.shape, dtype=bool)
    margins = tuple(int(math.ceil(margin_mm / s)) for s in reversed(geometry.spacing))
    box = bounding_box(mask, margin=margins)
    if box is not None:
        region[box] = True
    return region


#: Components of a mask whose voxel centres come this close (mm) belong to one lesion.
LESION_GAP_MM = 6.0

#: Lesions whose centroid lies within this distance (mm) of the midline get the side "midline".
MIDLINE_BAND_MM = 10.0


def lesion_labels(mask, geometry: Geometry,
                  gap_mm: float = LESION_GAP_MM) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """The lesions of ``mask`` as labels: ``(box, labels)`` where ``labels`` (int32, the
    shape of ``mask[box]``) is 0 off the mask and 1..n on the voxels of lesion 1..n, largest
    (voxel count) first. Lesions are 26-connected components grouped when voxel centres of
    two come within about ``gap_mm`` (physical, mm) of each other (they are bridged through
    voxels within ``gap_mm / 2`` of both). ``(None, empty array)`` for an empty mask."""
    mask = _mask_on(mask, geometry)
    box = bounding_box(mask, margin=tuple(int(math.ceil(gap_mm / s)) + 1 for s in reversed(geometry.spacing)))
    if box is None:
        return None, np.zeros((0, 0, 0), dtype=np.int32)
    region = mask[box]
    near = ndimage.distance_transform_edt(~region, sampling=tuple(reversed(geometry.spacing))) <= gap_mm / 2.0 + 1e-6
    groups, n = connected_components(near | region, 26)
    groups[~region] = 0
    counts = np.bincount(groups.ravel(), minlength=n + 1)
    order = [g for g in sorted(range(1, n + 1), key=lambda g: -counts[g]) if counts[g] > 0]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return box, relabel[groups]


def side_of(centroid_lps_mm) -> str:
    """The patient's side of a point (LPS mm): "left" where x > :data:`MIDLINE_BAND_MM` (LPS x
    grows towards the patient's left), "right" where x < -:data:`MIDLINE_BAND_MM`, else "midline".

    The midline is the plane x = 0 of the patient coordinate system. Scanners put that
    system's origin at the magnet's isocentre and the patient lies centred on the table
    (prone in the breast coil, sternum on its central bridge), so x = 0 runs through the
    sternum to within about a centimetre on bilateral and unilateral acquisitions alike.
    An image whose origin was moved (some conversions put it at a corner) gives a wrong side.
    """
    x = float(centroid_lps_mm[0])
    if x > MIDLINE_BAND_MM:
        return "left"
    if x < -MIDLINE_BAND_MM:
        return "right"
    return "midline"


def lesions(mask, geometry: Geometry, gap_mm: float = LESION_GAP_MM) -> list[dict]:
    """Each lesion of ``mask`` (see :func:`lesion_labels`), largest first, JSON-ready:
    ``volume_ml``, ``longest_diameter_mm`` (:func:`longest_diameter_mm` of its voxels),
    ``centroid_lps_mm`` (mean of its voxel centres, [L, P, S] mm in the grid's physical
    space) and ``side`` (:func:`side_of` its centroid)."""
    box, labels = lesion_labels(mask, geometry, gap_mm)
    if box is None:
        return []
    offset = np.array([b.start for b in box])
    found = []
    for number, where in enumerate(ndimage.find_objects(labels), start=1):
        voxels = labels[where] == number
        kji = np.argwhere(voxels).mean(axis=0) + offset + np.array([w.start for w in where])
        centroid = geometry.index_to_physical(kji[::-1])
        found.append({
            "volume_ml": float(np.count_nonzero(voxels) * geometry.voxel_volume_ml),
            "longest_diameter_mm": _longest_diameter_of_voxels(voxels, geometry.spacing),
            "centroid_lps_mm": [float(v) for v in centroid],
            "side": side_of(centroid),
        })
    return found


def measure(study: DCEStudy, mask, *, ftv_options: dict | None = None) -> dict:
    """Every measurement of a tumor mask (``[z, y, x]`` on ``study.geometry``), JSON-ready.

    Size: ``tumor_volume_ml`` (all lesions together), ``longest_diameter_mm`` and
    ``t_category`` of the index lesion (the largest by volume; the category by size only,
    "(m)" added when there are several lesions), ``n_lesions`` and ``lesions`` (each lesion,
    largest first: see :func:`lesions`; centroids in LPS mm). Then
    ``functional_tumor_volume_ml`` and its details prefixed ``ftv_`` plus the SER band
    volumes ``ser_..._ml``, ``kinetic_curve_type`` with ``late_change_percent`` and
    ``initial_enhancement``, ``mean_percent_enhancement`` / ``median_percent_enhancement``
    (% at the FTV early phase, else the first post-contrast) and ``mean_ser`` inside the
    tumor, and ``notes`` (one string: why something could not be measured, empty if all was).

    ``ftv_options``: keyword arguments of :func:`functional_tumor_volume`
    (``pe_threshold_percent``, ``background_fraction``, ``min_neighbours``, ``early_time_s``,
    ``late_time_s``; ``None`` values mean the default) plus ``region_margin_mm`` (default
    5 mm): the FTV region is the tumor's bounding box grown by that margin.
    Without acquisition times the FTV, SER and kinetic entries are ``None`` and ``notes``
    says which option gives the times.
    """
    geometry = study.geometry
    mask = _mask_on(mask, geometry)
    options = {k: v for k, v in (ftv_options or {}).items() if v is not None}
    margin_mm = float(options.pop("region_margin_mm", 5.0))
    notes = []

    box = bounding_box(mask)
    found = lesions(mask, geometry)
    diameter = found[0]["longest_diameter_mm"] if found else 0.0
    result = {
        "tumor_volume_ml": tumor_volume_ml(mask, geometry),
        "longest_diameter_mm": diameter,
        "t_category": t_category_of_lesions(diameter, len(found)),
        "n_lesions": len(found),
        "lesions": found,
    }

    early = 1
    late = None
    try:
        ftv = functional_tumor_volume(study, ftv_region(mask, geometry, margin_mm), **options)
        early, late = ftv["early_phase"], ftv["late_phase"]
        result["functional_tumor_volume_ml"] = ftv.pop("functional_tumor_volume_ml")
        for name, _, _ in SER_BANDS:
            result[name] = ftv.pop(name)
        result.update({f"ftv_{key}": value for key, value in ftv.items()})
    except MissingTimesError as error:
        result["functional_tumor_volume_ml"] = None
        notes.append(str(error))
    try:
        kinetics = kinetic_curve_type(study, mask)
        result["kinetic_curve_type"] = kinetics["kinetic_curve_type"]
        result["late_change_percent"] = kinetics["late_change_percent"]
        result["initial_enhancement_percent"] = kinetics["initial_enhancement_percent"]
        result["initial_enhancement"] = kinetics["initial_enhancement"]
        result["curve_mean_signal"] = kinetics["curve_mean_signal"]
    except MissingTimesError as error:
        result["kinetic_curve_type"] = None
        if not notes:
            notes.append(str(error))

    result["mean_percent_enhancement"] = result["median_percent_enhancement"] = None
    result["mean_ser"] = None
    if box is not None:
        inside = mask[box]
        s0 = study.pre_contrast[box]
        pe = percent_enhancement(s0, study.phases[early][box])[inside]
        result["mean_percent_enhancement"] = float(pe.mean())
        result["median_percent_enhancement"] = float(np.median(pe))
        if late is not None:
            ser = signal_enhancement_ratio(s0, study.phases[early][box], study.phases[late][box])[inside]
            result["mean_ser"] = float(ser.mean())
    result["enhancement_phase"] = int(early)
    result["notes"] = " ".join(notes)
    return result
