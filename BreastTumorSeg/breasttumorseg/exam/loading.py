"""Reading a DCE-MRI study: image files, a 4D NIfTI or DICOM, ordered in time, on one grid.

:func:`load_study` turns what a user hands us into a :class:`~breasttumorseg.exam.dce_exam.DCEStudy`:

1. **Phases.** Several 3D image files (one phase each: .nii, .nii.gz, .nrrd, .nhdr, .mha,
   .mhd), or one 4D NIfTI (one phase per volume), or DICOM folder(s) (see :mod:`.dicom`).
2. **Times** (seconds), first found of:
   * ``times_s`` given explicitly (``--times``), aligned with the phases as given (after
     splitting a 4D image or ordering DICOM); must increase strictly;
   * DICOM timing tags (made relative to the first phase);
   * for a 4D image ``<name>.json`` beside ``<name>.nii[.gz]`` holding ``{"times_s": [...]}``;
   * ``times.json`` in the folder of the first input (inside it for a DICOM folder) holding
     ``{"times_s": [t0, t1, ...]}`` (aligned with the phases as given; must increase) or
     ``{"times_s": {"phase_0.nii.gz": 0, "phase_1.nii.gz": 90, ...}}`` (file name, with or
     without its extension -> seconds; this *orders* the phases).
   Without any, ``times_s`` is ``None``. The earliest phase is the pre-contrast.
3. **Grid.** The first post-contrast phase (index 1 after ordering) is the reference grid,
   as given. Any other phase on a different grid is resampled onto it (linear) with a
   warning saying how it differed; phases overlapping it by < 50 % are refused.

Every problem is an :class:`~breasttumorseg.core.errors.InputError` (or ``GeometryError``) whose
text is one line naming the file and the problem.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..core import gzip_codec
from ..core.errors import GeometryError, InputError, itk_error_reason
from ..core.geometry import Geometry, resample
from ..core.progress import CancelToken, ProgressCallback, report
from .dce_exam import DCEStudy, check_times
from .dicom import order_dicom_phases, scan_dicom_folder

#: File name of the times sidecar looked for beside the first input.
TIMES_SIDECAR = "times.json"
#: Image file suffixes we read (longest first so ``.nii.gz`` wins over ``.gz``).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Minimum fraction of the reference grid another phase must cover.
MIN_OVERLAP = 0.5
#: Phase files read at the same time (at most the number of CPU cores).
READING_THREADS = 2

Warn = Callable[[str], None]


def _default_warn(message: str) -> None:
    logging.getLogger("breasttumorseg").warning(message)


def image_stem(path: str | Path) -> str:
    """File name without its image suffix (``case.nii.gz`` -> ``case``)."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


# ----------------------------------------------------------------------------- single images


def read_image_header(path: Path) -> sitk.ImageFileReader:
    """A reader with the header of ``path`` read (no voxels yet)."""
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not an image file", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"cannot be read as an image ({_short(itk_error_reason(error))})", path) from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(f"has {reader.GetNumberOfComponents()} values per voxel; expected a greyscale volume",
                         path)
    return reader


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_spatial_size(path: Path, size: Sequence[int]) -> None:
    """Refuse 2D images and 3D images with a single voxel along an axis."""
    if len(size) < 3:
        raise InputError(f"is a {len(size)}D image (size {'x'.join(map(str, size))}); "
                         f"each phase must be a 3D volume", path)
    thin = [axis for axis, n in zip("xyz", size[:3]) if n < 2]
    if thin:
        raise InputError(f"has a single voxel along {', '.join(thin)} (size {'x'.join(map(str, size[:3]))}); "
                         f"each phase must be a 3D volume", path)


def _geometry_3d(path: Path, size, spacing, origin, direction_nd, dimension: int) -> Geometry:
    direction = np.asarray(direction_nd, dtype=float).reshape(dimension, dimension)[:3, :3]
    try:
        return Geometry(tuple(size[:3]), tuple(spacing[:3]), tuple(origin[:3]), tuple(direction.ravel()))
    except ValueError as error:
        raise InputError(f"has an invalid voxel grid ({error})", path) from None


