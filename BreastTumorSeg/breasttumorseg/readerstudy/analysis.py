"""The analysis of a reader study: every reading against its reference, times and statistics.

**References.** A case's reference file when it has one. Otherwise Hirsch et al.'s
leave-one-reader-out consensus: reader r's readings (both arms) and the AI are compared with
the consensus of the *other* readers' manual readings (the arm the AI cannot have
influenced), combined by ``intersection``, ``union`` or ``majority`` (a voxel is in when more
than half of those readers have it). A case without a reference needs two readers or more.

**Rows.** One per submitted reading (reader x case x arm): Dice, sensitivity, precision, HD95
and average symmetric surface distance (mm, physical space), volumes (mL), wall and active
time (s), edits, pauses, idle spells and flags. The AI alone gets one row per case and
reference (``reader`` "AI", ``arm`` "ai", ``reference_for`` the reader whose consensus it
was compared with, or "" for a reference file), its time the seconds the model took.

**Statistics** (see :mod:`.statistics`), paired by case:

* per reader, assisted vs manual: Wilcoxon signed-rank of Dice, of active time and of wall
  time, with Vargha-Delaney A;
* per reader and arm, reader vs AI: Wilcoxon signed-rank of Dice against the same references;
* TOST equivalence of the AI with each reader's manual Dice (AI - reader within +-margin):
  the study's ``equivalence_margin``, or, as in Hirsch et al., the range of the readers'
  mean manual Dice (needs two readers);
* the manual / assisted time ratio per reader (ratio of mean times, cases resampled jointly)
  and percentile bootstrap intervals of mean and median Dice.

Only submitted readings enter; readings still open or not started are counted and named.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import Geometry
from ..exam.loading import read_image
from ..evaluation.metrics import evaluate_masks
from ..core.progress import CancelToken, ProgressCallback, report
from . import statistics as stats
from .ai import ai_files, prepare_ai, prepared
from .definition import ReaderStudy
from .schedule import reading_order
from .session import ReadingRecord, journal_events, readings_file, replay

_log = logging.getLogger("breasttumorseg")
BOOTSTRAP_RESAMPLES = 5000
BOOTSTRAP_SEED = 0
METRICS = ("dice", "sensitivity", "precision", "hd95_mm", "assd_mm")


@dataclass
class StudyAnalysis:
    """Everything the report shows: rows, summaries per reader x arm, tests, what is missing."""

    study: ReaderStudy
    rows: list[dict]
    summary: list[dict]
    tests: list[dict]
    time_ratios: list[dict]
    equivalence_margin: float | None
    margin_source: str
    missing: list[str] = field(default_factory=list)
    consensus: str = "majority"


# ----------------------------------------------------------------------------- inputs
def reader_records(study: ReaderStudy, *, warn=None) -> dict[str, dict[tuple[str, str], ReadingRecord]]:
    """Every reader's readings as their journal tells (readers without a journal: all to do).

    A folder in the results for a reader the study does not name is an :class:`InputError`.
    """
    if study.results_dir.is_dir():
        for folder in sorted(study.results_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith(("_", ".")) and folder.name not in study.readers:
                raise InputError(f"results of reader '{folder.name}', who is not in the study "
                                 f"(readers: {', '.join(study.readers)})", folder)
    records = {}
    for reader in study.readers:
        records[reader] = replay(journal_events(study, reader, warn=warn), reading_order(study, reader))
    return records


def _read_on_grid(path: Path, grid: Geometry | None, grid_file: Path | None) -> tuple[np.ndarray, Geometry]:
    array, geometry = read_image(path)
    if grid is not None:
        differences = grid.differences(geometry)
        if differences:
            raise InputError(f"is on another grid than {grid_file.name} of the same case ({'; '.join(differences)})",
                             path)
    return (array > 0.5).astype(np.uint8), geometry


def consensus_mask(masks: list[np.ndarray], rule: str) -> np.ndarray:
    """Combine readers' masks: ``intersection``, ``union`` or ``majority`` (more than half)."""
    stack = np.stack([m > 0 for m in masks])
    if rule == "intersection":
        return stack.all(axis=0).astype(np.uint8)
    if rule == "union":
        return stack.any(axis=0).astype(np.uint8)
    if rule == "majority":
        return (2 * stack.sum(axis=0) > len(masks)).astype(np.uint8)
    raise ValueError(f"unknown consensus rule {rule!r}")


