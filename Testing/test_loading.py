"""Loading DCE studies from image files and 4D NIfTI: times, ordering, grids and bad input."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core.errors import Cancelled, GeometryError, InputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.loading import load_study, read_image, read_mask, read_times_json
from breasttumorseg.core.progress import CancelToken
from breasttumorseg.reporting.writing import write_image

GRID = Geometry((24, 20, 12), (1.0, 1.25, 2.0), (-12.0, 30.0, -5.0))


def _phase_values(index: int, geometry: Geometry = GRID) -> np.ndarray:
    """A smooth ramp in physical space (LPS x + 2y + 3z) plus a per-phase offset."""
    k, j, i = np.indices(geometry.shape_zyx)
    points = geometry.index_to_physical(np.stack([i, j, k], axis=-1).astype(float))
    return (points @ np.array([1.0, 2.0, 3.0]) + 100.0 * index).astype(np.float32)


def _write_phases(folder, n=4, names=None, geometries=None):
    paths = []
    for index in range(n):
        geometry = geometries[index] if geometries else GRID
        path = folder / (names[index] if names else f"phase_{index}.nii.gz")
        write_image(path, _phase_values(index, geometry), geometry)
        paths.append(path)
    return paths


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# ----------------------------------------------------------------------------- read_image
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_read_image_formats(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    write_image(path, _phase_values(1).astype(np.int16), GRID)
    array, geometry = read_image(path)
    assert array.dtype == np.float32 and array.shape == GRID.shape_zyx
    np.testing.assert_array_equal(array, _phase_values(1).astype(np.int16))
    assert geometry.same_grid(GRID)


def test_read_image_mhd_two_files(tmp_path):
    image = GRID.to_image(_phase_values(0))
    sitk.WriteImage(image, str(tmp_path / "image.mhd"))
    array, geometry = read_image(tmp_path / "image.mhd")
    np.testing.assert_array_equal(array, _phase_values(0))
    assert geometry.same_grid(GRID)


def test_read_image_missing(tmp_path):
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / "absent.nii.gz")
    assert _one_line(caught).endswith("absent.nii.gz: file not found")


@pytest.mark.parametrize("content", [b"", b"definitely not an image" * 40])
def test_read_image_unreadable(tmp_path, content):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert "broken.nii.gz: cannot be read as an image" in _one_line(caught)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_read_image_truncated_voxels(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    write_image(path, _phase_values(0), GRID)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert f"cut{suffix}: cannot be read as an image" in _one_line(caught)


def test_read_image_2d(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image(24, 20, sitk.sitkFloat32), str(path))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert "slice.nrrd: is a 2D image (size 24x20); each phase must be a 3D volume" in _one_line(caught)


def test_read_image_single_slice_volume(tmp_path):
    path = tmp_path / "thin.nii.gz"
    write_image(path, np.zeros((1, 20, 24), np.float32), Geometry((24, 20, 1), (1, 1, 1), (0, 0, 0)))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert "thin.nii.gz: has a single voxel along z (size 24x20x1)" in _one_line(caught)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii", ".nii.gz", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_read_image_non_finite(tmp_path, bad, suffix):
    values = _phase_values(0)
    values[3, 4, 5] = bad
    values[4, 4, 5] = bad
    write_image(tmp_path / f"bad{suffix}", values, GRID)
    with pytest.raises(InputError) as caught:
        read_image(tmp_path / f"bad{suffix}")
    assert f"bad{suffix}: contains 2 NaN or Inf voxels" in _one_line(caught)


def test_read_image_nifti_scaling(tmp_path):
    """Our direct NIfTI-1 reading applies scl_slope/scl_inter as SimpleITK does."""
    import struct
    path = tmp_path / "scaled.nii"
    write_image(path, _phase_values(0).astype(np.int16), GRID)
    data = bytearray(path.read_bytes())
    data[112:120] = struct.pack("<2f", 0.5, -3.0)
    path.write_bytes(bytes(data))
    array, _ = read_image(path)
    np.testing.assert_allclose(array, sitk.GetArrayFromImage(sitk.ReadImage(str(path))), atol=1e-4)
    np.testing.assert_allclose(array, _phase_values(0).astype(np.int16) * 0.5 - 3.0, atol=1e-4)


# ----------------------------------------------------------------------------- files + times
def test_files_without_times(tmp_path):
    paths = _write_phases(tmp_path)
    study = load_study(paths)
    assert study.times_s is None
    assert study.phase_names == [p.name for p in paths]
    assert study.geometry.same_grid(GRID)
    for index in range(4):
        np.testing.assert_array_equal(study.phases[index], _phase_values(index))


def test_explicit_times(tmp_path):
    study = load_study(_write_phases(tmp_path), [0, 60, 120, 180.5])
    np.testing.assert_array_equal(study.times_s, [0, 60, 120, 180.5])


def test_times_json_list(tmp_path):
    paths = _write_phases(tmp_path)
    (tmp_path / "times.json").write_text(json.dumps({"times_s": [0, 90, 180, 270]}))
    study = load_study(paths)
    np.testing.assert_array_equal(study.times_s, [0, 90, 180, 270])
    # explicit times win over the sidecar
    np.testing.assert_array_equal(load_study(paths, [0, 1, 2, 3]).times_s, [0, 1, 2, 3])


def test_times_json_mapping_orders_phases(tmp_path):
    # file names sort differently from acquisition order; the first post-contrast is on another grid
    shifted = Geometry(GRID.size, GRID.spacing, (-11.0, 30.5, -4.0))
    names = ["b_pre.nii.gz", "a_late.nrrd", "c_early.nii.gz"]
    paths = _write_phases(tmp_path, 3, names, geometries=[GRID, GRID, shifted])
    (tmp_path / "times.json").write_text(json.dumps({"times_s": {"b_pre.nii.gz": 0, "a_late": 240,
                                                                 "c_early.nii.gz": 80, "unused.nii.gz": 5}}))
    warnings = []
    study = load_study(sorted(paths), warn=warnings.append)
    assert study.phase_names == ["b_pre.nii.gz", "c_early.nii.gz", "a_late.nrrd"]
    np.testing.assert_array_equal(study.times_s, [0, 80, 240])
    assert study.geometry.same_grid(shifted)  # reference = first post-contrast after ordering
    assert len(warnings) == 2 and all("origin shifted by 1.5 mm" in w for w in warnings)


def test_times_json_invalid(tmp_path):
    paths = _write_phases(tmp_path, 2)
    (tmp_path / "times.json").write_text("{times: [0, 60]")
    with pytest.raises(InputError) as caught:
        load_study(paths)
    assert "times.json: is not valid JSON" in _one_line(caught)

    (tmp_path / "times.json").write_text(json.dumps({"times": [0, 60]}))
    with pytest.raises(InputError, match=r'times\.json: needs a "times_s" entry'):
        load_study(paths)

    (tmp_path / "times.json").write_text(json.dumps({"times_s": [0, "sixty"]}))
    with pytest.raises(InputError, match=r'times\.json: "times_s" entry 1 is not a finite number'):
        load_study(paths)

    (tmp_path / "times.json").write_text(json.dumps({"times_s": {"phase_0.nii.gz": 0}}))
    with pytest.raises(InputError, match=r"times\.json: has no time for phase_1\.nii\.gz"):
        load_study(paths)


def test_read_times_json_forms(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"times_s": [0, 61.5]}))
    (tmp_path / "b.json").write_text(json.dumps({"times_s": {"x.nii.gz": 0, "y.nii.gz": 61.5}}))
    assert read_times_json(tmp_path / "a.json") == [0.0, 61.5]
    assert read_times_json(tmp_path / "b.json") == {"x.nii.gz": 0.0, "y.nii.gz": 61.5}
    with pytest.raises(InputError, match="c.json: file not found"):
        read_times_json(tmp_path / "c.json")


@pytest.mark.parametrize("times, problem", [
    ([0, 60, 60, 120], "duplicate acquisition time 60 s"),
    ([0, 120, 60, 180], "acquisition times decrease"),
    ([0, 60, 120], "3 acquisition times given for 4 phases"),
])
def test_bad_explicit_times(tmp_path, times, problem):
    with pytest.raises(InputError) as caught:
        load_study(_write_phases(tmp_path), times)
    text = _one_line(caught)
    assert text.startswith("--times: ") and problem in text


@pytest.mark.parametrize("times, problem", [
    ([0, 60, 60, 120], "duplicate acquisition time 60 s"),
    ([0, 120, 60, 180], "acquisition times decrease"),
    ([0, 60], "2 acquisition times given for 4 phases"),
    ({"phase_0.nii.gz": 0, "phase_1.nii.gz": 60, "phase_2.nii.gz": 60, "phase_3.nii.gz": 90},
     "duplicate acquisition time 60 s"),
])
def test_bad_sidecar_times(tmp_path, times, problem):
    paths = _write_phases(tmp_path)
    (tmp_path / "times.json").write_text(json.dumps({"times_s": times}))
    with pytest.raises(InputError) as caught:
        load_study(paths)
    text = _one_line(caught)
    assert "times.json: " in text and problem in text


# ----------------------------------------------------------------------------- 4D NIfTI
def _write_4d(path, n):
    series = np.stack([_phase_values(i) for i in range(n)])
    write_image(path, series, GRID)
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_4d_split_with_stem_sidecar(tmp_path, suffix):
    path = _write_4d(tmp_path / f"dce{suffix}", 3)
    (tmp_path / "dce.json").write_text(json.dumps({"times_s": [0, 75, 150]}))
    study = load_study([path])
    assert study.n_phases == 3
    assert study.phase_names == [f"dce{suffix}[0]", f"dce{suffix}[1]", f"dce{suffix}[2]"]
    np.testing.assert_array_equal(study.times_s, [0, 75, 150])
    np.testing.assert_allclose(study.geometry.corners_lps(), GRID.corners_lps(), atol=1e-3)
    for index in range(3):
        np.testing.assert_array_equal(study.phases[index], _phase_values(index))


def test_4d_ignores_unrelated_sidecar_and_takes_explicit_times(tmp_path):
    path = _write_4d(tmp_path / "dce.nii.gz", 3)
    (tmp_path / "dce.json").write_text(json.dumps({"RepetitionTime": 0.004}))  # a BIDS sidecar
    assert load_study([path]).times_s is None
    with pytest.raises(InputError, match=r"^--times: 2 acquisition times given for 3 phases$"):
        load_study([path], [0, 60])


def test_4d_single_volume(tmp_path):
    path = _write_4d(tmp_path / "one.nrrd", 1)  # NRRD keeps a 4th axis of size 1
    with pytest.raises(InputError) as caught:
        load_study([path])
    assert "one.nrrd: is a 4D image with a single volume" in _one_line(caught)
    path = _write_4d(tmp_path / "one.nii.gz", 1)  # ITK writes (and reads) this NIfTI as 3D
    with pytest.raises(InputError) as caught:
        load_study([path])
    assert "one.nii.gz: only one phase found" in _one_line(caught)


def test_4d_among_other_inputs(tmp_path):
    paths = _write_phases(tmp_path, 2)
    four_d = _write_4d(tmp_path / "dce.nii.gz", 2)
    with pytest.raises(InputError, match=r"dce\.nii\.gz: is a 4D image; give a 4D series as the only input"):
        load_study(paths + [four_d])


# ----------------------------------------------------------------------------- grids
def test_resampled_phase_warns_and_lands_on_reference(tmp_path):
    coarse = Geometry((12, 10, 6), (2.0, 2.5, 4.0), (-11.5, 30.625, -4.0))
    paths = _write_phases(tmp_path, 3, geometries=[coarse, GRID, GRID])
    warnings = []
    study = load_study(paths, warn=warnings.append)
    assert study.geometry.same_grid(GRID)
    assert len(warnings) == 1
    assert "phase_0.nii.gz" in warnings[0] and "resampled (linear)" in warnings[0]
    assert "size (12, 10, 6) vs (24, 20, 12)" in warnings[0] and "spacing (2, 2.5, 4) vs (1, 1.25, 2) mm" in warnings[0]
    # a linear ramp is reproduced exactly by linear interpolation inside the coarse grid
    inside = (slice(2, -2), slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(study.phases[0][inside], _phase_values(0)[inside], atol=1e-3)


def test_no_physical_overlap(tmp_path):
    far = Geometry(GRID.size, GRID.spacing, (500.0, 30.0, -5.0))
    paths = _write_phases(tmp_path, 3, geometries=[far, GRID, GRID])
    with pytest.raises(GeometryError) as caught:
        load_study(paths)
    text = _one_line(caught)
    assert "phase_0.nii.gz: " in text and "no physical overlap" in text


def test_small_overlap_is_refused_with_percentage(tmp_path):
    partial = Geometry(GRID.size, GRID.spacing, (-12.0 + 0.7 * 24, 30.0, -5.0))
    paths = _write_phases(tmp_path, 3, geometries=[GRID, GRID, partial])
    with pytest.raises(GeometryError) as caught:
        load_study(paths)
    assert "phase_2.nii.gz: phase_2.nii.gz covers only 30% of the first post-contrast phase" in _one_line(caught)


def test_orientation_difference_is_reported(tmp_path):
    angle = np.radians(5.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilted = Geometry(GRID.size, GRID.spacing, GRID.origin, tuple(rotation.ravel()))
    warnings = []
    load_study(_write_phases(tmp_path, 2, geometries=[tilted, GRID]), warn=warnings.append)
    assert len(warnings) == 1 and "orientation differs by up to 5 degrees" in warnings[0]


# ----------------------------------------------------------------------------- bad inputs
def test_missing_phase_file(tmp_path):
    paths = _write_phases(tmp_path, 2)
    with pytest.raises(InputError) as caught:
        load_study(paths + [tmp_path / "phase_9.nii.gz"])
    assert _one_line(caught).endswith("phase_9.nii.gz: file or folder not found")


def test_unreadable_phase_file(tmp_path):
    paths = _write_phases(tmp_path, 2)
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(InputError) as caught:
        load_study(paths + [tmp_path / "junk.nii.gz"])
    assert "junk.nii.gz: cannot be read as an image" in _one_line(caught)


def test_single_phase(tmp_path):
    paths = _write_phases(tmp_path, 1)
    with pytest.raises(InputError) as caught:
        load_study(paths)
    assert "phase_0.nii.gz: only one phase found; a DCE study needs a pre-contrast" in _one_line(caught)
    with pytest.raises(InputError, match="no phases given"):
        load_study([])


def test_2d_phase(tmp_path):
    paths = _write_phases(tmp_path, 2)
    sitk.WriteImage(sitk.Image(24, 20, sitk.sitkFloat32), str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError) as caught:
        load_study(paths + [tmp_path / "flat.nrrd"])
    assert "flat.nrrd: is a 2D image" in _one_line(caught)


def test_nan_in_a_phase(tmp_path):
    paths = _write_phases(tmp_path, 3)
    values = _phase_values(2)
    values[0, 0, 0] = np.nan
    write_image(paths[2], values, GRID)
    with pytest.raises(InputError) as caught:
        load_study(paths)
    assert "phase_2.nii.gz: contains 1 NaN or Inf voxel" in _one_line(caught)


def test_folders_and_files_mixed(tmp_path):
    paths = _write_phases(tmp_path, 2)
    (tmp_path / "dicom").mkdir()
    with pytest.raises(InputError, match="mixes DICOM folders and image files"):
        load_study(paths + [tmp_path / "dicom"])


# ----------------------------------------------------------------------------- progress, masks
def test_progress_per_phase_and_cancel(tmp_path):
    paths = _write_phases(tmp_path, 3)
    calls = []
    load_study(paths, progress=lambda step, fraction: calls.append((step, fraction)))
    reading = [step for step, _ in calls if step.startswith("reading phase_")]
    assert reading == ["reading phase_0.nii.gz", "reading phase_1.nii.gz", "reading phase_2.nii.gz"]
    assert [f for _, f in calls] == sorted(f for _, f in calls) and calls[-1][1] == 1.0

    token = CancelToken()

    def cancel_after_first(step, fraction):
        if step == "reading phase_1.nii.gz":
            token.cancel()

    with pytest.raises(Cancelled):
        load_study(paths, progress=cancel_after_first, cancel=token)


def test_read_mask_nearest_with_warning(tmp_path):
    mask = np.zeros(GRID.shape_zyx, np.uint8)
    mask[4:8, 5:15, 6:18] = 1
    write_image(tmp_path / "same.nii.gz", mask, GRID)
    warnings = []
    np.testing.assert_array_equal(read_mask(tmp_path / "same.nii.gz", GRID, warn=warnings.append), mask)
    assert warnings == []

    fine = Geometry((48, 40, 24), (0.5, 0.625, 1.0), (-12.25, 29.6875, -5.5))  # same field of view, half spacing
    fine_mask = np.repeat(np.repeat(np.repeat(mask, 2, 0), 2, 1), 2, 2) * 3  # label value 3
    write_image(tmp_path / "fine.nrrd", fine_mask.astype(np.int16), fine)
    result = read_mask(tmp_path / "fine.nrrd", GRID, warn=warnings.append)
    assert result.dtype == np.uint8 and set(np.unique(result)) == {0, 1}
    np.testing.assert_array_equal(result, mask)
    assert len(warnings) == 1 and "fine.nrrd: mask resampled (nearest neighbour)" in warnings[0]

    far = Geometry(GRID.size, GRID.spacing, (900.0, 0.0, 0.0))
    write_image(tmp_path / "far.nii.gz", mask, far)
    with pytest.raises(GeometryError, match=r"far\.nii\.gz: mask has no physical overlap"):
        read_mask(tmp_path / "far.nii.gz", GRID)
