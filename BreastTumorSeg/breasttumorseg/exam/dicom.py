# Over 500 lines: reading and writing DCE DICOM share one set of conventions (tags, timing, LPS geometry).
"""DICOM DCE-MRI: split series into phases, order them in time, and write phantom series.

Reading (:func:`read_dicom_phases`) accepts the layouts scanners and PACS produce:

* one series holding every phase: images are split into temporal positions by
  TemporalPositionIdentifier, else by TriggerTime, else (when every slice position
  holds the same number of images) by AcquisitionTime / ContentTime / InstanceNumber
  at each position;
* one series per phase (several SeriesInstanceUIDs in the folder or its sub-folders);
* several folders, one phase each (:func:`scan_dicom_folder` + :func:`order_dicom_phases`).

Headers are read with pydicom (``stop_before_pixels``), pixels with SimpleITK's
ImageSeriesReader (GDCM; applies RescaleSlope/Intercept). The grid of each phase is
built from ImagePositionPatient / ImageOrientationPatient / PixelSpacing in LPS mm,
with slices sorted along the slice normal (row x column), so the grid is right-handed.

Phase times, in seconds, come from the first of these that every phase has and that
differ between phases: TriggerTime (ms), AcquisitionDateTime or AcquisitionDate +
AcquisitionTime, ContentDate + ContentTime (the earliest slice of each phase). The
phases are ordered by TemporalPositionIdentifier within one series, otherwise by that
time, otherwise by SeriesNumber (times then unknown).
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ..core.atomic import atomic_output_dir
from ..core.errors import InputError, itk_error_reason
from ..core.geometry import Geometry
from ..core.progress import CancelToken

#: Files that are never DICOM images (sidecars, notes, exported pictures, volumes).
_NOT_DICOM_SUFFIXES = {".json", ".txt", ".md", ".csv", ".tsv", ".xml", ".html", ".pdf", ".png", ".jpg",
                       ".jpeg", ".gif", ".bmp", ".nii", ".gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw",
                       ".zip", ".py", ".log", ".yaml", ".yml"}
_NOT_DICOM_NAMES = {"dicomdir", "lockfile", "version", "thumbs.db", "readme"}

_HEADER_TAGS = ["SOPClassUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Rows", "Columns",
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "NumberOfFrames",
                "TemporalPositionIdentifier", "TriggerTime", "AcquisitionDateTime", "AcquisitionDate",
                "AcquisitionTime", "ContentDate", "ContentTime", "InstanceNumber", "StudyDate"]


@dataclass
class _Slice:
    path: Path
    series_uid: str
    series_number: int
    series_description: str
    rows: int
    columns: int
    position: np.ndarray          # ImagePositionPatient, LPS mm
    orientation: np.ndarray       # ImageOrientationPatient (row dir, column dir)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    temporal_position: int | None
    trigger_s: float | None
    acquisition_s: float | None
    content_s: float | None
    instance_number: int


@dataclass
class DicomPhase:
    """One phase found in DICOM: its files in slice order, grid and timing candidates."""

    files: list[Path]
    geometry: Geometry
    name: str
    folder: Path
    series_uid: str
    series_number: int
    temporal_position: int | None = None
    trigger_s: float | None = None
    acquisition_s: float | None = None
    content_s: float | None = None
    time_s: float | None = field(default=None)

    def read_pixels(self) -> np.ndarray:
        """The phase's voxels as float32 ``[z, y, x]`` (rescale slope/intercept applied)."""
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in self.files])
        reader.SetOutputPixelType(sitk.sitkFloat32)
        try:
            image = reader.Execute()
        except RuntimeError as error:
            raise InputError(f"DICOM pixel data of {self.name} could not be read ({itk_error_reason(error)})",
                             self.folder) from None
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"{self.name} is not a greyscale image (colour DICOM)", self.folder)
        array = sitk.GetArrayFromImage(image)
        if array.shape != self.geometry.shape_zyx:
            raise InputError(f"{self.name}: pixel data {array.shape} does not match the headers "
                             f"{self.geometry.shape_zyx}", self.folder)
        return array.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- reading