# ----------------------------------------------------------------------------- analysis
def analyze_study(study: ReaderStudy, *, consensus: str | None = None, equivalence_margin: float | None = None,
                  compute_ai: bool = True, device: str = "auto", progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None, warn=None) -> StudyAnalysis:
    """Compare every submitted reading and the AI with the references (module docstring)."""
    warn = warn or _log.warning
    consensus = consensus or study.consensus
    records = reader_records(study, warn=warn)
    missing = [f"{reader}: {record.case_id} ({record.arm}) {record.status}"
               for reader, by_key in records.items() for record in by_key.values() if record.status != "done"]
    if missing:
        warn(f"{len(missing)} reading(s) not submitted yet are left out of the analysis")
    if study.assisted is not None and compute_ai:
        missing_ai = [c.id for c in study.cases if prepared(study, c.id) is None]
        if missing_ai:
            warn(f"AI results missing for {len(missing_ai)} case(s); computing them now")
            prepare_ai(study, device=device, cancel=cancel, warn=warn)

    rows: list[dict] = []
    for index, case in enumerate(study.cases):
        report(progress, f"comparing readings of {case.id}", index / len(study.cases), cancel)
        rows += _case_rows(study, case, records, consensus)
    report(progress, "statistics", 0.95, cancel)
    summary = summarize(rows)
    margin, source = _margin(study, rows, equivalence_margin)
    tests = paired_tests(rows, study.readers, margin)
    ratios = time_ratios(rows, study.readers)
    report(progress, "analysis done", 1.0, cancel)
    return StudyAnalysis(study, rows, summary, tests, ratios, margin, source, missing, consensus)


def _case_rows(study: ReaderStudy, case, records, consensus: str) -> list[dict]:
    grid, grid_file = None, None
    files: dict[tuple[str, str], Path] = {}
    for reader in study.readers:
        for arm in study.arms:
            if records[reader][(case.id, arm)].status == "done":
                path = readings_file(study.results_dir / reader, case.id, arm)
                if not path.is_file():
                    raise InputError(f"the journal of reader '{reader}' says case '{case.id}' ({arm}) was submitted "
                                     "but its segmentation is missing", path)
                files[(reader, arm)] = path
    ai_path = ai_files(study, case.id)[0] if study.assisted is not None else None
    ai_record = prepared(study, case.id) if ai_path is not None else None
    candidates = ([case.reference] if case.reference else []) + ([ai_path] if ai_record else []) + list(files.values())
    if not candidates:
        return []
    masks: dict = {}
    for path in candidates:
        mask, geometry = _read_on_grid(path, grid, grid_file)
        if grid is None:
            grid, grid_file = geometry, path
        masks[path] = mask

    def references_for(reader: str | None) -> tuple[np.ndarray | None, str]:
        if case.reference is not None:
            return masks[case.reference], "reference file"
        others = [r for r in study.readers if r != reader and (r, "manual") in files]
        if not others:
            return None, ""
        return consensus_mask([masks[files[(r, "manual")]] for r in others], consensus), \
            f"{consensus} of {', '.join(others)}"

    rows = []
    for (reader, arm), path in files.items():
        reference, described = references_for(reader)
        if reference is None:
            raise InputError(f"case '{case.id}' has no reference and no other reader's manual reading to build a "
                             f"consensus from", study.path)
        record = records[reader][(case.id, arm)]
        row = {"reader": reader, "arm": arm, "case": case.id, "reference": described, "reference_for": reader,
               **_metrics(masks[path], reference, grid),
               "wall_s": record.wall_s, "active_s": record.active_s, "n_edits": record.n_edits,
               "n_pauses": record.n_pauses, "n_idle": record.n_idle,
               "flags": "; ".join(f["flag"] + (f": {f['comment']}" if f.get("comment") else "") for f in record.flags)}
        rows.append(row)
    if ai_record is not None:
        targets = [""] if case.reference is not None else [r for r in study.readers if any(k[0] == r for k in files)]
        for target in targets:
            reference, described = references_for(target or None)
            if reference is None:
                continue
            rows.append({"reader": "AI", "arm": "ai", "case": case.id, "reference": described,
                         "reference_for": target, **_metrics(masks[ai_path], reference, grid),
                         "wall_s": float(ai_record.get("seconds", math.nan)),
                         "active_s": float(ai_record.get("seconds", math.nan)),
                         "n_edits": 0, "n_pauses": 0, "n_idle": 0, "flags": ""})
    return rows


