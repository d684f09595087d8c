"""nnU-Net v2 model folders: found as users unzip them, loaded safely, channels bound to phases,
the same numbers as nnU-Net's own predictor, and run by every entry point (CLI, batch)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from breasttumorseg.core.errors import InputError, ModelError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.segmentation.nnunet_folder import (
    find_model_folder,
    load_nnunet_model,
    read_checkpoint,
)
from breasttumorseg.exam.dce_exam import DCEStudy
from nnunet_folders import build_model_folder, plans_for
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
IDENTITY = tuple(np.eye(3).ravel())
OBLIQUE = tuple(np.ravel(np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])
                         @ np.array([[1.0, 0.0, 0.0], [0.0, 0.96, -0.28], [0.0, 0.28, 0.96]])))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """An unzipped 'archive': the model folder two levels below."""
    root = tmp_path_factory.mktemp("archive")
    build_model_folder(root / "downloaded", folds=(0, 1), seed=1)
    return root


def synthetic_study(shape_zyx, spacing_xyz, direction=IDENTITY, zero_border: int = 0, seed=0,
                    n_phases: int = 3) -> DCEStudy:
    """Smooth random phases (signal ~ 300 +- 250), optionally exactly 0 on a border."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(300, 80, shape_zyx), 1.5) * 3 - 600
    phases = np.stack([base * (0.5 + 0.3 * t) for t in range(n_phases)]).astype(np.float32)
    if zero_border:
        b = zero_border
        phases[:, :b] = 0
        phases[:, :, :b] = 0
        phases[:, :, :, -b:] = 0
    geometry = Geometry(tuple(reversed(shape_zyx)), spacing_xyz, (-20.0, 10.0, 5.0), direction)
    return DCEStudy(phases, geometry, np.arange(n_phases) * 90.0, [f"phase {i}" for i in range(n_phases)], "synthetic")


def nnunet_probability(folder: Path, image_zyx: np.ndarray, spacing_xyz, mirroring: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0, 1))
    labels, probabilities = predictor.predict_single_npy_array(
        image_zyx[None].astype(np.float32), {"spacing": list(reversed(spacing_xyz))}, None, None, True)
    return labels, probabilities[1]


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("shape, spacing, direction, border, mirroring", [
    ((28, 44, 40), (1.3, 1.3, 1.6), tuple(np.eye(3).ravel()), 3, False),    # border exactly zero
    ((9, 64, 60), (0.8, 0.8, 4.5), tuple(np.eye(3).ravel()), 0, False),     # anisotropic: in-plane, then z
    ((20, 40, 36), (1.1, 1.4, 2.2), OBLIQUE, 2, False),                      # oblique grid
    ((10, 26, 24), (1.5, 1.5, 2.0), tuple(np.eye(3).ravel()), 0, True),     # smaller than a patch; mirroring
], ids=["zero-border", "anisotropic", "oblique", "small-mirrored"])
def test_probability_matches_nnunets_own_predictor(archive, shape, spacing, direction, border, mirroring):
    study = synthetic_study(shape, spacing, direction, border)
    folder = find_model_folder(archive)
    labels, expected = nnunet_probability(folder, study.phases[1], spacing, mirroring)
    model = load_nnunet_model(archive, whole_image=True, mirroring=mirroring)
    probability, _, _ = model.predict_probability(study, device="cpu")
    assert probability.shape == study.geometry.shape_zyx and probability.dtype == np.float32
    assert expected.max() - expected.min() > 0.3, "the random model should give a varied probability"
    difference = np.abs(probability - expected)
    assert difference.max() <= 5e-3 and difference.mean() <= 5e-4, (difference.max(), difference.mean())
    assert ((probability > 0.5) == (labels == 1)).mean() >= 0.999
    if border:  # nnU-Net crops to the non-zero box: the tumor probability is 0 outside it
        assert probability[:border].max() == 0.0 and probability[:, :, -border:].max() == 0.0


