"""What real CT measures, for the statistics of :mod:`.realism`: the ranges SynthSpine is held to.

Each range is for the *median over a cohort's vertebrae* (or, for the fracture AUC,
the whole cohort), measured the way :mod:`.realism` measures it, and says what it
rests on. They summarise unenhanced clinical CT of adults: published trabecular
density by bone status, common tissue values, and measurements of public CTs with a
segmentation model's vertebra label map. A single real scan is one point inside
these ranges, not their edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReferenceRange:
    statistic: str
    low: float
    high: float
    unit: str
    meaning: str


REFERENCE_RANGES = (
    ReferenceRange(
        "core_median_hu", 90.0, 170.0, "HU",
        "median trabecular density of the vertebral core (>= 4 mm inside the label) over a screening cohort's "
        "vertebrae: young normal spines measure ~180 HU at L1, a 55-year-old's lumbar spine 110-135 HU, "
        "osteoporotic spines <= 110 HU; a cohort's median lies between"),
    ReferenceRange(
        "core_sd_hu", 30.0, 120.0, "HU",
        "spread of the HU inside the core: trabecular texture plus noise at thin slices (~30-60 HU), up to "
        "~110 HU at 3 mm slices, where the core still touches the dense endplates"),
    ReferenceRange(
        "share_below_100", 0.10, 0.25, "fraction",
        "share of a vertebra's label voxels below 100 HU: a segmentation model's mask reaches ~1 mm beyond "
        "the cortex into soft tissue and the disc (14-22 % in measured scans); exact masks give a few %"),
    ReferenceRange(
        "noise_correlation", 0.20, 0.35, "correlation",
        "correlation of the noise residual (image minus its Gaussian blur, sigma 2 voxels) with its in-plane "
        "neighbour in soft tissue (-20..100 HU, eroded 3 voxels): reconstruction kernels give 0.25-0.31; "
        "white noise gives ~0"),
    ReferenceRange(
        "canal_hu", -10.0, 30.0, "HU",
        "median HU inside the spinal canal (the hole the vertebra's ring encloses in an axial slice): "
        "cerebrospinal fluid 0-20 HU, with some epidural fat and noise"),
    ReferenceRange(
        "fracture_auc_low_hu", 0.55, 0.70, "AUC",
        "how well a lower core HU alone picks the fractured vertebrae of a cohort: a moderate association "
        "(about 0.7 clinically); far above would let a model grade density instead of shape"),
)

RANGES = {r.statistic: r for r in REFERENCE_RANGES}
