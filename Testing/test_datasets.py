"""Training on real cases: the folder and MAMA-MIA layouts, the validation split, the
preparation (as at inference), the cache, the model card, and every bad input refused with
one line naming the case or file and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from breasttumorseg.training.cases import cache_folder, prepare_real_case, prepare_real_cases
from breasttumorseg.training.datasets import (
    DatasetSettings,
    discover_cases,
    open_dataset,
    parse_dataset_settings,
    split_cases,
)
from breasttumorseg.core.errors import GeometryError, InputError
from breasttumorseg.core.geometry import Geometry
from breasttumorseg.training.config import TrainingConfig, config_from_settings
from breasttumorseg.training.loop import train_on_phantom
from breasttumorseg.training.publishing import provisional_card

ROOT = Path(__file__).resolve().parents[1]
GRID = Geometry((36, 32, 12), (3.0, 3.0, 4.0), (-54.0, -48.0, -24.0))
CENTRE_ZYX = (6, 16, 18)


def write_image(path: Path, array, geometry: Geometry = GRID) -> Path:
    image = sitk.GetImageFromArray(np.asarray(array))
    geometry.apply_to(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def case_arrays(seed: int = 0, n_phases: int = 3, geometry: Geometry = GRID):
    """A block of tissue with a washing-out sphere: (phases, tumor mask, breast mask), [z, y, x]."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(geometry.shape_zyx)
    sphere = ((z - CENTRE_ZYX[0]) * 4.0) ** 2 + ((y - CENTRE_ZYX[1]) * 3.0) ** 2 + ((x - CENTRE_ZYX[2]) * 3.0) ** 2 < 81
    body = np.zeros(geometry.shape_zyx, bool)
    body[1:-1, 4:-4, 3:-3] = True
    phases = []
    for i in range(n_phases):
        array = np.where(body, 100.0, 0.0) + rng.normal(0, 2, geometry.shape_zyx)
        array[sphere] += [0, 150, 120, 100, 90, 80][i]
        phases.append(array.astype(np.float32))
    return phases, sphere.astype(np.uint8), body.astype(np.uint8)


def write_folder_case(folder: Path, seed: int = 0, n_phases: int = 3, *, times=True, breast=True,
                      mask_geometry: Geometry | None = None) -> Path:
    phases, tumor, body = case_arrays(seed, n_phases)
    for i, array in enumerate(phases):
        write_image(folder / f"phase_{i:02d}.nii.gz", array)
    if times:
        (folder / "times.json").write_text(json.dumps({"times_s": [90.0 * i for i in range(n_phases)]}))
    mask_geometry = mask_geometry or GRID
    shaped = np.zeros(mask_geometry.shape_zyx, np.uint8)
    common = tuple(slice(0, min(a, b)) for a, b in zip(shaped.shape, tumor.shape))
    shaped[common] = tumor[common]
    write_image(folder / "tumor_mask.nii.gz", shaped, mask_geometry)
    if breast:
        write_image(folder / "breast_mask.nii.gz", body)
    return folder


def folder_dataset(root: Path, n: int = 3, **changes) -> Path:
    for i in range(n):
        write_folder_case(root / f"case_{i:02d}", seed=i, **changes)
    return root


