"""Grading scans: ``vfnb predict`` and the Python API behind it.

- :mod:`~vfnb.inference.grading`: predictions for vertebra records (``predict_patches``) or
  for a whole scan (``grade_scan``, ``predict_scan``);
- :mod:`~vfnb.inference.command`: ``vfnb predict`` over one scan or a folder, its table;
- :mod:`~vfnb.inference.outputs`: what it writes beside the table (saliency NIfTIs, the report);
- :mod:`~vfnb.inference.report`: the per-scan HTML page;
- :mod:`~vfnb.inference.saliency`: where the network looks (Grad-CAM, occlusion, regions).

This file only re-exports, lazily (:mod:`vfnb.lazy`).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "predict_patches": "grading", "grade_scan": "grading", "predict_scan": "grading", "ScanGrading": "grading",
    "predict_command": "command", "scan_pairs": "command",
    "write_scan_report": "report",
    "grad_cam": "saliency", "occlusion": "saliency", "heat_to_scan": "saliency", "saliency_shares": "saliency",
})