def _metrics(mask: np.ndarray, reference: np.ndarray, grid: Geometry) -> dict:
    values = evaluate_masks(mask, reference, grid)
    return {"dice": values["dice"], "sensitivity": values["sensitivity"], "precision": values["precision"],
            "hd95_mm": values["hd95_mm"], "assd_mm": values["assd_mm"], "volume_ml": values["volume_pred_ml"],
            "reference_volume_ml": values["volume_ref_ml"]}


# ----------------------------------------------------------------------------- summaries
def _group(rows: list[dict], reader: str, arm: str) -> list[dict]:
    return [r for r in rows if r["reader"] == reader and r["arm"] == arm]


def _ai_per_case(rows: list[dict], reference_for: str | None = None) -> dict[str, dict]:
    """The AI's value per case: against reader ``reference_for``'s reference, or averaged over
    the leave-one-out references when None (each case counts once)."""
    per_case: dict[str, list[dict]] = {}
    for row in rows:
        if row["reader"] == "AI" and (reference_for is None or row["reference_for"] in ("", reference_for)):
            per_case.setdefault(row["case"], []).append(row)
    merged = {}
    for case, group in per_case.items():
        merged[case] = {key: float(np.mean([g[key] for g in group])) for key in (*METRICS, "wall_s", "active_s",
                                                                                "volume_ml", "reference_volume_ml")}
    return merged


