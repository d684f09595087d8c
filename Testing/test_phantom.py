"""Tests for the synthetic DCE-MRI phantom (breasttumorseg.phantom): small grids, real checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.geometry import Geometry
from breasttumorseg.core.resources import TUMOR_SHAPES_FOLDER
from breasttumorseg.phantom import (PhantomCase, generate_phantom, load_real_shapes,
                                    write_phantom_case)
from breasttumorseg.exam.curves import curve_type
from breasttumorseg.phantom.kinetics import (ToftsTable, parker_blood_concentration,
                                             spgr_signal)

#: A small, fast axial grid covering a realistic field of view (288 x 240 x 144 mm).
SMALL = dict(size=(96, 80, 36), spacing=(3.0, 3.0, 4.0))
SMALL_SAG = dict(size=(64, 64, 30), spacing=(3.0, 3.0, 5.5))


@pytest.fixture(scope="module")
def case() -> PhantomCase:
    return generate_phantom(7, n_phases=5, **SMALL)


def _centroid_lps(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    kji = np.argwhere(mask).mean(axis=0)
    return geometry.index_to_physical(kji[::-1])


def _mean_curve(case: PhantomCase, mask: np.ndarray) -> np.ndarray:
    return np.array([float(phase[mask > 0].mean()) for phase in case.study.phases])


def test_same_seed_same_case_other_seed_other_case(case):
    again = generate_phantom(7, n_phases=5, **SMALL)
    np.testing.assert_array_equal(again.study.phases, case.study.phases)
    np.testing.assert_array_equal(again.tumor_mask, case.tumor_mask)
    np.testing.assert_array_equal(again.tissue_labels, case.tissue_labels)
    assert again.study.geometry == case.study.geometry
    assert list(again.study.times_s) == list(case.study.times_s)
    other = generate_phantom(8, n_phases=5, **SMALL)
    assert not np.array_equal(other.study.phases, case.study.phases)


def test_shapes_dtypes_and_geometry(case):
    study = case.study
    assert study.phases.dtype == np.float32 and study.phases.shape == (5, 36, 80, 96)
    assert study.geometry.size == (96, 80, 36) and study.geometry.spacing == (3.0, 3.0, 4.0)
    assert np.allclose(study.geometry.direction_matrix, np.eye(3))
    for mask in (case.tumor_mask, case.breast_mask, case.body_mask, case.tissue_labels):
        assert mask.dtype == np.uint8 and mask.shape == study.geometry.shape_zyx
    assert set(np.unique(case.tumor_mask)) <= {0, 1} and set(np.unique(case.breast_mask)) == {0, 1}
    assert np.isfinite(study.phases).all() and study.phases.min() >= 0
    assert len(study.phase_names) == 5 and study.phase_names[0] == "pre-contrast"
    # masks agree with the tissue map
    np.testing.assert_array_equal(case.tumor_mask, case.tissue_labels == 9)
    np.testing.assert_array_equal(case.body_mask, case.tissue_labels > 0)
    assert case.info["seed"] == 7 and case.info["n_phases"] == 5 and case.info["layout"] == "axial"
    assert case.info["tumor_volume_ml"] == pytest.approx(case.tumor_mask.sum() * study.geometry.voxel_volume_ml,
                                                         rel=1e-3)


def test_anatomy_in_patient_coordinates(case):
    g = case.study.geometry
    breast = _centroid_lps(case.breast_mask, g)
    heart = case.tissue_labels == 6
    chest = _centroid_lps(case.tissue_labels == 5, g)
    assert breast[1] < chest[1] - 30, "breasts must be anterior (smaller LPS y) of the thorax"
    # both breasts: breast voxels on the patient's right (x < midline) and left
    midline = _centroid_lps(case.body_mask, g)[0]
    xs = g.index_to_physical(np.argwhere(case.breast_mask)[:, ::-1])[:, 0]
    assert (xs < midline - 30).sum() > 100 and (xs > midline + 30).sum() > 100
    assert not (heart & (case.breast_mask > 0)).any(), "the heart is outside the breast mask"
    # fat-suppressed T1: fat darker than fibroglandular tissue on the pre-contrast
    pre = case.study.phases[0]
    assert pre[case.tissue_labels == 1].mean() < 0.6 * pre[case.tissue_labels == 2].mean()


def test_tumor_inside_breast_and_enhancing_fast(case):
    assert case.tumor_mask.any()
    assert not (case.tumor_mask & (1 - case.breast_mask)).any(), "tumor voxels outside the breast mask"
    curve = _mean_curve(case, case.tumor_mask)
    assert 100 * (curve[1] - curve[0]) / curve[0] > 70, "malignant tumors enhance fast and strongly"


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_tumor_kinetic_type_matches_info(seed):
    case = generate_phantom(seed, n_phases=6, **SMALL)
    kind = case.info["kinetic_type"]
    assert kind in ("washout", "plateau", "persistent")
    curve = _mean_curve(case, case.tumor_mask)
    assert curve_type(curve, case.study.times_s) == kind
    assert 100 * (curve[1] - curve[0]) / curve[0] > 70


def test_benign_fibroadenoma_enhances_persistently():
    for seed in range(40):
        case = generate_phantom(seed, n_phases=6, size=(72, 60, 28), spacing=(4.0, 4.0, 5.0), with_tumor=False)
        fibroadenomas = [b for b in case.info["benign_lesions"] if b["kind"] == "fibroadenoma"]
        if fibroadenomas and fibroadenomas[0]["diameter_mm"] > 12:
            break
    else:
        pytest.fail("no case with a fibroadenoma in 40 seeds")
    g = case.study.geometry
    from scipy import ndimage

    components, _ = ndimage.label(case.tissue_labels == 8)
    centre = np.round(g.physical_to_index(fibroadenomas[0]["centre_lps"])).astype(int)[::-1]
    label = components[tuple(centre)]
    assert label > 0, "the fibroadenoma is drawn where info says"
    curve = _mean_curve(case, components == label)
    assert curve_type(curve, case.study.times_s) == "persistent"
    assert not case.tumor_mask.any() and case.info["tumor_volume_ml"] == 0


def test_vessels_and_heart_enhance_but_are_not_tumor(case):
    for label in (6, 7):
        region = case.tissue_labels == label
        assert region.any()
        assert not (region & (case.tumor_mask > 0)).any()
    blood = case.tissue_labels == 6
    curve = _mean_curve(case, blood)
    assert curve[1] > 2 * curve[0], "the heart's blood pool enhances strongly"


def test_sagittal_layout_one_breast_with_lps_directions():
    case = generate_phantom(3, layout="sagittal", n_phases=4, **SMALL_SAG)
    g = case.study.geometry
    m = g.direction_matrix
    assert np.allclose(np.abs(m).sum(axis=0), 1) and np.isclose(np.linalg.det(m), 1.0)
    assert np.allclose(m[:, 2], [-1, 0, 0]) or np.allclose(m[:, 2], [1, 0, 0]), "slices along x"
    assert case.study.phases.shape == (4, 30, 64, 64)
    assert case.tumor_mask.any() and not (case.tumor_mask & (1 - case.breast_mask)).any()
    breast = _centroid_lps(case.breast_mask, g)
    body = _centroid_lps(case.body_mask, g)
    assert breast[1] < body[1], "breast anterior of the chest"
    # anterior (low LPS y) is at low i: the first column is mostly air, the last mostly body
    assert case.body_mask[:, :, :3].mean() < case.body_mask[:, :, -3:].mean()
    assert case.info["imaged_breast"] in ("left", "right")
    left = breast[0] > case.info["midline_x_mm"]  # LPS x grows towards the patient's left
    assert case.info["imaged_breast"] == ("left" if left else "right")


def test_phases_and_times():
    for n in (2, 3, 8):
        case = generate_phantom(11, n_phases=n, size=(40, 36, 16), spacing=(4.0, 4.0, 5.0))
        assert case.study.n_phases == n
    seen = set()
    for seed in range(6):
        case = generate_phantom(seed, size=(40, 36, 16), spacing=(4.0, 4.0, 5.0))
        t = case.study.times_s
        seen.add(len(t))
        assert 3 <= len(t) <= 8 and t[0] == 0
        assert 60 <= t[1] <= 150
        steps = np.diff(t[1:])
        assert ((steps >= 44.9) & (steps <= 120.1)).all()
    assert len(seen) > 1, "the number of phases varies with the seed"
    with pytest.raises(ValueError):
        generate_phantom(0, n_phases=1, size=(40, 36, 16), spacing=(4.0, 4.0, 5.0))
    with pytest.raises(ValueError):
        generate_phantom(0, n_phases=9, size=(40, 36, 16), spacing=(4.0, 4.0, 5.0))
    with pytest.raises(ValueError):
        generate_phantom(0, layout="coronal", size=(40, 36, 16), spacing=(4.0, 4.0, 5.0))


def test_small_arbitrary_grids_still_hold_a_tumor():
    for seed in range(4):
        case = generate_phantom(seed, n_phases=4, size=(40, 36, 16), spacing=(2.0, 2.0, 3.0))
        assert case.tumor_mask.any() and case.breast_mask.any()
        assert case.study.geometry.size == (40, 36, 16)


def test_random_protocol_is_clinical_without_size():
    from breasttumorseg.phantom.generator import sample_geometry

    for seed in range(5):
        g = sample_geometry(np.random.default_rng(seed), "axial", None, None)
        assert 320 <= g.size[0] <= 512 and g.size[0] == g.size[1]
        assert 0.55 <= g.spacing[0] <= 0.95 and 1.0 <= g.spacing[2] <= 2.5
        s = sample_geometry(np.random.default_rng(seed), "sagittal", None, None)
        assert s.size[0] * s.size[1] < g.size[0] * g.size[1]


def test_real_tumor_shapes_load_and_are_credited():
    shapes = load_real_shapes()
    assert len(shapes) == 3
    volumes = sorted(round(s.volume_ml, 1) for s in shapes)
    assert volumes == [36.3, 42.4, 104.8]
    assert all(40 < s.longest_mm < 200 for s in shapes)
    readme = (TUMOR_SHAPES_FOLDER / "README.md").read_text()
    for credit in ("BreastDCEDL", "naomifridman/BreastDCEDL", "CC BY 4.0", "Copyright (c) 2025 Naomi Fridman"):
        assert credit in readme
    for path in TUMOR_SHAPES_FOLDER.glob("*.nii.gz"):
        image = sitk.ReadImage(str(path))
        assert image.GetPixelID() == sitk.sitkUInt8 and max(image.GetSize()) < 130


def test_real_shape_is_used_as_tumor():
    from breasttumorseg.phantom.lesions import rasterize, tumor_shape
    from breasttumorseg.phantom.grid import Frame

    frame = Frame(Geometry((60, 60, 60), (1.0, 1.0, 1.0), (-30.0, -30.0, -30.0)))
    shape = tumor_shape(np.random.default_rng(0), 40.0, "real")
    box, inside, _ = rasterize(frame, shape, np.zeros(3))
    volume_ml = inside.sum() / 1000.0
    real = shape.params["shape"]
    expected = real.volume_ml * shape.params["scale"] ** 3
    assert volume_ml == pytest.approx(expected, rel=0.25)


def test_kinetic_model_facts():
    # Parker AIF: first-pass peak of whole blood ~6 mM at ~10 s after the bolus arrives
    t = np.arange(0, 120, 0.5)
    cb = parker_blood_concentration(t)
    assert 5.0 < cb.max() < 7.0 and 8 < t[np.argmax(cb)] < 14
    times = [0, 90, 180, 270, 360, 450]
    table = ToftsTable(times, tail_decay_per_min=0.06)
    fast = table.concentration(1.0, 3.0, 0.05)   # high Ktrans, low ve: washout
    slow = table.concentration(0.1, 0.1, 0.01)   # low Ktrans, high ve: persistent
    def sig(c):
        return spgr_signal(1.0, 1 / 1.6 + 4.5 * c, tr_ms=4.5, flip_deg=12)

    assert curve_type(sig(fast), times) == "washout"
    assert curve_type(sig(slow), times) == "persistent"
    assert fast[0] == 0 and slow[0] == 0


def test_progress_is_reported():
    calls = []
    generate_phantom(0, n_phases=3, size=(40, 36, 16), spacing=(4.0, 4.0, 5.0),
                     progress=lambda step, fraction: calls.append(fraction))
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)


@pytest.mark.parametrize("layout", ["axial", "sagittal"])
def test_write_round_trip(tmp_path, layout):
    case = generate_phantom(5, layout=layout, n_phases=3, size=(40, 36, 16), spacing=(3.0, 3.5, 4.0))
    folder = write_phantom_case(case, tmp_path / "case")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["breast_mask.nii.gz", "info.json", "phase_00.nii.gz", "phase_01.nii.gz", "phase_02.nii.gz",
                     "times.json", "tissue_labels.nii.gz", "tumor_mask.nii.gz"]
    for n in range(3):
        image = sitk.ReadImage(str(folder / f"phase_{n:02d}.nii.gz"))
        assert Geometry.from_image(image).same_grid(case.study.geometry)
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), case.study.phases[n], rtol=1e-6)
        # a physical point maps to the same voxel (LPS preserved through NIfTI's RAS header)
        point = case.study.geometry.index_to_physical(np.array([3, 4, 5]))
        assert image.TransformPhysicalPointToIndex(tuple(point)) == (3, 4, 5)
    tumor = sitk.ReadImage(str(folder / "tumor_mask.nii.gz"))
    assert tumor.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(tumor), case.tumor_mask)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "breast_mask.nii.gz"))),
                                  case.breast_mask)
    times = json.loads((folder / "times.json").read_text())["times_s"]
    assert times == [float(t) for t in case.study.times_s]
    info = json.loads((folder / "info.json").read_text())
    assert info["seed"] == 5 and info["layout"] == layout
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_write_dicom(tmp_path):
    dicom = pytest.importorskip("breasttumorseg.exam.dicom")
    if not hasattr(dicom, "write_study_dicom"):
        pytest.skip("breasttumorseg.exam.dicom.write_study_dicom is not available yet")
    case = generate_phantom(2, n_phases=3, size=(24, 20, 8), spacing=(6.0, 6.0, 8.0))
    folder = write_phantom_case(case, tmp_path / "case", dicom=True)
    assert any((folder / "dicom").rglob("*"))
    if hasattr(dicom, "read_dicom_phases"):
        phases = dicom.read_dicom_phases(folder / "dicom")
        assert len(phases) == 3
