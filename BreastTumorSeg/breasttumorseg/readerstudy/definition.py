"""The study file: which cases, readers and arms a reader study has, read and validated.

A study file is JSON (or YAML when PyYAML is installed) with these keys; paths are relative
to the study file's folder::

    {
      "name": "Phantom pilot",
      "seed": 2026,                       # randomises every reader's reading order
      "readers": ["R1", "R2"],
      "arms": {
        "manual": {},                     # segment from scratch, nothing of the AI shown
        "assisted": {"model": "hirsch-unet3d-phantom", "threshold": 0.5, "relative": true}
      },
      "washout_cases": 2,                 # at least this many other cases between two readings of a case
      "idle_after_s": 60,                 # the active-time clock stops after this long without input
      "autosave_every_s": 30,
      "consensus": "majority",            # reference where a case has none: intersection | union | majority
      "equivalence_margin": null,         # Dice bounds of the TOST; null: the manual readers' range
      "results": "results",               # journals and segmentations, one folder per reader
      "cases": [
        {"id": "case01", "phases": ["case01/pre.nii.gz", "case01/post1.nii.gz"],
         "times_s": [0, 90], "reference": "case01/tumor.seg.nrrd"},
        {"id": "case02", "dicom": "case02/dicom"}
      ]
    }

Every problem is one :class:`InputError` line naming the study file and the entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..exam.loading import read_image_header, read_json
from ..core.geometry import Geometry

ARMS = ("manual", "assisted")
CONSENSUS_RULES = ("intersection", "union", "majority")
#: Reader and case IDs become file names: letters, digits, '.', '_' and '-' only.
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KNOWN_KEYS = {"name", "seed", "readers", "arms", "washout_cases", "idle_after_s", "autosave_every_s",
              "consensus", "equivalence_margin", "results", "cases", "description"}
CASE_KEYS = {"id", "phases", "dicom", "times_s", "reference"}


@dataclass(frozen=True)
class AssistedArm:
    """What the assisted arm shows: one model's segmentation at a threshold fixed by the study."""

    model: str
    threshold: float | None = None  # None: the model card's default
    relative: bool | None = None    # threshold as a fraction of the maximum (Hirsch et al.)


@dataclass(frozen=True)
class StudyCase:
    """One case: its phase files (or DICOM folder), acquisition times (s) and reference mask."""

    id: str
    phases: tuple[Path, ...] = ()
    dicom: Path | None = None
    times_s: tuple[float, ...] | None = None
    reference: Path | None = None

    @property
    def inputs(self) -> list[Path]:
        """What :func:`breasttumorseg.exam.loading.load_study` reads for this case."""
        return [self.dicom] if self.dicom is not None else list(self.phases)


@dataclass(frozen=True)
class ReaderStudy:
    """A validated study file (see the module docstring)."""

    path: Path
    name: str
    seed: int
    readers: tuple[str, ...]
    arms: tuple[str, ...]
    assisted: AssistedArm | None
    cases: tuple[StudyCase, ...]
    washout_cases: int = 0
    idle_after_s: float = 60.0
    autosave_every_s: float = 30.0
    consensus: str = "majority"
    equivalence_margin: float | None = None
    results_dir: Path = field(default=Path("results"))

    @property
    def case_ids(self) -> list[str]:
        return [case.id for case in self.cases]

    def case(self, case_id: str) -> StudyCase:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise InputError(f"case '{case_id}' is not in the study", self.path)

    def check_reader(self, reader: str) -> str:
        """``reader`` when the study names it, else a one-line :class:`InputError`."""
        if reader not in self.readers:
            raise InputError(f"reader '{reader}' is not in the study (readers: {', '.join(self.readers)})",
                             self.path)
        return reader

    def reader_dir(self, reader: str) -> Path:
        """Where one reader's journal and segmentations live."""
        return self.results_dir / self.check_reader(reader)

    @property
    def ai_dir(self) -> Path:
        """Where the assisted arm's AI segmentations are prepared (never shown in the manual arm)."""
        return self.results_dir / "_ai"


