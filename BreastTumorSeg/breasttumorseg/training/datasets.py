# Over 500 lines: the three data-set kinds share discovery, validation, the prepared-case cache
# and evaluation, which split apart would import one another.
"""Training data sets: synthetic phantoms, a folder of your own cases, or the MAMA-MIA layout.

A training config chooses one with ``"dataset"`` (see :func:`parse_dataset_settings`)::

    "dataset": {"kind": "phantom"}                          (the default: phantoms from seeds)
    "dataset": {"kind": "folder", "path": "data/cases", "val_fraction": 0.2}
    "dataset": {"kind": "mama_mia", "path": "/data/MAMA-MIA", "val_cases": ["DUKE_001", "ISPY1_1001"]}

**Folder layout** (``kind: folder``): one sub-folder per case, its name the case's name
(hidden folders, starting with ``.``, are skipped)::

    DIR/<case>/phase_00.nii.gz, phase_01.nii.gz, ...   the phases: every image file whose name
                                                       starts with "phase" (.nii.gz, .nii, .nrrd,
                                                       .nhdr, .mha, .mhd), in name order with
                                                       numbers compared as numbers; or one 4D NIfTI
                                                       (e.g. phases.nii.gz); or the files named by
                                                       the setting "phases" (same for every case)
    DIR/<case>/times.json                              {"times_s": [0, 90, 180, ...]} seconds, in
                                                       phase order (or {"file name": seconds}, which
                                                       orders the phases); needed when the model
                                                       needs acquisition times
    DIR/<case>/tumor_mask.nii.gz                       target of tumor models (voxels > 0.5 = tumor)
    DIR/<case>/breast_mask.nii.gz                      optional; target of breast-mask models

This is exactly what ``breasttumorseg phantom`` writes, so its output is a folder data set.

**MAMA-MIA layout** (``kind: mama_mia``; Garrucho et al., Scientific Data 2025)::

    DIR/images/<CASE>/<case>_0000.nii.gz, <case>_0001.nii.gz, ...   phase k = _000k, 0 = pre-contrast
                                                                    (numbered without gaps)
    DIR/segmentations/expert/<case>.nii.gz                          the expert tumor segmentation
    DIR/segmentations/breast/<case>.nii.gz                          optional breast masks (the setting
                                                                    "breast_masks" names another folder)
    DIR/images/<CASE>/times.json                                    optional acquisition times (as above)
    DIR/acquisition_times.csv                                       optional table of times (below)

File and case names are matched ignoring letter case (the collection names folders
``DUKE_001`` and files ``duke_001_0000.nii.gz``).

**Acquisition times table** (either layout; the setting ``times_csv``, default
``DIR/acquisition_times.csv`` when it exists): CSV with a header row, columns ``case`` and
``times_s`` (seconds of every phase in phase order, separated by ``;``, e.g.
``0;95;190;285``); extra columns are ignored. A case's row overrides its ``times.json``.
When the model needs times (DCE-out, phase series) and a case has neither, the data set is
refused with one line naming the case.

**Masks** must lie on the grid of the case's first post-contrast phase (the study's
reference grid): the same size, and spacing, origin and direction within
:data:`MASK_TOLERANCE_MM` mm and :data:`MASK_TOLERANCE_DIRECTION` (direction cosines); a
mask on another grid is refused naming the file (we do not guess how it was meant to align).

**Validation split**: ``val_cases`` (names) or ``val_fraction`` (default 0.2, at least one
case) of the cases: the first ones after sorting the cases on the sha256 of
``"<split_seed>/<name>"`` (deterministic, independent of the file system's order and of
the training seed; adding cases moves few others). At least one training and one
validation case are needed.

**Cache** (setting ``cache``: a folder): prepared cases are kept there (:mod:`.cases`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import GeometryError, InputError
from ..core.geometry import Geometry
from ..exam.loading import IMAGE_SUFFIXES, TIMES_SIDECAR, image_stem, read_image_header
from ..exam.dce_exam import check_times

DATASET_KINDS = ("phantom", "folder", "mama_mia")
DEFAULT_VAL_FRACTION = 0.2
TIMES_TABLE = "acquisition_times.csv"
TUMOR_MASK = "tumor_mask"
BREAST_MASK = "breast_mask"
#: tolerance of a mask's grid against the phases' (spacing and origin, mm)
MASK_TOLERANCE_MM = 0.01
#: tolerance of a mask's direction cosines against the phases'
MASK_TOLERANCE_DIRECTION = 1e-3

_SETTINGS = {
    "phantom": ("kind", "domain_randomization", "cache"),
    "folder": ("kind", "path", "val_fraction", "val_cases", "split_seed", "phases", "times_csv", "cache"),
    "mama_mia": ("kind", "path", "val_fraction", "val_cases", "split_seed", "times_csv", "breast_masks", "cache"),
}


@dataclass(frozen=True)
class DatasetSettings:
    """The ``"dataset"`` object of a training config (paths as given, relative to the working folder)."""

    kind: str = "phantom"
    path: Optional[Path] = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    val_cases: Optional[tuple] = None
    split_seed: int = 0
    phases: Optional[tuple] = None
    times_csv: Optional[Path] = None
    breast_masks: Optional[Path] = None
    cache: Optional[Path] = None
    domain_randomization: bool = False    # phantoms only: phantom.randomize on every case

    @property
    def is_phantom(self) -> bool:
        return self.kind == "phantom"

    def fingerprint(self) -> dict:
        """What a resumed run must agree with (the case lists are checked on their own)."""
        if self.is_phantom:
            return {"kind": "phantom", "domain_randomization": True} if self.domain_randomization else {
                "kind": "phantom"}
        return {"kind": self.kind, "val_fraction": self.val_fraction,
                "val_cases": None if self.val_cases is None else list(self.val_cases),
                "split_seed": self.split_seed, "phases": None if self.phases is None else list(self.phases)}

    def to_json(self) -> dict:
        out = {"kind": self.kind}
        for name in _SETTINGS[self.kind][1:]:
            value = getattr(self, name)
            if value is not None and value is not False:
                out[name] = str(value) if isinstance(value, Path) else (list(value) if isinstance(value, tuple)
                                                                        else value)
        return out


def parse_dataset_settings(value, where="train") -> DatasetSettings:
    """:class:`DatasetSettings` from the config's ``"dataset"`` object (or a DatasetSettings).

    One-line :class:`InputError` naming ``where`` for a value that is not an object, an
    unknown kind, a key that the kind does not take, or a value of the wrong type.
    """
    if isinstance(value, DatasetSettings):
        return value
    if value is None:
        return DatasetSettings()
    if not isinstance(value, dict):
        raise InputError(f"training setting 'dataset' must be an object such as {{\"kind\": \"folder\", "
                         f"\"path\": \"DIR\"}}, got {value!r}", where)
    kind = value.get("kind", "phantom")
    if kind not in DATASET_KINDS:
        raise InputError(f"dataset kind must be one of {', '.join(DATASET_KINDS)}, got {kind!r}", where)
    unknown = sorted(set(value) - set(_SETTINGS[kind]))
    if unknown:
        raise InputError(f"dataset of kind {kind!r} takes no setting(s) {', '.join(map(repr, unknown))} (known: "
                         f"{', '.join(_SETTINGS[kind])})", where)
    if kind == "phantom":
        randomize = value.get("domain_randomization", False)
        if not isinstance(randomize, bool):
            raise InputError(f"dataset setting 'domain_randomization' must be true or false, got {randomize!r}",
                             where)
        cache = value.get("cache")
        if cache is not None and (not isinstance(cache, str) or not cache.strip()):
            raise InputError(f"dataset setting 'cache' must be a path (text), got {cache!r}", where)
        return DatasetSettings(domain_randomization=randomize, cache=None if cache is None else Path(cache))

    def text(name: str, required: bool = False) -> Optional[str]:
        item = value.get(name)
        if item is None:
            if required:
                raise InputError(f"dataset of kind {kind!r} needs \"{name}\" (a folder)", where)
            return None
        if not isinstance(item, str) or not item.strip():
            raise InputError(f"dataset setting {name!r} must be a path (text), got {item!r}", where)
        return item

    def names(name: str) -> Optional[tuple]:
        item = value.get(name)
        if item is None:
            return None
        if (not isinstance(item, list) or not item or not all(isinstance(v, str) and v.strip() for v in item)):
            raise InputError(f"dataset setting {name!r} must be a non-empty list of names, got {item!r}", where)
        if len(set(v.lower() for v in item)) != len(item):
            raise InputError(f"dataset setting {name!r} names a case or file twice", where)
        return tuple(item)

    fraction = value.get("val_fraction", DEFAULT_VAL_FRACTION)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise InputError(f"dataset setting 'val_fraction' must be a number between 0 and 1 (exclusive), "
                         f"got {fraction!r}", where)
    split_seed = value.get("split_seed", 0)
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise InputError(f"dataset setting 'split_seed' must be an integer, got {split_seed!r}", where)
    def optional_path(name):
        return None if text(name) is None else Path(text(name))

    return DatasetSettings(kind=kind, path=Path(text("path", required=True)), val_fraction=float(fraction),
                           val_cases=names("val_cases"), split_seed=split_seed, phases=names("phases"),
                           times_csv=optional_path("times_csv"), breast_masks=optional_path("breast_masks"),
                           cache=optional_path("cache"))


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class CaseFiles:
    """The files of one real case."""

    name: str
    folder: Path                          # named in messages
    phases: tuple                         # image files, in the order given to load_study
    tumor_mask: Optional[Path] = None
    breast_mask: Optional[Path] = None
    times_s: Optional[tuple] = None       # from the times table (else load_study's sidecars)
    times_source: Optional[Path] = None   # where the times come from (table or times.json), None if none

    def target_path(self, task: str) -> Optional[Path]:
        return self.breast_mask if task == "breast" else self.tumor_mask


@dataclass
class DatasetSplit:
    """Training and validation cases: phantom seeds (ints) or :class:`CaseFiles`."""

    settings: DatasetSettings
    train: list
    val: list
    description: str = ""
    case_digest: str = ""   # sha256 of the two name lists (a resumed run must see the same split)
    extra: dict = field(default_factory=dict)

    @property
    def is_phantom(self) -> bool:
        return self.settings.is_phantom

    def names(self, which: str) -> list[str]:
        items = self.train if which == "train" else self.val
        return [str(c) if self.is_phantom else c.name for c in items]


def open_dataset(settings: DatasetSettings, card, *, seeds: tuple[list, list] | None = None) -> DatasetSplit:
    """Find, check and split the cases for a model with ``card`` (its task, whether it needs times).

    Phantoms: ``seeds`` = (training seeds, validation seeds). Real data: every case is found
    and checked from file headers only (fast): phase files, the target mask the task needs,
    times when the card needs them, the mask's grid against the phases' (when the phases
    share one grid; otherwise after loading). Raises one-line :class:`InputError` naming
    the folder, case or file.
    """
    if settings.is_phantom:
        train, val = seeds
        split = DatasetSplit(settings, list(train), list(val),
                             f"synthetic phantoms (seeds {train[0]}-{train[-1]}, validation {val[0]}-{val[-1]})")
        split.case_digest = _digest(split.names("train"), split.names("val"))
        return split
    cases = discover_cases(settings)
    for case in cases:
        check_case(case, card)
    train, val = split_cases(cases, settings)
    label = "folder" if settings.kind == "folder" else "MAMA-MIA"
    split = DatasetSplit(settings, train, val, f"{label} data set {settings.path} ({len(train)} training, "
                                               f"{len(val)} validation cases)")
    split.case_digest = _digest(split.names("train"), split.names("val"))
    return split


def _digest(train: list[str], val: list[str]) -> str:
    return hashlib.sha256(json.dumps([train, val]).encode()).hexdigest()


def discover_cases(settings: DatasetSettings) -> list[CaseFiles]:
    """Every case of a folder or MAMA-MIA data set, sorted by name (InputError if none)."""
    root = Path(settings.path)
    if not root.exists():
        raise InputError("dataset folder not found", root)
    if not root.is_dir():
        raise InputError("dataset path is not a folder", root)
    table = _read_times_table(settings)
    cases = _discover_folder(root, settings) if settings.kind == "folder" else _discover_mama_mia(root, settings)
    if not cases:
        expected = ("one folder per case holding phase*.nii.gz, times.json and tumor_mask.nii.gz"
                    if settings.kind == "folder" else "images/<case>/<case>_0000.nii.gz ...")
        raise InputError(f"no cases found (expected {expected})", root)
    if table is not None:
        table_path, rows = table
        with_times = []
        for case in cases:
            times = rows.get(case.name.lower())
            with_times.append(case if times is None else
                              CaseFiles(case.name, case.folder, case.phases, case.tumor_mask, case.breast_mask,
                                        tuple(times), table_path))
        cases = with_times
    return sorted(cases, key=lambda c: c.name)


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _image_file(folder: Path, stem: str) -> Optional[Path]:
    """``folder/<stem><image suffix>`` (stem compared ignoring case), or None."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES) and image_stem(path).lower() == stem.lower():
            return path
    return None


