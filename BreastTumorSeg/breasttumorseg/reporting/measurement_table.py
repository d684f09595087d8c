"""The measurements in the words every display shows them in.

The CLI's printed table, the Slicer panel, the station and the overview show the size
measurements of :func:`breasttumorseg.reporting.measurements.measure` through :func:`measurement_rows`,
so they read the same everywhere: the total tumor volume, the index lesion's longest
diameter and T category ("(m)" when there are several lesions), the number of lesions and
one row per lesion (volume, longest diameter, side, centroid), then the functional tumor
volume and the kinetic curve type. Volumes are shown in mL with 2 decimals, lengths in mm
with 1.

Centroids are stored in LPS mm (measurements.json/.csv) and shown in Slicer's RAS words,
e.g. "R 85.2, A 30.1, S 12.0 mm" (85.2 mm to the patient's right of the scanner's origin,
30.1 mm anterior, 12.0 mm superior): the letters say the direction, so the text cannot be
misread in either convention, and it is what Slicer's views and the overview's position
labels show. The conversion is :func:`breasttumorseg.core.geometry.lps_to_ras`.

:func:`flat_measurements` is the one-row layout of measurements.csv (and of the panel's
exported table): every scalar of the record, each lesion's figures as columns
``lesion1_volume_ml``, ``lesion1_longest_diameter_mm``, ``lesion1_centroid_lps_x_mm`` ...
``lesion1_side``, ``lesion2_...`` in place of the ``lesions`` list.
"""

from __future__ import annotations

import csv
import io
import json
import math

from ..core.geometry import lps_to_ras

#: Axis names of a stored 3-vector (a centroid) when it is spread over CSV columns.
_AXES = ("x", "y", "z")