def test_tiles_inside_the_body_only_keep_the_probability_inside(archive):
    from breasttumorseg.segmentation.pipeline import body_mask

    study = synthetic_study((24, 48, 60), (1.3, 1.3, 1.6))
    study.phases[:, :, :, :28] = np.random.default_rng(3).normal(0, 2, study.phases[:, :, :, :28].shape)  # air
    body = body_mask(study)
    assert body.any() and not body.all()
    counts = {}
    results = {}
    for whole_image in (True, False):
        model = load_nnunet_model(archive, whole_image=whole_image, folds=["0"])
        calls = []
        model.fold_networks[0].register_forward_hook(lambda *_, seen=calls: seen.append(1))
        results[whole_image], _, _ = model.predict_probability(study, device="cpu")
        counts[whole_image] = len(calls)
    assert counts[False] < counts[True]
    whole, skipped = results[True], results[False]
    assert 0.0 <= skipped.min() and skipped.max() <= 1.0
    # other tiles (laid over the body's box) of the same random network: a similar map inside the body
    assert np.corrcoef(whole[body], skipped[body])[0, 1] > 0.8


def test_region_breasts_runs_the_tiles_inside_the_classical_breast_mask(archive, tmp_path):
    """Issue 14 item 3: ``--region breasts`` gives an nnU-Net folder the model-free breast prior
    our models have: fewer tiles, probability 0 outside the breasts (grown by 10 mm); in-process
    through the request (what the Slicer logic and the station build) and on the command line."""
    from breasttumorseg.phantom import generate_phantom
    from breasttumorseg.run.request import SegmentationRequest
    from breasttumorseg.run.runner import load_request_model, run_segmentation

    phantom = generate_phantom(500001, size=(96, 96, 20), spacing=(1.5, 1.5, 2.0), n_phases=3)
    runs, calls = {}, {}
    for region in ("body", "breasts"):
        request = SegmentationRequest(study=phantom.study, model=str(archive), folds=("0",), device="cpu",
                                      region=region)
        model = load_request_model(request)
        assert model.region == region and model.request_options()["region"] == region
        seen = []
        model.fold_networks[0].register_forward_hook(lambda *_, seen=seen: seen.append(1))
        runs[region] = run_segmentation(request, model=model, measure=True)
        calls[region] = len(seen)
    body, breasts = runs["body"].result, runs["breasts"].result
    region = breasts.breast_region
    assert body.breast_region is None and region is not None
    assert 0.05 < region.mean() < 0.8 and region[phantom.tumor_mask > 0].all()
    assert calls["breasts"] < calls["body"], calls
    assert breasts.probability[~region].max() == 0.0 and breasts.probability[region].max() > 0.3
    assert runs["breasts"].record["model_region"] == "breasts"
    assert runs["breasts"].record["breast_mask_model"] == "classical"
    assert runs["body"].record["model_region"] == "body" and runs["body"].record["breast_mask_model"] is None

    phases = _write_study(tmp_path / "study", phantom.study)
    out = tmp_path / "out"
    done = _run_cli("segment", *phases, "--times", 0, 90, 180, "--model", archive, "--folds", 0, "--device", "cpu",
                    "--region", "breasts", "--output", out, "--quiet")
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "measurements.json").read_text())
    assert record["model_region"] == "breasts" and record["breast_mask_model"] == "classical"
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "probability.nii.gz")))
    assert written[~region].max() == 0.0
    with pytest.raises(ModelError, match="does not go with region 'breasts'"):
        load_nnunet_model(archive, whole_image=True, region="breasts")
    with pytest.raises(InputError, match="--region"):
        SegmentationRequest(study=phantom.study, region="lungs")
    with pytest.raises(InputError, match="--whole-image"):
        SegmentationRequest(study=phantom.study, whole_image=True, region="body")