def _sidecar_times(folder: Path) -> Optional[Path]:

    sidecar = folder / TIMES_SIDECAR
    return sidecar if sidecar.is_file() else None


def _discover_folder(root: Path, settings: DatasetSettings) -> list[CaseFiles]:

    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if settings.phases:
            phases = tuple(folder / name for name in settings.phases)
            missing = [p for p in phases if not p.is_file()]
            if missing:
                raise InputError(f"phase file of case {folder.name} not found (setting \"phases\")", missing[0])
        else:
            phases = tuple(sorted((p for p in folder.iterdir() if p.is_file() and p.name.lower().startswith("phase")
                                   and p.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda p: _natural_key(p.name)))
            if not phases:
                raise InputError(f"case {folder.name} has no phase images (phase_00.nii.gz, phase_01.nii.gz, ...)",
                                 folder)
        cases.append(CaseFiles(folder.name, folder, phases, _image_file(folder, TUMOR_MASK),
                               _image_file(folder, BREAST_MASK), None, _sidecar_times(folder)))
    return cases


_MAMA_PHASE = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})\.nii(\.gz)?$", re.IGNORECASE)


def _discover_mama_mia(root: Path, settings: DatasetSettings) -> list[CaseFiles]:
    images = root / "images"
    if not images.is_dir():
        raise InputError("not a MAMA-MIA folder: images/ not found (expected images/<case>/<case>_0000.nii.gz, "
                         "segmentations/expert/<case>.nii.gz)", root)
    expert = root / "segmentations" / "expert"
    breast = Path(settings.breast_masks) if settings.breast_masks else root / "segmentations" / "breast"
    if settings.breast_masks and not breast.is_dir():
        raise InputError("breast mask folder not found (setting \"breast_masks\")", breast)
    tumor_masks = _masks_by_name(expert)
    breast_masks = _masks_by_name(breast)
    cases = []
    for folder in sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")):
        numbered = {}
        for path in folder.iterdir():
            match = _MAMA_PHASE.match(path.name)
            if path.is_file() and match and match.group("case").lower() == folder.name.lower():
                numbered[int(match.group("index"))] = path
        if not numbered:
            raise InputError(f"case {folder.name} has no phase images ({folder.name.lower()}_0000.nii.gz, "
                             f"{folder.name.lower()}_0001.nii.gz, ...)", folder)
        if sorted(numbered) != list(range(len(numbered))):
            found = ", ".join(f"_{i:04d}" for i in sorted(numbered))
            raise InputError(f"phases of case {folder.name} must be numbered _0000, _0001, ... without gaps "
                             f"(found {found})", folder)
        phases = tuple(numbered[i] for i in range(len(numbered)))
        cases.append(CaseFiles(folder.name, folder, phases, tumor_masks.get(folder.name.lower()),
                               breast_masks.get(folder.name.lower()), None, _sidecar_times(folder)))
    return cases


