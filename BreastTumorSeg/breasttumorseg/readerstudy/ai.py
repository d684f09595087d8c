"""The assisted arm's AI segmentations, computed once per case before the readers start.

Each case's segmentation by the study's model at the study's threshold is written to
``<results>/_ai/<case>.seg.nrrd`` (on the case's grid) with ``<case>.json`` beside it: the
model, its version and weights checksum, the threshold, the device and the seconds the AI
took (the "AI alone" time of the report). Readers in the assisted arm start from that file;
the manual arm never reads it, so nothing of the AI is shown or computed on a manual reader's
screen. A prepared case whose model, version or threshold no longer match the study is
computed again (with a warning) rather than silently reused.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..core import atomic
from ..core.errors import InputError
from ..exam.loading import read_json
from ..core.progress import CancelToken, ProgressCallback, report, scaled
from ..run.request import SegmentationRequest
from .definition import ReaderStudy, StudyCase
from ..reporting.writing import write_segmentation_nrrd
from ..segmentation.models import load_model
from ..run.runner import run_segmentation

_log = logging.getLogger("breasttumorseg")


def ai_files(study: ReaderStudy, case_id: str) -> tuple[Path, Path]:
    """(segmentation, metadata) paths of one case's AI result."""
    return study.ai_dir / f"{case_id}.seg.nrrd", study.ai_dir / f"{case_id}.json"


def _wanted(study: ReaderStudy, card) -> dict:
    return {"model": card.name, "version": card.version, "sha256": card.sha256,
            "threshold": study.assisted.threshold, "relative": study.assisted.relative}


def prepared(study: ReaderStudy, case_id: str, card=None) -> dict | None:
    """The metadata of a case's prepared AI result, or None when absent (or stale for ``card``)."""
    segmentation, metadata = ai_files(study, case_id)
    if not segmentation.is_file() or not metadata.is_file():
        return None
    record = read_json(metadata, "AI result metadata")
    if card is not None:
        wanted = _wanted(study, card)
        if any(record.get(key) != value for key, value in wanted.items()):
            _log.warning("%s: prepared with other model settings than the study's; computing it again", metadata)
            return None
    return record


def prepare_ai(study: ReaderStudy, *, device: str = "auto", progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None, warn=None) -> list[dict]:
    """Segment every case with the assisted arm's model (cases already prepared are kept)."""
    if study.assisted is None:
        raise InputError("the study has no assisted arm: there is no AI result to prepare", study.path)

    records = []
    model = None
    for index, case in enumerate(study.cases):
        step = scaled(progress, index / len(study.cases), (index + 1) / len(study.cases))
        if model is None or model.card.name != study.assisted.model:
            model = load_model(study.assisted.model)
        record = prepared(study, case.id, model.card)
        if record is None:
            record = segment_case(study, case, device=device, progress=step, cancel=cancel, warn=warn)
        records.append(record)
    report(progress, "AI results ready", 1.0, cancel)
    return records


def segment_case(study: ReaderStudy, case: StudyCase, *, device: str = "auto",
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None, warn=None) -> dict:
    """Segment one case as the assisted arm shows it and write its AI files atomically."""
    report(progress, f"{case.id}: loading", 0.0, cancel)
    started = time.perf_counter()
    run = run_segmentation(ai_request(study, case, device), progress=scaled(progress, 0.0, 0.95), cancel=cancel,
                           warn=warn)
    seconds = time.perf_counter() - started - run.loading_s  # the AI's time: model and segmentation
    segmentation, metadata = ai_files(study, case.id)
    write_segmentation_nrrd(segmentation, run.result.mask, run.study.geometry, segment_name="Tumor (AI)")
    record = {"case": case.id, **_wanted(study, run.model.card), "model": run.model.card.name,
              "device": str(run.result.device), "seconds": round(seconds, 2), "voxels": int(run.result.mask.sum())}
    atomic.write_json(metadata, record)
    report(progress, f"{case.id}: done", 1.0, cancel)
    return record


def ai_request(study: ReaderStudy, case: StudyCase, device: str = "auto") -> SegmentationRequest:
    """The segmentation request of one case's AI result: the assisted arm's model and threshold."""
    return SegmentationRequest(phases=tuple(case.inputs), times_s=case.times_s, model=study.assisted.model,
                               device=device, threshold=study.assisted.threshold, relative=study.assisted.relative)