def _read_voxels(reader: sitk.ImageFileReader, path: Path) -> np.ndarray:
    """All voxels of ``path`` as float32, shape = the image size reversed (``[t,] z, y, x``); possibly
    read-only (callers that hand the array on copy it).

    NIfTI-1 voxels are read directly (ITK's NIfTI reader silently turns NaN and Inf into
    0 and does not notice a truncated file); other formats through SimpleITK.
    """
    size = tuple(reversed(reader.GetSize()))
    if path.name.lower().endswith((".nii", ".nii.gz")):
        array = _read_nifti1_voxels(path, size)
        if array is not None:
            return array
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot be read as an image ({_short(itk_error_reason(error))})", path) from None
    array = sitk.GetArrayFromImage(image)
    return array if array.dtype == np.float32 else array.astype(np.float32)


#: NIfTI-1 datatype codes we read ourselves -> numpy type (without byte order).
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
                1024: "i8", 1280: "u8"}


def _read_nifti1_voxels(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """Voxels of a single-file NIfTI-1 image scaled by scl_slope/scl_inter (float32, read-only when
    stored as native float32 without scaling), or None if unusual."""
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip_codec.decompress(data)  # ISA-L when installed: most of a phase's reading time
    except gzip_codec.ERRORS as error:
        raise InputError(f"cannot be read as an image (corrupt or truncated: {error})", path) from None
    if len(data) < 348:
        raise InputError("cannot be read as an image (truncated header)", path)
    for order in "<>":
        if struct.unpack(order + "i", data[:4])[0] == 348:
            break
    else:
        return None  # NIfTI-2 or something ITK understands better
    if data[344:347] != b"n+1":
        return None
    dim = struct.unpack(order + "8h", data[40:56])
    datatype = struct.unpack(order + "h", data[70:72])[0]
    offset = int(struct.unpack(order + "f", data[108:112])[0])
    slope, intercept = struct.unpack(order + "2f", data[112:120])
    if datatype not in _NIFTI_TYPES or not 1 <= dim[0] <= 7:
        return None
    count = int(np.prod([max(int(n), 1) for n in dim[1:dim[0] + 1]], dtype=np.int64))
    if count != int(np.prod(shape, dtype=np.int64)):
        return None
    dtype = np.dtype(order + _NIFTI_TYPES[datatype])
    if len(data) < offset + count * dtype.itemsize:
        raise InputError(f"cannot be read as an image (truncated: {len(data) - offset} of "
                         f"{count * dtype.itemsize} bytes of voxel data)", path)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    if math.isfinite(slope) and slope != 0 and (slope, intercept) != (1.0, 0.0):
        return array.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    # float32 as stored: a read-only view of the decompressed bytes (a phase is copied once, into the study)
    return array if array.dtype == np.float32 and array.dtype.isnative else array.astype(np.float32)


def _check_finite(array: np.ndarray, path: Path | str, label: str | None = None) -> None:
    finite = np.isfinite(array)
    if not finite.all():
        count = int(finite.size - np.count_nonzero(finite))
        where = f"{label} " if label else ""
        raise InputError(f"{where}contains {count} NaN or Inf voxel{'s' if count != 1 else ''}", path)


def read_image(path) -> tuple[np.ndarray, Geometry]:
    """Read one 3D image (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd).

    Returns the voxels as float32 ``[z, y, x]`` and the grid (LPS mm). Raises
    :class:`InputError` naming ``path`` for a missing or unreadable file, a 2D, 4D or
    multi-component image, a single voxel along an axis, or NaN/Inf voxels.
    """
    path = Path(path)
    reader = read_image_header(path)
    dimension = reader.GetDimension()
    size = reader.GetSize()
    _check_spatial_size(path, size)
    if dimension != 3:
        raise InputError(f"is a {dimension}D image; expected one 3D volume", path)
    geometry = _geometry_3d(path, size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), 3)
    array = _read_voxels(reader, path)
    _check_finite(array, path)
    return (array if array.flags.writeable else array.copy()), geometry


