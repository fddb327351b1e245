"""``vfnb predict --ct DICOMDIR``: the ``predict`` benchmark's scan read from a DICOM series.

The same 512 x 512 x 400 CT (:mod:`benchmarks.predict`) written as 400 CT Image
Storage files (:func:`benchmarks.dicom_series.write_dicom_series`, pydicom), graded
with the same label map NIfTI, by the same two routes: ``network`` (target <= 120 s)
and ``heights`` (no checkpoint; target <= 60 s and <= 4 GB, DICOM reading included).
"""

from __future__ import annotations

from .predict import predict_routes, scan_and_checkpoint


def run(cfg) -> dict:
    from .dicom_series import write_dicom_series

    setup = scan_and_checkpoint(cfg)
    folder = cfg.workdir / ("dicom-small" if cfg.quick else "dicom-spine17")
    slices = write_dicom_series(setup["ct"], folder)
    return predict_routes("predict_dicom", folder, setup, cfg, f"--ct DICOMDIR ({slices} slice files)")
