"""A CT stored as a DICOM series: found in a folder, checked, and read onto the grid dcm2niix writes.

Scanners and PACS export a CT as a folder of single-frame DICOM files, one per
slice, often with other series (a localizer, a bone-kernel reconstruction, a dose
report) beside it. :func:`find_series` groups the folder's files by
``SeriesInstanceUID`` from their headers (pydicom, pixels not read), picks the one
CT series (or the one ``series`` names) and checks it before any pixel is
decoded, so that a bad series is refused with the reason a reader can act on:

- several series and no choice: each listed (UID, number, description, modality,
  files), to pick with ``--series UID``;
- a modality other than CT, an enhanced multi-frame file, a single image;
- a localizer (scout) or an image of another orientation mixed in;
- a header without the geometry (``ImagePositionPatient``,
  ``ImageOrientationPatient``, ``PixelSpacing``) or with differing image sizes;
- positions along the slice normal that repeat (duplicates or several
  acquisitions), that leave a gap (missing slices) or step unevenly, and slices
  shifted in-plane from one another (gantry tilt): none of these is a regular
  voxel grid, and vfnb does not resample a CT.

:func:`read_series` then decodes the pixels with pydicom (the compressed transfer
syntaxes PACS use: JPEG lossless, JPEG 2000 and RLE through the pylibjpeg plugins)
and assembles the volume with highdicom, which sorts the slices and applies the
modality transform (rescale slope and intercept to HU). The array is then laid
out as dcm2niix lays out its NIfTI, the converter TotalSegmentator and most
pipelines use: axis 0 along each image row (increasing column), axis 1 along
the columns with the row order reversed, axis 2 from slice to slice in the
direction of the slice normal (row direction x column direction). A label map
made from dcm2niix's conversion of the same series therefore lies on exactly
this grid and array order, with no resampling. The affine is nibabel's (RAS+
world millimetres; DICOM's patient axes are LPS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

#: SOP class of a DICOMDIR index file: it lists files, it is not an image.
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: Most files a CT folder is searched through (a 0.6 mm whole-body CT has about 3000).
MAX_FILES = 20_000
#: Positions closer than this (mm) along the normal are one position repeated.
SAME_POSITION_MM = 0.01
#: Steps between slices may differ from their median by this share (rounding of stored positions).
STEP_TOLERANCE = 0.02
#: Slices may be shifted in-plane from the first by this much (mm) before it counts as gantry tilt.
TILT_TOLERANCE_MM = 0.05
#: ``ImageType`` values that mark a projection image, not a slice of the volume.
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM"}
#: Byte offset of the ``DICM`` marker after the 128-byte preamble of a DICOM Part 10 file.
PREAMBLE = 128


@dataclass(frozen=True)
class DicomSeries:
    """One series of a folder: what identifies it, and its image files in order along the slice normal."""

    folder: Path
    series_uid: str
    study_uid: str
    number: str
    description: str
    modality: str
    files: tuple[Path, ...]
    frame_of_reference_uid: str = ""

    def describe(self) -> str:
        """``series 3 'Abdomen 1.0 B30f' (CT, 412 files, UID 1.2...)`` for messages."""
        return (f"series {self.number or '?'} {self.description!r} ({self.modality or 'no modality'}, "
                f"{len(self.files)} files, UID {self.series_uid})")


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the preamble): a cheap test, no parsing."""
    try:
        with open(path, "rb") as handle:
            handle.seek(PREAMBLE)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _candidate_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file under ``folder`` (in name order), at most :data:`MAX_FILES`."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            found.append(Path(root) / name)
            if len(found) > MAX_FILES:
                raise DatasetError(f"{folder}: more than {MAX_FILES} files under this folder; expected the "
                                   "folder of one CT series (or of one study's series)")
    return found


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM Part 10 files under ``folder`` (any depth), in path order."""
    return [p for p in _candidate_files(Path(folder)) if p.is_file() and is_dicom_file(p)]


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file (at any depth)."""
    path = Path(path)
    if not path.is_dir():
        return False
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(is_dicom_file(Path(root) / f) for f in sorted(files) if not f.startswith(".")):
            return True
    return False


def _headers(folder: Path) -> list[tuple[Path, object]]:
    """``(file, header)`` of every image file under ``folder``; DICOMDIR and non-image objects left out."""
    import pydicom

    out = []
    for path in dicom_files(folder):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for a damaged file
            raise DatasetError(f"{path}: cannot read this DICOM file's header ({type(exc).__name__}: {exc}); "
                               "the file is damaged (expected a complete DICOM file)") from None
        if str(getattr(header, "SOPClassUID", "")) == DICOMDIR_CLASS or "SeriesInstanceUID" not in header:
            continue
        out.append((path, header))
    return out