def read_study(path, *, check_files: bool = True) -> ReaderStudy:
    """Read and validate a study file; with ``check_files`` also every case's files and grids."""
    path = Path(path)
    raw = _read_mapping(path)
    fail = _failer(path)
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        fail(f"unknown key '{unknown[0]}' (known: {', '.join(sorted(KNOWN_KEYS))})")
    root = path.resolve().parent

    readers = raw.get("readers")
    if not isinstance(readers, list) or not readers:
        fail("'readers' must be a non-empty list of reader IDs")
    for reader in readers:
        if not isinstance(reader, str) or not ID_PATTERN.match(reader) or reader.startswith("_"):
            fail(f"reader ID {reader!r} must be 1-64 letters, digits, '.', '_' or '-' (not starting with '_')")
    _no_duplicates(readers, "reader", fail)

    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or not arms_raw:
        fail("'arms' must name 'manual', 'assisted' or both, e.g. {\"manual\": {}, \"assisted\": {\"model\": ...}}")
    for arm in arms_raw:
        if arm not in ARMS:
            fail(f"unknown arm '{arm}' (arms: manual, assisted)")
    arms = tuple(a for a in ARMS if a in arms_raw)
    assisted = _assisted_arm(arms_raw.get("assisted"), fail) if "assisted" in arms_raw else None

    cases_raw = raw.get("cases")
    if not isinstance(cases_raw, list) or not cases_raw:
        fail("'cases' must be a non-empty list")
    cases = tuple(_case(entry, index, root, fail) for index, entry in enumerate(cases_raw))
    _no_duplicates([c.id for c in cases], "case ID", fail)

    washout = _number(raw, "washout_cases", 0, fail, integer=True, minimum=0)
    if len(arms) == 2 and washout > len(cases) - 1:
        fail(f"washout_cases {washout} cannot be met with {len(cases)} cases: at most {len(cases) - 1} other "
             "cases can lie between the two readings of a case")
    consensus = raw.get("consensus", "majority")
    if consensus not in CONSENSUS_RULES:
        fail(f"consensus '{consensus}' is not one of {', '.join(CONSENSUS_RULES)}")
    margin = raw.get("equivalence_margin")
    if margin is not None:
        margin = _number(raw, "equivalence_margin", None, fail, minimum=0.0)
        if not 0.0 < margin < 1.0:
            fail(f"equivalence_margin must be a Dice difference between 0 and 1, got {margin:g}")
    results = raw.get("results", "results")
    if not isinstance(results, str) or not results:
        fail("'results' must be a folder path")

    study = ReaderStudy(
        path=path, name=str(raw.get("name") or path.stem), seed=_number(raw, "seed", 0, fail, integer=True),
        readers=tuple(readers), arms=arms, assisted=assisted, cases=cases, washout_cases=washout,
        idle_after_s=_number(raw, "idle_after_s", 60.0, fail, minimum=1.0),
        autosave_every_s=_number(raw, "autosave_every_s", 30.0, fail, minimum=1.0),
        consensus=consensus, equivalence_margin=margin, results_dir=(root / results))
    if check_files:
        check_case_files(study)
    return study


def check_case_files(study: ReaderStudy) -> None:
    """Every phase, DICOM folder and reference exists, and each reference lies on its case's grid
    (the grid of the first post-contrast phase, as :func:`~breasttumorseg.exam.loading.load_study` uses)."""
    fail = _failer(study.path)
    for case in study.cases:
        for phase in case.phases:
            if not phase.is_file():
                fail(f"case '{case.id}': phase file {phase} does not exist")
        if case.dicom is not None and not case.dicom.is_dir():
            fail(f"case '{case.id}': DICOM folder {case.dicom} does not exist")
        if case.reference is None:
            continue
        if not case.reference.is_file():
            fail(f"case '{case.id}': reference {case.reference} does not exist")
        if not case.phases:
            continue  # a DICOM case's grid is known only once loaded; the analysis checks it then
        order = sorted(range(len(case.phases)), key=lambda i: case.times_s[i]) if case.times_s else \
            list(range(len(case.phases)))
        grid_file = case.phases[order[1]]
        try:
            grid = _header_geometry(read_image_header(grid_file))
            reference = _header_geometry(read_image_header(case.reference))
        except InputError as error:
            fail(f"case '{case.id}': {error}")
        differences = grid.differences(reference)
        if differences:
            fail(f"case '{case.id}': reference {case.reference.name} is on another grid than the first "
                 f"post-contrast phase {grid_file.name} ({'; '.join(differences)})")