def _masks_by_name(folder: Path) -> dict:

    if not folder.is_dir():
        return {}
    return {image_stem(p).lower(): p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)}


def _read_times_table(settings: DatasetSettings):
    """(path, {case name lowercased: [seconds]}) of the times table, or None when there is none."""
    path = Path(settings.times_csv) if settings.times_csv else Path(settings.path) / TIMES_TABLE
    if not path.is_file():
        if settings.times_csv:
            raise InputError("acquisition times table not found (setting \"times_csv\")", path)
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot be read ({error})", path) from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "case" not in columns or "times_s" not in columns:
        raise InputError("acquisition times table needs the columns case and times_s (seconds separated by ';')",
                         path)
    rows = {}
    for line, row in enumerate(reader, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in row.items() if k is not None}
        name = row.get("case", "")
        if not name:
            raise InputError(f"line {line}: empty case name", path)
        try:
            times = [float(t) for t in row.get("times_s", "").split(";") if t.strip()]
        except ValueError:
            raise InputError(f"line {line}: times_s of case {name} must be seconds separated by ';', got "
                             f"{row.get('times_s')!r}", path) from None
        if len(times) < 2:
            raise InputError(f"line {line}: case {name} needs at least two times (pre-contrast first)", path)
        check_times(times, f"{path}: line {line}")
        if name.lower() in rows:
            raise InputError(f"line {line}: case {name} appears twice", path)
        rows[name.lower()] = times
    return path, rows


