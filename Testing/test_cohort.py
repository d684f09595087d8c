"""Cohort inference (`breasttumorseg batch`) end to end in child processes on small phantoms:
failures recorded and retried, finished cases skipped on a rerun, shards covering every case
exactly once, malformed manifests refused before anything runs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from breasttumorseg.run.cohort import (CohortCase, device_for_rank, merge_summary, parse_shard, read_manifest,
                                   shard_cases, shard_from_environment)
from breasttumorseg.core.errors import InputError
from test_cli import assert_one_line_error, run_cli, tiny_model  # noqa: F401 (tiny_model is a fixture)

CASES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Three small phantom studies (32 x 32 x 12 voxels, 3 phases) written by the CLI."""
    folder = tmp_path_factory.mktemp("cohort") / "phantoms"
    done = run_cli("phantom", folder, "--n", 3, "--seed", 7, "--phases", 3, "--size", 32, 32, 12,
                   "--spacing", 3.0, 3.0, 6.0, "--quiet")
    assert done.returncode == 0, done.stderr
    return sorted(folder.iterdir())


@pytest.fixture
def fast_model(tiny_model):
    """test_cli's tiny model with a 48 x 64 x 64 window: one tile covers these phantoms (their working grid)."""
    card_path = tiny_model.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["patch_size"] = [48, 64, 64]
    card_path.write_text(json.dumps(card))
    return tiny_model


def write_manifest(path, phantoms, replace_last: dict | None = None):
    """A manifest of :data:`CASES` on ``phantoms``, paths relative to the manifest's folder when
    possible; ``replace_last`` maps a case to another file for its last phase."""
    lines = ["case,phases,times"]
    for name, study in zip(CASES, phantoms):
        phases = [study / f"phase_{i:02d}.nii.gz" for i in range(3)]
        if name in (replace_last or {}):
            phases[2] = replace_last[name]
        relative = [str(p.relative_to(path.parent)) if p.is_relative_to(path.parent) else str(p) for p in phases]
        lines.append(f"{name},{';'.join(relative)},")  # times from the phantoms' times.json
    path.write_text("\n".join(lines) + "\n")
    return path


