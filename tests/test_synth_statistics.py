"""Intensity statistics of vertebrae (vfnb.data.synth.statistics), and no intensity shortcut in SynthSpine.

The phantom tests check each statistic on a box of known HU in two header
orientations; the cohort test generates a small fracture-rich SynthSpine cohort
(in memory, once per session) and bounds how well each statistic alone separates
fractured from normal vertebrae.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vfnb.data.synth import SynthConfig, generate_case
from vfnb.data.synth.statistics import separation_auc, vertebra_statistics


def _phantom():
    """A 30 x 30 x 20 mm box (label 20) at 1 mm: 100 HU inside, 3 mm slabs of 400 HU at top and bottom,
    and a +-50 HU checkerboard in the central part (core SD 50)."""
    image = np.full((50, 50, 40), -100.0, np.float32)
    seg = np.zeros(image.shape, np.uint8)
    seg[10:40, 10:40, 10:30] = 20
    image[10:40, 10:40, 10:30] = 100.0
    image[10:40, 10:40, 10:13] = 400.0
    image[10:40, 10:40, 27:30] = 400.0
    ii, jj, kk = np.indices(image.shape)
    checker = np.where((ii + jj + kk) % 2 == 0, 50.0, -50.0)
    centre = (slice(13, 37), slice(13, 37), slice(13, 27))  # the core: voxels >= 4 mm inside
    image[centre] += checker[centre]
    return image, seg


def test_statistics_on_a_phantom_in_two_orientations():
    image, seg = _phantom()
    got = vertebra_statistics(image, seg, np.eye(4), band_mm=3.0)[20]
    # the core is >= 4 mm from every edge (the checkerboard), so the 400 HU slabs stay out
    assert got["core_voxels"] == 24 * 24 * 14
    assert got["core_median_hu"] == 100.0
    assert got["core_sd_hu"] == pytest.approx(50.0, abs=0.5)
    assert got["endplate_band_hu"] == 400.0  # the slabs, side walls excluded
    assert got["band_voxels"] == 24 * 24 * 6
    # the same anatomy stored LPS with the slice axis first: same statistics
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    flipped_image = np.transpose(image[::-1, ::-1, :], (2, 0, 1))
    flipped_seg = np.transpose(seg[::-1, ::-1, :], (2, 0, 1))
    affine = lps[:, [2, 0, 1, 3]]
    affine[:3, 3] = [49.0, 49.0, 0.0]
    again = vertebra_statistics(flipped_image, flipped_seg, affine, band_mm=3.0)[20]
    assert again == got


def test_separation_auc_directions_and_missing_values():
    values = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    fractured = np.array([False, False, True, True, True])
    assert separation_auc(values, fractured) == 1.0
    assert separation_auc(values, fractured, higher_means_fractured=False) == 0.0
    assert np.isnan(separation_auc(values[:2], fractured[:2]))


# Fracture-rich, small scans: many fractured vertebrae per second of generation.
# The study cohort's rates (the enriched test cohort's saturated fracture rate would hide
# the density link), in small scans. Many patients matter more than many vertebrae:
# fractures cluster in frail, osteoporotic patients, so an AUC over few patients mostly
# measures those few.
COHORT = dataclasses.replace(SynthConfig(), min_vertebrae=8, max_vertebrae=10,
                             inplane_spacing=(0.9, 1.0), slice_spacings=(2.0, 2.5, 3.0), max_voxels=1_500_000)
COHORT_CASES = 30


@pytest.fixture(scope="session")
def cohort_statistics():
    rows = []
    for k in range(COHORT_CASES):
        case = generate_case(k, seed=5, config=COHORT)
        stats = vertebra_statistics(case.image, case.seg, case.affine)
        rows += [{"grade": grade, **stats[label]} for label, grade in case.grades.items()]
    return rows


@pytest.mark.slow
def test_no_intensity_statistic_gives_fractures_away(cohort_statistics):
    fractured = np.array([r["grade"] >= 1 for r in cohort_statistics])
    assert fractured.sum() >= 35 and (~fractured).sum() >= 150
    aucs = {}
    for name in ("core_median_hu", "core_sd_hu", "endplate_band_hu"):
        auc = separation_auc(np.array([r[name] for r in cohort_statistics]), fractured)
        aucs[name] = auc
        assert max(auc, 1.0 - auc) <= 0.70, (name, auc)  # neither direction separates well
    # lower trabecular HU goes with fractures (osteoporotic patients fracture more), moderately
    assert 1.0 - aucs["core_median_hu"] > 0.5, aucs
    print("\nintensity AUCs (fractured vs normal):", {k: round(v, 3) for k, v in aucs.items()})