def describe(values) -> dict:
    """n, mean, SD, median, quartiles and bootstrap 95 % intervals of the finite ``values``."""
    values = np.asarray([v for v in values if v is not None], dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": 0, "n_infinite": int(values.size)}
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    options = {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED}
    return {"n": int(finite.size), "n_infinite": int(values.size - finite.size), "mean": float(finite.mean()),
            "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0, "median": float(median),
            "q1": float(q1), "q3": float(q3),
            "mean_ci": list(stats.bootstrap_ci(finite, np.mean, **options)),
            "median_ci": list(stats.bootstrap_ci(finite, np.median, **options))}


def summarize(rows: list[dict]) -> list[dict]:
    """One block per reader x arm (in reading order of the table) and one for the AI alone."""
    blocks = []
    readers = list(dict.fromkeys(r["reader"] for r in rows if r["reader"] != "AI"))
    for reader in readers:
        for arm in ("manual", "assisted"):
            group = _group(rows, reader, arm)
            if group:
                blocks.append({"reader": reader, "arm": arm, "n_cases": len(group),
                               **{key: describe([g[key] for g in group])
                                  for key in (*METRICS, "wall_s", "active_s", "n_edits")}})
    ai = list(_ai_per_case(rows).values())
    if ai:
        blocks.append({"reader": "AI", "arm": "ai", "n_cases": len(ai),
                       **{key: describe([g[key] for g in ai]) for key in (*METRICS, "wall_s", "active_s")}})
    return blocks


def _margin(study: ReaderStudy, rows: list[dict], given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return float(given), "given on the command line"
    if study.equivalence_margin is not None:
        return study.equivalence_margin, "the study file's equivalence_margin"
    means = [np.mean([r["dice"] for r in _group(rows, reader, "manual")]) for reader in study.readers
             if _group(rows, reader, "manual")]
    if len(means) >= 2 and max(means) > min(means):
        return float(max(means) - min(means)), "the range of the readers' mean manual Dice (Hirsch et al.)"
    return None, "no margin: give one (the readers' range needs two readers with different mean Dice)"


def _paired(rows: list[dict], reader: str, arm_a: str, arm_b: str, key: str) -> tuple[list[float], list[float]]:
    a = {r["case"]: r[key] for r in _group(rows, reader, arm_a)}
    b = {r["case"]: r[key] for r in _group(rows, reader, arm_b)}
    cases = [c for c in a if c in b and math.isfinite(a[c]) and math.isfinite(b[c])]
    return [a[c] for c in cases], [b[c] for c in cases]


def _paired_with_ai(rows: list[dict], reader: str, arm: str, key: str) -> tuple[list[float], list[float]]:
    ai = _ai_per_case(rows, reference_for=reader)
    mine = {r["case"]: r[key] for r in _group(rows, reader, arm)}
    cases = [c for c in mine if c in ai and math.isfinite(mine[c]) and math.isfinite(ai[c][key])]
    return [mine[c] for c in cases], [ai[c][key] for c in cases]


def _test_row(comparison: str, reader: str, measure: str, a: list[float], b: list[float], labels) -> dict:
    row = {"comparison": comparison, "reader": reader, "measure": measure, "n": len(a),
           f"mean_{labels[0]}": float(np.mean(a)) if a else math.nan,
           f"mean_{labels[1]}": float(np.mean(b)) if b else math.nan}
    if len(a) >= 1:
        wilcoxon = stats.wilcoxon_signed_rank(a, b)
        row.update(wilcoxon_statistic=wilcoxon["statistic"], p_value=wilcoxon["p_value"],
                   wilcoxon_method=wilcoxon["method"])
        a_value = stats.vargha_delaney_a(a, b)
        row.update(vargha_delaney_a=a_value, effect_size=stats.effect_size_label(a_value))
    return row


def paired_tests(rows: list[dict], readers, margin: float | None) -> list[dict]:
    """Every test of the module docstring, one row each (JSON- and CSV-ready)."""
    tests = []
    for reader in readers:
        for key in ("dice", "active_s", "wall_s"):
            a, b = _paired(rows, reader, "assisted", "manual", key)
            if a:
                tests.append(_test_row("assisted vs manual", reader, key, a, b, ("assisted", "manual")))
        for arm in ("manual", "assisted"):
            a, b = _paired_with_ai(rows, reader, arm, "dice")
            if a:
                tests.append(_test_row(f"reader ({arm}) vs AI", reader, "dice", a, b, ("reader", "ai")))
        if margin is not None:
            reader_dice, ai_dice = _paired_with_ai(rows, reader, "manual", "dice")
            if len(reader_dice) >= 2:
                tost = stats.tost_paired(ai_dice, reader_dice, low=-margin, high=margin)
                tests.append({"comparison": "AI equivalent to reader (manual), TOST", "reader": reader,
                              "measure": "dice", "n": tost["n"], "mean_difference": tost["mean_difference"],
                              "low": tost["low"], "high": tost["high"], "p_value": tost["p_value"],
                              "ci_90": tost["ci_90"], "equivalent": tost["equivalent"]})
    return tests


def time_ratios(rows: list[dict], readers) -> list[dict]:
    """Manual / assisted mean time per reader (active and wall) with its bootstrap interval."""
    ratios = []
    for reader in readers:
        for key in ("active_s", "wall_s"):
            manual, assisted = _paired(rows, reader, "manual", "assisted", key)
            if manual and np.mean(assisted) > 0:
                result = stats.paired_ratio_ci(manual, assisted, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)
                ratios.append({"reader": reader, "time": key, "n": len(manual),
                               "manual_mean_min": float(np.mean(manual)) / 60.0,
                               "assisted_mean_min": float(np.mean(assisted)) / 60.0,
                               "ratio": result["ratio"], "ci": list(result["ci"])})
    return ratios