def _series(folder: Path, uid: str, members: list) -> DicomSeries:
    first = members[0][1]
    return DicomSeries(folder=folder, series_uid=uid, study_uid=str(getattr(first, "StudyInstanceUID", "")),
                       number=str(getattr(first, "SeriesNumber", "") or ""),
                       description=str(getattr(first, "SeriesDescription", "") or ""),
                       modality=str(getattr(first, "Modality", "") or ""),
                       files=tuple(path for path, _ in members),
                       frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "") or ""))


def _listing(groups: dict) -> str:
    return "; ".join(_series(Path("."), uid, members).describe() for uid, members in groups.items())


def find_series(folder: str | os.PathLike, series: str | None = None) -> DicomSeries:
    """The CT series of ``folder`` (or the one whose UID is ``series``), checked; its files sorted by position.

    Raises :class:`DatasetError` naming the folder (and series) for each refusal
    listed in the module's docstring.
    """
    folder = Path(folder)
    headers = _headers(folder)
    if not headers:
        raise DatasetError(f"{folder}: no DICOM image files in this folder (expected the files of a CT series, "
                           "or a NIfTI file)")
    groups: dict[str, list] = {}
    for path, header in headers:
        groups.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if series is not None:
        if series not in groups:
            raise DatasetError(f"{folder}: no series with UID {series}; the folder holds: {_listing(groups)}")
        groups = {series: groups[series]}
    elif len(groups) > 1:
        cts = {uid: members for uid, members in groups.items()
               if str(getattr(members[0][1], "Modality", "")) == "CT" and not _localizers(members)}
        if len(cts) != 1:
            raise DatasetError(f"{folder}: {len(groups)} DICOM series in this folder: {_listing(groups)}; "
                               "expected one CT series (choose one with --series UID)")
        groups = cts
    uid, members = next(iter(groups.items()))
    _check_series(folder, _series(folder, uid, members), [h for _, h in members])
    return _series(folder, uid, _sorted_members(members))


def _localizers(members: list) -> list[Path]:
    return [path for path, h in members
            if LOCALIZER_TYPES & {str(v).upper() for v in (getattr(h, "ImageType", None) or [])}]


def _orientation(header) -> np.ndarray:
    return np.asarray([float(v) for v in header.ImageOrientationPatient], dtype=np.float64)


def _normal(orientation: np.ndarray) -> np.ndarray:
    """The slice normal in LPS: row direction x column direction."""
    return np.cross(orientation[:3], orientation[3:])


def _sorted_members(members: list) -> list:
    normal = _normal(_orientation(members[0][1]))
    return sorted(members, key=lambda m: float(np.dot(normal, [float(v) for v in m[1].ImagePositionPatient])))


def _check_series(folder: Path, series: DicomSeries, headers: list) -> None:
    where = f"{folder}: {series.describe()}"
    if series.modality != "CT":
        raise DatasetError(f"{where}: Modality is {series.modality or 'missing'!r}; expected a CT (Modality 'CT')")
    frames = [int(getattr(h, "NumberOfFrames", 1) or 1) for h in headers]
    if max(frames) > 1:
        raise DatasetError(f"{where}: an enhanced multi-frame file ({max(frames)} frames in one file); expected "
                           "a series of single-frame CT images (export the series as one file per slice)")
    paths = list(series.files)
    localizers = _localizers(list(zip(paths, headers)))
    if localizers:
        raise DatasetError(f"{where}: a localizer (scout) image is mixed in ({localizers[0].name}"
                           f"{f' and {len(localizers) - 1} more' if len(localizers) > 1 else ''}); expected only "
                           "the axial (or other cross-sectional) slices of one volume: remove it")
    for field in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        lacking = [p for p, h in zip(paths, headers) if field not in h]
        if lacking:
            raise DatasetError(f"{where}: {lacking[0]} has no {field}; expected the geometry of every slice")
    if len(headers) < 2:
        raise DatasetError(f"{where}: a single image ({paths[0].name}); expected a CT volume of several slices "
                           "(give the folder holding the whole series)")
    _check_same_plane(where, paths, headers)
    _check_positions(where, paths, headers)


def _check_same_plane(where: str, paths: list[Path], headers: list) -> None:
    reference = _orientation(headers[0])
    size = (int(headers[0].Rows), int(headers[0].Columns))
    spacing = [float(v) for v in headers[0].PixelSpacing]
    for path, header in zip(paths, headers):
        if not np.allclose(_orientation(header), reference, atol=1e-4):
            raise DatasetError(f"{where}: {path.name} is oriented {list(header.ImageOrientationPatient)}, the "
                               f"series {list(headers[0].ImageOrientationPatient)}; expected every slice in one "
                               "orientation (a localizer or another reconstruction mixed in? remove it)")
        if (int(header.Rows), int(header.Columns)) != size:
            raise DatasetError(f"{where}: {path.name} is {header.Rows} x {header.Columns} pixels, the series "
                               f"{size[0]} x {size[1]}; expected every slice the same size")
        if not np.allclose([float(v) for v in header.PixelSpacing], spacing, atol=1e-4):
            raise DatasetError(f"{where}: {path.name} has PixelSpacing {list(header.PixelSpacing)}, the series "
                               f"{spacing}; expected one pixel size")


