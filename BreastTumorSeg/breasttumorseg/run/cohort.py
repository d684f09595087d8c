"""Cohort inference: every study of a manifest segmented into its own folder, restartable and shardable.

**Manifest** (CSV with a header row; extra columns are ignored):

* ``case``: the case's name, also its output folder's name (no path separators, not
  starting with ``.``, unique ignoring letter case);
* ``phases``: image files (one per phase, or one 4D NIfTI) or DICOM folder(s), separated
  by ``;``; relative paths are taken from the manifest's folder;
* ``times`` (optional): acquisition times in seconds separated by ``;`` (else the usual
  sources: DICOM, ``times.json``, see ``segment``);
* ``model`` (optional): a model name or ``.safetensors`` path for this case (else ``--model``);
* ``breast_mask`` (optional): a breast mask image, used only by ``evaluate --baselines``.

**Outputs** in the cohort folder: ``<case>/`` (exactly what ``segment`` writes, built in a
hidden staging folder and renamed into place when complete, so a case folder that exists
is finished; ``measurements.json`` in it marks it as such), one status file per shard
``cohort-shard-I-of-N.csv`` (rewritten atomically after each case) and the summary
``cohort.csv`` merged from every shard's status file and the case folders (rewritten
atomically after each case, under a lock file so that concurrent shards do not lose rows).

**Status** of a case in the summary: ``done`` (its folder is complete), ``failed`` (its
latest attempt failed; ``error`` says why), or ``pending`` (not attempted yet, e.g. it
belongs to a shard that has not reached it).

**Sharding**: shard ``I/N`` takes the cases whose 0-based position in the manifest ``i``
has ``i % N == I``. Under torchrun (``RANK`` and ``WORLD_SIZE`` set) the shard defaults to
``RANK/WORLD_SIZE`` and ``LOCAL_RANK`` picks the CUDA device; no process group is needed.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..core import atomic
from ..core.errors import BreastTumorSegError, Cancelled, InputError, OutputError

REQUIRED_COLUMNS = ("case", "phases")
SUMMARY_FILE = "cohort.csv"
#: The file whose presence marks a case folder as complete (``segment`` writes it).
COMPLETE_MARKER = "measurements.json"
LOCK_FILE = ".cohort.lock"

#: Columns of the status files and of the summary, in order. The figures are those of
#: measurements.json: the total tumor volume, the index (largest) lesion's volume, its longest
#: diameter and the T category ("(m)" with several lesions), the number of lesions, ...
STATUS_COLUMNS = ("case", "status", "tumor_volume_ml", "index_lesion_volume_ml", "longest_diameter_mm",
                  "t_category", "n_lesions", "functional_tumor_volume_ml", "kinetic_curve_type", "model", "device",
                  "seconds", "error", "finished_at")
#: Measurement keys copied from a case's measurements.json into its status row.
_RECORD_COLUMNS = ("tumor_volume_ml", "longest_diameter_mm", "t_category", "n_lesions",
                   "functional_tumor_volume_ml", "kinetic_curve_type", "device")
_SHARD_FILE = re.compile(r"^cohort-shard-(\d+)-of-(\d+)\.csv$")


@dataclass(frozen=True)
class CohortCase:
    """One row of a manifest."""

    index: int                      # 0-based position among the manifest's cases (sharding uses it)
    name: str
    phases: tuple[Path, ...]
    times_s: tuple[float, ...] | None = None
    model: str | None = None
    breast_mask: Path | None = None
    line: int = 0                   # line of the manifest file, for messages


@dataclass
class CohortRun:
    """What one run of :func:`run_cohort` did with its shard's cases."""

    shard: tuple[int, int]
    segmented: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict = field(default_factory=dict)   # case -> one-line error

    @property
    def n_cases(self) -> int:
        return len(self.segmented) + len(self.skipped) + len(self.failed)


