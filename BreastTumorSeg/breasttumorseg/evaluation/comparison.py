"""Comparing predicted with reference tumor masks over one case or a folder of cases.

Cases are paired by name. A folder holds ``<case>.nii.gz`` (or .nii/.nrrd/.mha) mask
files, or ``<case>/`` sub-folders with ``tumor_label.nii.gz`` (what ``segment`` writes)
or ``tumor_mask.nii.gz`` (what ``phantom`` writes). Metrics are computed on the
reference's grid (a prediction on another grid is resampled, nearest neighbour).

Cohort evaluation (:func:`evaluate_cohort`, :func:`cohort_summary`) adds, per case, the
reference's size band (T category of its longest 3D diameter: T1 <= 20 mm, T2 <= 50 mm,
T3 > 50 mm; T0 = empty reference) and number of phases, optionally the two conventional
baselines of :mod:`.baselines` on the same cases, and per method the median, IQR, mean and
percentile-bootstrap 95 % confidence intervals of the median and of the mean (2000
resamples, seed 0 by default), over all cases, per size band and per number of phases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import csv
import json
import io

from ..core.errors import GeometryError, InputError
from ..exam.loading import load_study, read_image, read_mask
from .metrics import evaluate_masks
from ..run.cohort import read_manifest
from .baselines import baseline_region, run_baseline
from ..reporting.measurements import longest_diameter_mm, t_category
from ..core import atomic
from ..core.atomic import atomic_path

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
MASK_NAMES_IN_CASE = ("tumor_label.nii.gz", "tumor_mask.nii.gz", "tumor.seg.nrrd")
SUMMARY_METRICS = ("dice", "sensitivity", "precision", "hd95_mm", "assd_mm", "volume_difference_ml")


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in MASK_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _cases_in(folder: Path) -> dict[str, Path]:
    cases = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for mask_name in MASK_NAMES_IN_CASE:
                if (entry / mask_name).is_file():
                    cases[entry.name] = entry / mask_name
                    break
        elif entry.name.endswith(MASK_SUFFIXES):
            cases[_case_name(entry)] = entry
    return cases


def pair_cases(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    """(case, prediction file, reference file) for two files or two folders of cases."""
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        if not path.exists():
            raise InputError("no such file or folder", path)
    if pred.is_file() and ref.is_file():
        return [(_case_name(ref), pred, ref)]
    if pred.is_dir() != ref.is_dir():
        raise InputError("give two mask files or two folders of cases", pred if pred.is_dir() else ref)
    predicted, reference = _cases_in(pred), _cases_in(ref)
    if not reference:
        raise InputError("no reference masks found", ref)
    missing = sorted(set(reference) - set(predicted))
    if missing:
        raise InputError(f"no prediction for {len(missing)} reference case(s): {', '.join(missing[:5])}", pred)
    return [(case, predicted[case], reference[case]) for case in sorted(reference)]


def evaluate_pairs(pairs, *, warn=None, progress_iter=iter) -> list[dict]:
    """Metrics per case (see :func:`breasttumorseg.evaluation.metrics.evaluate_masks`)."""
    rows = []
    for case, pred_path, ref_path in progress_iter(pairs):
        reference, geometry = read_image(ref_path)
        prediction = read_mask(pred_path, geometry, warn=warn)
        row = {"case": case}
        row.update(evaluate_masks(prediction > 0, reference > 0.5, geometry))
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Median, IQR and mean of each metric over the cases (infinite distances excluded)."""
    summary = {"n_cases": len(rows)}
    for metric in SUMMARY_METRICS:
        values = np.array([r[metric] for r in rows if r.get(metric) is not None], dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            summary[metric] = None
            continue
        q1, median, q3 = np.percentile(finite, [25, 50, 75])
        summary[metric] = {"median": float(median), "q1": float(q1), "q3": float(q3),
                           "mean": float(finite.mean()), "n_infinite": int(values.size - finite.size)}
    return summary


def format_table(rows: list[dict], summary: dict) -> str:
    """A plain-text table: one line per case, then median [IQR]."""
    headers = ("case", "Dice", "sens", "prec", "HD95 mm", "ASSD mm", "dV mL")
    lines = [" ".join(f"{h:>10}" if i else f"{h:<20}" for i, h in enumerate(headers))]
    for row in rows:
        values = [row[m] for m in SUMMARY_METRICS]
        lines.append(f"{row['case'][:20]:<20} " + " ".join(_cell(v) for v in values))
    if len(rows) > 1:
        cells = []
        for metric in SUMMARY_METRICS:
            stats = summary.get(metric)
            cells.append(_cell(stats["median"]) if stats else _cell(None))
        lines.append(f"{'median':<20} " + " ".join(cells))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'n/a':>10}"
    if isinstance(value, float) and math.isinf(value):
        return f"{'inf':>10}"
    return f"{value:>10.3f}"