def _check_positions(where: str, paths: list[Path], headers: list) -> None:
    normal = _normal(_orientation(headers[0]))
    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    ordered = [paths[i] for i in order]
    steps = np.diff(along)
    same = np.flatnonzero(steps < SAME_POSITION_MM)
    if same.size:
        i = int(same[0])
        raise DatasetError(f"{where}: {ordered[i].name} and {ordered[i + 1].name} lie at the same position "
                           f"({along[i]:.3f} mm along the slice normal); expected one image per position "
                           "(duplicates, or several acquisitions in one series: keep one)")
    step = float(np.median(steps))
    gaps = np.flatnonzero(steps > step * 1.5)
    if gaps.size:
        i = int(gaps[0])
        raise DatasetError(f"{where}: missing slices: {steps[i]:.3f} mm between {ordered[i].name} and "
                           f"{ordered[i + 1].name} where the series steps {step:.3f} mm (about "
                           f"{round(steps[i] / step) - 1} slice(s) missing); expected the complete series")
    uneven = np.abs(steps - step) > max(STEP_TOLERANCE * step, SAME_POSITION_MM)
    if uneven.any():
        raise DatasetError(f"{where}: uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm); expected "
                           "equally spaced slices (vfnb does not resample a CT: resample it into a regular "
                           "grid first)")
    in_plane = (positions - positions[0]) - np.outer(along - along[0], normal)
    shift = float(np.linalg.norm(in_plane, axis=1).max())
    if shift > TILT_TOLERANCE_MM:
        raise DatasetError(f"{where}: slices are shifted in-plane by up to {shift:.2f} mm from the first (gantry "
                           "tilt); expected slices stacked along their normal (correct the tilt first, e.g. "
                           "with dcm2niix)")


def read_series(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """``(HU array [X, Y, Z], RAS affine)`` of a checked series, laid out as dcm2niix writes it.

    Whole numbers of HU in the int16 range come back as int16 (as a CT NIfTI
    stores them), anything else as float32.
    """
    import highdicom as hd
    import pydicom

    datasets = []
    for path in series.files:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:
            raise DatasetError(f"{path}: cannot read this DICOM file ({type(exc).__name__}: {exc}); the file is "
                               f"damaged (in {series.describe()})") from None
    try:
        volume = hd.get_volume_from_series(datasets, dtype=np.float32, apply_voi_transform=False)
    except Exception as exc:  # a codec missing or failing, or geometry highdicom cannot stack
        raise _decode_error(series, datasets, exc) from None
    del datasets
    orientation = _orientation(pydicom.dcmread(series.files[0], stop_before_pixels=True))
    return _as_dcm2niix(np.asarray(volume.array), np.asarray(volume.affine, dtype=np.float64), orientation)


def _decode_error(series: DicomSeries, datasets: list, exc: Exception) -> DatasetError:
    """The refusal of a series whose pixels do not decode, naming the first file that fails on its own."""
    where, reason = f"{series.folder}: {series.describe()}", f"{type(exc).__name__}: {exc}"
    for path, ds in zip(series.files, datasets):
        try:
            ds.pixel_array
        except Exception as own:
            where, reason = f"{path} (in {series.describe()})", f"{type(own).__name__}: {own}"
            break
    syntax = datasets[0].file_meta.get("TransferSyntaxUID", "unknown")
    return DatasetError(f"{where}: cannot decode the image ({reason}; transfer syntax "
                        f"{getattr(syntax, 'name', str(syntax))}); expected a complete CT image vfnb can decode "
                        "(uncompressed, JPEG lossless, JPEG 2000 or RLE)")


def _flip(array: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``array`` reversed along ``axis`` and the affine that keeps every voxel at its world point."""
    flip = np.eye(4)
    flip[axis, axis], flip[axis, 3] = -1.0, array.shape[axis] - 1
    return np.flip(array, axis=axis), affine @ flip


def _as_dcm2niix(array: np.ndarray, lps_affine: np.ndarray, orientation: np.ndarray):
    """highdicom's ``(slice, row, column)`` volume in dcm2niix's array order, with a RAS affine."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_affine
    array, affine = array.transpose(2, 1, 0), affine[:, [2, 1, 0, 3]]  # (column, row, slice)
    array, affine = _flip(array, affine, 1)  # rows bottom to top, as dcm2niix stores them
    slice_lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 2]
    if float(np.dot(slice_lps, _normal(orientation))) < 0:
        array, affine = _flip(array, affine, 2)
    array = np.ascontiguousarray(array)
    if np.array_equal(array, np.round(array)) and array.min() >= -32768 and array.max() <= 32767:
        array = array.astype(np.int16)
    return array, affine
