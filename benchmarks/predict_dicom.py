"""``vfnb predict --ct DICOMDIR``: the ``predict`` benchmark's scan read from a DICOM series.

The same 512 x 512 x 400 CT (:mod:`benchmarks.predict`) written as 400 CT Image
Storage files (:func:`benchmarks.dicom_series.write_dicom_series`, pydicom), graded
with the same label map NIfTI, by the same two routes: ``network`` (target <= 120 s)
and ``heights`` (no checkpoint; target <= 60 s and <= 4 GB, DICOM reading included).
Until vfnb reads DICOM series (``vfnb.data.scan_input``) the section is reported as
not measured, saying so; the series is still written, so the harness is exercised.
"""

from __future__ import annotations

import importlib.util

from .predict import predict_routes, scan_and_checkpoint

DICOM_READER = "vfnb.data.scan_input"


def dicom_supported() -> bool:
    """Whether this vfnb reads a DICOM series given as ``--ct`` (its reader module exists)."""
    try:
        return importlib.util.find_spec(DICOM_READER) is not None
    except ModuleNotFoundError:
        return False


def run(cfg) -> dict:
    from .dicom_series import write_dicom_series

    setup = scan_and_checkpoint(cfg)
    folder = cfg.workdir / ("dicom-small" if cfg.quick else "dicom-spine17")
    slices = write_dicom_series(setup["ct"], folder)
    if not dicom_supported():
        raise RuntimeError(f"skipped: this vfnb has no {DICOM_READER} (vfnb predict --ct DICOMDIR is not supported "
                           f"yet); the {slices}-file series was written to {folder}")
    return predict_routes("predict_dicom", folder, setup, cfg, f"--ct DICOMDIR ({slices} slice files)")