# ----------------------------------------------------------------------------- checks
def _header_geometry(path: Path) -> tuple[Geometry, int]:
    """Grid (first three axes, LPS mm) and number of volumes of an image file, from its header."""
    reader = read_image_header(path)
    dimension = reader.GetDimension()
    size = reader.GetSize()
    if dimension < 3:
        raise InputError(f"is a {dimension}D image; expected a 3D volume", path)
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dimension, dimension)[:3, :3]
    try:
        geometry = Geometry(tuple(size[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]),
                            tuple(direction.ravel()))
    except ValueError as error:
        raise InputError(f"has an invalid voxel grid ({error})", path) from None
    return geometry, (size[3] if dimension == 4 else 1)


def mask_grid_differences(mask: Geometry, phases: Geometry) -> list[str]:
    """How a mask's grid differs from the phases' beyond the tolerances (empty: the same grid)."""
    return phases.differences(mask, tol_mm=MASK_TOLERANCE_MM, tol_dir=MASK_TOLERANCE_DIRECTION)


def check_case(case: CaseFiles, card) -> None:
    """Refuse (one line naming the case or file) a case that cannot train a model with ``card``."""
    mask = case.target_path(card.task)
    if mask is None:
        if card.task == "breast":
            raise InputError(f"case {case.name} has no breast mask, which a breast-mask model trains on "
                             f"(breast_mask.nii.gz in the case folder; segmentations/breast/<case>.nii.gz for "
                             f"MAMA-MIA)", case.folder)
        raise InputError(f"case {case.name} has no tumor mask (tumor_mask.nii.gz in the case folder; "
                         f"segmentations/expert/<case>.nii.gz for MAMA-MIA)", case.folder)
    if card.needs_times and case.times_s is None and case.times_source is None:
        raise InputError(f"case {case.name} has no acquisition times, which model inputs "
                         f"{', '.join(card.inputs)} need (add times.json {{\"times_s\": [...]}} to the case's phase "
                         f"folder, or a row to {TIMES_TABLE})", case.folder)
    grids = [_header_geometry(path) for path in case.phases]
    n_phases = sum(count for _, count in grids)
    if n_phases < 2:
        raise InputError(f"case {case.name} has a single phase; a DCE study needs a pre-contrast and at least one "
                         f"post-contrast phase", case.phases[0])
    if case.times_s is not None and len(case.times_s) != n_phases:
        raise InputError(f"{len(case.times_s)} acquisition times for the {n_phases} phases of case {case.name}",
                         case.times_source)
    mask_grid, volumes = _header_geometry(mask)
    if volumes != 1:
        raise InputError(f"mask of case {case.name} is a 4D image; expected one 3D volume", mask)
    first = grids[0][0]
    if all(not first.differences(g) for g, _ in grids):
        differences = mask_grid_differences(mask_grid, first)
        if differences:
            raise GeometryError(f"mask is on another grid than the phases of case {case.name}: "
                                f"{'; '.join(differences)}", mask)