# ============================================================================= cohort evaluation
# Per-case rows for the model and the conventional baselines, statistics with bootstrap
# confidence intervals, split by size band and by number of phases, and box plots.

#: The methods a cohort evaluation can compare, in the order they are shown.
METHODS = ("model", "pe", "fcm")
METHOD_LABELS = {"model": "model", "pe": "PE >= 70 %", "fcm": "fuzzy c-means"}
#: Size bands by the reference's longest 3D diameter (T category by size; T0 = no tumor in the reference).
SIZE_BANDS = {"T0": "no tumor in the reference", "T1": "<= 20 mm", "T2": "> 20 and <= 50 mm", "T3": "> 50 mm"}
#: Columns of per_case.csv, in order.
CASE_COLUMNS = ("case", "method", "size_band", "ref_longest_diameter_mm", "n_phases", "dice", "sensitivity",
                "precision", "hd95_mm", "assd_mm", "volume_pred_ml", "volume_ref_ml", "volume_difference_ml",
                "volume_difference_percent")
#: Bootstrap defaults: resamples, seed of numpy's default generator, two-sided confidence level.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: Image names taken as phases in a case folder of ``--baselines`` (sorted by name).
_PHASE_PREFIX = "phase"


@dataclass(frozen=True)
class BaselineInput:
    """Where the DCE study of one case lies, for the baselines."""

    phases: tuple[Path, ...]
    times_s: tuple[float, ...] | None = None
    breast_mask: Path | None = None


def baseline_inputs(source: Path, cases: list[str]) -> dict[str, BaselineInput]:
    """The DCE study of every case in ``cases`` from a folder or a manifest.

    A folder holds ``<case>/`` sub-folders with the phases as image files whose names
    start with ``phase`` (sorted by name; times from ``times.json`` beside them, as for
    ``segment``) or as a ``dicom/`` folder, and optionally ``breast_mask.nii.gz``. A file is
    a ``batch`` manifest (columns ``case``, ``phases``, optional ``times``, ``breast_mask``).
    Raises :class:`InputError` before anything is read when a case has no study.
    """
    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    found: dict[str, BaselineInput] = {}
    if source.is_file():

        for entry in read_manifest(source):
            found[entry.name] = BaselineInput(entry.phases, entry.times_s, entry.breast_mask)
    else:
        for case in cases:
            folder = source / case
            if not folder.is_dir():
                continue
            phases = tuple(sorted(p for p in folder.iterdir()
                                  if p.is_file() and p.name.startswith(_PHASE_PREFIX)
                                  and p.name.endswith(MASK_SUFFIXES)))
            if not phases and (folder / "dicom").is_dir():
                phases = (folder / "dicom",)
            if phases:
                mask = folder / "breast_mask.nii.gz"
                found[case] = BaselineInput(phases, None, mask if mask.is_file() else None)
    if not found:
        raise InputError("no DCE studies found (expected <case>/phase*.nii.gz, <case>/dicom/ or a manifest)", source)
    missing = [case for case in cases if case not in found]
    if missing:
        raise InputError(f"no DCE study for {len(missing)} reference case(s): {', '.join(missing[:5])}", source)
    return {case: found[case] for case in cases}


