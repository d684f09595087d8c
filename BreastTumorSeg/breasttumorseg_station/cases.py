"""The cases a station offers: the bundled sample study and the case folders of its data folder.

A case folder holds one image file per phase (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``,
``.mha``, ``.mhd``; masks and labels, i.e. names containing ``mask``, ``label`` or ending in
``.seg.nrrd``, are not phases), optionally ``times.json`` (the layout ``breasttumorseg
phantom`` writes) and optionally a result to review: ``probability.nii.gz``, the tumor
probability map ``breasttumorseg segment`` writes, copied beside the phases (on the first
post-contrast phase's grid); it opens as the case's segmentation. Cases are named by their
folder path inside the data folder; opening one goes through
:meth:`security.Folders.inside`, so a name can never reach outside.

Every file of a case is checked on its own (:meth:`security.Folders.check_file`: real path
inside the data folder, a regular file, no other hard link). A case folder with a phase
file, a ``times.json`` or a probability map that fails the check is not offered, and opening
it is refused in one line naming the file: no file is silently left out. Detached-header
formats (``.mhd``, ``.nhdr``) name a second file inside their header, which the check cannot
see, so the station does not read them from the data folder (the command line does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from breasttumorseg.core.resources import SAMPLE_STUDY_FOLDER
from breasttumorseg.core.errors import InputError
from breasttumorseg.reporting.outputs import PROBABILITY_FILE

from .security import Folders

PHASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
DETACHED_SUFFIXES = (".nhdr", ".mhd")
SAMPLE_CASE = "Sample study"
TIMES_SIDECAR = "times.json"


@dataclass(frozen=True)
class Case:
    name: str          # shown in the page; for data cases the folder inside the data folder
    phases: tuple      # phase files, in name order (the loader orders them by time)
    times: Path | None = None  # the times sidecar, when the folder has one
    probability: Path | None = None  # a result to review (PROBABILITY_FILE), when the folder has one


def is_phase_file(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith(PHASE_SUFFIXES) or name.endswith(".seg.nrrd") or name == PROBABILITY_FILE:
        return False
    return "mask" not in name and "label" not in name


def phase_files(folder: Path) -> tuple:
    """The phase files of ``folder`` by name (a name that is a link counts: it is checked later)."""
    return tuple(sorted(p for p in folder.iterdir() if is_phase_file(p) and (p.is_file() or p.is_symlink())))


def case_files(folders: Folders, folder: Path) -> tuple:
    """(phase files, times sidecar or None, probability map or None) of a data-folder case,
    every file proven inside the data folder; :class:`InputError` naming the first that is not."""
    phases = phase_files(folder)
    sidecar, probability = (path if os.path.lexists(path) else None
                            for path in (folder / TIMES_SIDECAR, folder / PROBABILITY_FILE))
    for path in (*phases, *(p for p in (sidecar, probability) if p is not None)):
        folders.check_file("data", path)
    return phases, sidecar, probability


def list_cases(folders: Folders, max_depth: int = 2) -> list[str]:
    """The sample and every folder of the data folder (down to ``max_depth``) with two phases or more."""
    names = [SAMPLE_CASE]
    data = folders.roots.get("data")
    if data is None:
        return names
    found = []
    for folder in sorted(p for p in data.rglob("*") if p.is_dir()):
        relative = folder.relative_to(data)
        if len(relative.parts) > max_depth or any(part.startswith(".") for part in relative.parts):
            continue
        if data not in folder.resolve().parents:
            continue  # a symbolic link out of the data folder is not offered
        try:
            phases, _, _ = case_files(folders, folder)
        except (InputError, OSError):
            continue  # a file that cannot be proven inside: the case is not offered
        if len(phases) >= 2:
            found.append(relative.as_posix())
    return names + found


def open_case(folders: Folders, name: str) -> Case:
    """The case called ``name`` (see the module docstring); :class:`InputError` when it is not one."""
    if name == SAMPLE_CASE:
        return Case(name, phase_files(SAMPLE_STUDY_FOLDER), SAMPLE_STUDY_FOLDER / TIMES_SIDECAR)
    folder = folders.inside("data", name)
    if not folder.is_dir():
        raise InputError(f"'{name}' is not a case folder of the data folder")
    phases, sidecar, probability = case_files(folders, folder)
    if len(phases) < 2:
        raise InputError(f"'{name}' holds {len(phases)} phase file(s); a case needs two or more")
    return Case(name, phases, sidecar, probability)
