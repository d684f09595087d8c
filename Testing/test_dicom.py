"""DICOM DCE series: write with our writer, read back by physical coordinates and times."""

import shutil

import numpy as np
import pydicom
import pytest

from breasttumorseg.exam.dicom import read_dicom_phases, write_study_dicom
from breasttumorseg.core.errors import InputError, OutputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.loading import load_study
from breasttumorseg.exam.dce_exam import DCEStudy

TIMES = np.array([0.0, 65.5, 131.0, 196.25])


def _oblique_geometry() -> Geometry:
    """A double-oblique grid (rotations about two axes), anisotropic voxels."""
    a, b = np.radians(20.0), np.radians(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry((24, 20, 12), (0.8, 0.9, 2.5), (-60.25, 31.5, -12.0), tuple((rz @ rx).ravel()))


def _study(geometry: Geometry, times=TIMES, integer=False) -> DCEStudy:
    rng = np.random.default_rng(7)
    base = rng.normal(300.0, 40.0, geometry.shape_zyx)
    phases = np.stack([base * (1.0 + 0.3 * i) for i in range(len(TIMES))]).astype(np.float32)
    if integer:
        phases = np.round(phases)
    return DCEStudy(phases, geometry, None if times is None else np.asarray(times), source="synthetic")


def _quantum(study: DCEStudy) -> float:
    return float(study.phases.max() - study.phases.min()) / 65534.0


def _assert_phases_match(result, study: DCEStudy, times=True):
    assert len(result) == study.n_phases
    tolerance = 0.51 * _quantum(study) + 1e-4
    for index, (array, geometry, time_s, _name) in enumerate(result):
        np.testing.assert_allclose(geometry.corners_lps(), study.geometry.corners_lps(), atol=1e-3)
        assert geometry.same_grid(study.geometry)
        assert array.dtype == np.float32
        assert np.abs(array - study.phases[index]).max() <= tolerance
        if times:
            assert time_s == pytest.approx(study.times_s[index] - study.times_s[0], abs=1e-3)
        else:
            assert time_s is None


def test_one_series_with_temporal_positions_round_trip(tmp_path):
    study = _study(_oblique_geometry())
    folder = write_study_dicom(study, tmp_path / "dce")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 4 * 12
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert header.Modality == "MR" and header.PatientID == "PHANTOM"
    assert header.SOPClassUID == pydicom.uid.MRImageStorage
    assert int(header.NumberOfTemporalPositions) == 4
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in files}) == 1
    _assert_phases_match(read_dicom_phases(folder), study)


def test_one_series_per_phase_round_trip_and_flat_folder(tmp_path):
    study = _study(_oblique_geometry())
    folder = write_study_dicom(study, tmp_path / "dce", one_series_per_phase=True)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    assert len(subfolders) == 4
    _assert_phases_match(read_dicom_phases(folder), study)

    # all series in one flat folder, file names shuffled against time order
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, sub in enumerate(subfolders):
        for f in sub.glob("*.dcm"):
            shutil.copy(f, flat / f"z{3 - i}_{f.name}")
    _assert_phases_match(read_dicom_phases(flat), study)


def test_integer_data_is_exact(tmp_path):
    study = _study(_oblique_geometry(), integer=True)
    folder = write_study_dicom(study, tmp_path / "dce")
    header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    assert float(header.RescaleSlope) == 1.0 and float(header.RescaleIntercept) == 0.0
    for index, (array, *_rest) in enumerate(read_dicom_phases(folder)):
        np.testing.assert_array_equal(array, study.phases[index])


def test_negative_values_survive_rescale(tmp_path):
    study = _study(_oblique_geometry())
    study = study.with_phases(study.phases - 500.0)
    _assert_phases_match(read_dicom_phases(write_study_dicom(study, tmp_path / "dce")), study)


