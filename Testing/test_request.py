"""The segmentation request: one validation, one way into and out of command-line arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from breasttumorseg.cli.main import build_parser
from breasttumorseg.core.errors import InputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.run.request import SegmentationRequest
from breasttumorseg.exam.dce_exam import DCEStudy

BACKEND = Path(__file__).resolve().parents[1] / "BreastTumorSeg"


def _parsed(command: str, arguments: list[str]):
    return build_parser().parse_args([command, *arguments])


@pytest.mark.parametrize("relative", [False, True])
def test_every_setting_survives_the_command_line(relative):
    request = SegmentationRequest(phases=("pre.nii.gz", "post 1.nii.gz", "dicom/"), times_s=(0, 61.25, 0.1 + 0.2),
                                  model="my model.safetensors", device="cpu", batch_size=3, threshold=0.35,
                                  relative=relative, min_component_ml=0.05, pe_threshold_percent=55.5,
                                  ftv_background_fraction=0.4, early_time_s=120.0, late_time_s=480.0,
                                  configuration="3d_fullres", folds=("0", "all"), mirroring=True,
                                  channels=("DCE=1=post1", "sub=sub2"), whole_image=True)
    args = _parsed("segment", [*request.to_args(), "--output", "out"])
    assert SegmentationRequest.from_args(args) == request
    assert args.relative_threshold == (0.35 if relative else None)
    assert args.threshold == (None if relative else 0.35)
    # batch reads the same options (its phases come from the manifest)
    options = request.replace(times_s=None).to_args()[len(request.phases):]
    batch = _parsed("batch", ["cohort.csv", "--output", "out", *options])
    assert SegmentationRequest.from_args(batch, phases=request.phases, times_s=request.times_s) == request
    # --whole-image is --region whole; the other regions travel as --region
    assert request.region == "whole" and "--region" in request.to_args()
    for region in ("body", "breasts"):
        other = request.replace(whole_image=False, region=region)
        assert SegmentationRequest.from_args(_parsed("segment", [*other.to_args(), "--output", "out"])) == other
    assert SegmentationRequest(phases=("a",), region="whole").whole_image


def test_defaults_give_a_short_command_line_and_read_back_the_same():
    request = SegmentationRequest(phases=("a.nrrd", "b.nrrd"))
    assert request.to_args() == ["a.nrrd", "b.nrrd", "--device", "auto"]
    assert SegmentationRequest.from_args(_parsed("segment", [*request.to_args(), "-o", "x"])) == request
    # demo has no threshold or FTV options: the defaults apply
    demo = SegmentationRequest.from_args(_parsed("demo", []), phases=["a.nrrd", "b.nrrd"])
    assert demo == request


@pytest.mark.parametrize("changes, option", [
    ({"threshold": 1.5}, "--threshold"),
    ({"threshold": -0.1, "relative": True}, "--relative-threshold"),
    ({"threshold": float("nan")}, "--threshold"),
    ({"min_component_ml": -1.0}, "--min-component-ml"),
    ({"batch_size": 0}, "--batch-size"),
    ({"device": "tpu"}, "--device"),
    ({"ftv_background_fraction": 2.0}, "--ftv-background-fraction"),
    ({"phases": ()}, "segment"),
    ({"folds": ("x",)}, "--folds"),
    ({"channels": ("post1",)}, "--channel"),
    ({"channels": ("DCE=wash",)}, "--channel"),
])
def test_impossible_settings_are_one_line_naming_the_option(changes, option):
    values = {"phases": ("a.nrrd", "b.nrrd"), **changes}
    with pytest.raises(InputError) as caught:
        SegmentationRequest(**values)
    message = str(caught.value)
    assert message.startswith(option) and "\n" not in message


def test_a_study_in_memory_travels_as_files_with_its_times():
    geometry = Geometry((8, 6, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    study = DCEStudy(np.ones((3, 4, 6, 8), np.float32), geometry, np.array([0.0, 90.0, 180.0]), ["a", "b", "c"],
                     "scene")
    request = SegmentationRequest(study=study, model="m", threshold=0.4)
    with pytest.raises(ValueError):
        request.to_args()
    on_disk = request.with_phase_files(["p0.nrrd", "p1.nrrd", "p2.nrrd"])
    assert on_disk.study is None and on_disk.times_s == (0.0, 90.0, 180.0)
    assert on_disk.to_args()[:7] == ["p0.nrrd", "p1.nrrd", "p2.nrrd", "--times", "0", "90", "180"]
    with pytest.raises(InputError, match="not both"):
        SegmentationRequest(study=study, phases=("a.nrrd",))


def test_cli_refuses_a_bad_threshold_before_anything_runs(tmp_path):
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "breasttumorseg", "segment", "missing_a.nii.gz",
                             "missing_b.nii.gz", "--relative-threshold", "1.5", "--output", str(output)],
                            capture_output=True, text=True, env={"PYTHONPATH": str(BACKEND)}, timeout=120, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "breasttumorseg: error: --relative-threshold: must be between 0 and 1, got 1.5"
    assert not output.exists()


def test_torch_and_matplotlib_imported_while_reading_and_joined_when_reading_fails(tmp_path):
    # run_segmentation imports torch and matplotlib on a thread while the phases are read; a reading error
    # still ends the run with its own one-line message, the imports finished (none left running)
    script = f"""
import sys, threading
from breasttumorseg.core.errors import InputError
from breasttumorseg.run.request import SegmentationRequest
from breasttumorseg.run.runner import run_segmentation
assert "torch" not in sys.modules and "matplotlib" not in sys.modules
try:
    run_segmentation(SegmentationRequest(phases=({str(tmp_path / "a.nii.gz")!r}, {str(tmp_path / "b.nii.gz")!r})),
                     output={str(tmp_path / "out")!r})
except InputError as error:
    print("error:", error)
print("threads:", [t.name for t in threading.enumerate() if t.name == "import-heavy"])
print("imported:", "torch" in sys.modules, "matplotlib.figure" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a.nii.gz: file or folder not found" in done.stdout
    assert "threads: []" in done.stdout and "imported: True True" in done.stdout
    assert not (tmp_path / "out").exists()
