"""The bundled sample study (a synthetic DCE-MRI phantom) as a DICOM import would give it.

The folder ``Resources/SampleData/SampleBreastDCE`` holds ``phase_00.nii.gz ...`` in time
order, ``times.json`` (``{"times_s": [...]}``), the phantom's true tumor ``tumor_mask.nii.gz``
and ``SHA256SUMS`` (``sha256sum`` format). :func:`loadSampleStudy` checks every file against
its checksum, then builds a Volume Sequence (index "time", unit s) with a sequence browser
showing the first post-contrast phase, and the true tumor as a hidden segmentation, all under
a patient / study in subject hierarchy. The Qt module registers the same files with Slicer's
Sample Data module and hands its cached copies to :func:`loadSampleStudy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import slicer

from breasttumorseg.core.errors import BreastTumorSegError, InputError
from breasttumorseg.exam.loading import read_mask, read_times_json

from . import nodes
from .logic import ROLE_ATTRIBUTE, BreastTumorSegLogic

SAMPLE_NAME = "BreastDCEPhantom"
SAMPLE_FOLDER = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "SampleBreastDCE"
TIMES_FILE = "times.json"
TRUTH_FILE = "tumor_mask.nii.gz"
#: Checksum files looked for in the sample folder (``sha256sum`` format), first found wins.
CHECKSUM_FILES = ("SHA256SUMS", "checksums.sha256", "SHA256SUMS.txt")
SERIES_NAME = "BreastDCE phantom"


def sampleAvailable(folder=SAMPLE_FOLDER) -> bool:
    """True when ``folder`` holds at least two phases."""
    folder = Path(folder)
    return folder.is_dir() and len(list(folder.glob("phase_*.nii.gz"))) >= 2


def sampleFiles(folder=SAMPLE_FOLDER) -> list:
    """File names of the sample study: the phases in time order, then times.json and the true tumor."""
    folder = Path(folder)
    phases = sorted(path.name for path in folder.glob("phase_*.nii.gz"))
    return phases + [name for name in (TIMES_FILE, TRUTH_FILE) if (folder / name).is_file()]


def sampleChecksums(folder=SAMPLE_FOLDER) -> dict:
    """File name -> SHA-256 (hex, lower case) from the folder's checksum file; empty when it has none."""
    folder = Path(folder)
    for checksumFile in CHECKSUM_FILES:
        path = folder / checksumFile
        if path.is_file():
            known = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2:
                    known[parts[1].lstrip("*")] = parts[0].lower()
            return known
    return {}


def checkedSampleFiles(folder=SAMPLE_FOLDER, files: Optional[dict] = None) -> dict:
    """File name -> path of the sample's files, each checked against its SHA-256.

    ``files`` (name -> path, e.g. Sample Data's cached copies) replaces the folder's own files;
    the expected checksums come from the folder's checksum file, else from the folder's files.
    Raises :class:`InputError` naming the first missing or altered file.
    """
    folder = Path(folder)
    names = sampleFiles(folder)
    if sum(name.startswith("phase_") for name in names) < 2:
        raise InputError("holds fewer than two phases: the sample study is missing", folder)
    from breasttumorseg.segmentation.models import sha256_of  # waits: models names torch for type checking

    expected = sampleChecksums(folder)
    paths = {name: Path((files or {}).get(name, folder / name)) for name in names}
    for name, path in paths.items():
        if not path.is_file():
            raise InputError("is missing", path)
        try:
            digest = sha256_of(path)
            wanted = expected.get(name) or sha256_of(folder / name)
        except BreastTumorSegError:
            raise InputError("cannot be read", path) from None
        if digest != wanted:
            raise InputError("failed its SHA-256 check (the file was altered or truncated)", path)
    return paths


def loadSampleStudy(scene=None, folder=SAMPLE_FOLDER, files: Optional[dict] = None) -> dict:
    """Load the sample study into ``scene`` (see the module docstring).

    Returns ``{"sequence", "browser", "proxy", "truth"}`` (truth: a hidden segmentation, or
    None without a true tumor file). On any failure the scene is left as it was.
    """
    scene = scene or slicer.mrmlScene
    paths = checkedSampleFiles(folder, files)
    phasePaths = [path for name, path in paths.items() if name.startswith("phase_")]
    times = read_times_json(paths[TIMES_FILE]) if TIMES_FILE in paths else None
    if times is not None and (not isinstance(times, list) or len(times) != len(phasePaths)):
        raise InputError(f"needs one time per phase ({len(phasePaths)} phases)", paths[TIMES_FILE])
    logic = BreastTumorSegLogic(scene)
    with nodes.removedOnFailure(scene):
        volumes, study = logic.loadStudy([str(path) for path in phasePaths], times, name=SERIES_NAME)
        sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", SERIES_NAME)
        sequence.SetIndexName("time" if times else "phase")
        sequence.SetIndexUnit("s" if times else "")
        sequence.SetIndexType(sequence.NumericIndex)
        for index, volume in enumerate(volumes):
            volume.SetName(f"{SERIES_NAME} phase {index}")
            sequence.SetDataNodeAtValue(volume, f"{times[index]:g}" if times else str(index))
        nodes.removeWithDependents(volumes)  # the sequence holds its own copies
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{SERIES_NAME} browser")
        browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
        browser.SetSelectedItemNumber(1)  # the first post-contrast phase
        proxy = browser.GetProxyNode(sequence)
        truth = None
        if TRUTH_FILE in paths:
            mask = read_mask(paths[TRUTH_FILE], study.geometry)
            truth, segmentId = nodes.addTumorSegmentation(scene, proxy, study.geometry, f"{SERIES_NAME} true tumor")
            nodes.setSegmentFromArray(truth, segmentId, mask, study.geometry)
            truth.SetAttribute(ROLE_ATTRIBUTE, "Truth")
            truth.GetDisplayNode().SetVisibility(False)
        placeUnderStudy(scene, [proxy, sequence] + ([truth] if truth else []))
    return {"sequence": sequence, "browser": browser, "proxy": proxy, "truth": truth}


def placeUnderStudy(scene, dataNodes, patient: str = "Breast phantom (synthetic)",
                    study: str = "Synthetic DCE-MRI") -> int:
    """A patient / study in subject hierarchy holding ``dataNodes`` (as a DICOM import would);
    returns the study's item ID."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patientItem = shNode.CreateSubjectItem(shNode.GetSceneItemID(), patient)
    studyItem = shNode.CreateStudyItem(patientItem, study)
    nodes.placeUnder(shNode, studyItem, dataNodes)
    return studyItem