def test_one_folder_per_phase_via_load_study(tmp_path):
    study = _study(_oblique_geometry())
    folder = write_study_dicom(study, tmp_path / "dce", one_series_per_phase=True)
    given = [folder / "phase_02", folder / "phase_00", folder / "phase_03", folder / "phase_01"]
    loaded = load_study(given)
    np.testing.assert_allclose(loaded.times_s, TIMES - TIMES[0], atol=1e-3)
    assert loaded.phase_names[0].startswith("DCE phase 0")
    np.testing.assert_allclose(loaded.geometry.corners_lps(), study.geometry.corners_lps(), atol=1e-3)
    assert np.abs(loaded.phases - study.phases).max() <= 0.51 * _quantum(study) + 1e-4


def test_no_times_orders_by_temporal_position(tmp_path):
    study = _study(_oblique_geometry(), times=None)
    folder = write_study_dicom(study, tmp_path / "dce")
    for f in folder.glob("*.dcm"):  # strip every timing tag
        ds = pydicom.dcmread(f)
        for keyword in ("TriggerTime", "AcquisitionTime", "ContentTime"):
            delattr(ds, keyword)
        ds.save_as(f)
    _assert_phases_match(read_dicom_phases(folder), study, times=False)
    assert load_study([folder]).times_s is None
    (folder / "times.json").write_text('{"times_s": [0, 60, 120, 180]}')  # a sidecar in the folder
    assert list(load_study([folder]).times_s) == [0, 60, 120, 180]


def test_temporal_split_without_identifier_uses_acquisition_time(tmp_path):
    study = _study(_oblique_geometry())
    folder = write_study_dicom(study, tmp_path / "dce")
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.TemporalPositionIdentifier
        del ds.TriggerTime
        ds.InstanceNumber = 1
        ds.save_as(f)
    _assert_phases_match(read_dicom_phases(folder), study)


def test_write_refuses_non_empty_folder(tmp_path):
    (tmp_path / "dce").mkdir()
    (tmp_path / "dce" / "other.txt").write_text("x")
    with pytest.raises(OutputError, match="dce: output folder exists and is not empty"):
        write_study_dicom(_study(_oblique_geometry()), tmp_path / "dce")


# ----------------------------------------------------------------------------- bad DICOM
def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match=r"nowhere: folder not found"):
        read_dicom_phases(tmp_path / "nowhere")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r": holds no DICOM images"):
        read_dicom_phases(tmp_path)


def test_unreadable_file_is_named(tmp_path):
    folder = write_study_dicom(_study(_oblique_geometry()), tmp_path / "dce")
    (folder / "IM_broken.dcm").write_bytes(b"this is not DICOM" * 10)
    with pytest.raises(InputError, match=r"IM_broken\.dcm: is not a readable DICOM file") as caught:
        read_dicom_phases(folder)
    assert "\n" not in str(caught.value)


def test_different_sizes_in_one_temporal_position(tmp_path):
    study = _study(_oblique_geometry())
    folder = write_study_dicom(study, tmp_path / "dce")
    small = _study(Geometry((10, 8, 12), (0.8, 0.9, 2.5), (-60.25, 31.5, -12.0), study.geometry.direction))
    other = write_study_dicom(small, tmp_path / "small")
    series_uid = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID
    # drop one slice of the big series' temporal position 2 and put a small image there
    victim = folder / "IM_01_0005.dcm"
    victim.unlink()
    intruder = pydicom.dcmread(other / "IM_01_0005.dcm")
    intruder.SeriesInstanceUID = series_uid
    intruder.save_as(folder / "IM_01_0005.dcm")
    with pytest.raises(InputError, match=r"dce: mixed DICOM: images of different sizes \(10x8 and 24x20\) "
                                         r"in one temporal position"):
        read_dicom_phases(folder)


def test_missing_slices_are_refused(tmp_path):
    folder = write_study_dicom(_study(_oblique_geometry()), tmp_path / "dce")
    (folder / "IM_02_0006.dcm").unlink()
    with pytest.raises(InputError, match=r"unevenly spaced .*missing slices"):
        read_dicom_phases(folder)


def test_single_phase_dicom_is_refused(tmp_path):
    folder = write_study_dicom(_study(_oblique_geometry()), tmp_path / "dce", one_series_per_phase=True)
    with pytest.raises(InputError, match=r"phase_01.*only one phase found"):
        load_study([folder / "phase_01"])