# ----------------------------------------------------------------------------- manifest
def read_manifest(path: str | Path) -> list[CohortCase]:
    """Read and check a cohort manifest (see the module docstring).

    Raises :class:`InputError` naming the manifest and its line for a missing column,
    an empty case name or phases list, an unsafe or duplicate case name, or a time that is
    not a number. The phases' files are *not* checked here: a missing file fails its case only.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such manifest file" if not path.exists() else "is not a file", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot be read as UTF-8 text ({error})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise InputError(f"manifest has no {' or '.join(repr(c) for c in missing)} column (header line 1 has: "
                         f"{', '.join(h for h in header if h) or 'nothing'})", path)
    reader.fieldnames = header
    base = path.resolve().parent
    cases: list[CohortCase] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        values = {k: (v or "").strip() for k, v in row.items() if k}
        if not any(values.values()):
            continue  # a blank line
        where = f"line {line}"
        name = values.get("case", "")
        problem = unsafe_case_name(name)
        if problem:
            raise InputError(f"{where}: case name {name!r} {problem}", path)
        if name.lower() in seen:
            raise InputError(f"{where}: duplicate case name {name!r} (also on line {seen[name.lower()]})", path)
        seen[name.lower()] = line
        phases = [p.strip() for p in values.get("phases", "").split(";") if p.strip()]
        if not phases:
            raise InputError(f"{where}: case {name!r} has no phases (give the image files or DICOM folders, "
                             f"separated by ';')", path)
        times = None
        if values.get("times"):
            times = []
            for item in (t.strip() for t in values["times"].split(";") if t.strip()):
                try:
                    seconds = float(item)
                except ValueError:
                    seconds = math.nan
                if not math.isfinite(seconds):
                    raise InputError(f"{where}: case {name!r} has a time that is not a number of seconds: "
                                     f"{item!r}", path)
                times.append(seconds)
        breast_mask = _resolve(values["breast_mask"], base) if values.get("breast_mask") else None
        cases.append(CohortCase(index=len(cases), name=name, phases=tuple(_resolve(p, base) for p in phases),
                                times_s=tuple(times) if times else None, model=values.get("model") or None,
                                breast_mask=breast_mask, line=line))
    if not cases:
        raise InputError("manifest lists no cases", path)
    return cases


def unsafe_case_name(name: str) -> str | None:
    """Why ``name`` cannot be a case folder's name, or None when it can."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or "\0" in name:
        return "contains a path separator"
    if name.startswith("."):
        return "starts with '.' (hidden and staging folders start so)"
    if name.lower() == SUMMARY_FILE or _SHARD_FILE.match(name.lower()):
        return "is the name of one of the cohort's own files"
    if any(ord(c) < 32 for c in name):
        return "contains a control character"
    return None