def read_dicom_phases(folder, *, cancel: CancelToken | None = None
                      ) -> list[tuple[np.ndarray, Geometry, float | None, str]]:
    """Read every phase of the DCE series in ``folder`` (and its sub-folders).

    Returns ``(array [z, y, x] float32, geometry (LPS), time_s, name)`` per phase, ordered
    in time (earliest = pre-contrast). ``time_s`` is in seconds from the first phase, or
    ``None`` for all phases when the headers carry no usable times. Raises
    :class:`~breasttumorseg.core.errors.InputError` (one line naming the folder or file) for a
    missing folder, unreadable files, or series that cannot be a DCE study.
    """
    phases = order_dicom_phases(scan_dicom_folder(folder, cancel=cancel))
    result = []
    for phase in phases:
        if cancel is not None:
            cancel.check()
        result.append((phase.read_pixels(), phase.geometry, phase.time_s, phase.name))
    return result


def scan_dicom_folder(folder, *, cancel: CancelToken | None = None) -> list[DicomPhase]:
    """Read the headers in ``folder`` and split them into phases (no pixels read yet).

    The phases come back unordered and without ``time_s``; see :func:`order_dicom_phases`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError("folder not found", folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    slices = []
    for path in _candidate_files(folder):
        if cancel is not None and len(slices) % 64 == 0:
            cancel.check()
        record = _read_header(path)
        if record is not None:
            slices.append(record)
    if not slices:
        raise InputError("holds no DICOM images", folder)

    by_series: dict[str, list[_Slice]] = defaultdict(list)
    for record in slices:
        by_series[record.series_uid].append(record)
    phases = []
    for _series_uid, records in sorted(by_series.items(), key=lambda item: (item[1][0].series_number, item[0])):
        groups = _split_temporal_positions(records, folder)
        for index, (temporal_position, group) in enumerate(groups):
            description = records[0].series_description or f"series {records[0].series_number}"
            name = description if len(groups) == 1 else (
                f"{description} (temporal position {temporal_position})" if temporal_position is not None
                else f"{description} (phase {index + 1})")
            phases.append(_make_phase(group, name, folder, temporal_position))
    return phases


def order_dicom_phases(phases: list[DicomPhase]) -> list[DicomPhase]:
    """Order phases in time and set each one's ``time_s`` (s from the first phase, or None).

    Within a single series carrying TemporalPositionIdentifier, that order is kept and the
    times must then increase (checked later); otherwise phases are sorted by their times,
    or by SeriesNumber when no times are available.
    """
    if not phases:
        return []
    times = None
    for attribute in ("trigger_s", "acquisition_s", "content_s"):
        values = [getattr(p, attribute) for p in phases]
        if all(v is not None for v in values) and len(set(values)) == len(values):
            times = values
            break
    single_series = len({p.series_uid for p in phases}) == 1
    keyed = list(zip(phases, times if times is not None else [None] * len(phases)))
    if single_series and all(p.temporal_position is not None for p in phases):
        keyed.sort(key=lambda item: item[0].temporal_position)
    elif times is not None:
        keyed.sort(key=lambda item: item[1])
    else:
        keyed.sort(key=lambda item: (item[0].series_number, item[0].series_uid))
    ordered = [p for p, _ in keyed]
    if times is not None:
        first = keyed[0][1]
        for phase, value in keyed:
            phase.time_s = float(value - first)
    else:
        for phase in ordered:
            phase.time_s = None
    return ordered


def _candidate_files(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if path.suffix.lower() in _NOT_DICOM_SUFFIXES or path.name.lower() in _NOT_DICOM_NAMES:
            continue
        files.append(path)
    return files


def _read_header(path: Path) -> _Slice | None:
    """One image's header, or None for DICOM files that hold no image."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        raise InputError("is not a readable DICOM file", path) from None
    except Exception as error:  # truncated or corrupt headers raise many exception types
        raise InputError(f"is not a readable DICOM file ({type(error).__name__})", path) from None
    if "Rows" not in ds or "Columns" not in ds:
        return None  # DICOM but not an image (report, presentation state, ...)
    try:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError("is a multi-frame (enhanced) DICOM image, which is not supported; "
                             "export the series as classic single-frame images", path)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in ds or ds.get(keyword) in (None, ""):
                raise InputError(f"lacks {keyword}, so its position in space is unknown", path)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=float)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
        if orientation.shape != (6,) or position.shape != (3,) or len(spacing) != 2 or min(spacing) <= 0:
            raise InputError("has malformed ImagePositionPatient, ImageOrientationPatient or PixelSpacing", path)
        temporal = ds.get("TemporalPositionIdentifier")
        trigger = ds.get("TriggerTime")
        return _Slice(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID", "")) or "unknown series",
            series_number=_int_or(ds.get("SeriesNumber"), 0),
            series_description=str(ds.get("SeriesDescription", "") or "").strip(),
            rows=int(ds.Rows), columns=int(ds.Columns),
            position=position, orientation=orientation, pixel_spacing=spacing,
            temporal_position=None if temporal in (None, "") else int(temporal),
            trigger_s=None if trigger in (None, "") else float(trigger) / 1000.0,
            acquisition_s=_seconds(ds.get("AcquisitionDateTime"), ds.get("AcquisitionDate"),
                                   ds.get("AcquisitionTime"), ds.get("StudyDate")),
            content_s=_seconds(None, ds.get("ContentDate"), ds.get("ContentTime"), ds.get("StudyDate")),
            instance_number=_int_or(ds.get("InstanceNumber"), 0),
        )
    except InputError:
        raise
    except (ValueError, TypeError) as error:
        raise InputError(f"has malformed header values ({error})", path) from None


