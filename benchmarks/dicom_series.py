"""A CT NIfTI written as a DICOM series (one CT Image Storage file per slice, with pydicom).

The benchmark of ``vfnb predict --ct DICOMDIR`` reads this series: the same voxels
and geometry as the NIfTI, so its label map fits it unchanged. DICOM patient
coordinates are LPS, NIfTI's RAS: x and y change sign. Array axis 0 runs along each
image row (``Columns``), axis 1 down the columns (``Rows``), axis 2 from slice to
slice; ``ImagePositionPatient`` is each slice's first voxel. Pixel values are the
int16 HU themselves (rescale slope 1, intercept 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (DICOM's DS), as exact as that allows."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
        if len(text) <= 16:
            return text
    return f"{value:.6g}"


def write_dicom_series(ct_path: Path, folder: Path) -> int:
    """Write ``ct_path`` as ``folder/slice_0001.dcm`` ...; returns the number of files. Skips a complete folder."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from vfnb.io import load_nifti

    image, affine, _ = load_nifti(ct_path)
    folder = Path(folder)
    if folder.is_dir() and len(list(folder.glob("slice_*.dcm"))) == image.shape[2]:
        return image.shape[2]
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_FROM_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir, col_dir = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = np.asarray(image, dtype=np.int16)
    for k in range(pixels.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Benchmark^Spine", "VFNB-BENCH"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        position = lps @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # between rows (axis 1), between columns (axis 0)
        ds.SliceThickness = _ds(spacing[2])
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.set_pixel_data(np.ascontiguousarray(pixels[:, :, k].T), "MONOCHROME2", 16)
        pydicom.dcmwrite(folder / f"slice_{k + 1:04d}.dcm", ds, enforce_file_format=True)
    return pixels.shape[2]
