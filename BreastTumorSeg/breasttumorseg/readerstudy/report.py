"""The reader-study report: Markdown and HTML, plots, and CSV files of every number.

Files in the output folder (written together, atomically)::

    report.md, report.html      Table 4 in the form of Zhang et al. 2023 (DSC, SEN, HD95 and
                                time per reader and arm, and the AI alone), time ratios,
                                tests, equivalence, what is missing
    readings.csv                one row per reading and per AI comparison (every metric)
    summary.csv                 one row per reader x arm x measure (n, mean, SD, median, CIs)
    tests.csv                   every statistical test
    summary.json                all of the above in one file
    dice_by_reader.png          box plots of Dice per reader and arm, and the AI
    reading_times.png           mean active and wall minutes per reader and arm (95 % CI)
    volume_bland_altman.png     reader and AI volume against the reference volume (mL)
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

import numpy as np

from ..core import atomic
from .analysis import METRICS, StudyAnalysis

ARM_LABEL = {"manual": "manual (from scratch)", "assisted": "assisted (refining the AI)", "ai": "AI alone"}
ROW_FIELDS = ("reader", "arm", "case", "reference", "reference_for", *METRICS, "volume_ml", "reference_volume_ml",
              "wall_s", "active_s", "n_edits", "n_pauses", "n_idle", "flags")


def write_report(folder, analysis: StudyAnalysis, *, overwrite: bool = False) -> Path:
    """Write every file of the module docstring into ``folder`` (atomically, as one)."""
    with atomic.atomic_output_dir(folder, overwrite=overwrite) as staging:
        atomic.write_text(staging / "readings.csv", _csv(analysis.rows, ROW_FIELDS))
        atomic.write_text(staging / "summary.csv", _csv(_summary_rows(analysis), None))
        atomic.write_text(staging / "tests.csv", _csv([_flat(t) for t in analysis.tests], None))
        atomic.write_json(staging / "summary.json", _json(analysis))
        plots = _plots(staging, analysis)
        atomic.write_text(staging / "report.md", markdown(analysis, plots))
        atomic.write_text(staging / "report.html", html_report(analysis, plots))
    return Path(folder)


# ----------------------------------------------------------------------------- tables
def table4(analysis: StudyAnalysis) -> tuple[list[str], list[list[str]]]:
    """Zhang et al.'s Table 4 layout: one row per reader x arm and the AI alone."""
    header = ["Reader", "Arm", "Cases", "DSC mean (95% CI)", "DSC median", "SEN mean", "PRE mean",
              "HD95 mm, median", "Wall min, mean", "Active min, mean", "Edits, median"]
    body = []
    for block in analysis.summary:
        wall, active = block.get("wall_s", {}), block.get("active_s", {})
        edits = block.get("n_edits")
        body.append([block["reader"], ARM_LABEL[block["arm"]], str(block["n_cases"]),
                     _mean_ci(block["dice"]), _num(block["dice"].get("median")),
                     _num(block["sensitivity"].get("mean")), _num(block["precision"].get("mean")),
                     _num(block["hd95_mm"].get("median"), 1),
                     _num(_minutes(wall.get("mean")), 2), _num(_minutes(active.get("mean")), 2),
                     _num(edits.get("median"), 0) if edits else "-"])
    return header, body


def ratio_table(analysis: StudyAnalysis) -> tuple[list[str], list[list[str]]]:
    header = ["Reader", "Time", "Cases", "Manual min", "Assisted min", "Manual / assisted (95% CI)"]
    body = [[r["reader"], r["time"].replace("_s", ""), str(r["n"]), _num(r["manual_mean_min"], 2),
             _num(r["assisted_mean_min"], 2), f"{_num(r['ratio'], 2)} ({_num(r['ci'][0], 2)}-{_num(r['ci'][1], 2)})"]
            for r in analysis.time_ratios]
    return header, body


def tests_table(analysis: StudyAnalysis) -> tuple[list[str], list[list[str]]]:
    header = ["Comparison", "Reader", "Measure", "n", "Difference", "Test", "p", "Effect (Vargha-Delaney A)"]
    body = []
    for t in analysis.tests:
        if "equivalent" in t:
            difference = f"{_num(t['mean_difference'])} (90% CI {_num(t['ci_90'][0])} to {_num(t['ci_90'][1])})"
            test = f"TOST +-{_num(t['high'])}: {'equivalent' if t['equivalent'] else 'not shown equivalent'}"
            effect = "-"
        else:
            keys = [k for k in t if k.startswith("mean_")]
            difference = f"{_num(t[keys[0]] - t[keys[1]], 3 if t['measure'] == 'dice' else 1)}"
            test = f"Wilcoxon signed-rank ({t.get('wilcoxon_method', '-')})"
            effect = f"{_num(t.get('vargha_delaney_a'))} ({t.get('effect_size', '-')})"
        body.append([t["comparison"], t["reader"], _measure(t["measure"]), str(t["n"]), difference, test,
                     _p(t.get("p_value")), effect])
    return header, body