def _number(value, digits: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return f"{value:.{digits}f}"


def centroid_text(centroid_lps_mm) -> str:
    """A point (LPS mm) in RAS words: "R 85.2, A 30.1, S 12.0 mm"."""
    r, a, s = (float(v) for v in lps_to_ras(centroid_lps_mm))
    return (f"{'R' if r >= 0 else 'L'} {abs(r):.1f}, {'A' if a >= 0 else 'P'} {abs(a):.1f}, "
            f"{'S' if s >= 0 else 'I'} {abs(s):.1f} mm")


def lesion_label(number: int) -> str:
    """The row name of lesion ``number`` (1 = the largest, the index lesion)."""
    return "Lesion 1 (index)" if number == 1 else f"Lesion {number}"


def lesion_text(lesion: dict) -> str:
    """One lesion of :func:`breasttumorseg.reporting.measurements.lesions` on one line: "9.96 mL,
    longest diameter 26.4 mm, right breast, centroid R 85.2, A 30.1, S 12.0 mm"."""
    side = lesion.get("side")
    volume = _number(lesion.get("volume_ml"), 2)
    diameter = _number(lesion.get("longest_diameter_mm"), 1)
    parts = [volume and f"{volume} mL", diameter and f"longest diameter {diameter} mm",
             side and (f"{side} breast" if side in ("left", "right") else side)]
    if lesion.get("centroid_lps_mm") is not None:
        parts.append(f"centroid {centroid_text(lesion['centroid_lps_mm'])}")
    return ", ".join(p for p in parts if p)


def measurement_rows(record: dict, *, with_lesions: bool = True) -> list[tuple[str, str, str]]:
    """The size, lesion and kinetic rows of a measurement record: (name, value, unit), the
    value as text (a lesion's row has its units inside and no unit of its own); without the
    per-lesion rows when not ``with_lesions``. A figure the record does not have (``None``,
    absent) gets no row. :func:`row_text` joins a value and its unit."""
    lesions = record.get("lesions") or []
    several = len(lesions) > 1
    rows = [
        ("Tumor volume" + (" (all lesions)" if several else ""), _number(record.get("tumor_volume_ml"), 2), "mL"),
        ("Longest diameter" + (" (index lesion)" if several else ""), _number(record.get("longest_diameter_mm"), 1),
         "mm"),
        ("T category (size)", record.get("t_category"), ""),
        ("Lesions", None if record.get("n_lesions") is None else str(record["n_lesions"]), ""),
    ]
    if with_lesions:
        rows += [(lesion_label(number), lesion_text(lesion), "") for number, lesion in enumerate(lesions, start=1)]
    rows += [
        ("Functional tumor volume", _number(record.get("functional_tumor_volume_ml"), 2), "mL"),
        ("Kinetic curve type", record.get("kinetic_curve_type"), ""),
    ]
    return [(name, str(value), unit) for name, value, unit in rows if value not in (None, "")]


#: Rows the Slicer panel shows after :func:`measurement_rows`: (key of the record, name, unit).
KINETIC_ROWS = (
    ("mean_percent_enhancement", "Mean percent enhancement", "%"),
    ("mean_ser", "Mean signal enhancement ratio", ""),
    ("notes", "Notes", ""),
)


def detailed_rows(record: dict) -> list[tuple[str, str, str]]:
    """:func:`measurement_rows` and then the mean enhancement figures and notes (:data:`KINETIC_ROWS`;
    empty notes get no row)."""
    rows = measurement_rows(record) if record else []
    return rows + [(name, value_text(record[key]), unit) for key, name, unit in KINETIC_ROWS
                   if record.get(key) not in (None, "")]


def value_text(value, plain: bool = False) -> str:
    """A record's value for people ("n/a", "yes", 3 significant digits below 100, else 1 decimal)
    or, ``plain``, for files (6 significant digits, "" for nothing)."""
    if value is None:
        return "" if plain else "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}" if plain else f"{value:.3g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def unit_of(key: str) -> str:
    """The unit a flat key's suffix names: _ml mL, _mm mm, _percent %, _s s; else ""."""
    for suffix, unit in (("_ml", "mL"), ("_mm", "mm"), ("_percent", "%"), ("_s", "s")):
        if key.endswith(suffix):
            return unit
    return ""


def delimited_text(record: dict, delimiter: str = "\t") -> str:
    """The record as delimited text, one row per figure: measurement, value, unit (the flat
    layout of :func:`flat_measurements`, lists as JSON): the panel's Copy and Export CSV."""
    stream = io.StringIO()
    writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
    writer.writerow(["measurement", "value", "unit"])
    units = {key: unit for key, _, unit in KINETIC_ROWS}
    for key, value in flat_measurements(record, lists_as_json=True).items():
        writer.writerow([key, value_text(value, plain=True), units.get(key, unit_of(key))])
    return stream.getvalue()


def row_text(value: str, unit: str) -> str:
    """A row's value and unit as one text: "10.10 mL"."""
    return f"{value} {unit}".strip()


def flat_measurements(record: dict, *, lists_as_json: bool = False) -> dict:
    """The record as one flat row of scalars (see the module docstring); nested dicts are
    spread as ``key.subkey``; other lists (e.g. ``phase_times_s``) are left out, or kept as
    JSON text with ``lists_as_json``."""
    flat = {}
    for key, value in record.items():
        if key == "lesions" and isinstance(value, list):
            for number, lesion in enumerate(value, start=1):
                flat.update(_lesion_columns(f"lesion{number}_", lesion))
        elif isinstance(value, dict):
            nested = flat_measurements(value, lists_as_json=lists_as_json)
            flat.update({f"{key}.{name}": v for name, v in nested.items()})
        elif not isinstance(value, list):
            flat[key] = value
        elif lists_as_json:
            flat[key] = json.dumps(value)
    return flat


def _lesion_columns(prefix: str, lesion: dict) -> dict:
    columns = {}
    for key, value in lesion.items():
        if isinstance(value, (list, tuple)) and len(value) == len(_AXES):
            stem, unit = (key[:-3], "_mm") if key.endswith("_mm") else (key, "")
            columns.update({f"{prefix}{stem}_{axis}{unit}": v for axis, v in zip(_AXES, value)})
        elif not isinstance(value, (list, dict)):
            columns[f"{prefix}{key}"] = value
    return columns