def summary_rows(output):
    with open(output / "cohort.csv", newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_failed_case_is_recorded_finished_cases_skipped_and_failure_retried(tmp_path, phantoms, fast_model):
    missing = tmp_path / "not_there.nii.gz"
    manifest = write_manifest(phantoms[0].parent / "failing.csv", phantoms, {"beta": missing})
    out = tmp_path / "cohort"
    done = run_cli("batch", manifest, "--output", out, "--model", fast_model, "--device", "cpu", "--quiet")
    assert done.returncode == 1, done.stderr
    assert "2 segmented, 0 skipped (already complete), 1 failed" in done.stdout
    assert "Traceback" not in done.stderr and "not_there.nii.gz" in done.stderr
    rows = summary_rows(out)
    assert [rows[c]["status"] for c in CASES] == ["done", "failed", "done"]
    assert "not_there.nii.gz" in rows["beta"]["error"]
    for case in ("alpha", "gamma"):
        assert (out / case / "measurements.json").is_file() and (out / case / "tumor_label.nii.gz").is_file()
        assert float(rows[case]["seconds"]) > 0 and rows[case]["device"].startswith("CPU")
        assert rows[case]["tumor_volume_ml"] != "" and rows[case]["longest_diameter_mm"] != ""
    assert not (out / "beta").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith((".partial", ".old"))]
    assert (out / "cohort-shard-0-of-1.csv").is_file()
    stamps = {c: (out / c / "measurements.json").stat().st_mtime_ns for c in ("alpha", "gamma")}

    # the missing phase appears: the rerun retries only the failed case
    shutil.copy(phantoms[1] / "phase_02.nii.gz", missing)
    done = run_cli("batch", manifest, "--output", out, "--model", fast_model, "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "1 segmented, 2 skipped (already complete), 0 failed" in done.stdout
    assert {c: (out / c / "measurements.json").stat().st_mtime_ns for c in ("alpha", "gamma")} == stamps
    rows = summary_rows(out)
    assert [rows[c]["status"] for c in CASES] == ["done", "done", "done"]
    assert rows["beta"]["error"] == "" and rows["alpha"]["seconds"] != ""  # earlier runs' figures kept


def test_shards_cover_every_case_exactly_once(tmp_path, phantoms, fast_model):
    manifest = write_manifest(tmp_path / "cohort.csv", phantoms)  # absolute paths
    out = tmp_path / "cohort"
    first = run_cli("batch", manifest, "--output", out, "--model", fast_model, "--shard", "0/2", "--quiet")
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["alpha", "gamma"]  # positions 0 and 2
    assert summary_rows(out)["beta"]["status"] == "pending"
    # the second shard as torchrun would start it: RANK / WORLD_SIZE in the environment
    second = run_cli("batch", manifest, "--output", out, "--model", fast_model, "--quiet",
                     env_extra={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert second.returncode == 0, second.stderr
    assert "(shard 1/2): 1 case(s): 1 segmented" in second.stdout
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == list(CASES)
    with open(out / "cohort-shard-0-of-2.csv") as a, open(out / "cohort-shard-1-of-2.csv") as b:
        shard_cases_run = [row["case"] for row in csv.DictReader(a)] + [row["case"] for row in csv.DictReader(b)]
    assert sorted(shard_cases_run) == sorted(CASES)
    assert {row["status"] for row in summary_rows(out).values()} == {"done"}


MALFORMED = {
    "missing column": ("case,images\na,x.nii.gz;y.nii.gz\n", "'phases' column"),
    "duplicate case": ("case,phases\na,x.nii.gz;y.nii.gz\nb,x.nii.gz;y.nii.gz\nA,x.nii.gz;y.nii.gz\n",
                       "line 4: duplicate case name"),
    "empty phases": ("case,phases\na,x.nii.gz;y.nii.gz\nb, ; \n", "line 3: case 'b' has no phases"),
    "path separator": ("case,phases\n../escape,x.nii.gz;y.nii.gz\n", "line 2: case name '../escape' contains a path"),
    "hidden name": ("case,phases\n.hidden,x.nii.gz;y.nii.gz\n", "starts with '.'"),
    "bad time": ("case,phases,times\na,x.nii.gz;y.nii.gz,0;soon\n", "line 2: case 'a' has a time"),
    "no cases": ("case,phases\n", "lists no cases"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_manifest_is_one_line_and_nothing_is_written(tmp_path, kind):
    text, fragment = MALFORMED[kind]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text)
    out = tmp_path / "cohort"
    done = run_cli("batch", manifest, "--output", out, "--quiet")
    assert done.returncode == 2
    assert_one_line_error(done, "manifest.csv", fragment)
    assert not out.exists()


def test_bad_shard_option_is_refused_before_anything(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case,phases\na,x.nii.gz;y.nii.gz\n")
    done = run_cli("batch", manifest, "--output", tmp_path / "cohort", "--shard", "2/2")
    assert_one_line_error(done, "--shard")
    assert not (tmp_path / "cohort").exists()


def test_under_torchrun_a_failed_case_does_not_stop_the_other_workers(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case,phases\nlost,gone.nii.gz;gone_too.nii.gz\n")
    out = tmp_path / "cohort"
    done = run_cli("batch", manifest, "--output", out, "--quiet", env_extra={"RANK": "0", "WORLD_SIZE": "1"})
    assert done.returncode == 0, done.stderr  # torchrun would stop the other workers on a non-zero exit
    assert "1 failed" in done.stdout and "exit status 0 under torchrun" in done.stderr
    assert summary_rows(out)["lost"]["status"] == "failed"
    done = run_cli("batch", manifest, "--output", out, "--quiet")  # a plain rerun says it failed
    assert done.returncode == 1 and "gone.nii.gz" in summary_rows(out)["lost"]["error"]


# ----------------------------------------------------------------------------- the parts, in process
def test_manifest_paths_are_relative_to_its_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    manifest.write_text("Case, Phases ,times,model,notes\n"
                        "a,pre.nii.gz; post.nii.gz;,0; 90,my-model,ignored\n"
                        "\n"
                        f"b,{tmp_path}/dicom,,,\n")
    first, second = read_manifest(manifest)
    assert first.phases == (tmp_path / "sub" / "pre.nii.gz", tmp_path / "sub" / "post.nii.gz")
    assert first.times_s == (0.0, 90.0) and first.model == "my-model" and first.line == 2
    assert second.phases == (tmp_path / "dicom",) and second.times_s is None and second.model is None
    assert second.index == 1 and second.line == 4


def test_shards_partition_the_cases():
    cases = [CohortCase(index=i, name=f"c{i}", phases=()) for i in range(11)]
    for count in (1, 2, 3, 5):
        parts = [shard_cases(cases, (index, count)) for index in range(count)]
        names = sorted(c.name for part in parts for c in part)
        assert names == sorted(c.name for c in cases)
    assert parse_shard(" 1 / 4 ") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(InputError):
            parse_shard(bad)
    assert shard_from_environment({}) is None
    assert shard_from_environment({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    with pytest.raises(InputError, match="RANK"):
        shard_from_environment({"RANK": "4", "WORLD_SIZE": "4"})
    assert device_for_rank("cpu", {"LOCAL_RANK": "1"}) == "cpu"
    assert device_for_rank("auto", {}) == "auto"


def test_summary_prefers_the_latest_attempt(tmp_path):
    from breasttumorseg.run.cohort import write_status

    cases = [CohortCase(index=0, name="a", phases=()), CohortCase(index=1, name="b", phases=())]
    write_status(tmp_path / "cohort-shard-0-of-2.csv",
                 [{"case": "a", "status": "failed", "error": "old", "finished_at": "2026-01-01T00:00:00Z"}])
    write_status(tmp_path / "cohort-shard-0-of-1.csv",
                 [{"case": "a", "status": "failed", "error": "new", "finished_at": "2026-01-02T00:00:00Z"}])
    rows = {row["case"]: row for row in merge_summary(tmp_path, cases)}
    assert rows["a"]["error"] == "new" and rows["b"]["status"] == "pending"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "measurements.json").write_text(
        '{"tumor_volume_ml": 1.5, "model_name": "m", "t_category": "T1 (m)", "n_lesions": 2,'
        ' "lesions": [{"volume_ml": 1.2}, {"volume_ml": 0.3}]}')
    rows = {row["case"]: row for row in merge_summary(tmp_path, cases)}
    assert rows["b"]["status"] == "done" and rows["b"]["tumor_volume_ml"] == 1.5 and rows["b"]["model"] == "m"
    assert (rows["b"]["index_lesion_volume_ml"], rows["b"]["t_category"], rows["b"]["n_lesions"]) == (1.2, "T1 (m)", 2)
