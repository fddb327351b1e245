"""Intensity statistics of vertebrae on a CT and its label map, and how well each separates fractures.

A synthetic dataset must not let one simple intensity statistic give fractures
away (a network would learn that shortcut instead of the shape). Per vertebra,
from the image and the label map alone (no generator internals):

- ``core_median_hu``: the median HU of the label's *core*, its voxels at least
  ``core_mm`` (4 mm) from the label's edge (Euclidean distance in mm), away from
  the cortical shell and the endplates: trabecular density;
- ``core_sd_hu``: the HU standard deviation over the same core: texture;
- ``endplate_band_hu``: the median HU of the voxels just inside the top and
  bottom endplates (within ``band_mm`` of the label's edge along the
  supero-inferior axis, but at least ``core_mm`` from its edge in the axial
  plane, so the side walls are left out): endplate sclerosis or compaction.

The arrays are first put into the closest RAS axis order (axis 2 then runs
inferior -> superior), whatever the header's orientation. :func:`separation_auc`
is the ROC AUC of one statistic for "fractured" (grade >= 1) against normal.
"""

from __future__ import annotations

from typing import Iterable

import nibabel as nib
import numpy as np
from scipy import ndimage

STATISTICS = ("core_median_hu", "core_sd_hu", "endplate_band_hu")
_FAR = 1e6  # a voxel pitch that makes a distance transform ignore an axis


def _canonical(image: np.ndarray, seg: np.ndarray, affine: np.ndarray):
    """Image and labels in the closest RAS axis order, with the voxel sizes (mm) in that order."""
    ornt = nib.orientations.io_orientation(affine)
    image = nib.orientations.apply_orientation(np.asarray(image), ornt)
    seg = nib.orientations.apply_orientation(np.asarray(seg), ornt)
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = zooms
    return image, seg, spacing


def _one_vertebra(image: np.ndarray, mask: np.ndarray, spacing: np.ndarray, core_mm: float, band_mm: float) -> dict:
    padded = np.pad(mask, 1)
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    axial = ndimage.distance_transform_edt(padded, sampling=(spacing[0], spacing[1], _FAR))[1:-1, 1:-1, 1:-1]
    along = ndimage.distance_transform_edt(padded, sampling=(_FAR, _FAR, spacing[2]))[1:-1, 1:-1, 1:-1]
    core = mask & (inside >= core_mm)
    band = mask & (axial >= core_mm) & (along <= band_mm)
    values = image[core].astype(np.float64)
    nan = float("nan")
    return {"core_voxels": int(core.sum()), "band_voxels": int(band.sum()),
            "core_median_hu": float(np.median(values)) if values.size else nan,
            "core_sd_hu": float(values.std()) if values.size > 1 else nan,
            "endplate_band_hu": float(np.median(image[band])) if band.any() else nan}


def vertebra_statistics(image: np.ndarray, seg: np.ndarray, affine: np.ndarray, labels: Iterable[int] | None = None,
                        core_mm: float = 4.0, band_mm: float = 4.0) -> dict[int, dict]:
    """``{label: {statistic: value, "core_voxels": n, "band_voxels": n}}`` for each vertebra of ``seg``.

    ``image`` (HU) and ``seg`` (integer labels) share ``affine`` (voxel -> mm).
    ``labels``: the labels to measure (default: every non-zero label present). A
    statistic without voxels (a vertebra too thin for a core) is NaN.
    """
    image, seg, spacing = _canonical(image, seg, affine)
    present = [int(x) for x in np.unique(seg) if x != 0]
    wanted = present if labels is None else [int(x) for x in labels if int(x) in present]
    boxes = ndimage.find_objects(seg.astype(np.int32))
    out = {}
    for label in wanted:
        box = boxes[label - 1]
        out[label] = _one_vertebra(image[box], seg[box] == label, spacing, core_mm, band_mm)
    return out


def separation_auc(values: np.ndarray, fractured: np.ndarray, higher_means_fractured: bool = True) -> float:
    """ROC AUC of ``values`` as a score for ``fractured`` (booleans); NaN values are left out.

    ``higher_means_fractured=False`` scores the negated values ("lower HU means
    fractured"). 0.5 is no separation; 1.0 a perfect one.
    """
    from sklearn.metrics import roc_auc_score

    values, fractured = np.asarray(values, dtype=float), np.asarray(fractured, dtype=bool)
    keep = np.isfinite(values)
    values, fractured = values[keep], fractured[keep]
    if fractured.all() or not fractured.any():
        return float("nan")
    return float(roc_auc_score(fractured, values if higher_means_fractured else -values))


def dataset_statistics(original):
    """A table (pandas) with one row per graded vertebra of an original-layout dataset:
    ``case``, ``label``, ``grade``, :data:`STATISTICS` and the voxel counts."""
    import pandas as pd

    from ...io import load_nifti
    from ..original import read_original

    rows = []
    for case in read_original(original):
        image, affine, _ = load_nifti(case.image_path)
        seg = load_nifti(case.seg_path)[0]
        stats = vertebra_statistics(image, seg, affine, labels=case.grades)
        rows += [{"case": case.case_id, "label": label, "grade": int(case.grades[label]), **stats[label]}
                 for label in sorted(stats)]
    return pd.DataFrame(rows)