# ----------------------------------------------------------------------------- Markdown
def markdown(analysis: StudyAnalysis, plots: dict[str, str]) -> str:
    study = analysis.study
    lines = [f"# Reader study: {study.name}", "", _provenance(analysis), "",
             "## Readers, arms and the AI (Table 4 of Zhang et al. 2023, in form)", "",
             *_md_table(*table4(analysis)), "",
             "DSC: Dice similarity coefficient; SEN: sensitivity; PRE: precision; HD95: 95th percentile "
             "Hausdorff distance (mm, physical space). Times: wall = case open to submitted (pauses and idle "
             "spells included); active = without pauses and idle spells. The AI's time is the model's.", "",
             "## Reading time, manual / assisted", "", *_md_table(*ratio_table(analysis)), "",
             "## Tests (paired by case)", "", *_md_table(*tests_table(analysis)), "",
             f"Equivalence margin: {_num(analysis.equivalence_margin)} Dice ({analysis.margin_source}).", ""]
    for title, name in plots.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if analysis.missing:
        lines += ["## Not yet submitted (left out)", ""] + [f"- {m}" for m in analysis.missing] + [""]
    lines += ["Every number is in readings.csv, summary.csv and tests.csv.", ""]
    return "\n".join(lines)


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    if not body:
        return ["(none)"]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in body]


def _provenance(analysis: StudyAnalysis) -> str:
    study = analysis.study
    if study.assisted:
        assisted = (f"assisted arm: model {study.assisted.model}, threshold "
                    f"{'card default' if study.assisted.threshold is None else study.assisted.threshold}"
                    f"{' (fraction of the maximum)' if study.assisted.relative else ''}")
    else:
        assisted = "no assisted arm"
    with_reference = sum(1 for c in study.cases if c.reference is not None)
    references = (f"{with_reference} of {len(study.cases)} cases have a reference file; the others are compared "
                  f"with the leave-one-reader-out {analysis.consensus} consensus of the other readers' manual readings")
    return (f"{len(study.cases)} cases, {len(study.readers)} readers ({', '.join(study.readers)}), "
            f"arms: {', '.join(study.arms)}; {assisted}. {references}. "
            f"Confidence intervals: percentile bootstrap, 5000 resamples.")


# ----------------------------------------------------------------------------- HTML
def html_report(analysis: StudyAnalysis, plots: dict[str, str]) -> str:
    def table(header, body):
        if not body:
            return "<p>(none)</p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"

    study = analysis.study
    parts = [f"<h1>Reader study: {html.escape(study.name)}</h1>", f"<p>{html.escape(_provenance(analysis))}</p>",
             "<h2>Readers, arms and the AI (Table 4 of Zhang et al. 2023, in form)</h2>", table(*table4(analysis)),
             "<h2>Reading time, manual / assisted</h2>", table(*ratio_table(analysis)),
             "<h2>Tests (paired by case)</h2>", table(*tests_table(analysis)),
             f"<p>Equivalence margin: {_num(analysis.equivalence_margin)} Dice "
             f"({html.escape(analysis.margin_source)}).</p>"]
    for title, name in plots.items():
        parts += [f"<h2>{html.escape(title)}</h2>", f'<img src="{html.escape(name)}" alt="{html.escape(title)}">']
    if analysis.missing:
        parts += ["<h2>Not yet submitted (left out)</h2>",
                  "<ul>" + "".join(f"<li>{html.escape(m)}</li>" for m in analysis.missing) + "</ul>"]
    style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(study.name)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# ----------------------------------------------------------------------------- plots