def read_mask(path, reference: Geometry, *, warn: Warn | None = None) -> np.ndarray:
    """Read a mask and put it on ``reference``: uint8 ``[z, y, x]``, 1 where the file is > 0.5.

    A mask on another grid is resampled onto ``reference`` by nearest neighbour (physical
    space, LPS) and ``warn`` gets one line saying how the grids differed. Raises
    :class:`GeometryError` when the mask does not overlap ``reference`` at all.
    """
    path = Path(path)
    warn = warn or _default_warn
    array, geometry = read_image(path)
    mask = (array > 0.5).astype(np.uint8)
    differences = reference.differences(geometry)
    if differences:
        if reference.overlap_fraction(geometry) <= 0.0:
            raise GeometryError("mask has no physical overlap with the image it belongs to", path)
        warn(f"{path}: mask resampled (nearest neighbour) onto the image grid: {'; '.join(differences)}")
        mask = resample(mask, geometry, reference, interpolation="nearest")
    return mask


# ----------------------------------------------------------------------------- times sidecars
def read_json(path, what: str | None = None):
    """The JSON content of ``path``; one-line :class:`InputError` naming the file (and ``what``
    it is) when it is missing, unreadable or not valid JSON."""
    path = Path(path)
    prefix = f"{what} " if what else ""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what or 'file'} not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{prefix}cannot be read ({error})", path) from None
    except json.JSONDecodeError as error:
        raise InputError(f"{prefix}is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
                         path) from None


def read_times_json(path) -> list[float] | dict[str, float]:
    """Read a times sidecar: ``{"times_s": [seconds, ...]}`` or ``{"times_s": {"name": seconds}}``.

    A list is aligned with the phases in the order they are given; a mapping names each
    phase by file name (with or without extension) or DICOM phase name. Returns the list
    or the mapping (floats, seconds). Raises :class:`InputError` naming the file for
    invalid JSON, a missing ``times_s`` entry or non-numeric / non-finite values.
    """
    path = Path(path)
    content = read_json(path)
    if not isinstance(content, dict) or "times_s" not in content:
        raise InputError('needs a "times_s" entry: a list of seconds in phase order, '
                         'or {"file name": seconds, ...}', path)
    times = content["times_s"]
    if isinstance(times, list):
        return [_seconds_value(value, path, f"entry {i}") for i, value in enumerate(times)]
    if isinstance(times, dict):
        return {str(name): _seconds_value(value, path, f'"{name}"') for name, value in times.items()}
    raise InputError('"times_s" must be a list of seconds or a mapping of file name to seconds', path)


def _seconds_value(value, path: Path, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f'"times_s" {where} is not a finite number of seconds: {value!r}', path)
    return float(value)


# ----------------------------------------------------------------------------- phases
@dataclass
class _PhaseSource:
    """A phase found but not read yet: where it is, its grid, and how to read it."""

    name: str
    path: Path                          # named in messages
    geometry: Geometry
    load: Callable[[], np.ndarray]      # float32 [z, y, x], finite
    time_s: float | None = None         # from DICOM
    match_names: tuple[str, ...] = ()   # names a times mapping may use


def _file_sources(path: Path) -> tuple[list[_PhaseSource], bool]:
    """Phase sources of one image file; the flag says it was a 4D image."""
    reader = read_image_header(path)
    dimension = reader.GetDimension()
    size = reader.GetSize()
    _check_spatial_size(path, size)
    geometry = _geometry_3d(path, size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(), dimension)
    names = (path.name, image_stem(path))
    if dimension == 3:
        def load_3d() -> np.ndarray:
            array = _read_voxels(reader, path)
            _check_finite(array, path)
            return array

        return [_PhaseSource(path.name, path, geometry, load_3d, match_names=names)], False
    if dimension != 4:
        raise InputError(f"is a {dimension}D image; expected 3D phases or one 4D series", path)
    n_volumes = size[3]
    if n_volumes < 2:
        raise InputError("is a 4D image with a single volume; a DCE study needs a pre-contrast and at least "
                         "one post-contrast phase", path)
    cache: dict[str, np.ndarray] = {}

    def volume_loader(index: int) -> Callable[[], np.ndarray]:
        def load_volume() -> np.ndarray:
            if "series" not in cache:
                cache["series"] = _read_voxels(reader, path)  # [t, z, y, x]
            volume = cache["series"][index]
            _check_finite(volume, path, label=f"volume {index}")
            if index == n_volumes - 1:
                cache.clear()  # the last volume read: free the 4D array once the caller has copied it
            return volume

        return load_volume

    sources = [_PhaseSource(f"{path.name}[{t}]", path, geometry, volume_loader(t),
                            match_names=(f"{path.name}[{t}]", str(t)))
               for t in range(n_volumes)]
    return sources, True


