"""The cases a station offers: the bundled sample study and the case folders of its data folder.

A case folder holds one image file per phase (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``,
``.mha``, ``.mhd``; masks and labels, i.e. names containing ``mask``, ``label`` or ending in
``.seg.nrrd``, are not phases) and optionally ``times.json``, the layout ``breasttumorseg
phantom`` writes. Cases are named by their folder path inside the data folder; opening one
goes through :meth:`security.Folders.inside`, so a name can never reach outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from breasttumorseg.commands import SAMPLE_DIR

from .security import Folders

PHASE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SAMPLE_CASE = "Sample study"


@dataclass(frozen=True)
class Case:
    name: str          # shown in the page; for data cases the folder inside the data folder
    phases: tuple      # phase files, in name order (the loader orders them by time)


def is_phase_file(path: Path) -> bool:
    name = path.name.lower()
    if not name.endswith(PHASE_SUFFIXES) or name.endswith(".seg.nrrd"):
        return False
    return "mask" not in name and "label" not in name


def phase_files(folder: Path) -> tuple:
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and is_phase_file(p)))


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
        if folder.resolve() != folder.absolute().resolve() or data not in folder.resolve().parents:
            continue  # a symbolic link out of the data folder is not offered
        if len(phase_files(folder)) >= 2:
            found.append(relative.as_posix())
    return names + found


def open_case(folders: Folders, name: str) -> Case:
    """The case called ``name`` (see the module docstring); :class:`InputError` when it is not one."""
    from breasttumorseg.errors import InputError

    if name == SAMPLE_CASE:
        return Case(name, phase_files(SAMPLE_DIR))
    folder = folders.inside("data", name)
    if not folder.is_dir():
        raise InputError(f"'{name}' is not a case folder of the data folder")
    phases = phase_files(folder)
    if len(phases) < 2:
        raise InputError(f"'{name}' holds {len(phases)} phase file(s); a case needs two or more")
    return Case(name, phases)
