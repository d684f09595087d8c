"""The sample study in Slicer's Sample Data module (a category of its own, SHA-256 checked).

The files are registered as local ``file://`` URIs with their checksums; Sample Data copies
them into its cache and hands them to :func:`loadSampleStudy`, which builds the scene with
``BreastTumorSegLib.sampledata`` (a Volume Sequence and the hidden true tumor).
"""

from __future__ import annotations

import os

import slicer

from BreastTumorSegLib import sampledata

from .common import log

CATEGORY = "BreastTumorSeg"
ICON = os.path.join(os.path.dirname(os.path.dirname(__file__)), "Resources", "Icons", "BreastTumorSeg.png")


def _cachedName(name: str) -> str:
    return f"BreastTumorSeg-{sampledata.SAMPLE_NAME}-{name}"


def registerSampleData() -> None:
    """Add the synthetic DCE study to the Sample Data module."""
    import SampleData

    folder = sampledata.SAMPLE_FOLDER
    if not sampledata.sampleAvailable(folder):
        log.warning(f"BreastTumorSeg: the sample study is missing from {folder}; no sample data registered")
        return
    names = sampledata.sampleFiles(folder)
    known = sampledata.sampleChecksums(folder)
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory(CATEGORY, "Breast DCE-MRI (BreastTumorSeg)")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=sampledata.SAMPLE_NAME,
        thumbnailFileName=ICON,
        uris=[(folder / name).resolve().as_uri() for name in names],
        fileNames=[_cachedName(name) for name in names],
        nodeNames=[None] * len(names),
        loadFiles=[False] * len(names),  # loadSampleStudy builds the Volume Sequence
        checksums=[f"SHA256:{known[name]}" if name in known else None for name in names],
        customDownloader=loadSampleStudy,
    )


def loadSampleStudy(source=None) -> dict:
    """Sample Data's loader: the cached files into the scene; ``{"sequence", "browser", "proxy", "truth"}``."""
    import SampleData

    sampleLogic = SampleData.SampleDataLogic()
    if source is None:
        source = sampleLogic.sourceForSampleName(sampledata.SAMPLE_NAME)
        if source is None:
            registerSampleData()
            source = sampleLogic.sourceForSampleName(sampledata.SAMPLE_NAME)
        if source is None:
            raise RuntimeError(f"the BreastTumorSeg sample study is missing from {sampledata.SAMPLE_FOLDER}")
    plain = SampleData.SampleDataSource(sampleName=source.sampleName, uris=source.uris, fileNames=source.fileNames,
                                        nodeNames=source.nodeNames, loadFiles=source.loadFiles,
                                        checksums=source.checksums)
    paths = sampleLogic.downloadFromSource(plain)
    prefix = _cachedName("")
    files = {fileName[len(prefix):]: path for path, fileName in zip(paths, source.fileNames)}
    sample = sampledata.loadSampleStudy(slicer.mrmlScene, files=files)
    slicer.util.setSliceViewerLayers(background=sample["proxy"], foreground=None, fit=True)
    return sample
