"""Writing images and Slicer segmentations, atomically, on the grid they belong to.

* :func:`write_image` writes a 3D array ``[z, y, x]`` (or a 4D ``[t, z, y, x]`` series)
  on a :class:`~breasttumorseg.core.geometry.Geometry` (LPS mm) as NIfTI, NRRD or MetaImage,
  keeping the array's dtype.
* :func:`write_segmentation_nrrd` writes a binary mask as a ``.seg.nrrd`` that 3D Slicer
  opens as a segmentation with one named, coloured segment (label value 1).

Both write to a temporary file beside the target and rename it into place, so a reader
never sees a half-written file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.atomic import atomic_path
from ..core.errors import OutputError, itk_error_reason
from ..core.geometry import Geometry

#: Single-file formats we write (two-file formats such as .mhd/.nhdr cannot be renamed atomically).
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

#: The segmentation file's representation names as 3D Slicer spells them.
BINARY_LABELMAP = "Binary labelmap"


def _format_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in WRITE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise OutputError(f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}", path)


def _image_for(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image of a 3D ``[z, y, x]`` or 4D ``[t, z, y, x]`` array on ``geometry``."""
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.ndim == 3:
        return geometry.to_image(array)
    if array.ndim == 4:
        if array.shape[1:] != geometry.shape_zyx:
            raise ValueError(f"array shape {array.shape[1:]} does not match grid {geometry.shape_zyx}")
        image = sitk.GetImageFromArray(array, isVector=False)
        direction = np.eye(4)
        direction[:3, :3] = geometry.direction_matrix
        image.SetSpacing(tuple(geometry.spacing) + (1.0,))
        image.SetOrigin(tuple(geometry.origin) + (0.0,))
        image.SetDirection(tuple(direction.ravel()))
        return image
    raise ValueError(f"expected a 3D [z, y, x] or 4D [t, z, y, x] array, got {array.ndim}D")


def _write_sitk(image: sitk.Image, path: Path) -> None:
    try:
        with atomic_path(path) as tmp:
            try:
                # ITK compresses itself: writing the plain NIfTI first and compressing it with ISA-L was
                # 1 s faster on the standard case, but a full disk then failed inside ITK's NIfTI library,
                # which prints its own lines ("** ERROR: NWAD ...") beside our one-line error
                sitk.WriteImage(image, str(tmp), useCompression=True)
            except RuntimeError as error:  # SimpleITK wraps ITK's exceptions in RuntimeError
                raise OutputError(f"could not be written ({itk_error_reason(error)})", path) from None
    except OSError as error:
        raise OutputError(f"could not be written ({error.strerror or error})", path) from None


def write_image(path, array_zyx, geometry: Geometry) -> None:
    """Write ``array_zyx`` on ``geometry`` to ``path`` atomically, keeping its dtype.

    The format follows the extension: ``.nii.gz``, ``.nii``, ``.nrrd`` (gzip-compressed) or
    ``.mha`` (compressed). A 3D array ``[z, y, x]`` must have ``geometry.shape_zyx``; a 4D array
    ``[t, z, y, x]`` is written as one 4D image (one volume per ``t``, spacing 1 along ``t``) whose
    first three axes carry ``geometry``. Boolean arrays are written as uint8.
    Physical space is LPS mm as in ITK; NIfTI writers convert to RAS in the file header.
    """
    path = Path(path)
    _format_suffix(path)
    image = _image_for(np.asarray(array_zyx), geometry)
    _write_sitk(image, path)


def segment_extent(mask_zyx: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """Voxel extent ``(i0, i1, j0, j1, k0, k1)`` of the non-zero voxels (inclusive).

    The whole grid's extent when the mask is empty.
    """
    nz, ny, nx = mask_zyx.shape
    found = np.nonzero(mask_zyx)
    if len(found[0]) == 0:
        return (0, nx - 1, 0, ny - 1, 0, nz - 1)
    k, j, i = found
    return (int(i.min()), int(i.max()), int(j.min()), int(j.max()), int(k.min()), int(k.max()))


def segmentation_metadata(mask_zyx: np.ndarray, *, segment_name: str = "Tumor",
                          color_rgb=(0.9, 0.2, 0.2), terminology: str | None = None) -> dict[str, str]:
    """The NRRD header fields (``key:=value``) that make a labelmap a Slicer segmentation.

    One segment, label value 1, in layer 0; key names and value formats follow 3D Slicer's
    segmentation storage node (``Segment<N>_<Key>`` and ``Segmentation_<Key>``).
    ``color_rgb`` is three floats in 0..1. ``terminology`` is a Slicer terminology entry
    string, stored as the segment's ``TerminologyEntry`` tag.
    """
    color = tuple(float(c) for c in color_rgb)
    if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
        raise ValueError(f"color_rgb must be three values in 0..1, got {color_rgb}")
    segment_id = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in segment_name) or "Segment_1"
    tags = f"TerminologyEntry:{terminology}|" if terminology else ""
    return {
        "Segment0_ID": segment_id,
        "Segment0_Name": segment_name,
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Color": " ".join(f"{c:.6g}" for c in color),
        "Segment0_ColorAutoGenerated": "0",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Extent": " ".join(str(v) for v in segment_extent(mask_zyx)),
        "Segment0_Tags": tags,
        "Segmentation_MasterRepresentation": BINARY_LABELMAP,
        "Segmentation_ContainedRepresentationNames": BINARY_LABELMAP + "|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }


def write_segmentation_nrrd(path, mask_zyx, geometry: Geometry, *, segment_name: str = "Tumor",
                            color_rgb=(0.9, 0.2, 0.2), terminology: str | None = None) -> None:
    """Write a binary mask ``[z, y, x]`` on ``geometry`` as a 3D Slicer ``.seg.nrrd``, atomically.

    The file is a gzip-compressed uint8 NRRD (LPS space, non-zero voxels -> 1) with the
    header fields of :func:`segmentation_metadata`; Slicer loads it as a segmentation
    node with one segment named ``segment_name`` in ``color_rgb`` (0..1 each). Any
    NRRD reader (SimpleITK included) reads it as an ordinary labelmap on ``geometry``.
    """
    path = Path(path)
    if not path.name.lower().endswith(".nrrd"):
        raise OutputError("a segmentation file must end in .seg.nrrd", path)
    mask = (np.asarray(mask_zyx) > 0).astype(np.uint8)
    image = geometry.to_image(mask)
    for key, value in segmentation_metadata(mask, segment_name=segment_name, color_rgb=color_rgb,
                                            terminology=terminology).items():
        image.SetMetaData(key, value)
    _write_sitk(image, path)
