"""Comparing predicted with reference tumor masks over one case or a folder of cases.

Cases are paired by name. A folder holds ``<case>.nii.gz`` (or .nii/.nrrd/.mha) mask
files, or ``<case>/`` sub-folders with ``tumor_label.nii.gz`` (what ``segment`` writes)
or ``tumor_mask.nii.gz`` (what ``phantom`` writes). Metrics are computed on the
reference's grid (a prediction on another grid is resampled, nearest neighbour).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import InputError

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
    """Metrics per case (see :func:`breasttumorseg.metrics.evaluate_masks`)."""
    from .loading import read_image, read_mask
    from .metrics import evaluate_masks

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
