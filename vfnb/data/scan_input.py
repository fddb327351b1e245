"""A CT as a user holds it: a NIfTI file or a folder holding a DICOM series, read into HU on its own grid.

Every command that reads a user's CT (``predict``, ``preprocess`` and ``check`` on
the original layout, the Python API) goes through :func:`read_ct`, so a DICOM
folder is accepted wherever a NIfTI file is. A single DICOM file is refused with
the reason (a CT is a series, give its folder) rather than read as a damaged
NIfTI. See :mod:`vfnb.data.dicom` for the series' checks and its array order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io import NIFTI_ENDINGS
from .dicom import DicomSeries, find_series, is_dicom_file, is_dicom_folder, read_series


@dataclass
class CTScan:
    """One CT in HU: ``image`` [X, Y, Z], ``affine`` voxel -> RAS world mm, where it came from."""

    image: np.ndarray
    affine: np.ndarray
    source: str
    dicom: DicomSeries | None = None


def is_ct_input(path: str | os.PathLike) -> bool:
    """Whether ``path`` names one CT (a file, or a folder holding a DICOM series), not a folder of CT files.

    A folder with NIfTI files directly in it is a folder of CTs, whatever its subfolders hold.
    """
    path = Path(path)
    if not path.is_dir():
        return True
    if any(p.name.endswith(NIFTI_ENDINGS) and not p.name.startswith(".") for p in path.iterdir()):
        return False
    return is_dicom_folder(path)


def read_ct(path: str | os.PathLike, series: str | None = None) -> CTScan:
    """The CT at ``path``: a NIfTI file, or a DICOM folder (its one CT series, or the one UID ``series`` names).

    Raises :class:`DatasetError` naming the file or series and what was expected.
    """
    from ..io import load_nifti

    path = Path(path)
    if path.is_dir():
        if not is_dicom_folder(path):
            raise DatasetError(f"{path}: a folder without DICOM files; expected a NIfTI CT file or the folder "
                               "of a DICOM series")
        found = find_series(path, series)
        image, affine = read_series(found)
        return CTScan(image=image, affine=affine, source=f"{path} ({found.describe()})", dicom=found)
    if series is not None:
        raise DatasetError(f"{path}: --series picks a series in a DICOM folder; this is a file")
    if path.is_file() and is_dicom_file(path):
        raise DatasetError(f"{path}: a single DICOM file; a CT is a series of images: give the folder that "
                           "holds all of the series' files")
    image, affine, _ = load_nifti(path)
    return CTScan(image=image, affine=affine, source=str(path))
