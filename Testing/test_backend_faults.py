"""Faults of the backend: `batch` killed at random points, the CLI on a full disk, an unreadable
model file. Every run is a real child process of the command line.

A full disk is a real one where this machine lets an unprivileged user make a mount namespace
(``unshare -rm``): a small tmpfs, filled to leave a chosen number of bytes. The file-size
limit (``RLIMIT_FSIZE``) gives the same failed, partial writes everywhere else.
"""

from __future__ import annotations

import csv
import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from test_cli import assert_one_line_error, run_cli, tiny_model  # noqa: F401 (tiny_model is a fixture)
from test_cohort import CASES, fast_model, phantoms, write_manifest  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
SEGMENT_OUTPUTS = ["measurements.csv", "measurements.json", "overview.png", "probability.nii.gz",
                   "tumor.seg.nrrd", "tumor_label.nii.gz"]


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "breasttumorseg", *map(str, args)]


def cli_env() -> dict:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT / "BreastTumorSeg")}


def label(folder: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "tumor_label.nii.gz")))


def summary(output: Path) -> list[dict]:
    with open(output / "cohort.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".cohort.lock")


def listing(folder: Path) -> list:
    """Names and modification times in ``folder`` (what a run changes as it works)."""
    entries = []
    for path in folder.iterdir() if folder.is_dir() else []:
        try:
            entries.append((path.name, path.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return sorted(entries)


def namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="no user and mount namespaces (unshare -rm)")


def on_a_full_disk(tmp_path: Path, script: str, size_kib: int, free_kib: int) -> Path:
    """Run ``script`` (sh, in ``tmp_path``) with ``$DISK`` a tmpfs of ``size_kib`` KiB of which
    ``free_kib`` are free; returns a copy of what it left on the disk (the filler left out)."""
    disk, copy = tmp_path / "disk", tmp_path / "left-on-disk"
    disk.mkdir()
    copy.mkdir()
    wrapper = (f"set -e; mount -t tmpfs -o size={size_kib}k tmpfs {disk}; "
               f"head -c $(( ({size_kib} - {free_kib}) * 1024 )) /dev/zero > {disk}/.filler 2>/dev/null || true; "
               f"export DISK={disk}; set +e; ( {script} ); status=$?; "
               f"rm -f {disk}/.filler; cp -a {disk}/. {copy}/; exit $status")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", wrapper], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    (copy / "stderr.txt").write_text(done.stderr)
    (copy / "stdout.txt").write_text(done.stdout)
    return copy


# ----------------------------------------------------------------------------- batch killed at random points
def test_batch_killed_at_random_points_resumes_without_a_lost_or_duplicated_case(tmp_path, phantoms, fast_model):
    manifest = write_manifest(tmp_path / "cohort.csv", phantoms)
    options = ["--model", fast_model, "--device", "cpu", "--quiet"]
    clean = run_cli("batch", manifest, "--output", tmp_path / "clean", *options)
    assert clean.returncode == 0, clean.stderr

    case_s = sum(float(row["seconds"]) for row in summary(tmp_path / "clean")) / len(CASES)

    output = tmp_path / "killed"
    rng = random.Random(15)
    kills, finished = [], None
    for _attempt in range(20):
        remaining = sum(not (output / case / "measurements.json").is_file() for case in CASES)
        before = listing(output)
        process = subprocess.Popen(cli_command("batch", manifest, "--output", output, *options), env=cli_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if remaining and len(kills) < 5:  # a random moment once it works on the cases (not during its imports)
            while process.poll() is None and listing(output) == before:
                time.sleep(0.02)
            # within about the next three quarters of a case, so that kills land while cases remain even
            # when this run is faster than the clean one was (the load changes during a test session)
            delay = rng.uniform(0.0, 0.5 * case_s * min(remaining, 1.5))
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.communicate()
                kills.append((round(delay, 2), remaining))
                continue
        process.wait(timeout=600)
        finished = process
        break
    assert finished is not None and finished.returncode == 0, (kills, finished and finished.stderr.read())
    assert len(kills) >= 3, kills
    print(f"batch killed at (s into its work, cases left) {kills}; a case takes {case_s:.1f} s")

    rows = summary(output)
    assert [row["case"] for row in rows] == list(CASES)          # every case once, in manifest order
    assert {row["status"] for row in rows} == {"done"}
    with open(output / "cohort-shard-0-of-1.csv", newline="") as handle:
        assert sorted(row["case"] for row in csv.DictReader(handle)) == sorted(CASES)
    assert hidden(output) == []                                   # no staging folder, no temporary file
    for case in CASES:
        assert sorted(p.name for p in (output / case).iterdir()) == SEGMENT_OUTPUTS
        assert np.array_equal(label(output / case), label(tmp_path / "clean" / case))
        ours = json.loads((output / case / "measurements.json").read_text())
        theirs = json.loads((tmp_path / "clean" / case / "measurements.json").read_text())
        assert ours["tumor_volume_ml"] == theirs["tumor_volume_ml"]


def test_a_summary_rewrite_cut_short_by_a_kill_is_cleaned_up_by_the_rerun(tmp_path, phantoms, fast_model):
    manifest = write_manifest(tmp_path / "cohort.csv", phantoms)
    output = tmp_path / "out"
    output.mkdir()
    # what a kill inside atomic.write_text leaves: the temporary copies of the summary and status file
    for name in ("cohort.csv", "cohort-shard-0-of-1.csv"):
        (output / f".{name}.k1ll3d.part.csv").write_text("case,status\nalpha,do")
    done = run_cli("batch", manifest, "--output", output, "--model", fast_model, "--device", "cpu", "--quiet")
    assert done.returncode == 0, done.stderr
    assert hidden(output) == []
    assert [row["case"] for row in summary(output)] == list(CASES)


# ----------------------------------------------------------------------------- full disk
@needs_namespaces
@pytest.mark.parametrize("free_kib", [0, 40, 200, 4000])
def test_segment_on_a_full_disk_leaves_no_partial_output(tmp_path, phantoms, fast_model, free_kib):
    phases = " ".join(str(phantoms[1] / f"phase_{i:02d}.nii.gz") for i in range(3))
    script = (f"{sys.executable} -m breasttumorseg segment {phases} --output $DISK/out --model {fast_model} "
              "--device cpu --quiet")
    left = on_a_full_disk(tmp_path, script, size_kib=4400, free_kib=free_kib)
    stderr = (left / "stderr.txt").read_text()
    on_disk = sorted(p.name for p in left.iterdir() if p.name not in ("stderr.txt", "stdout.txt"))
    if free_kib >= 4000:                                          # room enough: the whole output
        assert on_disk == ["out"] and sorted(p.name for p in (left / "out").iterdir()) == SEGMENT_OUTPUTS
        return
    assert on_disk == [], on_disk                                 # nothing, not even a staging folder
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("breasttumorseg: error: "), stderr
    assert "No space left on device" in lines[0] and "/out/" in lines[0] and ".partial" not in lines[0]


@needs_namespaces
def test_batch_on_a_full_disk_leaves_no_partial_case_and_resumes_once_there_is_room(tmp_path, phantoms,
                                                                                  fast_model):
    manifest = write_manifest(tmp_path / "cohort.csv", phantoms)
    batch = (f"{sys.executable} -m breasttumorseg batch {manifest} --output $DISK/out --model {fast_model} "
             "--device cpu --quiet")
    # full: the cases fail or the summary cannot be written; then the filler goes and it runs again
    script = f"{batch} > $DISK/first.txt 2>&1; echo $? >> $DISK/first.txt; rm -f $DISK/.filler; {batch}"
    left = on_a_full_disk(tmp_path, script, size_kib=4400, free_kib=150)
    first = (left / "first.txt").read_text().strip().splitlines()
    assert first[-1] != "0"                                       # the full disk was noticed
    assert all(not line.startswith("Traceback") for line in first), first
    assert (left / "stderr.txt").read_text().strip() == ""        # the second run succeeded
    output = left / "out"
    assert [row["case"] for row in summary(output)] == list(CASES)
    assert {row["status"] for row in summary(output)} == {"done"}
    assert hidden(output) == []
    for case in CASES:
        assert sorted(p.name for p in (output / case).iterdir()) == SEGMENT_OUTPUTS


def _limit_file_size(limit_bytes: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


@pytest.mark.parametrize("limit_kib", [1, 16])
def test_segment_whose_writes_fail_leaves_no_partial_output(tmp_path, phantoms, fast_model, limit_kib):
    """Everywhere (no namespaces needed): a file-size limit fails writes part way, as a full disk does."""
    output = tmp_path / "out"
    done = subprocess.run(cli_command("segment", *(phantoms[1] / f"phase_{i:02d}.nii.gz" for i in range(3)),
                                      "--output", output, "--model", fast_model, "--device", "cpu", "--quiet"),
                          env=cli_env(), capture_output=True, text=True, timeout=600, check=False,
                          preexec_fn=_limit_file_size(limit_kib * 1024))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"breasttumorseg: error: {output}/"), done.stderr
    assert not output.exists() and not list(tmp_path.glob(".out.*"))


# ----------------------------------------------------------------------------- unreadable model
@pytest.mark.parametrize("damage", ["truncated", "folder", "not safetensors"])
def test_an_unreadable_model_file_gives_one_line_and_no_output(tmp_path, phantoms, tiny_model, damage):
    import hashlib

    card_path = tiny_model.with_suffix(".json")
    card = json.loads(card_path.read_text())
    if damage == "folder":
        tiny_model.unlink()
        tiny_model.mkdir()
    else:
        data = tiny_model.read_bytes()[:200] if damage == "truncated" else b"\x00" * 64
        tiny_model.write_bytes(data)
        card["sha256"] = hashlib.sha256(data).hexdigest()            # the card vouches for it: the reading fails
        card_path.write_text(json.dumps(card))
    output = tmp_path / "out"
    done = run_cli("segment", *(phantoms[1] / f"phase_{i:02d}.nii.gz" for i in range(3)), "--output", output,
                   "--model", tiny_model, "--device", "cpu", "--quiet")
    assert_one_line_error(done, str(tiny_model.name))
    assert not output.exists() and not list(tmp_path.glob(".out.*"))


# ----------------------------------------------------------------------------- GPU out of memory
#: A child of the command line whose sliding-window engine runs out of GPU memory (injected:
#: these tests have no GPU): ``placing`` when the volume is put on the device, ``tiles`` at every
#: batch until the engine has moved to the CPU, ``everywhere`` at every batch, also on the CPU.
OUT_OF_MEMORY_CHILD = """
import sys
import torch
from breasttumorseg.segmentation import inference

where = sys.argv[1]
place, weighted = inference._Engine._place, inference._Engine.weighted_probabilities
placed = []

def out_of_memory():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

def _place(self, device):
    placed.append(device)
    if where == "placing" and len(placed) == 1:
        raise out_of_memory()
    return place(self, device)

def weighted_probabilities(self, *batch):
    if where == "everywhere" or (where == "tiles" and not self.fell_back):
        raise out_of_memory()
    return weighted(self, *batch)

inference._Engine._place, inference._Engine.weighted_probabilities = _place, weighted_probabilities
from breasttumorseg.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("where", ["placing", "tiles", "everywhere"])
def test_a_model_that_runs_out_of_gpu_memory_finishes_on_the_cpu_or_gives_one_line_and_no_output(
        tmp_path, phantoms, fast_model, where):
    phases = [phantoms[1] / f"phase_{i:02d}.nii.gz" for i in range(3)]
    options = ["--model", fast_model, "--device", "cpu", "--quiet"]
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_CHILD, where, "segment", *phases, "--output", output,
                           *options], env=cli_env(), capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    if where == "everywhere":                                     # no memory anywhere: one line, nothing written
        assert done.returncode == 2, done.stderr
        assert_one_line_error(done, "out of memory even with one tile per batch on the CPU")
        assert not output.exists() and not list(tmp_path.glob(".out.*"))
        return
    # the GPU was too small: a warning says so, the inference goes on on the CPU, the output is whole
    assert done.returncode == 0, done.stderr
    assert "out of memory" in done.stderr and "on the CPU" in done.stderr, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    assert sorted(p.name for p in output.iterdir()) == SEGMENT_OUTPUTS
    clean = run_cli("segment", *phases, "--output", tmp_path / "clean", *options)
    assert clean.returncode == 0, clean.stderr
    assert np.array_equal(label(output), label(tmp_path / "clean"))