def _dicom_sources(folders: list[Path], cancel: CancelToken | None) -> list[_PhaseSource]:

    found = []
    for folder in folders:
        found.extend(scan_dicom_folder(folder, cancel=cancel))
    ordered = order_dicom_phases(found)
    return [_PhaseSource(phase.name, phase.folder, phase.geometry, _dicom_loader(phase), time_s=phase.time_s,
                         match_names=(phase.name, phase.folder.name))
            for phase in ordered]


def _dicom_loader(phase) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        array = phase.read_pixels()
        _check_finite(array, phase.folder, label=phase.name)
        return array

    return load


def _collect_sources(paths: list[Path], cancel: CancelToken | None) -> tuple[list[_PhaseSource], str, Path | None]:
    """All phases of the inputs, the kind of input, and the sidecar to look for (if any)."""
    for path in paths:
        if not path.exists():
            raise InputError("file or folder not found", path)
    folders = [p for p in paths if p.is_dir()]
    if folders and len(folders) != len(paths):
        raise InputError("mixes DICOM folders and image files; give either folders or files", paths[0])
    if folders:
        return _dicom_sources(folders, cancel), "dicom", folders[0] / TIMES_SIDECAR
    sources, four_d = [], []
    for path in paths:
        found, is_4d = _file_sources(path)
        sources.extend(found)
        four_d.append(is_4d)
    if any(four_d):
        if len(paths) > 1:
            culprit = paths[four_d.index(True)]
            raise InputError("is a 4D image; give a 4D series as the only input, or one 3D file per phase",
                             culprit)
        stem_sidecar = paths[0].with_name(image_stem(paths[0]) + ".json")
        if stem_sidecar.is_file() and _has_times_entry(stem_sidecar):
            return sources, "4d", stem_sidecar
        return sources, "4d", paths[0].parent / TIMES_SIDECAR
    return sources, "files", paths[0].parent / TIMES_SIDECAR