def _int_or(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _seconds(datetime_value, date_value, time_value, study_date) -> float | None:
    """Seconds on a common clock (days since 0001-01-01 x 86400 + time of day), or None."""
    if datetime_value not in (None, ""):
        text = str(datetime_value).strip()
        date = _parse_date(text[:8])
        time = _parse_time(text[8:].split("+")[0].split("-")[0]) if len(text) > 8 else 0.0
        if date is not None and time is not None:
            return date + time
    time = _parse_time(time_value)
    if time is None:
        return None
    date = _parse_date(date_value) if date_value not in (None, "") else None
    if date is None and study_date not in (None, ""):
        date = _parse_date(study_date)
    return (date or 0.0) + time


def _parse_date(value) -> float | None:
    text = str(value).strip().replace(".", "")
    try:
        day = _dt.date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
    except (ValueError, IndexError):
        return None
    return float(day.toordinal()) * 86400.0


def _parse_time(value) -> float | None:
    """DICOM TM (``HHMMSS.FFFFFF``, also the old ``HH:MM:SS``) -> seconds of the day."""
    if value in (None, ""):
        return None
    text = str(value).strip().replace(":", "")
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    try:
        hours = int(whole[0:2])
        minutes = int(whole[2:4]) if len(whole) >= 4 else 0
        seconds = int(whole[4:6]) if len(whole) >= 6 else 0
        frac = float("0." + fraction) if fraction else 0.0
    except ValueError:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds + frac


def _slice_normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _split_temporal_positions(records: list[_Slice], folder: Path) -> list[tuple[int | None, list[_Slice]]]:
    """Split one series into groups of slices, one per temporal position (unordered in time)."""
    temporal = [r.temporal_position for r in records]
    if all(t is not None for t in temporal) and len(set(temporal)) > 1:
        groups = defaultdict(list)
        for record in records:
            groups[record.temporal_position].append(record)
        return [(key, groups[key]) for key in sorted(groups)]

    normal = _slice_normal(records[0].orientation)
    location = [round(float(r.position @ normal), 2) for r in records]

    triggers = [r.trigger_s for r in records]
    if all(t is not None for t in triggers) and len(set(triggers)) > 1:
        groups = defaultdict(list)
        for record, where in zip(records, location):
            groups[record.trigger_s].append((where, record))
        sizes = {len(g) for g in groups.values()}
        distinct = all(len({w for w, _ in g}) == len(g) for g in groups.values())
        if len(sizes) == 1 and distinct:
            return [(None, [r for _, r in groups[key]]) for key in sorted(groups)]

    per_location = defaultdict(list)
    for record, where in zip(records, location):
        per_location[where].append(record)
    counts = Counter(len(group) for group in per_location.values())
    if len(counts) > 1:
        low, high = min(counts), max(counts)
        raise InputError(f"mixed DICOM series {_series_label(records[0])}: slice positions hold different "
                         f"numbers of images ({low} to {high}); missing or extra images?", folder)
    n_positions_per_slot = next(iter(counts))
    if n_positions_per_slot == 1:
        return [(None, list(records))]
    ranked = defaultdict(list)
    for group in per_location.values():
        group.sort(key=lambda r: (_none_last(r.acquisition_s), _none_last(r.content_s), r.instance_number))
        for rank, record in enumerate(group):
            ranked[rank].append(record)
    return [(None, ranked[rank]) for rank in sorted(ranked)]


def _none_last(value):
    return (value is None, value if value is not None else 0.0)


def _series_label(record: _Slice) -> str:
    return f'"{record.series_description}"' if record.series_description else f"number {record.series_number}"


def _make_phase(group: list[_Slice], name: str, folder: Path, temporal_position: int | None) -> DicomPhase:
    """Check one temporal position's slices form a 3D volume; build its grid (LPS)."""
    sizes = sorted({(r.columns, r.rows) for r in group})
    if len(sizes) > 1:
        shown = " and ".join(f"{c}x{r}" for c, r in sizes[:2])
        raise InputError(f"mixed DICOM: images of different sizes ({shown}) in one temporal position "
                         f"of series {_series_label(group[0])}", folder)
    orientations = np.array([r.orientation for r in group])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise InputError(f"mixed DICOM: images of different orientations in one temporal position "
                         f"of series {_series_label(group[0])}", folder)
    spacings = np.array([r.pixel_spacing for r in group])
    if np.abs(spacings - spacings[0]).max() > 1e-4:
        raise InputError(f"mixed DICOM: images with different pixel spacing in one temporal position "
                         f"of series {_series_label(group[0])}", folder)
    if len(group) < 2:
        raise InputError(f"{name} has a single slice; each phase must be a 3D volume", folder)

    row_dir = group[0].orientation[:3] / np.linalg.norm(group[0].orientation[:3])
    col_dir = group[0].orientation[3:] / np.linalg.norm(group[0].orientation[3:])
    normal = _slice_normal(group[0].orientation)
    ordered = sorted(group, key=lambda r: float(r.position @ normal))
    along = np.array([float(r.position @ normal) for r in ordered])
    gaps = np.diff(along)
    if gaps.min() < 1e-3:
        duplicate = ordered[int(np.argmin(gaps)) + 1].path
        raise InputError(f"mixed DICOM: several images at the same slice position in {name}", duplicate)
    step = float(np.median(gaps))
    if np.abs(gaps - step).max() > 0.01 * step + 1e-3:
        raise InputError(f"slices of {name} are unevenly spaced ({gaps.min():.3g} to {gaps.max():.3g} mm); "
                         f"missing slices?", folder)
    direction = np.column_stack([row_dir, col_dir, normal])
    geometry = Geometry(
        size=(group[0].columns, group[0].rows, len(ordered)),
        spacing=(group[0].pixel_spacing[1], group[0].pixel_spacing[0], step),
        origin=tuple(ordered[0].position),
        direction=tuple(direction.ravel()),
    )

    def earliest(attribute):
        values = [getattr(r, attribute) for r in group]
        return None if any(v is None for v in values) else float(min(values))

    return DicomPhase(files=[r.path for r in ordered], geometry=geometry, name=name, folder=folder,
                      series_uid=group[0].series_uid, series_number=group[0].series_number,
                      temporal_position=temporal_position, trigger_s=earliest("trigger_s"),
                      acquisition_s=earliest("acquisition_s"), content_s=earliest("content_s"))


# ----------------------------------------------------------------------------- writing
_BASE_TIME_S = 10 * 3600.0  # the phantom's first phase is acquired at 10:00:00


def write_study_dicom(study, folder, *, one_series_per_phase: bool = False) -> Path:
    """Write a :class:`~breasttumorseg.exam.dce_exam.DCEStudy` as MR Image Storage DICOM into ``folder``.

    ``folder`` must not exist or be empty; it is built aside and moved into place when
    complete. By default one series holds every phase (TemporalPositionIdentifier 1..N,
    NumberOfTemporalPositions, TriggerTime in ms from the first phase, AcquisitionTime);
    with ``one_series_per_phase`` each phase is its own series (own SeriesInstanceUID,
    SeriesNumber, AcquisitionTime/SeriesTime carry the time) in sub-folder ``phase_XX``.
    Every slice carries ImagePositionPatient / ImageOrientationPatient (LPS) /
    PixelSpacing / SliceThickness from ``study.geometry``; pixels are uint16 with a
    RescaleSlope/Intercept common to all phases (exact for integer data in 0..65535,
    otherwise quantised to 1/65535 of the study's intensity range). Without
    ``study.times_s`` the phases are written 60 s apart.
    Returns ``folder``.
    """
    folder = Path(folder)
    phases = np.asarray(study.phases, dtype=np.float32)
    geometry: Geometry = study.geometry
    times = (np.asarray(study.times_s, dtype=float) - float(study.times_s[0]) if study.times_s is not None
             else 60.0 * np.arange(len(phases)))
    slope, intercept = _rescale_for(phases)
    study_uid, frame_uid = generate_uid(), generate_uid()
    single_series_uid = generate_uid()
    direction = geometry.direction_matrix
    nz = geometry.size[2]
    today = _dt.date.today().strftime("%Y%m%d")
    with atomic_output_dir(folder) as staging:
        for p, phase in enumerate(phases):
            stored = np.clip(np.round((phase.astype(np.float64) - intercept) / slope), 0, 65535).astype(np.uint16)
            series_uid = generate_uid() if one_series_per_phase else single_series_uid
            target = staging / f"phase_{p:02d}" if one_series_per_phase else staging
            target.mkdir(parents=True, exist_ok=True)
            acquisition_time = _format_time(_BASE_TIME_S + times[p])
            for k in range(nz):
                sop_uid = generate_uid()
                ds = _mr_slice_dataset(sop_uid)
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.FrameOfReferenceUID = frame_uid
                ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = today
                ds.StudyTime = _format_time(_BASE_TIME_S)
                if one_series_per_phase:
                    ds.SeriesNumber = 100 + p
                    ds.SeriesDescription = f"DCE phase {p} ({'pre-contrast' if p == 0 else 'post-contrast'})"
                    ds.SeriesTime = acquisition_time
                    ds.TemporalPositionIdentifier = 1
                    ds.NumberOfTemporalPositions = 1
                    ds.InstanceNumber = k + 1
                else:
                    ds.SeriesNumber = 100
                    ds.SeriesDescription = "DCE dynamic series (phantom)"
                    ds.SeriesTime = _format_time(_BASE_TIME_S)
                    ds.TemporalPositionIdentifier = p + 1
                    ds.NumberOfTemporalPositions = len(phases)
                    ds.TriggerTime = _ds(times[p] * 1000.0)
                    ds.InstanceNumber = p * nz + k + 1
                ds.AcquisitionTime = acquisition_time
                ds.ContentTime = acquisition_time
                position = geometry.index_to_physical(np.array([0.0, 0.0, float(k)]))
                ds.ImagePositionPatient = [_ds(v) for v in position]
                ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
                ds.PixelSpacing = [_ds(geometry.spacing[1]), _ds(geometry.spacing[0])]
                ds.SliceThickness = _ds(geometry.spacing[2])
                ds.SpacingBetweenSlices = _ds(geometry.spacing[2])
                ds.SliceLocation = _ds(float(position @ direction[:, 2]))
                ds.Rows, ds.Columns = int(geometry.size[1]), int(geometry.size[0])
                ds.RescaleSlope = _ds(slope)
                ds.RescaleIntercept = _ds(intercept)
                ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
                ds.save_as(target / f"IM_{p:02d}_{k:04d}.dcm", enforce_file_format=True)
    return folder


def _mr_slice_dataset(sop_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "MR"
    ds.Manufacturer = "BreastTumorSeg synthetic phantom"
    ds.PatientName = "PHANTOM^DCE"
    ds.PatientID = "PHANTOM"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.BodyPartExamined = "BREAST"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "3D"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleType = "US"
    return ds


def _rescale_for(phases: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) mapping uint16 stored values onto the study's intensities."""
    low, high = float(phases.min()), float(phases.max())
    if low >= 0 and high <= 65535 and np.array_equal(phases, np.round(phases)):
        return 1.0, 0.0
    intercept = float(_ds(low))
    if intercept > low:  # the decimal string rounded up: step down so no value goes negative
        intercept = float(_ds(low - abs(low) * 1e-9 - 1e-9))
    slope = float(_ds(max(high - intercept, 1e-6) / 65534.0))
    return slope, intercept


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for ``value``."""
    value = float(value)
    if value == 0:
        return "0"
    for digits in range(14, 1, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.1e}"


def _format_time(seconds_of_day: float) -> str:
    """Seconds of the day -> DICOM TM ``HHMMSS.FFFFFF``."""
    seconds_of_day = seconds_of_day % 86400.0
    hours = int(seconds_of_day // 3600)
    minutes = int((seconds_of_day % 3600) // 60)
    seconds = seconds_of_day - 3600 * hours - 60 * minutes
    whole = int(seconds)
    micro = int(round((seconds - whole) * 1e6))
    if micro == 1000000:
        whole, micro = whole + 1, 0
    return f"{hours:02d}{minutes:02d}{whole:02d}.{micro:06d}"
