"""Write a phantom case to a folder: phases, times, masks, info (and DICOM on request)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import atomic_path, write_json, write_text
from ..core.errors import OutputError
from ..exam.dicom import write_study_dicom


def _write(array: np.ndarray, geometry, path: Path) -> None:
    image = geometry.to_image(np.ascontiguousarray(array))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), True)
        except RuntimeError as error:
            raise OutputError(f"could not be written ({str(error).strip().splitlines()[-1]})", path) from None


def write_phantom_case(case, folder, *, dicom: bool = False) -> Path:
    """Write ``case`` into ``folder`` (created if needed); returns the folder.

    Files: ``phase_00.nii.gz`` ... ``phase_{T-1}.nii.gz`` (float32, signal in arbitrary
    units), ``times.json`` (``{"times_s": [...]}``, seconds from the injection, in phase
    order), ``tumor_mask.nii.gz`` and ``breast_mask.nii.gz`` (uint8 0/1),
    ``tissue_labels.nii.gz`` (uint8, see ``info["tissue_labels"]``) and ``info.json``.
    Every image is on ``case.study.geometry`` (LPS; NIfTI stores it as RAS in its header).
    Each file is written atomically. With ``dicom`` the study is also written as one DICOM
    series under ``folder/dicom`` (:func:`breasttumorseg.exam.dicom.write_study_dicom`).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the folder ({error.strerror or error})", folder) from None
    study = case.study
    geometry = study.geometry
    for n, phase in enumerate(study.phases):
        _write(phase.astype(np.float32, copy=False), geometry, folder / f"phase_{n:02d}.nii.gz")
    times = None if study.times_s is None else [float(t) for t in study.times_s]
    write_text(folder / "times.json", json.dumps({"times_s": times}, indent=1) + "\n")
    _write(case.tumor_mask.astype(np.uint8, copy=False), geometry, folder / "tumor_mask.nii.gz")
    _write(case.breast_mask.astype(np.uint8, copy=False), geometry, folder / "breast_mask.nii.gz")
    _write(case.tissue_labels.astype(np.uint8, copy=False), geometry, folder / "tissue_labels.nii.gz")
    write_json(folder / "info.json", case.info, indent=1)
    if dicom:

        write_study_dicom(study, folder / "dicom")
    return folder