def _header_geometry(reader):

    size = reader.GetSize()
    if len(size) != 3:
        raise InputError(f"is {len(size)}D; expected a 3D volume", reader.GetFileName())
    return Geometry(size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _read_mapping(path: Path) -> dict:

    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # PyYAML is optional: only .yaml study files need it
        except ImportError:
            raise InputError("is YAML but PyYAML is not installed; install it or write the study as JSON",
                             path) from None
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError("study file not found", path) from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise InputError(f"study file is not valid YAML ({' '.join(str(error).split())})", path) from None
    else:
        raw = read_json(path, "study file")
    if not isinstance(raw, dict):
        raise InputError("study file must hold one object with 'readers', 'arms' and 'cases'", path)
    return raw


def _failer(path: Path):
    def fail(message: str):
        raise InputError(message, path)
    return fail


def _no_duplicates(values, what: str, fail) -> None:
    seen = set()
    for value in values:
        if value in seen:
            fail(f"duplicate {what} '{value}'")
        seen.add(value)


def _number(raw: dict, key: str, default, fail, *, integer: bool = False, minimum=None):
    value = raw.get(key, default)
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value != value:
        fail(f"'{key}' must be {'an integer' if integer else 'a number'}, got {value!r}")
    if minimum is not None and value < minimum:
        fail(f"'{key}' must be at least {minimum:g}, got {value:g}")
    return int(value) if integer else float(value)


def _assisted_arm(raw, fail) -> AssistedArm:
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), str) or not raw["model"]:
        fail("arm 'assisted' must name its model, e.g. {\"model\": \"hirsch-unet3d-phantom\", \"threshold\": 0.5}")
    unknown = sorted(set(raw) - {"model", "threshold", "relative"})
    if unknown:
        fail(f"arm 'assisted': unknown key '{unknown[0]}' (known: model, threshold, relative)")
    threshold = raw.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not 0.0 < threshold <= 1.0):
        fail(f"arm 'assisted': threshold must be a number in (0, 1], got {threshold!r}")
    relative = raw.get("relative")
    if relative is not None and not isinstance(relative, bool):
        fail(f"arm 'assisted': relative must be true or false, got {relative!r}")
    return AssistedArm(raw["model"], None if threshold is None else float(threshold), relative)


def _case(entry, index: int, root: Path, fail) -> StudyCase:
    if not isinstance(entry, dict):
        fail(f"cases[{index}] must be an object with 'id' and 'phases' or 'dicom'")
    case_id = entry.get("id")
    if not isinstance(case_id, str) or not ID_PATTERN.match(case_id):
        fail(f"cases[{index}]: id {case_id!r} must be 1-64 letters, digits, '.', '_' or '-'")
    where = f"case '{case_id}'"
    unknown = sorted(set(entry) - CASE_KEYS)
    if unknown:
        fail(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(CASE_KEYS))})")
    phases, dicom = entry.get("phases"), entry.get("dicom")
    if (phases is None) == (dicom is None):
        fail(f"{where}: give either 'phases' (one file per phase) or 'dicom' (a folder)")
    if phases is not None:
        if not isinstance(phases, list) or len(phases) < 2 or not all(isinstance(p, str) for p in phases):
            fail(f"{where}: 'phases' must list at least two phase files (pre-contrast and post-contrast)")
    elif not isinstance(dicom, str):
        fail(f"{where}: 'dicom' must be a folder path")
    times = entry.get("times_s")
    if times is not None:
        if not isinstance(times, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool)
                                                  for t in times):
            fail(f"{where}: 'times_s' must be a list of seconds")
        if phases is not None and len(times) != len(phases):
            fail(f"{where}: {len(times)} times for {len(phases)} phases")
        if len(set(times)) != len(times):
            fail(f"{where}: duplicate acquisition times {times}")
    reference = entry.get("reference")
    if reference is not None and not isinstance(reference, str):
        fail(f"{where}: 'reference' must be a file path")
    return StudyCase(
        id=case_id,
        phases=tuple(root / p for p in phases) if phases is not None else (),
        dicom=root / dicom if dicom is not None else None,
        times_s=tuple(float(t) for t in times) if times is not None else None,
        reference=root / reference if reference is not None else None)
