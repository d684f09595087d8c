"""Writing a segmentation's outputs into one folder (the files the CLI promises).

``probability.nii.gz`` (float32 0..1) and ``tumor_label.nii.gz`` (uint8 0/1) on the
reference grid, ``tumor.seg.nrrd`` (opens in 3D Slicer as a segmentation),
``measurements.json`` / ``measurements.csv``, and ``overview.png``. The caller builds
the folder atomically (:func:`breasttumorseg.core.atomic.atomic_output_dir`).
"""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..core import atomic
from . import measurement_table as table
from ..core.geometry import Geometry
from ..segmentation.pipeline import SegmentationResult
from ..segmentation.postprocess import ThresholdSettings
from ..exam.dce_exam import DCEStudy
from .overview import render_overview
from .writing import write_image, write_segmentation_nrrd
from ..exam.loading import read_image, read_json

PROBABILITY_FILE = "probability.nii.gz"
LABEL_FILE = "tumor_label.nii.gz"
SEGMENTATION_FILE = "tumor.seg.nrrd"
MEASUREMENTS_JSON = "measurements.json"
MEASUREMENTS_CSV = "measurements.csv"
OVERVIEW_FILE = "overview.png"
#: Written besides the others when the study came from DICOM (:mod:`.dicom_seg`).
DICOM_SEG_FILE = "tumor.seg.dcm"
#: Every file :func:`write_outputs` writes, in writing order.
OUTPUT_FILES = (PROBABILITY_FILE, LABEL_FILE, SEGMENTATION_FILE, MEASUREMENTS_JSON, MEASUREMENTS_CSV, OVERVIEW_FILE)


def measurement_record(study: DCEStudy, result: SegmentationResult, measurements: dict) -> dict:
    """Measurements plus what produced them (model, threshold, device, timings)."""
    card = result.model
    record = dict(measurements)
    record.update({
        "model_name": card.name,
        "model_version": card.version,
        "model_trained_on": card.trained_on,
        "breast_mask_model": (result.breast_model.name if result.breast_model is not None
                              else card.breast_mask if result.breast_region is not None else None),
        "threshold": result.settings.threshold,
        "threshold_relative": result.settings.relative,
        "min_component_ml": result.settings.min_component_ml,
        "device": result.device,
        "source": study.source,
        "phase_times_s": None if study.times_s is None else [float(t) for t in study.times_s],
        "spacing_mm": list(study.geometry.spacing),
        "lesion_candidates": result.lesions,
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
    })
    return record


def write_outputs(folder: Path, study: DCEStudy, result: SegmentationResult, record: dict) -> list[str]:
    """Write every output file of one segmentation into ``folder``; returns their names."""
    folder = Path(folder)

    def write_images() -> None:
        write_image(folder / PROBABILITY_FILE, result.probability.astype(np.float32), result.geometry)
        write_image(folder / LABEL_FILE, result.mask.astype(np.uint8), result.geometry)
        write_segmentation_nrrd(folder / SEGMENTATION_FILE, result.mask.astype(np.uint8), result.geometry,
                                segment_name="Tumor")

    # the images are compressed (C, without the GIL) on a second thread while this one draws the
    # overview (mostly Python): on 2 cores the standard case's 4.3 s of writing became about 2 s
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-images") as pool:
        images = pool.submit(write_images)
        try:
            atomic.write_json(folder / MEASUREMENTS_JSON, record)
            atomic.write_text(folder / MEASUREMENTS_CSV, measurements_csv(record))
            render_overview(folder / OVERVIEW_FILE, study, result.probability, result.mask,
                            title=overview_title(record), threshold=_display_threshold(result))
        finally:
            images_error = images.exception()  # waits: nothing is left writing into the folder
        if images_error is not None:
            raise images_error
    return list(OUTPUT_FILES)


def read_outputs(folder: Path) -> tuple[np.ndarray, np.ndarray, Geometry, dict]:
    """``(probability float32, mask uint8 0/1, geometry, measurement record)`` of an output folder."""
    folder = Path(folder)
    probability, geometry = read_image(folder / PROBABILITY_FILE)
    mask, _ = read_image(folder / LABEL_FILE)
    record = read_json(folder / MEASUREMENTS_JSON, "measurements")
    return probability.astype(np.float32), (mask > 0).astype(np.uint8), geometry, record


def settings_from_record(record: dict) -> ThresholdSettings:
    """The threshold settings a measurement record was made with."""
    return ThresholdSettings(threshold=float(record.get("threshold", 0.5)),
                             relative=bool(record.get("threshold_relative", False)),
                             min_component_ml=float(record.get("min_component_ml") or 0.0))


def model_label(record: dict) -> str:
    """``"<model name> <version>"`` of a measurement record."""
    return f"{record.get('model_name', '')} {record.get('model_version', '')}".strip()


def measurements_csv(record: dict) -> str:
    """One header row and one value row of the scalar measurements, each lesion's figures as
    columns ``lesion1_...``, ``lesion2_...`` (:func:`~breasttumorseg.reporting.measurement_table.flat_measurements`):
    one row per study, so a cohort's files stack into one table and a spreadsheet reads it as it is."""
    scalars = table.flat_measurements(record)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(list(scalars))
    writer.writerow([_csv_value(v) for v in scalars.values()])
    return buffer.getvalue()


#: Lesions listed in the overview's header (the rest: "+ N more", all in measurements.json).
OVERVIEW_LESIONS = 4
#: Characters on one line of the overview's header (its width, beside the subtraction's legend).
OVERVIEW_LINE_CHARS = 125


def overview_title(record: dict) -> str:
    """The overview figure's header: the model and the size and kinetic figures of
    :func:`~breasttumorseg.reporting.measurement_table.measurement_rows` (" | " between them, on as
    many lines as they need), then one line per lesion (at most :data:`OVERVIEW_LESIONS`)."""
    model = f"{record.get('model_name', '')} {record.get('model_version', '')}".strip()
    parts = [model] + [f"{name} {table.row_text(value, unit)}"
                       for name, value, unit in table.measurement_rows(record, with_lesions=False)]
    lines: list[str] = []
    for part in (p for p in parts if p):
        if lines and len(lines[-1]) + 3 + len(part) <= OVERVIEW_LINE_CHARS:
            lines[-1] += " | " + part
        else:
            lines.append(part)
    lesions = record.get("lesions") or []
    lines += [f"{table.lesion_label(number)}: {table.lesion_text(lesion)}"
              for number, lesion in enumerate(lesions[:OVERVIEW_LESIONS], start=1)]
    if len(lesions) > OVERVIEW_LESIONS:
        lines.append(f"+ {len(lesions) - OVERVIEW_LESIONS} more lesions (measurements.json)")
    return "\n".join(lines)


def _display_threshold(result: SegmentationResult) -> float:
    if result.settings.relative:
        return float(result.settings.threshold * max(float(result.probability.max()), 1e-6))
    return float(result.settings.threshold)


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
