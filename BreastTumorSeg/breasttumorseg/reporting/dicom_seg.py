"""The tumor mask as a DICOM Segmentation (``tumor.seg.dcm``) referencing its source series.

When a study was read from DICOM, the mask (on the first post-contrast phase's grid) is
written as a binary DICOM SEG with highdicom: one frame per source slice it covers, each
frame referencing its source image (so a viewer or PACS lays it on the right slice of an
oblique series), the segment described with SNOMED CT codes (category Morphologically
Abnormal Structure, type Neoplasm, anatomic region Breast) and the model named as the
algorithm that produced it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from ..core.errors import OutputError
from ..core.geometry import Geometry
from ..exam.dicom import order_dicom_phases, scan_dicom_folder

DICOM_SEG_REQUIREMENT = "highdicom==0.28.2"


def reference_series(folders, geometry: Geometry) -> list[Path] | None:
    """The files, in slice order, of the DICOM phase lying on ``geometry`` (the study's
    reference grid: the first post-contrast phase), or None when no phase does."""
    found = []
    for folder in folders:
        found.extend(scan_dicom_folder(Path(folder)))
    phases = order_dicom_phases(found)
    preferred = phases[1:2] + phases[:1] + phases[2:]
    for phase in preferred:
        if phase.geometry.same_grid(geometry):
            return list(phase.files)
    return None


def write_dicom_seg(path, mask_zyx: np.ndarray, source_files, *, algorithm_name: str, algorithm_version: str,
                    software_version: str) -> Path:
    """Write the binary mask ``[z, y, x]`` (slice k on ``source_files[k]``) as a DICOM SEG, atomically."""
    try:
        import highdicom as hd  # highdicom is the optional dicom-seg extra
    except ImportError:
        raise OutputError(f"writing DICOM SEG needs the highdicom package ({DICOM_SEG_REQUIREMENT})", path) from None
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in source_files]
    mask = np.asarray(mask_zyx, dtype=np.uint8)
    if mask.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise OutputError(f"the mask {mask.shape} does not lie on the source series "
                          f"({len(sources)} x {sources[0].Rows} x {sources[0].Columns})", path)
    algorithm = hd.AlgorithmIdentificationSequence(name=algorithm_name[:64], version=algorithm_version[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Tumor",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Breast])
    segmentation = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="BreastTumorSeg",
        manufacturer_model_name=algorithm_name[:64], software_versions=software_version,
        device_serial_number="0", series_description="Tumor segmentation (BreastTumorSeg)",
        omit_empty_frames=mask.any())
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        segmentation.save_as(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