def _has_times_entry(path: Path) -> bool:
    """True if ``path`` is a JSON object with ``times_s`` (other sidecars, e.g. BIDS, are ignored)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # let read_times_json report what is wrong with it
    return isinstance(content, dict) and "times_s" in content


def _times_and_order(sources: list[_PhaseSource], times_s, sidecar: Path | None
                     ) -> tuple[list[_PhaseSource], np.ndarray | None]:
    """Apply explicit, DICOM or sidecar times; return the phases in time order and their times."""
    n = len(sources)
    if times_s is not None:
        return sources, check_times(times_s, "--times", n)
    if all(s.time_s is not None for s in sources):
        return sources, np.array([s.time_s for s in sources], dtype=float)
    if sidecar is None or not sidecar.is_file():
        return sources, None
    times = read_times_json(sidecar)
    if isinstance(times, list):
        return sources, check_times(times, str(sidecar), n)
    missing = [s.name for s in sources if not any(name in times for name in s.match_names)]
    if missing:
        raise InputError(f"has no time for {missing[0]} (give every phase's file name)", sidecar)
    keyed = [(next(times[name] for name in s.match_names if name in times), i, s) for i, s in enumerate(sources)]
    keyed.sort(key=lambda item: (item[0], item[1]))
    ordered_times = [t for t, _, _ in keyed]
    return [s for _, _, s in keyed], check_times(ordered_times, str(sidecar), n)


def load_study(inputs: Sequence[str | Path], times_s: Sequence[float] | None = None, *,
               warn: Warn | None = None, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> DCEStudy:
    """Load a DCE-MRI study from image files, one 4D NIfTI, or DICOM folder(s).

    Args:
        inputs: 3D image files (one per phase), or one 4D NIfTI, or DICOM folder(s).
        times_s: acquisition times in seconds, one per phase in the order the phases are
            given (after 4D splitting / DICOM ordering), strictly increasing. Overrides
            DICOM and sidecar times.
        warn: receives one line per phase resampled onto the reference grid
            (default: the ``breasttumorseg`` logger).
        progress: ``progress(step, fraction)``, called once per phase read.
        cancel: polled between phases.

    Returns:
        A :class:`DCEStudy` on the grid of the first post-contrast phase (LPS mm), phases
        ordered in time, ``times_s`` in seconds or ``None`` when no times were found.
    """
    warn = warn or _default_warn
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise InputError("no phases given: give the image files of every phase, a 4D NIfTI or a DICOM folder")
    report(progress, "reading headers", 0.0, cancel)
    sources, kind, sidecar = _collect_sources(paths, cancel)
    if len(sources) < 2:
        where = sources[0].path if sources else paths[0]
        raise InputError("only one phase found; a DCE study needs a pre-contrast and at least one "
                         "post-contrast phase", where)
    sources, times = _times_and_order(sources, times_s, sidecar)

    reference = sources[1]
    grid = reference.geometry
    resampled = [_check_overlap(source, reference) for source in sources]
    phases = np.empty((len(sources),) + grid.shape_zyx, dtype=np.float32)

    def read_phase(index: int) -> None:  # on a reading thread: decompression and resampling release the GIL
        source = sources[index]
        array = source.load()
        phases[index] = resample(array, source.geometry, grid, interpolation="linear") if resampled[index] else array

    # 3D files are read two at a time (gzip decompression is most of a NIfTI's reading time);
    # the volumes of one 4D file share one read, and DICOM phases are read one by one.
    threads = min(READING_THREADS, os.cpu_count() or 1) if kind == "files" else 1
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read-phase") as pool:
        pending: deque = deque()
        try:
            for index, source in enumerate(sources):
                while len(pending) < threads and index + len(pending) < len(sources):
                    pending.append(pool.submit(read_phase, index + len(pending)))
                report(progress, f"reading {source.name}", index / len(sources), cancel)
                pending.popleft().result()  # the first error in phase order is the one raised
                if resampled[index]:
                    warn(f"{source.path}: {source.name} resampled (linear) onto the grid of the first post-contrast "
                         f"phase {reference.name}: {'; '.join(resampled[index])}")
        finally:
            for future in pending:
                future.cancel()
    report(progress, "phases loaded", 1.0, cancel)
    source_label = str(paths[0]) if len(paths) == 1 else str(_common_parent(paths))
    return DCEStudy(phases, grid, times, [s.name for s in sources], source_label)


def _check_overlap(source: _PhaseSource, reference: _PhaseSource) -> list[str]:
    """How ``source``'s grid differs from the reference grid (empty if it does not); refuses a
    phase that covers too little of it."""
    differences = reference.geometry.differences(source.geometry)
    if differences:
        overlap = reference.geometry.overlap_fraction(source.geometry)
        if overlap <= 0.0:
            raise GeometryError(f"{source.name} has no physical overlap with the first post-contrast phase "
                                f"{reference.name}", source.path)
        if overlap < MIN_OVERLAP:
            raise GeometryError(f"{source.name} covers only {100 * overlap:.0f}% of the first post-contrast "
                                f"phase {reference.name} (at least {100 * MIN_OVERLAP:.0f}% needed)", source.path)
    return differences


def _common_parent(paths: list[Path]) -> Path:
    parents = {p.resolve().parent for p in paths}
    if len(parents) == 1:
        return parents.pop()
    return paths[0]