# ----------------------------------------------------------------------------- finding the folder
def test_folder_found_below_the_unzipped_archive_and_folds_chosen(archive):
    folder = find_model_folder(archive)
    assert (folder / "plans.json").is_file() and folder.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    model = load_nnunet_model(archive)
    assert model.folds == ("0", "1") and model.card.name == "TinyBreast"
    assert model.roles == ("post1",) and "MAMA-MIA" in model.mapping_source
    assert load_nnunet_model(archive, folds=["1"]).folds == ("1",)
    with pytest.raises(ModelError, match="fold 4 has no checkpoint_final.pth"):
        load_nnunet_model(archive, folds=["4"])
    with pytest.raises(ModelError, match="configuration '2d'"):
        find_model_folder(archive, "2d")


def test_two_configurations_need_a_choice_or_take_3d_fullres(tmp_path):
    full = build_model_folder(tmp_path / "m", folds=(0,))
    low = full.parent / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    shutil.copytree(full, low)
    assert find_model_folder(tmp_path) == full
    assert find_model_folder(tmp_path, "3d_lowres") == low
    shutil.rmtree(full)
    shutil.move(low, low.parent / "nnUNetTrainer__nnUNetPlans__3d_custom")
    shutil.copytree(low.parent / "nnUNetTrainer__nnUNetPlans__3d_custom",
                    low.parent / "nnUNetTrainer__nnUNetPlans__3d_big")
    with pytest.raises(ModelError, match="2 model folders"):
        find_model_folder(tmp_path)


# ----------------------------------------------------------------------------- channels
def test_channels_bound_to_phases_and_bad_mappings_named(tmp_path):
    root = tmp_path / "two"
    build_model_folder(root, folds=(0,), channel_names=("T1_pre", "SUB2"))
    model = load_nnunet_model(root, channels=["SUB2=sub2", "T1_pre=pre"], whole_image=True)
    assert model.roles == ("pre", "sub2") and model.card.min_phases == 3
    study = synthetic_study((12, 34, 34), (1.5, 1.5, 2.0), n_phases=4)
    probability, _, _ = model.predict_probability(study, device="cpu")
    assert probability.shape == study.geometry.shape_zyx
    cases = [([], "channel 'T1_pre' is not mapped"),
             (["T1_pre=pre"], "channel 'SUB2' is not mapped"),
             (["T1_pre=pre", "SUB2=sub2", "T2=pre"], "channel 'T2' is not one of the model's channels"),
             (["T1_pre=pre", "SUB2=washout"], "channel 'SUB2': unknown role 'washout'"),
             (["T1_pre=pre", "SUB2=post1", "T1_pre=post2"], "channel 'T1_pre' is mapped twice")]
    for mapping, message in cases:
        with pytest.raises(InputError, match=message):
            load_nnunet_model(root, channels=mapping)
    short = load_nnunet_model(root, channels=["T1_pre=pre", "SUB2=sub5"])
    with pytest.raises(InputError, match="channel 'SUB2' is mapped to sub5, which needs 6 phases; the study has 4"):
        short.predict_probability(study, device="cpu")