# ----------------------------------------------------------------------------- split
def split_cases(cases: list[CaseFiles], settings: DatasetSettings) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """(training, validation) cases, each sorted by name; see the module docstring."""
    root = Path(settings.path)
    by_name = {c.name.lower(): c for c in cases}
    if settings.val_cases:
        missing = [name for name in settings.val_cases if name.lower() not in by_name]
        if missing:
            raise InputError(f"validation case {missing[0]!r} is not in the data set ({len(cases)} cases found)", root)
        val_names = {name.lower() for name in settings.val_cases}
        how = f"{len(val_names)} validation case(s) named in \"val_cases\""
    else:
        count = max(1, int(round(settings.val_fraction * len(cases))))
        order = sorted(cases, key=lambda c: hashlib.sha256(f"{settings.split_seed}/{c.name}".encode()).hexdigest())
        val_names = {c.name.lower() for c in order[:count]}
        how = f"val_fraction {settings.val_fraction:g} ({count} validation case(s))"
    ordered = sorted(cases, key=lambda c: c.name)
    train = [c for c in ordered if c.name.lower() not in val_names]
    val = [c for c in ordered if c.name.lower() in val_names]
    if not train:
        raise InputError(f"{len(cases)} case(s) found and {how}: no case is left for training; a validation "
                         f"split needs at least 2 cases (1 for training, 1 for validation)", root)
    return train, val


# ----------------------------------------------------------------------------- preparation


# ----------------------------------------------------------------------------- evaluation


# ----------------------------------------------------------------------------- model card


__all__ = ["DATASET_KINDS", "DatasetSettings", "parse_dataset_settings", "CaseFiles", "DatasetSplit", "open_dataset",
           "discover_cases", "check_case", "split_cases", "mask_grid_differences", "MASK_TOLERANCE_MM",
           "MASK_TOLERANCE_DIRECTION", "TIMES_TABLE"]
