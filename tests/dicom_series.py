"""Test fixtures: a CT array written as a DICOM series (one CT Image Storage file per slice, pydicom).

The series holds the voxels of ``image`` at the world points ``affine`` gives them
(RAS; DICOM's patient axes are LPS): array axis 0 runs along each image row, axis
1 down the columns, axis 2 from slice to slice. Options reproduce what scanners and
PACS exports do: stored values with a rescale slope and intercept, compressed
transfer syntaxes, file names in shuffled order, and the faults vfnb must refuse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.dicom_series import LPS_FROM_RAS, _ds  # DICOM decimal strings; LPS from RAS


def _jpeg_lossless(pixels: np.ndarray) -> bytes:
    """One slice encoded as JPEG lossless (process 14) by SimpleITK's GDCM: pydicom has no such encoder."""
    import tempfile

    import pydicom
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(str(Path(tmp) / "slice.dcm"))
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")
        writer.Execute(sitk.GetImageFromArray(pixels[None]))
        return pydicom.dcmread(Path(tmp) / "slice.dcm").PixelData


def write_series(folder, image, affine, *, syntax: str = "explicit", slope: float = 1.0, intercept: float = 0.0,
                 modality: str = "CT", series_uid: str | None = None, description: str = "Spine 1.0",
                 number: int = 2, shuffle: bool = True, image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                 positions=None) -> list[Path]:
    """Write ``image`` (HU, [X, Y, Z]) into ``folder``; returns the files in slice order.

    ``syntax``: ``explicit`` (uncompressed), ``rle``, ``jpeg2000`` (lossless) or
    ``jpeg`` (lossless, process 14). Stored values are ``(HU - intercept) / slope``
    (int16). ``shuffle``: file names in an order unrelated to position.
    ``positions``: the LPS position of each slice instead of the affine's.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1,
                             RLELossless, generate_uid)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_FROM_RAS @ np.asarray(affine, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    study, series, frame = generate_uid(), series_uid or generate_uid(), generate_uid()
    stored = np.round((np.asarray(image, float) - intercept) / slope).astype(np.int16)
    n = stored.shape[2]
    names = np.random.default_rng(n).permutation(n) if shuffle else np.arange(n)
    files = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Test^Spine", "VFNB-TEST"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20261203", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.Manufacturer = "vfnb test fixtures"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, k + 1, description
        ds.ImageType = list(image_type)
        position = lps @ np.array([0.0, 0.0, float(k), 1.0]) if positions is None else positions[k]
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (between rows), column spacing
        ds.SliceThickness = _ds(spacing[2])
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "HU"
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # [row, column]
        ds.PixelData = pixels.tobytes()
        if syntax == "rle":
            ds.compress(RLELossless)
        elif syntax == "jpeg2000":
            ds.compress(JPEG2000Lossless)
        elif syntax == "jpeg":
            ds.PixelData = _jpeg_lossless(pixels)
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        elif syntax != "explicit":
            raise ValueError(syntax)
        path = folder / f"IM{names[k]:05d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files