# ----------------------------------------------------------------------------- safety
class _CreatesAFile:
    """Unpickling this runs ``touch`` on a path: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_malicious_checkpoint_is_refused_without_running_anything(tmp_path):
    folder = build_model_folder(tmp_path / "evil", folds=(0,))
    checkpoint_path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, weights_only=False)  # our own fixture, just written
    witness = tmp_path / "created_by_unpickling"
    checkpoint["logging"]["payload"] = _CreatesAFile(witness)
    torch.save(checkpoint, checkpoint_path)
    with pytest.raises(ModelError) as caught:
        load_nnunet_model(tmp_path / "evil")
    message = str(caught.value)
    assert "\n" not in message and "checkpoint needs the type" in message and "system" in message
    assert str(checkpoint_path) in message
    assert not witness.exists()
    # the allow-list still reads what nnU-Net's trainer writes (numpy scalars in its log)
    good = build_model_folder(tmp_path / "good", folds=(0,))
    content = read_checkpoint(good / "fold_0" / "checkpoint_final.pth")
    assert float(content["_best_ema"]) == pytest.approx(0.52)


def test_plans_naming_a_class_outside_the_network_packages_are_refused(tmp_path):
    folder = build_model_folder(tmp_path / "m", folds=(0,))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match="nonlin 'os.system' is not a torch.nn class"):
        load_nnunet_model(tmp_path / "m")


# ----------------------------------------------------------------------------- entry points
def _run_cli(*args, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "BreastTumorSeg") + os.pathsep + str(ROOT / "Testing")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "breasttumorseg", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600, check=False)


def _write_study(folder: Path, study: DCEStudy) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, phase in enumerate(study.phases):
        image = sitk.GetImageFromArray(phase)
        study.geometry.apply_to(image)
        paths.append(folder / f"phase_{index}.nii.gz")
        sitk.WriteImage(image, str(paths[-1]))
    return paths


def test_segment_and_batch_run_a_model_folder(archive, tmp_path):
    study = synthetic_study((16, 40, 36), (1.5, 1.5, 2.0), OBLIQUE, zero_border=2)
    phases = _write_study(tmp_path / "study", study)
    out = tmp_path / "out"
    done = _run_cli("segment", *phases, "--times", 0, 90, 180, "--model", archive, "--folds", 0, "--device", "cpu",
                    "--output", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "licence: CC BY-NC 4.0" in done.stderr and "research use only" in done.stderr
    record = json.loads((out / "measurements.json").read_text())
    assert record["model_name"] == "TinyBreast" and record["model_kind"] == "nnunetv2"
    assert record["model_licence"] == "CC BY-NC 4.0" and record["model_reference"] == "BreastTumorSeg test fixture"
    assert record["channel_mapping"] == {"DCE_post1": "post1"} and record["model_folds"] == ["0"]
    written = sitk.ReadImage(str(out / "probability.nii.gz"))
    assert np.allclose(written.GetDirection(), study.geometry.direction, atol=1e-6)
    assert written.GetSize() == tuple(study.geometry.size)
    # batch: the manifest's model column names the folder; an impossible mapping fails that case only
    manifest = tmp_path / "cohort.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "phases", "times", "model"])
        writer.writerow(["one", ";".join(str(p) for p in phases), "0;90;180", str(archive)])
    cohort = tmp_path / "cohort"
    done = _run_cli("batch", manifest, "--output", cohort, "--folds", 0, "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((cohort / "one" / "measurements.json").read_text())["model_kind"] == "nnunetv2"
    # a channel the folder does not have: one line naming it, before anything runs, no output
    bad = tmp_path / "bad"
    done = _run_cli("segment", *phases, "--model", archive, "--channel", "T2=pre", "--output", bad, "--quiet")
    assert done.returncode == 2 and not bad.exists()
    assert done.stderr.strip().splitlines()[-1] == ("breasttumorseg: error: --channel: channel 'T2' is not one of "
                                                    "the model's channels (DCE_post1)")
    done = _run_cli("segment", *phases, "--channel", "T2=pre", "--output", bad, "--quiet")
    assert done.returncode == 2 and "applies to nnU-Net model folders only" in done.stderr


def test_a_registry_entry_points_at_a_folder(archive, tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    relative = os.path.relpath(archive, registry)
    (registry / "models.json").write_text(json.dumps({"format": 1, "models": [
        {"name": "tiny-nnunet", "nnunet_folder": relative, "folds": ["1"], "channels": ["DCE_post1=post2"]}]}))
    study = synthetic_study((14, 36, 34), (1.5, 1.5, 2.0))
    phases = _write_study(tmp_path / "study", study)
    out = tmp_path / "out"
    done = _run_cli("segment", *phases, "--model", "tiny-nnunet", "--device", "cpu", "--output", out, "--quiet",
                    env_extra={"BREASTTUMORSEG_MODELS": str(registry)})
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "measurements.json").read_text())
    assert record["model_folds"] == ["1"] and record["channel_mapping"] == {"DCE_post1": "post2"}
    listed = _run_cli("models", env_extra={"BREASTTUMORSEG_MODELS": str(registry)})
    assert listed.returncode == 0 and "tiny-nnunet  [tumor: nnU-Net v2 model folder" in listed.stdout


def test_plans_fixture_is_what_nnunet_reads():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(plans_for()).get_configuration("3d_fullres")
    assert configuration.patch_size == [16, 32, 32]


# ----------------------------------------------------------------------------- export and grids
def test_tumor_probability_from_resampled_logit_differences_is_nnunets_softmax():
    """Resampling the K - 1 differences l_k - l_tumor (first order, in-plane then nearest along
    the anisotropic axis) gives the softmax of every channel resampled, as nnU-Net exports."""
    from types import SimpleNamespace

    from breasttumorseg.segmentation.nnunet_inference import export_probability, resample_to_shape

    rng = np.random.default_rng(5)
    logits = ndimage.gaussian_filter(rng.normal(0, 4, (3, 7, 30, 26)), 1).astype(np.float16).astype(np.float32)
    configuration = {"resampling_fn_probabilities_kwargs": {"order": 1, "order_z": 0, "force_separate_z": None}}
    prepared = {"cropped_shape": (12, 41, 37), "target_spacing": [4.0, 0.8, 0.8], "spacing": [2.4, 0.6, 0.55],
                "box": (slice(1, 13), slice(2, 43), slice(0, 37)), "full_shape": (14, 45, 40)}
    model = SimpleNamespace(output_label=2, configuration=configuration, plans={})
    probability = export_probability(logits, prepared, model)
    every_channel = resample_to_shape(logits, prepared["cropped_shape"], prepared["target_spacing"],
                                      prepared["spacing"], order=1, order_z=0)
    expected = torch.softmax(torch.from_numpy(every_channel), dim=0)[2].numpy()
    assert probability.shape == (14, 45, 40) and probability.dtype == np.float32
    assert np.abs(probability[prepared["box"]] - expected).max() < 1e-5
    outside = np.ones(probability.shape, bool)
    outside[prepared["box"]] = False
    assert probability[outside].max() == 0.0
    # third order is not linear: every channel is resampled first, as nnU-Net does
    configuration["resampling_fn_probabilities_kwargs"]["order"] = 3
    cubic = resample_to_shape(logits, prepared["cropped_shape"], prepared["target_spacing"], prepared["spacing"],
                              order=3, order_z=0)
    expected = torch.softmax(torch.from_numpy(cubic), dim=0)[2].numpy()
    assert np.abs(export_probability(logits, prepared, model)[prepared["box"]] - expected).max() < 1e-5


def test_a_mask_reaches_the_network_grid_as_nearest_neighbour_resizing():
    from breasttumorseg.segmentation.nnunet_inference import resize, to_network_grid

    mask = ndimage.binary_dilation(np.random.default_rng(2).random((15, 50, 47)) > 0.995, iterations=3)
    for shape in ((15, 50, 47), (9, 71, 30), (22, 33, 94)):
        prepared = {"forward": [0, 1, 2], "box": (slice(0, 15), slice(0, 50), slice(0, 47)),
                    "data": np.zeros((1, *shape), np.float32)}
        on_grid = to_network_grid(mask, prepared)
        expected = resize(mask.astype(np.float64), shape, 0) > 0.5  # scikit-image's order-0 resize
        assert on_grid.dtype == bool and on_grid.shape == shape
        assert (on_grid == expected).mean() > 0.999


# ----------------------------------------------------------------------------- device and precision
def test_nnunet_models_run_in_float16_autocast_on_cuda_and_in_float32_on_the_cpu(archive):
    """Only the selection logic (no GPU here): nnU-Net's predictor runs CUDA under float16
    autocast, 4 tiles a batch; our own models take bfloat16 where the GPU has it."""
    from breasttumorseg.core.device import resolve_device
    from breasttumorseg.segmentation.inference import SlidingWindowConfig, autocast_dtype
    from breasttumorseg.segmentation.nnunet_inference import window_config

    model = load_nnunet_model(archive, folds=["0"])
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    on_cuda, on_cpu = window_config(model, cuda), window_config(model, cpu)
    assert on_cuda.batch_size == 4 and on_cpu.batch_size == 1 and window_config(model, cuda, 2).batch_size == 2
    for supported in (True, False):
        assert autocast_dtype(cuda, on_cuda, bf16_supported=supported) == torch.float16
        assert autocast_dtype(cuda, SlidingWindowConfig(), bf16_supported=supported) == (
            torch.bfloat16 if supported else torch.float16)
    assert autocast_dtype(cpu, on_cpu) is None and autocast_dtype(cpu, SlidingWindowConfig()) is None
    assert autocast_dtype(cuda, SlidingWindowConfig(amp=False), bf16_supported=True) is None
    assert on_cuda.tiling == "nnunet" and on_cuda.accumulator == "float16"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(Exception, match="amp_dtype must be one of auto, float16, bfloat16"):
        SlidingWindowConfig(amp_dtype="float8").validate()


# ----------------------------------------------------------------------------- registry entries
def _registry_with(tmp_path, monkeypatch, *entries) -> Path:
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "models.json").write_text(json.dumps({"format": 1, "models": list(entries)}))
    monkeypatch.setenv("BREASTTUMORSEG_MODELS", str(registry))
    return registry


@pytest.mark.parametrize("entry, message", [
    ({"folds": "0"}, "entry 'x': 'folds' must be a non-empty list of fold numbers"),
    ({"folds": [0, "two"]}, "'folds' must be a non-empty list"),
    ({"channels": ["DCE_post1=washout"]}, "entry 'x': 'channels': channel 'DCE_post1': unknown role 'washout'"),
    ({"channels": "DCE_post1=post1"}, "'channels' must be a non-empty list of \"NAME=ROLE\" texts"),
    ({"mirroring": "yes"}, "entry 'x': 'mirroring' must be true or false"),
    ({"configuration": 3}, "entry 'x': 'configuration' must be text"),
    ({"region": "lungs"}, "entry 'x': 'region' must be one of whole, body, breasts"),
    ({"fold": [0]}, "entry 'x': unknown key 'fold'"),
    ({"nnunet_folder": ""}, "'nnunet_folder' must be a folder path"),
])
def test_malformed_registry_entries_for_folders_are_named_in_one_line(tmp_path, monkeypatch, entry, message):
    from breasttumorseg.segmentation.models import nnunet_entries

    registry = _registry_with(tmp_path, monkeypatch, {"name": "x", "nnunet_folder": "m", **entry})
    with pytest.raises(ModelError) as caught:
        nnunet_entries()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(registry / "models.json") in str(caught.value)


def test_registry_entries_for_folders_are_listed_with_their_source(archive, tmp_path, monkeypatch, capsys):
    from breasttumorseg.cli import main
    from breasttumorseg.segmentation.models import nnunet_entries, nnunet_entry

    registry = _registry_with(
        tmp_path, monkeypatch,
        {"name": "tiny", "nnunet_folder": os.path.relpath(archive, tmp_path / "registry"), "folds": [1, "0"],
         "channels": ["DCE_post1=sub1"], "configuration": "3d_fullres", "mirroring": True, "whole_image": True},
        {"name": "gone", "nnunet_folder": "/nowhere/mamamia"})
    entries = nnunet_entries()
    assert entries[0]["folds"] == ["1", "0"] and "folds" not in entries[1]
    folder, options = nnunet_entry("tiny")
    assert folder.resolve() == archive.resolve()
    assert options == {"configuration": "3d_fullres", "folds": ("1", "0"), "channels": ("DCE_post1=sub1",),
                       "mirroring": True, "whole_image": True}
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert (f"tiny  [tumor: nnU-Net v2 model folder]  source: {registry / os.path.relpath(archive, registry)}; "
            "configuration 3d_fullres; folds 1, 0; channels DCE_post1=sub1; mirroring; whole image") in listed
    assert "gone  [tumor: nnU-Net v2 model folder]  source: /nowhere/mamamia (not found)" in listed
    model = load_nnunet_model(folder, **options)
    assert model.folds == ("1", "0") and model.roles == ("sub1",) and model.whole_image
    # a name used twice (here by a folder entry and another folder entry) is refused
    _registry_with(tmp_path, monkeypatch, {"name": "tiny", "nnunet_folder": "a"},
                   {"name": "tiny", "nnunet_folder": "b"})
    with pytest.raises(ModelError, match="lists tiny more than once"):
        nnunet_entries()


# ----------------------------------------------------------------------------- evaluation on a data set
def _write_case(folder: Path, study: DCEStudy, tumor: np.ndarray) -> None:
    _write_study(folder, study)
    mask = sitk.GetImageFromArray(tumor.astype(np.uint8))
    study.geometry.apply_to(mask)
    sitk.WriteImage(mask, str(folder / "tumor_mask.nii.gz"))
    (folder / "times.json").write_text(json.dumps({"times_s": [float(t) for t in study.times_s]}))


def test_evaluate_scores_a_model_folder_on_a_data_set(archive, tmp_path, capsys):
    from breasttumorseg.cli import main
    from breasttumorseg.exam.loading import load_study
    from breasttumorseg.evaluation.metrics import dice
    from breasttumorseg.segmentation.pipeline import segment_study

    data = tmp_path / "cases"
    for index in range(2):
        study = synthetic_study((12, 34, 32), (1.5, 1.5, 2.0), seed=index)
        tumor = np.zeros(study.geometry.shape_zyx, bool)
        tumor[3:9, 8:24, 10 + 4 * index:26] = True
        _write_case(data / f"case_{index}", study, tumor)
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--model", str(archive), "--dataset-folder", str(data), "--folds", "1",
                 "--channel", "DCE_post1=post2", "--device", "cpu", "--json", str(report), "--quiet"]) == 0
    printed = capsys.readouterr()
    scores = json.loads(report.read_text())
    assert scores["model_licence"] == "CC BY-NC 4.0"
    assert scores["n_cases"] == 2 and [row["case"] for row in scores["cases"]] == ["case_0", "case_1"]
    assert scores["model_kind"] == "nnunetv2" and scores["model_folds"] == ["1"]
    assert scores["channel_mapping"] == {"DCE_post1": "post2"}
    # the same number as segmenting the case with the same folder and comparing by hand
    model = load_nnunet_model(archive, folds=["1"], channels=["DCE_post1=post2"])
    study = load_study(sorted((data / "case_1").glob("phase_*.nii.gz")), times_s=[0.0, 90.0, 180.0])
    tumor = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "case_1" / "tumor_mask.nii.gz"))) > 0
    result = segment_study(study, model, device="cpu")
    assert scores["cases"][1]["dice"] == pytest.approx(float(dice(result.mask, tumor)), abs=1e-4)
    assert f"on 2 cases: median Dice {scores['median_dice']:.3f}" in printed.out
    # one line for what cannot work; nothing written
    for argv, message in ((["--pred", str(data)], "--pred: compares mask files; it does not go with --model"),
                          (["--cases", "case_7"], "case 'case_7' is not in the data set (2 cases found)"),
                          (["--channel", "T2=pre"], "channel 'T2' is not one of the model's channels")):
        other = tmp_path / "other.json"
        assert main(["evaluate", "--model", str(archive), "--dataset-folder", str(data), *argv,
                     "--json", str(other), "--quiet"]) == 2
        assert message in capsys.readouterr().err and not other.exists()
    assert main(["evaluate", "--ref", str(data), "--quiet"]) == 2
    assert "--pred: give --pred and --ref" in capsys.readouterr().err
