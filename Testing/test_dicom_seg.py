"""``tumor.seg.dcm``: a DICOM SEG referencing its source series, read back with highdicom /
pydicom, its frames on the right source slices of an oblique series."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from breasttumorseg.exam.dicom import write_study_dicom
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.dce_exam import DCEStudy
from nnunet_folders import build_model_folder
from pydicom.sr.codedict import codes
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def _oblique_study() -> DCEStudy:
    a, b = np.radians(20.0), np.radians(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    geometry = Geometry((40, 36, 14), (1.2, 1.3, 2.5), (-60.25, 31.5, -12.0), tuple((rz @ rx).ravel()))
    rng = np.random.default_rng(11)
    base = ndimage.gaussian_filter(rng.normal(300, 80, geometry.shape_zyx), 1.5) * 3 - 600
    base = np.clip(base, 1.0, None)
    phases = np.stack([base * (0.6 + 0.4 * t) for t in range(3)]).astype(np.float32)
    return DCEStudy(phases, geometry, np.array([0.0, 90.0, 180.0]), ["pre", "post1", "post2"], "dicom-study")


def test_segment_writes_a_dicom_seg_on_the_source_slices(tmp_path):
    build_model_folder(tmp_path / "model", folds=(0,))
    study = _oblique_study()
    dicom = write_study_dicom(study, tmp_path / "dicom", one_series_per_phase=True)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "BreastTumorSeg"))
    done = subprocess.run([sys.executable, "-m", "breasttumorseg", "segment", str(dicom), "--model",
                           str(tmp_path / "model"), "--threshold", "0.3", "--device", "cpu", "--output", str(out),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "tumor_label.nii.gz")))
    assert 0 < label.sum() < label.size, "pick a threshold that gives a partial mask"

    # the reference phase (first post-contrast) is the series the SEG references
    post1 = sorted((dicom).glob("phase_*"))[1]
    sources = {}
    for path in post1.iterdir():
        header = pydicom.dcmread(path, stop_before_pixels=True)
        sources[header.SOPInstanceUID] = header
    series_uid = next(iter(sources.values())).SeriesInstanceUID

    segmentation = hd.seg.segread(out / "tumor.seg.dcm")
    assert segmentation.SeriesInstanceUID != series_uid
    assert segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    description = segmentation.SegmentSequence[0]
    assert description.SegmentLabel == "Tumor"
    category = description.SegmentedPropertyCategoryCodeSequence[0]
    assert category.CodeValue == codes.SCT.MorphologicallyAbnormalStructure.value
    assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value
    assert description.SegmentAlgorithmName == "TinyBreast"
    assert description.SegmentAlgorithmType == "AUTOMATIC"

    # each frame references a source slice; its pixels are the label's slice at that slice's position
    normal = np.asarray(study.geometry.direction_matrix)[:, 2]
    origin = np.asarray(study.geometry.origin)
    frames = segmentation.pixel_array
    assert frames.ndim == 3 and frames.shape[0] >= 1
    covered = set()
    for index, functional in enumerate(segmentation.PerFrameFunctionalGroupsSequence):
        derivation = functional.DerivationImageSequence[0].SourceImageSequence[0]
        source = sources[derivation.ReferencedSOPInstanceUID]
        position = np.asarray(source.ImagePositionPatient, dtype=float)
        assert np.allclose(functional.PlanePositionSequence[0].ImagePositionPatient, position, atol=1e-3)
        slice_index = round(float(np.dot(position - origin, normal)) / study.geometry.spacing[2])
        np.testing.assert_array_equal(frames[index] > 0, label[slice_index] > 0)
        covered.add(slice_index)
    assert covered == {k for k in range(label.shape[0]) if label[k].any()}
    record = json.loads((out / "measurements.json").read_text())
    assert record["model_kind"] == "nnunetv2"