def mama_dataset(root: Path, names=("DUKE_001", "ISPY1_1001", "NACT_01"), n_phases: int = 3, *, table=True) -> Path:
    rows = ["case,times_s,site"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        phases, tumor, _ = case_arrays(k, n_phases)
        for i, array in enumerate(phases):
            write_image(root / "images" / name / f"{name.lower()}_{i:04d}.nii.gz", array)
        write_image(root / "segmentations" / "expert" / f"{name.lower()}.nii.gz", tumor)
        rows.append(f"{name.lower()},{';'.join(str(60 * i + k) for i in range(n_phases))},somewhere")
    if table:
        (root / "acquisition_times.csv").write_text("\n".join(rows) + "\n")
    return root


def tumor_card(tmp_path: Path, **changes):
    """The card of a tiny tumor U-Net on DCE-in / DCE-out (needs times) at 4.5 mm."""
    return provisional_card(TrainingConfig(output=tmp_path / "unused", working_spacing_mm=(4.5, 4.5, 4.5), **changes))


# ----------------------------------------------------------------------------- layouts and split
def test_folder_cases_in_phase_order_and_a_deterministic_split(tmp_path):
    root = folder_dataset(tmp_path / "data", n=5)
    (root / ".staging").mkdir()                       # hidden folders are not cases
    odd = root / "case_02"
    renamed = {"phase_00.nii.gz": "phase_1.nii.gz", "phase_01.nii.gz": "phase_2.nii.gz",
               "phase_02.nii.gz": "phase_10.nii.gz"}
    for old_name, new_name in renamed.items():        # numbers in names are compared as numbers
        (odd / old_name).rename(odd / new_name)
    (odd / "times.json").write_text(json.dumps({"times_s": {"phase_1": 0, "phase_2": 90, "phase_10": 180}}))
    settings = parse_dataset_settings({"kind": "folder", "path": str(root), "val_fraction": 0.4})
    cases = discover_cases(settings)
    assert [c.name for c in cases] == [f"case_{i:02d}" for i in range(5)]
    assert [p.name for p in cases[2].phases] == ["phase_1.nii.gz", "phase_2.nii.gz", "phase_10.nii.gz"]
    assert cases[0].tumor_mask.name == "tumor_mask.nii.gz" and cases[0].breast_mask.name == "breast_mask.nii.gz"
    assert cases[0].times_source == root / "case_00" / "times.json"
    train, val = split_cases(cases, settings)
    assert len(val) == 2 and len(train) == 3 and {c.name for c in train} | {c.name for c in val} == {
        c.name for c in cases}
    assert split_cases(list(reversed(cases)), settings)[1] == val          # independent of the listing order
    other = [split_cases(cases, DatasetSettings("folder", root, 0.4, split_seed=s))[1] for s in range(1, 6)]
    assert any(v != val for v in other)                                    # the split seed matters
    named = DatasetSettings("folder", root, val_cases=("CASE_03",))
    assert [c.name for c in split_cases(cases, named)[1]] == ["case_03"]  # names ignore letter case
    split = open_dataset(settings, tumor_card(tmp_path))
    assert split.names("val") == [c.name for c in val] and len(split.case_digest) == 64


def test_mama_mia_layout_with_a_times_table(tmp_path):
    root = mama_dataset(tmp_path / "mama")
    settings = parse_dataset_settings({"kind": "mama_mia", "path": str(root), "val_cases": ["NACT_01"]})
    cases = discover_cases(settings)
    assert [c.name for c in cases] == ["DUKE_001", "ISPY1_1001", "NACT_01"]
    duke = cases[0]
    assert [p.name for p in duke.phases] == ["duke_001_0000.nii.gz", "duke_001_0001.nii.gz", "duke_001_0002.nii.gz"]
    assert duke.tumor_mask == root / "segmentations" / "expert" / "duke_001.nii.gz" and duke.breast_mask is None
    assert duke.times_s == (0.0, 60.0, 120.0) and duke.times_source == root / "acquisition_times.csv"
    split = open_dataset(settings, tumor_card(tmp_path))
    assert split.names("train") == ["DUKE_001", "ISPY1_1001"] and split.names("val") == ["NACT_01"]
    # a phase missing in the numbering
    (root / "images" / "NACT_01" / "nact_01_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"NACT_01: phases of case NACT_01 must be numbered .*found _0000, _0002"):
        discover_cases(settings)


def test_a_real_case_is_prepared_as_at_inference(tmp_path):
    from breasttumorseg.exam.loading import load_study
    from breasttumorseg.segmentation.pipeline import prepare

    root = folder_dataset(tmp_path / "data", n=1)
    case = discover_cases(DatasetSettings("folder", root))[0]
    card = tumor_card(tmp_path)
    prepared = prepare_real_case(case, card)
    inputs, body, working = prepare(load_study(list(case.phases)), card)
    assert prepared.name == "case_00" and prepared.seed == -1 and prepared.inputs.dtype == np.float16
    assert prepared.inputs.shape[0] == 3 and prepared.body.shape == prepared.target.shape == prepared.inputs.shape[1:]
    assert 0 < prepared.target.sum() < 0.2 * prepared.target.size
    # the crop keeps the physical position: the target's centre is the sphere's centre
    zyx = np.argwhere(prepared.target).mean(axis=0)
    centre = prepared.geometry.index_to_physical(zyx[::-1])
    expected = GRID.index_to_physical(np.array(CENTRE_ZYX[::-1], float))
    assert np.linalg.norm(centre - expected) < 4.5
    # the inputs are those of the inference path, cropped
    lo = np.rint(working.physical_to_index(np.array([prepared.geometry.origin]))[0]).astype(int)[::-1]
    box = tuple(slice(int(a), int(a + n)) for a, n in zip(lo, prepared.body.shape))
    assert np.allclose(prepared.inputs.astype(np.float32), inputs[(slice(None),) + box], atol=2e-2)
    dce_in = prepared.inputs[1].astype(np.float32)
    assert dce_in[prepared.target].mean() > 5 * abs(dce_in[prepared.body & ~prepared.target].mean())


def test_prepared_cases_are_cached_and_memory_mapped(tmp_path, monkeypatch):
    from breasttumorseg.training import cases as case_preparation

    root = folder_dataset(tmp_path / "data", n=2)
    cases = discover_cases(DatasetSettings("folder", root))
    card = tumor_card(tmp_path)
    in_memory = prepare_real_cases(cases, card)
    cache = tmp_path / "cache"
    first = prepare_real_cases(cases, card, cache=cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(cache_folder(cache, c, card).name for c in cases)
    assert isinstance(first[0].inputs, np.memmap)
    for a, b in zip(in_memory, first):
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.target, b.target)
        assert a.geometry == b.geometry and a.flip_axes == b.flip_axes and a.name == b.name

    def refuse(*args):
        raise AssertionError("prepared again")

    monkeypatch.setattr(case_preparation, "prepare_real_case", refuse)
    again = prepare_real_cases(cases, card, cache=cache)
    assert np.array_equal(again[1].inputs, first[1].inputs)
    # a changed file is a new key: prepared again
    os.utime(cases[0].tumor_mask, ns=(1, 1))
    with pytest.raises(AssertionError, match="prepared again"):
        prepare_real_cases(cases, card, cache=cache)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("dataset, message", [
    ({"kind": "folder", "path": "d", "colour": "red"}, "takes no setting(s) 'colour'"),
    ({"kind": "folder", "path": "d", "val_fraction": "0.2"}, "'val_fraction' must be a number between 0 and 1"),
    ({"kind": "folder", "path": "d", "val_fraction": 1.0}, "'val_fraction' must be a number between 0 and 1"),
    ({"kind": "folder", "path": "d", "val_cases": "case_1"}, "'val_cases' must be a non-empty list of names"),
    ({"kind": "folder"}, "needs \"path\""),
    ({"kind": "phantom", "path": "d"}, "dataset of kind 'phantom' takes no setting(s) 'path'"),
    ({"kind": "nifti"}, "dataset kind must be one of phantom, folder, mama_mia, got 'nifti'"),
    ("data/cases", "training setting 'dataset' must be an object"),
])
def test_malformed_dataset_settings_are_refused_in_one_line(dataset, message):
    with pytest.raises(InputError) as caught:
        config_from_settings({"output": "out", "dataset": dataset}, "cfg.json")
    text = str(caught.value)
    assert text.startswith("cfg.json: ") and message in text and "\n" not in text
    with pytest.raises(InputError, match="'scaling_range' must be 2 numbers"):
        config_from_settings({"output": "out", "scaling_range": 1.1}, "cfg.json")


def test_bad_data_sets_are_refused_naming_the_case_or_file(tmp_path):
    card = tumor_card(tmp_path)

    def refused(root: Path, kind: str = "folder", card=card, **settings) -> str:
        with pytest.raises(InputError) as caught:
            open_dataset(DatasetSettings(kind, root, **settings), card)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert refused(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: dataset folder not found"
    (tmp_path / "empty").mkdir()
    assert "no cases found" in refused(tmp_path / "empty")
    assert "no cases found" in refused(mama_dataset(tmp_path / "mama_empty", names=()), "mama_mia")
    assert "not a MAMA-MIA folder: images/ not found" in refused(tmp_path / "empty", "mama_mia")

    one = folder_dataset(tmp_path / "one", n=1)
    assert "1 case(s) found and val_fraction 0.2 (1 validation case(s)): no case is left for training; a " \
           "validation split needs at least 2 cases" in refused(one)
    two = folder_dataset(tmp_path / "two", n=2)
    assert "validation case 'case_07' is not in the data set (2 cases found)" in refused(two, val_cases=("case_07",))
    assert "no case is left for training" in refused(two, val_cases=("case_00", "case_01"))

    missing = folder_dataset(tmp_path / "missing", n=2)
    (missing / "case_01" / "tumor_mask.nii.gz").unlink()
    assert refused(missing).startswith(f"{missing / 'case_01'}: case case_01 has no tumor mask")
    assert refused(missing, phases=("phase_00.nii.gz", "phase_07.nii.gz")).startswith(
        f"{missing / 'case_00' / 'phase_07.nii.gz'}: phase file of case case_00 not found")
    nophases = folder_dataset(tmp_path / "nophases", n=2)
    for path in (nophases / "case_00").glob("phase_*"):
        path.unlink()
    assert "case case_00 has no phase images" in refused(nophases)

    shifted = folder_dataset(tmp_path / "shifted", n=2)
    other = Geometry(GRID.size, GRID.spacing, (-54.0, -48.0, -20.0))
    write_folder_case(shifted / "case_01", seed=1, mask_geometry=other)
    with pytest.raises(GeometryError) as caught:
        open_dataset(DatasetSettings("folder", shifted), card)
    assert str(caught.value).startswith(f"{shifted / 'case_01' / 'tumor_mask.nii.gz'}: mask is on another grid than "
                                        f"the phases of case case_01: origin shifted by 4 mm")

    untimed = folder_dataset(tmp_path / "untimed", n=2)
    (untimed / "case_01" / "times.json").unlink()
    assert "case case_01 has no acquisition times, which model inputs first_post_contrast, dce_in, dce_out need" \
        in refused(untimed)
    open_dataset(DatasetSettings("folder", untimed), tumor_card(tmp_path, inputs=("first_post_contrast", "dce_in")))

    unmasked = folder_dataset(tmp_path / "unmasked", n=2, breast=False)
    breast_card = tumor_card(tmp_path, task="breast", inputs=("pre_contrast",))
    assert "case case_00 has no breast mask, which a breast-mask model trains on" in refused(unmasked,
                                                                                           card=breast_card)
    table = mama_dataset(tmp_path / "table")
    (table / "acquisition_times.csv").write_text("case,times_s\nduke_001,0;60;abc\n")
    assert "line 2: times_s of case duke_001 must be seconds separated by ';'" in refused(table, "mama_mia")


def run_cli(*args, env_extra=None, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "BreastTumorSeg") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "breasttumorseg", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def tiny_settings(output: Path, **changes) -> dict:
    settings = {"output": str(output), "name": "tiny", "steps": 2, "batch_size": 1, "patch_size": [16, 32, 32],
                "hyperparameters": {"base_channels": 2, "depth": 3}, "validate_every": 2, "checkpoint_every": 2,
                "working_spacing_mm": [4.5, 4.5, 4.5], "threads": 1, "device": "cpu"}
    settings.update(changes)
    return settings


@pytest.mark.parametrize("problem", ["mask_grid", "unknown_kind"])
def test_the_cli_refuses_a_bad_data_set_in_one_line_and_writes_nothing(tmp_path, problem):
    root = folder_dataset(tmp_path / "data", n=2)
    output = tmp_path / "run"
    config = tmp_path / "cfg.json"
    if problem == "mask_grid":
        write_folder_case(root / "case_01", seed=1, mask_geometry=Geometry((36, 32, 10), GRID.spacing, GRID.origin))
        config.write_text(json.dumps(tiny_settings(output)))
        done = run_cli("train", "--config", config, "--dataset-folder", root, "--quiet")
        expected = [str(root / "case_01" / "tumor_mask.nii.gz"), "another grid", "size (36, 32, 10)"]
    else:
        config.write_text(json.dumps(tiny_settings(output, dataset={"kind": "dicom", "path": str(root)})))
        done = run_cli("train", "--config", config, "--quiet")
        expected = [str(config), "dataset kind must be one of phantom, folder, mama_mia, got 'dicom'"]
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("breasttumorseg: error: ") and "Traceback" not in done.stderr
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert not output.exists()


# ----------------------------------------------------------------------------- training runs
def test_training_on_a_folder_data_set_writes_a_card_about_real_data(tmp_path):
    root = folder_dataset(tmp_path / "data", n=3)
    output = tmp_path / "run"
    config = config_from_settings(tiny_settings(output, dataset={"kind": "folder", "path": str(root),
                                                                  "val_cases": ["case_01"],
                                                                  "cache": str(tmp_path / "cache")}))
    result = train_on_phantom(config, log=lambda *a: None)
    card = result.model_card
    assert card.trained_on == "2 cases of the folder data set 'data' (real data)"
    metrics = card.metrics
    assert metrics["n_cases"] == 1 and [r["case"] for r in metrics["cases"]] == ["case_01"]
    assert metrics["dataset"]["val_cases"] == ["case_01"] and metrics["dataset"]["n_train_cases"] == 2
    assert "cache" not in metrics["dataset"] and metrics["training"]["world_size"] == 1
    assert "phantom" not in card.description.lower()
    markdown = result.markdown_path.read_text()
    training_section = markdown.split("## Training data")[1].split("\n## ")[0]
    assert "real data provided by the user" in training_section and "phantom" not in training_section
    assert "| case_01 | 3 |" in markdown and "no claim of clinical accuracy" in markdown.lower()
    assert len(list((tmp_path / "cache").iterdir())) == 3
    # the same run cannot resume on other cases
    write_folder_case(root / "case_03", seed=3)
    with pytest.raises(InputError, match="cases changed since the checkpoint"):
        train_on_phantom(config_from_settings(dict(tiny_settings(output, steps=3), dataset=config.dataset)),
                         resume=True, log=lambda *a: None)


def test_the_cli_trains_on_a_mama_mia_folder(tmp_path):
    root = mama_dataset(tmp_path / "mama")
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(tiny_settings(tmp_path / "run", dataset={"kind": "mama_mia", "path": "elsewhere",
                                                                           "val_fraction": 0.3})))
    done = run_cli("train", "--config", config, "--dataset-mama-mia", root, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "validation Dice (median over 1 held-out cases)" in done.stdout
    card = json.loads((tmp_path / "run" / "tiny.json").read_text())
    assert card["metrics"]["dataset"]["kind"] == "mama_mia" and card["metrics"]["dataset"]["val_fraction"] == 0.3
    assert card["trained_on"] == "2 cases of the MAMA-MIA layout data set 'mama' (real data)"
