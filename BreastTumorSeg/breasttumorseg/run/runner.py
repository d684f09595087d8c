"""Running one :class:`~breasttumorseg.run.request.SegmentationRequest`: load the study and the
model, segment, and (with an output folder) measure and write the outputs of
:mod:`breasttumorseg.reporting.outputs` atomically. Every caller runs segmentations through
:func:`run_segmentation`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import atomic
from ..core.errors import InputError
from ..core.progress import CancelToken, ProgressCallback, report, scaled
from .request import SegmentationRequest
from .. import __version__
from ..exam.loading import load_study
from ..reporting.measurements import measure as measure_study
from ..reporting.dicom_seg import reference_series, write_dicom_seg
from ..reporting.outputs import DICOM_SEG_FILE, measurement_record, write_outputs
from ..segmentation.models import load_model, nnunet_entry
from ..segmentation.nnunet_folder import licence_notice, load_nnunet_model
from ..segmentation.pipeline import segment_study

log = logging.getLogger("breasttumorseg")

if TYPE_CHECKING:  # torch-backed types, imported when a run needs them
    from ..segmentation.models import LoadedModel
    from ..segmentation.pipeline import SegmentationResult
    from ..exam.dce_exam import DCEStudy


@dataclass
class SegmentationRecord:
    """What one run produced.

    Attributes:
        request: what was asked.
        study: the study segmented (phases on the reference grid).
        model: the loaded model that ran.
        result: probability and mask on the study's grid, settings, device, timings.
        record: measurements plus provenance (what ``measurements.json`` holds), or None
            when the run neither measured nor wrote outputs.
        outputs: output file name -> path written (empty without an output folder).
        loading_s: seconds spent reading the study from its files (0 for a study in memory).
    """

    request: SegmentationRequest
    study: DCEStudy
    model: LoadedModel
    result: SegmentationResult
    record: dict | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    loading_s: float = 0.0


def _write_dicom_seg(folder: Path, request: SegmentationRequest, study, result, warn) -> list[str]:
    """``tumor.seg.dcm`` when the study came from DICOM folders (referencing the reference phase's series)."""
    folders = [Path(p) for p in request.phases]
    if not folders or not all(f.is_dir() for f in folders):
        return []

    files = reference_series(folders, study.geometry)
    if files is None:
        (warn or log.warning)(f"{study.source}: no DICOM series lies on the reference grid; "
                              f"{DICOM_SEG_FILE} not written")
        return []
    card = result.model
    write_dicom_seg(folder / DICOM_SEG_FILE, result.mask, files, algorithm_name=card.name,
                    algorithm_version=card.version, software_version=f"BreastTumorSeg {__version__}")
    return [DICOM_SEG_FILE]


def _start_importing(*, torch: bool, overview: bool) -> threading.Thread | None:
    """A thread importing, while the phases are read, what the run needs later: torch and the
    engine (``torch``: running one of our models), matplotlib (``overview``: the overview figure).
    None when there is nothing left to import."""
    if not ((torch and "torch" not in sys.modules) or (overview and "matplotlib.figure" not in sys.modules)):
        return None
    thread = threading.Thread(target=_import_heavy, args=(torch, overview), name="import-heavy", daemon=True)
    thread.start()
    return thread


def _import_heavy(torch: bool, overview: bool) -> None:
    # torch and matplotlib wait until a run needs them (installed on first use in Slicer): this is that run
    try:
        if torch:
            import safetensors.torch  # noqa: F401
            from ..segmentation import inference, networks  # noqa: F401
        if overview:
            import matplotlib.backends.backend_agg  # noqa: F401
            import matplotlib.colorbar  # noqa: F401
            import matplotlib.figure  # noqa: F401
    except Exception:  # missing or broken: the run's own import raises it, on the caller's thread
        return


def load_request_study(request: SegmentationRequest, *, progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None, warn=None) -> DCEStudy:
    """The request's study: the one in memory, or read from its phase files."""
    if request.study is not None:
        return request.study

    return load_study(list(request.phases), None if request.times_s is None else list(request.times_s), warn=warn,
                      progress=progress, cancel=cancel)


def load_request_model(request: SegmentationRequest, n_phases: int | None = None, warn=None) -> LoadedModel:
    """The request's model, loaded on the CPU: see :func:`load_model_with_options`."""
    return load_model_with_options(request.model, request.nnunet_options, n_phases=n_phases, warn=warn)


def load_model_with_options(reference, nnunet_options: dict, *, n_phases: int | None = None, warn=None):
    """A model loaded on the CPU: an nnU-Net v2 model folder (or a registry entry pointing at
    one) with ``nnunet_options`` (configuration, folds, mirroring, channels, whole_image, region; given
    ones override the entry's), or one of our models (the registry's default for ``n_phases``
    phases when ``reference`` is None), which takes none of those options. An nnU-Net
    folder's licence and reference go to ``warn`` before it runs."""
    folder, options = nnunet_entry(reference)
    if folder is not None:

        options = {**options, **{k: v for k, v in nnunet_options.items() if v}}
        model = load_nnunet_model(folder, **options)
        (warn or log.warning)(licence_notice(model))
        return model
    given = [option for option, key in (("--channel", "channels"), ("--folds", "folds"),
                                        ("--configuration", "configuration"), ("--mirroring", "mirroring"),
                                        ("--whole-image", "whole_image"), ("--region", "region"))
             if nnunet_options.get(key)]
    if given:
        raise InputError(f"applies to nnU-Net model folders only; model {reference or '(default)'} is not one",
                         given[0])
    return load_model(reference, n_phases=n_phases)


def run_segmentation(request: SegmentationRequest, *, output: str | Path | None = None, overwrite: bool = False,
                     model: LoadedModel | None = None, measure: bool | None = None,
                     progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                     warn=None) -> SegmentationRecord:
    """Run ``request`` and return its record.

    ``output``: a folder that receives every output file (built aside, renamed into place
    when complete; a non-empty folder needs ``overwrite``). ``model``: the request's model
    already loaded (reused across runs). ``measure``: compute the measurements (default:
    when writing outputs). ``progress(step, fraction)`` runs from 0 to 1.
    """
    if output is not None:
        output = Path(output)
        atomic.check_output_dir(output, overwrite)
    measure = output is not None if measure is None else measure
    reading = request.study is None
    segment_from, segment_to = (0.1 if reading else 0.0), (0.9 if measure else 1.0)

    report(progress, "loading", 0.0, cancel)
    started = time.perf_counter()
    # torch's import (1.5-2.5 s on one core, mostly holding the GIL) and matplotlib's (0.6 s, for the overview)
    # overlap the phases' decompression (C, without the GIL): the standard case's reading plus torch's import
    # 6.4 -> 5.8 s (median of 4 alternating runs each, 2 CPU cores shared, load 2.5, 2026-12-07)
    importing = _start_importing(torch=model is None, overview=output is not None) if reading else None
    try:
        study = load_request_study(request, progress=scaled(progress, 0.0, segment_from), cancel=cancel, warn=warn)
    finally:
        if importing is not None:
            importing.join()  # never leave an import running (an error here ends the process)
    loading_s = time.perf_counter() - started if reading else 0.0
    model = model or load_request_model(request, study.n_phases, warn=warn)
    if hasattr(model, "check_study"):  # a foreign model's channel mapping: refused before anything runs
        model.check_study(study)
    settings = request.threshold_settings(model.card)
    result = segment_study(study, model, device=request.device, settings=settings, batch_size=request.batch_size,
                           progress=scaled(progress, segment_from, segment_to), cancel=cancel, warn=warn)
    run = SegmentationRecord(request, study, model, result, loading_s=loading_s)
    if measure:

        report(progress, "measuring", 0.9, cancel)
        measurements = measure_study(study, result.mask, ftv_options=request.ftv_options)
        run.record = measurement_record(study, result, measurements)
        if hasattr(model, "provenance"):  # a foreign model: where it came from, its licence, its inputs
            run.record.update(model.provenance())
    if output is not None:

        report(progress, "writing outputs", 0.95, cancel)
        with atomic.atomic_output_dir(output, overwrite=overwrite) as staging:
            written = write_outputs(staging, study, result, run.record)
            written += _write_dicom_seg(staging, request, study, result, warn)
        run.outputs = {name: output / name for name in written}
        report(progress, "done", 1.0, cancel)
    return run
