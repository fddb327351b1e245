"""Measuring vertebral bodies on the label maps, and the graders built on the measurement.

- :mod:`~vfnb.morphometry.heights`: the one height measurement (the body on the mid-sagittal
  slice, its frame from the endplates, Ha / Hm / Hp, ratios, the neighbours' expected height);
- :mod:`~vfnb.morphometry.samples`: per-grade samples of heights and tissue intensities
  (notebook 00);
- :mod:`~vfnb.morphometry.graders`: Genant's bands on the measured height loss, and a
  logistic regression on the ratios.

This file only re-exports, lazily (:mod:`vfnb.lazy`).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "body_heights": "heights", "height_ratios": "heights", "with_ratios": "heights",
    "measure_heights": "samples", "intensity_samples": "samples",
    "GENANT_BANDS": "graders", "MORPHOMETRY_MODELS": "graders", "LogisticGrader": "graders",
    "genant_grade": "graders", "predict_morphometry": "graders",
})