def _resolve(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


# ----------------------------------------------------------------------------- sharding
def parse_shard(text: str, where: str = "--shard") -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; :class:`InputError` otherwise."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise InputError(f"expected I/N (shard I of N, counted from 0), got {text!r}", where)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise InputError(f"shard {index}/{count} does not exist: I must be 0..N-1 and N at least 1", where)
    return index, count


def shard_from_environment(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` as set by torchrun, or None when they are not set."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    return parse_shard(f"{environ['RANK']}/{environ['WORLD_SIZE']}", "environment RANK/WORLD_SIZE")


def device_for_rank(requested: str, environ: Mapping[str, str] | None = None) -> str:
    """The device for this process: ``cuda:<LOCAL_RANK mod GPUs>`` when ``LOCAL_RANK`` is set,
    ``requested`` is auto or cuda and CUDA GPUs exist; else ``requested`` unchanged."""
    environ = os.environ if environ is None else environ
    if requested not in ("auto", "cuda") or "LOCAL_RANK" not in environ:
        return requested
    try:
        local_rank = int(environ["LOCAL_RANK"])
    except ValueError:
        raise InputError(f"is not an integer: {environ['LOCAL_RANK']!r}", "environment LOCAL_RANK") from None
    import torch  # torch waits: this module imports without it (Slicer installs torch on first use)

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return requested
    return f"cuda:{local_rank % torch.cuda.device_count()}"


def shard_cases(cases: Iterable[CohortCase], shard: tuple[int, int]) -> list[CohortCase]:
    """The cases of shard ``(I, N)``: manifest positions ``i`` with ``i % N == I``."""
    index, count = shard
    return [case for case in cases if case.index % count == index]


def status_file(output: Path, shard: tuple[int, int]) -> Path:
    """``cohort-shard-I-of-N.csv`` in the cohort folder."""
    return Path(output) / f"cohort-shard-{shard[0]}-of-{shard[1]}.csv"


# ----------------------------------------------------------------------------- status and summary
def case_complete(folder: Path) -> bool:
    """Whether a case folder holds a finished segmentation (its measurements.json)."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


def read_status(path: Path) -> dict[str, dict]:
    """Rows of a status CSV by case (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["case"]: row for row in csv.DictReader(handle) if row.get("case")}
    except (OSError, csv.Error, KeyError) as error:
        raise OutputError(f"cannot read this status file ({error}); delete it to start its shard afresh", path) \
            from None


def write_status(path: Path, rows: Iterable[dict]) -> None:
    """Write status rows (:data:`STATUS_COLUMNS`) to ``path`` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STATUS_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in STATUS_COLUMNS})
    atomic.write_text(path, buffer.getvalue())


def merge_summary(output: Path, cases: list[CohortCase]) -> list[dict]:
    """The summary rows of every manifest case, from all status files and the case folders.

    The latest attempt (``finished_at``) across the shards' status files wins; a case
    whose latest attempt failed is ``failed``, else ``done`` when its folder is complete,
    else ``pending``. A complete folder without a status row (e.g. written by ``segment``)
    counts as done, its figures read from its measurements.json.
    """
    output = Path(output)
    latest = latest_attempts(output)
    rows = []
    for case in cases:
        row = dict(latest.get(case.name) or {"case": case.name})
        complete = case_complete(output / case.name)
        if row.get("status") == "failed":
            pass
        elif complete:
            if row.get("status") != "done":
                row = {**row, **record_columns(output / case.name), "status": "done", "error": ""}
        else:
            row = {"case": case.name, "status": "pending"}
        rows.append(row)
    return rows


def latest_attempts(output: Path) -> dict[str, dict]:
    """The latest status row (by ``finished_at``) of each case across every shard's status file."""
    latest: dict[str, dict] = {}
    for path in sorted(Path(output).glob("cohort-shard-*-of-*.csv")):
        if not _SHARD_FILE.match(path.name):
            continue
        for name, row in read_status(path).items():
            if name not in latest or row.get("finished_at", "") >= latest[name].get("finished_at", ""):
                latest[name] = row
    return latest


def record_columns(folder: Path, record: dict | None = None) -> dict:
    """The summary's figures of a finished case, from ``record`` or its measurements.json."""
    if record is None:
        try:
            record = json.loads((Path(folder) / COMPLETE_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
    columns = {key: record.get(key) for key in _RECORD_COLUMNS}
    lesions = record.get("lesions") or []
    columns["index_lesion_volume_ml"] = lesions[0].get("volume_ml") if lesions else None
    if record.get("model_name"):
        columns["model"] = f"{record.get('model_name')} {record.get('model_version', '')}".strip()
    return columns


@contextlib.contextmanager
def _locked(output: Path):
    """Hold an exclusive lock on the cohort folder's lock file (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # Windows: shards rarely run there concurrently; the rerun merges anyway
        yield
        return
    Path(output).mkdir(parents=True, exist_ok=True)
    with open(Path(output) / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_line(error: BaseException) -> str:
    """One line saying what went wrong with a case."""
    if isinstance(error, BreastTumorSegError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split()) or type(error).__name__


# ----------------------------------------------------------------------------- the run
def remove_stale_staging(output: Path, name: str) -> None:
    """Delete the hidden staging folders a killed run left for case ``name``."""
    pattern = glob.escape(f".{name}.")
    for leftover in list(Path(output).glob(pattern + "*.partial")) + list(Path(output).glob(pattern + "*.old")):
        shutil.rmtree(leftover, ignore_errors=True)


def remove_interrupted_writes(output: Path, names: Iterable[str]) -> None:
    """Delete the temporary files a killed run left while rewriting the files ``names``
    (call under :func:`_locked`: no other shard writes them meanwhile)."""
    for name in names:
        for leftover in Path(output).glob(glob.escape(f".{name}.") + "*.part*"):
            leftover.unlink(missing_ok=True)


def run_cohort(cases: list[CohortCase], output: Path, segment_case: Callable[[CohortCase, Path], dict], *,
               shard: tuple[int, int] = (0, 1), overwrite: bool = False,
               progress_iter: Callable = iter, warn: Callable[[str], None] | None = None) -> CohortRun:
    """Segment this shard's cases into ``output/<case>/``, one after another.

    ``segment_case(case, folder)`` writes one complete case folder (atomically) and returns
    its measurement record. Cases with a complete folder are skipped unless ``overwrite``.
    Any exception of a case except :class:`Cancelled` and ``KeyboardInterrupt`` is recorded
    as its failure and the run goes on. The shard's status file and the summary are
    rewritten after every case; so a killed run keeps what finished, and the rerun removes
    what the kill cut short (a case's staging folder, a status file's temporary copy).
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", output)
    output.mkdir(parents=True, exist_ok=True)
    mine = shard_cases(cases, shard)
    status_path = status_file(output, shard)
    with _locked(output):
        remove_interrupted_writes(output, (SUMMARY_FILE, status_path.name))
    rows = read_status(status_path)
    earlier = latest_attempts(output)
    outcome = CohortRun(shard=shard)

    def record(row: dict) -> None:
        rows[row["case"]] = row
        with _locked(output):
            write_status(status_path, [rows[c.name] for c in mine if c.name in rows])
            write_status(output / SUMMARY_FILE, merge_summary(output, cases))

    for case in progress_iter(mine):
        folder = output / case.name
        if case_complete(folder) and not overwrite:
            if earlier.get(case.name, {}).get("status") == "failed":
                # an --overwrite attempt failed but the earlier result is complete: it counts again
                record({**record_columns(folder), "case": case.name, "status": "done", "finished_at": _now()})
            outcome.skipped.append(case.name)
            continue
        remove_stale_staging(output, case.name)
        start = time.perf_counter()
        try:
            result = segment_case(case, folder)
        except (Cancelled, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 -- any failure of one case is recorded, the run goes on
            message = error_line(error)
            outcome.failed[case.name] = message
            if warn:
                warn(f"case {case.name} failed: {message}")
            record({"case": case.name, "status": "failed", "model": case.model or "", "error": message,
                    "seconds": round(time.perf_counter() - start, 2), "finished_at": _now()})
            continue
        outcome.segmented.append(case.name)
        record({**record_columns(folder, result), "case": case.name, "status": "done", "error": "",
                "seconds": round(time.perf_counter() - start, 2), "finished_at": _now()})
    with _locked(output):
        write_status(output / SUMMARY_FILE, merge_summary(output, cases))
    return outcome