def _plots(folder: Path, analysis: StudyAnalysis) -> dict[str, str]:
    import matplotlib  # matplotlib waits: only the plots need it (installed on first use in Slicer)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = analysis.rows
    groups = [(b["reader"], b["arm"]) for b in analysis.summary]
    plots = {}
    if not groups:
        return plots
    colours = {"manual": "#4c72b0", "assisted": "#dd8452", "ai": "#55a868"}

    def save(figure, name: str, title: str) -> None:
        with atomic.atomic_path(folder / name) as tmp:
            figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(figure)
        plots[title] = name

    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(groups), 4))
    data = [[r["dice"] for r in rows if r["reader"] == reader and r["arm"] == arm] for reader, arm in groups]
    boxes = axes.boxplot(data, patch_artist=True, widths=0.6)
    for patch, (_, arm) in zip(boxes["boxes"], groups):
        patch.set_facecolor(colours[arm])
    axes.set_xticks(range(1, len(groups) + 1), [f"{r}\n{a}" for r, a in groups])
    axes.set_ylabel("Dice")
    axes.set_ylim(0, 1)
    axes.set_title("Dice per reader and arm")
    save(figure, "dice_by_reader.png", "Dice per reader and arm")

    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(groups), 4))
    positions = np.arange(len(groups))
    for offset, key, hatch in ((-0.2, "wall_s", ""), (0.2, "active_s", "//")):
        means, errors = [], [[], []]
        for block in analysis.summary:
            d = block.get(key, {})
            mean = _minutes(d.get("mean")) or 0.0
            low, high = (_minutes(v) for v in d.get("mean_ci", [mean * 60, mean * 60]))
            means.append(mean)
            errors[0].append(max(0.0, mean - low))
            errors[1].append(max(0.0, high - mean))
        axes.bar(positions + offset, means, 0.4, yerr=errors, capsize=3, hatch=hatch,
                 color=[colours[a] for _, a in groups], edgecolor="black", label=key.replace("_s", ""))
    axes.set_xticks(positions, [f"{r}\n{a}" for r, a in groups])
    axes.set_ylabel("minutes per case (mean, 95% CI)")
    axes.legend(title="time")
    axes.set_title("Reading time per reader and arm")
    save(figure, "reading_times.png", "Reading time per reader and arm")

    figure, axes = plt.subplots(figsize=(6, 4.5))
    for arm in ("manual", "assisted", "ai"):
        chosen = [r for r in rows if r["arm"] == arm]
        if not chosen:
            continue
        volume = np.array([r["volume_ml"] for r in chosen])
        reference = np.array([r["reference_volume_ml"] for r in chosen])
        mean, difference = (volume + reference) / 2, volume - reference
        axes.scatter(mean, difference, s=18, color=colours[arm], label=ARM_LABEL[arm], alpha=0.8)
        bias, sd = float(difference.mean()), float(difference.std(ddof=1)) if len(chosen) > 1 else 0.0
        axes.axhline(bias, color=colours[arm], lw=1)
        for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
            axes.axhline(limit, color=colours[arm], lw=0.8, ls="--")
    axes.axhline(0, color="black", lw=0.6)
    axes.set_xlabel("mean of reading and reference volume (mL)")
    axes.set_ylabel("reading - reference volume (mL)")
    axes.set_title("Bland-Altman: tumor volumes (bias, 95% limits of agreement)")
    axes.legend(fontsize=8)
    save(figure, "volume_bland_altman.png", "Bland-Altman of tumor volumes")
    return plots


# ----------------------------------------------------------------------------- files
def _summary_rows(analysis: StudyAnalysis) -> list[dict]:
    out = []
    for block in analysis.summary:
        for measure, values in block.items():
            if isinstance(values, dict):
                out.append({"reader": block["reader"], "arm": block["arm"], "measure": measure,
                            **_flat(values)})
    return out


def _flat(values: dict) -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            flat[f"{key}_low"], flat[f"{key}_high"] = value
        else:
            flat[key] = value
    return flat


def _csv(rows: list[dict], fields) -> str:
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in fields})
    return buffer.getvalue()


def _csv_value(value):
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("" if math.isnan(value) else f"{value:.6g}")
    return value


def _json(analysis: StudyAnalysis) -> dict:
    study = analysis.study
    return {"study": study.name, "study_file": str(study.path), "readers": list(study.readers),
            "arms": list(study.arms), "consensus": analysis.consensus,
            "equivalence_margin": analysis.equivalence_margin, "margin_source": analysis.margin_source,
            "summary": analysis.summary, "time_ratios": analysis.time_ratios, "tests": analysis.tests,
            "readings": analysis.rows, "missing": analysis.missing}


def _minutes(seconds):
    return None if seconds is None else seconds / 60.0


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _mean_ci(block: dict) -> str:
    if not block.get("n"):
        return "-"
    low, high = block["mean_ci"]
    return f"{block['mean']:.3f} ({low:.3f}-{high:.3f})"


def _p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _measure(key: str) -> str:
    return {"dice": "Dice", "active_s": "active time (s)", "wall_s": "wall time (s)"}.get(key, key)
