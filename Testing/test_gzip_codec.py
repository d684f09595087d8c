""".nii.gz through ISA-L (python-isal) and without it: the same voxels, headers and messages either way.

Without isal (Slicer's Python) the standard library's gzip reads (ITK compresses what we write, always); each test
of a path runs both ways (``monkeypatch`` of :data:`gzip_codec.FAST`), so a broken fallback fails
here although the test environment has isal.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.core import gzip_codec
from breasttumorseg.core.errors import InputError, OutputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.exam.dce_exam import DCEStudy
from breasttumorseg.exam.loading import load_study, read_image
from breasttumorseg.reporting.outputs import OUTPUT_FILES, PROBABILITY_FILE, write_outputs
from breasttumorseg.reporting.writing import write_image
from breasttumorseg.segmentation.pipeline import SegmentationResult
from breasttumorseg.segmentation.postprocess import ThresholdSettings

GEOMETRY = Geometry((40, 36, 12), (0.75, 0.8, 2.5), (-40.5, 12.25, -7.0),
                    tuple(np.array([[0.9063, 0.0, 0.4226], [0.0, 1.0, 0.0], [-0.4226, 0.0, 0.9063]]).ravel()))


@pytest.fixture(params=[True, False], ids=["isal", "stdlib"])
def codec(request, monkeypatch):
    """Each test once through ISA-L and once through the standard library (isal absent)."""
    monkeypatch.setattr(gzip_codec, "FAST", request.param)
    return request.param


def _array(dtype=np.float32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = np.zeros(GEOMETRY.shape_zyx, dtype)
    array[3:9, 5:30, 4:33] = (rng.random((6, 25, 29)) * 100).astype(dtype)
    return array


def test_isal_is_installed_where_the_requirements_are():
    # the package depends on isal (pyproject.toml, requirements.txt): this environment runs the fast path
    assert gzip_codec.FAST


def test_streams_decompress_both_ways_and_errors_are_caught(codec):
    data = _array().tobytes()
    packed = gzip.compress(data)
    assert gzip_codec.decompress(packed) == data
    assert gzip_codec.decompress(packed + gzip.compress(b"second member")) == data + b"second member"
    with pytest.raises(gzip_codec.ERRORS):
        gzip_codec.decompress(packed[: len(packed) // 2])
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(gzip_codec.ERRORS):
        gzip_codec.decompress(bytes(corrupt))


@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_written_nifti_gz_holds_what_itk_writes_and_reads_back(tmp_path, codec, dtype):
    array = _array(dtype)
    write_image(tmp_path / "ours.nii.gz", array, GEOMETRY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.nii.gz"]  # no uncompressed or partial file left
    sitk.WriteImage(GEOMETRY.to_image(array), str(tmp_path / "itk.nii"), useCompression=False)
    # header and voxels byte for byte those of ITK's own NIfTI file, read back by our own reader both ways
    assert gzip_codec.decompress((tmp_path / "ours.nii.gz").read_bytes()) == (tmp_path / "itk.nii").read_bytes()
    image = sitk.ReadImage(str(tmp_path / "ours.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    assert Geometry.from_image(image).same_grid(GEOMETRY, tol_mm=1e-4)
    back, geometry = read_image(tmp_path / "ours.nii.gz")
    np.testing.assert_array_equal(back, array.astype(np.float32))
    back[0, 0, 0] = 1.0  # the caller's own array, though float32 voxels are read without a conversion
    assert geometry.same_grid(GEOMETRY, tol_mm=1e-4)
    nibabel = pytest.importorskip("nibabel")
    np.testing.assert_array_equal(np.asarray(nibabel.load(tmp_path / "ours.nii.gz").dataobj).transpose(2, 1, 0),
                                  array)


def test_reading_is_the_same_both_ways_and_refuses_truncated_files(tmp_path, codec):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"phase_{index}.nii.gz")
        sitk.WriteImage(GEOMETRY.to_image(_array(seed=index) + index), str(paths[-1]), useCompression=True)
    study = load_study(paths)
    for index in range(3):
        np.testing.assert_array_equal(study.phases[index], _array(seed=index) + index)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 2000])
    with pytest.raises(InputError, match=r"phase_2\.nii\.gz: cannot be read as an image \(corrupt or truncated"):
        load_study(paths)


def _result_and_study():
    probability = _array() / 100.0
    mask = (probability > 0.5).astype(np.uint8)
    phases = np.stack([_array(seed=1), _array(seed=1) + 50 * mask])
    study = DCEStudy(phases, GEOMETRY, phase_names=["pre", "post 1"], source="case")
    result = SegmentationResult(probability, mask, GEOMETRY, ThresholdSettings(threshold=0.5), None, "cpu")
    return study, result, {"model_name": "test model", "model_version": "1.0"}


def test_outputs_written_beside_the_overview_and_a_failed_image_is_raised(tmp_path, codec):
    study, result, record = _result_and_study()
    folder = tmp_path / "out"
    assert write_outputs(folder, study, result, record) == list(OUTPUT_FILES)
    assert sorted(p.name for p in folder.iterdir()) == sorted(OUTPUT_FILES)
    np.testing.assert_array_equal(read_image(folder / PROBABILITY_FILE)[0], result.probability.astype(np.float32))

    # the images are written on a second thread: its error reaches the caller, after the overview
    broken = tmp_path / "broken"
    (broken / PROBABILITY_FILE).mkdir(parents=True)
    (broken / PROBABILITY_FILE / "keep").write_text("a folder cannot be replaced by a file")
    with pytest.raises(OutputError, match=r"probability\.nii\.gz: could not be written"):
        write_outputs(broken, study, result, record)
    assert (broken / "overview.png").is_file()  # the other thread ran to its end


def test_stdlib_errors_are_caught_as_the_loader_expects():
    assert zlib.error in gzip_codec.ERRORS and EOFError in gzip_codec.ERRORS and OSError in gzip_codec.ERRORS