def read_phases_csv(path: Path) -> dict[str, int]:
    """``case`` -> number of phases from a CSV with columns ``case`` and ``n_phases``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
        if "case" not in header or "n_phases" not in header:
            raise InputError("needs the columns 'case' and 'n_phases'", path)
        reader.fieldnames = header
        phases = {}
        for row in reader:
            case, value = (row.get("case") or "").strip(), (row.get("n_phases") or "").strip()
            if not case:
                continue
            try:
                count = int(value)
            except ValueError:
                count = 0
            if count < 2:
                raise InputError(f"line {reader.line_num}: n_phases of {case!r} must be a whole number >= 2, "
                                 f"got {value!r}", path)
            phases[case] = count
    return phases


def phases_from_files(pred_path: Path, ref_path: Path) -> int | None:
    """The number of phases from files beside the masks, when their folders are case folders:
    the prediction's ``measurements.json`` (``phase_times_s``), else the reference's
    ``info.json`` (``n_phases``, what ``phantom`` writes) or ``times.json`` (``times_s``)."""
    candidates = []
    if Path(pred_path).name in MASK_NAMES_IN_CASE:
        candidates.append((Path(pred_path).parent / "measurements.json", "phase_times_s"))
    if Path(ref_path).name in MASK_NAMES_IN_CASE:
        folder = Path(ref_path).parent
        candidates += [(folder / "info.json", "n_phases"), (folder / "times.json", "times_s")]
    for path, key in candidates:
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, list) and len(value) >= 2:
            return len(value)
        if isinstance(value, int) and value >= 2:
            return value
    return None


def evaluate_cohort(pairs, *, baselines: dict[str, BaselineInput] | None = None,
                    phases: dict[str, int] | None = None, warn=None, progress_iter=iter) -> list[dict]:
    """Per-case rows (:data:`CASE_COLUMNS`) for the model and, with ``baselines``, for the
    percent-enhancement and fuzzy c-means baselines on the same cases.

    Metrics as :func:`breasttumorseg.evaluation.metrics.evaluate_masks` on the reference's grid.
    ``size_band`` is the T category of the reference's longest 3D diameter (mm,
    :func:`breasttumorseg.reporting.measurements.longest_diameter_mm`). ``n_phases``: from ``phases``
    (``--phases-csv``), else the baseline study, else :func:`phases_from_files`, else None.
    A baseline needs its reference mask on the grid of its study's first post-contrast
    phase: :class:`GeometryError` otherwise.
    """
    rows = []
    for case, pred_path, ref_path in progress_iter(pairs):
        reference, geometry = read_image(ref_path)
        reference = reference > 0.5
        diameter = longest_diameter_mm(reference, geometry)
        common = {"case": case, "size_band": t_category(diameter), "ref_longest_diameter_mm": diameter,
                  "n_phases": (phases or {}).get(case)}
        masks = {"model": read_mask(pred_path, geometry, warn=warn) > 0}
        if baselines is not None:
            entry = baselines[case]
            study = load_study(list(entry.phases), entry.times_s, warn=warn)
            differences = study.geometry.differences(geometry)
            if differences:
                raise GeometryError(f"reference mask is not on the grid of its DCE study's first post-contrast "
                                    f"phase ({'; '.join(differences)})", ref_path)
            breast = read_mask(entry.breast_mask, study.geometry, warn=warn) if entry.breast_mask else None
            region = baseline_region(study, breast)
            for method in METHODS[1:]:
                masks[method] = run_baseline(method, study, region) > 0
            if common["n_phases"] is None:
                common["n_phases"] = study.n_phases
        if common["n_phases"] is None:
            common["n_phases"] = phases_from_files(pred_path, ref_path)
        for method, mask in masks.items():
            row = dict(common, method=method)
            row.update(evaluate_masks(mask, reference, geometry))
            rows.append(row)
    return rows


def bootstrap_interval(values, statistic: str = "median", *, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the median or the mean of ``values``.

    ``resamples`` samples of the same size, drawn with replacement by
    ``numpy.random.default_rng(seed)`` (so the median's and the mean's intervals use the
    same draws and every run gives the same interval); the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled
    statistic. One value gives ``(value, value)``; none gives None.
    """
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        return None
    if values.size == 1:
        return float(values[0]), float(values[0])
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    rng = np.random.default_rng(seed)
    n = values.size
    results = np.empty(int(resamples), dtype=float)
    block = max(1, 4_000_000 // n)  # bounded memory: at most ~32 MB of resampled values at a time
    for start in range(0, int(resamples), block):
        count = min(block, int(resamples) - start)
        sample = values[rng.integers(0, n, size=(count, n))]
        results[start:start + count] = np.median(sample, axis=1) if statistic == "median" else sample.mean(axis=1)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(results, [tail, 100.0 - tail])
    return float(low), float(high)


def describe(values, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
             confidence: float = CONFIDENCE) -> dict | None:
    """n, median, quartiles, mean and bootstrap intervals of the median and the mean of the
    finite ``values`` (infinite distances are counted in ``n_infinite`` and left out)."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    options = {"resamples": resamples, "seed": seed, "confidence": confidence}
    return {"n": int(finite.size), "median": float(median), "q1": float(q1), "q3": float(q3),
            "mean": float(finite.mean()), "median_ci": list(bootstrap_interval(finite, "median", **options)),
            "mean_ci": list(bootstrap_interval(finite, "mean", **options)),
            "n_infinite": int(values.size - finite.size)}


def _block(rows: list[dict], **options) -> dict:
    block = {"n_cases": len(rows)}
    for metric in SUMMARY_METRICS:
        block[metric] = describe([r.get(metric) for r in rows], **options)
    return block


def cohort_summary(rows: list[dict], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   confidence: float = CONFIDENCE) -> dict:
    """Statistics per method: over all cases, per size band and per number of phases.

    Each block holds ``n_cases`` and, per metric of :data:`SUMMARY_METRICS`, the result
    of :func:`describe` (None when no finite value). Phase counts that are not known are
    grouped under ``"unknown"``.
    """
    options = {"resamples": resamples, "seed": seed, "confidence": confidence}
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    summary = {
        "n_cases": len({r["case"] for r in rows}),
        "methods": methods,
        "method_labels": {m: METHOD_LABELS[m] for m in methods},
        "size_bands": SIZE_BANDS,
        "bootstrap": {"resamples": int(resamples), "seed": int(seed), "confidence": float(confidence),
                      "interval": "percentile", "generator": "numpy.random.default_rng"},
        "by_method": {},
    }
    for method in methods:
        chosen = [r for r in rows if r["method"] == method]
        bands = {band: [r for r in chosen if r["size_band"] == band] for band in SIZE_BANDS}
        counts = sorted({r["n_phases"] for r in chosen if r.get("n_phases") is not None})
        by_phases = {str(n): [r for r in chosen if r.get("n_phases") == n] for n in counts}
        unknown = [r for r in chosen if r.get("n_phases") is None]
        if unknown:
            by_phases["unknown"] = unknown
        summary["by_method"][method] = {
            "all": _block(chosen, **options),
            "by_size_band": {band: _block(group, **options) for band, group in bands.items() if group},
            "by_phases": {key: _block(group, **options) for key, group in by_phases.items()},
        }
    return summary


def format_cohort_summary(summary: dict) -> str:
    """Plain text: Dice per method (median [IQR], CI of the median, mean, CI of the mean) and per size band."""
    percent = round(100 * summary["bootstrap"]["confidence"])
    header = ("method", "n", "Dice median [IQR]", f"{percent}% CI median", "mean", f"{percent}% CI mean")
    widths = (16, 4, 22, 16, 7, 16)
    lines = [" ".join(f"{h:<{w}}" if i != 1 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths)))]
    for method in summary["methods"]:
        stats = summary["by_method"][method]["all"]["dice"]
        cells = [summary["method_labels"][method], "0", "n/a", "", "", ""]
        if stats is not None:
            cells = [cells[0], str(stats["n"]), f"{stats['median']:.3f} [{stats['q1']:.3f}-{stats['q3']:.3f}]",
                     f"{stats['median_ci'][0]:.3f}-{stats['median_ci'][1]:.3f}", f"{stats['mean']:.3f}",
                     f"{stats['mean_ci'][0]:.3f}-{stats['mean_ci'][1]:.3f}"]
        lines.append(" ".join(f"{c:<{w}}" if i != 1 else f"{c:>{w}}"
                              for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    for method in summary["methods"]:
        parts = []
        for band, block in summary["by_method"][method]["by_size_band"].items():
            stats = block["dice"]
            parts.append(f"{band} {stats['median']:.3f} (n={block['n_cases']})" if stats else f"{band} n/a")
        lines.append(f"Dice median by size band, {summary['method_labels'][method]}: {', '.join(parts)}")
    return "\n".join(lines)


def per_case_csv(rows: list[dict]) -> str:
    """per_case.csv: :data:`CASE_COLUMNS`, one row per case and method (inf written as ``inf``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CASE_COLUMNS)
    for row in rows:
        cells = []
        for column in CASE_COLUMNS:
            value = row.get(column)
            if value is None:
                cells.append("")
            elif isinstance(value, float):
                cells.append("inf" if math.isinf(value) else f"{value:.6g}")
            else:
                cells.append(value)
        writer.writerow(cells)
    return buffer.getvalue()


def write_cohort_outputs(folder: Path, rows: list[dict], summary: dict) -> None:
    """per_case.csv, per_case.json, summary.json and boxplots.png into ``folder`` (each atomic;
    the caller builds the folder atomically). JSON has null for infinite distances."""
    folder = Path(folder)
    atomic.write_text(folder / "per_case.csv", per_case_csv(rows))
    atomic.write_json(folder / "per_case.json", [{c: r.get(c) for c in CASE_COLUMNS} for r in rows])
    atomic.write_json(folder / "summary.json", summary)
    render_boxplots(folder / "boxplots.png", rows)


_METHOD_COLOURS = {"model": "#2b6cb0", "pe": "#dd6b20", "fcm": "#38a169"}


def render_boxplots(path: Path, rows: list[dict]) -> None:
    """Box plots of Dice: per method over all cases, and per size band for each method (PNG, atomic)."""
    # matplotlib waits: only the plots need it (installed on first use in Slicer)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    bands = [b for b in SIZE_BANDS if any(r["size_band"] == b for r in rows)]
    figure = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})

    def draw(axes, groups, positions, colours, width):
        data = [g if g else [np.nan] for g in groups]
        parts = axes.boxplot(data, positions=positions, widths=width, patch_artist=True, showfliers=True,
                             medianprops={"color": "black"})
        for box, colour in zip(parts["boxes"], colours):
            box.set_facecolor(colour)
            box.set_alpha(0.75)

    dice_of = {m: [r["dice"] for r in rows if r["method"] == m] for m in methods}
    draw(left, [dice_of[m] for m in methods], list(range(len(methods))),
         [_METHOD_COLOURS[m] for m in methods], 0.6)
    left.set_xticks(range(len(methods)))
    left.set_xticklabels([f"{METHOD_LABELS[m]}\n(n={len(dice_of[m])})" for m in methods])
    left.set_title("Dice per method")

    width = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        groups = [[r["dice"] for r in rows if r["method"] == method and r["size_band"] == b] for b in bands]
        positions = [i - 0.4 + width * (k + 0.5) for i in range(len(bands))]
        draw(right, groups, positions, [_METHOD_COLOURS[method]] * len(bands), width * 0.9)
    counts = [len({r["case"] for r in rows if r["size_band"] == b}) for b in bands]
    right.set_xticks(range(len(bands)))
    right.set_xticklabels([f"{b} ({SIZE_BANDS[b]})\n(n={n})" for b, n in zip(bands, counts)])
    right.set_xlim(-0.6, len(bands) - 0.4)
    right.set_title("Dice per size band (reference's longest diameter)")
    right.legend(handles=[Patch(facecolor=_METHOD_COLOURS[m], alpha=0.75, label=METHOD_LABELS[m]) for m in methods],
                 loc="upper left", fontsize=8)
    for axes in (left, right):
        axes.set_ylim(-0.03, 1.03)
        axes.set_ylabel("Dice")
        axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png")
