"""Body heights and tissue intensities measured on patches: shapes of known size, real NIfTI patches."""

from __future__ import annotations

import numpy as np
import pytest

from vfnb.morphometry.samples import body_heights, intensity_samples, measure_heights
from vfnb.data.processed import ProcessedDataset


def test_body_heights_of_a_wedge():
    # body 20 voxels deep (axis 1: 10..29, anterior = high), 16 tall at the back, 10 at the front
    mask = np.zeros((8, 40, 30), dtype=np.uint8)
    for y in range(10, 30):
        top = 5 + int(round(16 - 6 * (y - 10) / 19))
        mask[2:6, y, 5:top] = 1
    mask[2:6, 2:6, 5:25] = 1  # posterior elements behind a canal gap: not the body
    h = body_heights(mask, spacing_mm=0.5)
    assert h["posterior"] > h["middle"] > h["anterior"]
    assert h["anterior"] == pytest.approx(0.5 * 11, abs=0.6)
    assert h["posterior"] == pytest.approx(0.5 * 15, abs=0.6)


def test_body_heights_of_an_empty_mask_are_undefined():
    assert all(np.isnan(v) for v in body_heights(np.zeros((4, 4, 4))).values())


def test_measured_heights_follow_the_grades(tiny_processed):
    # the tiny patches are boxes 16, 13, 10 and 7 voxels tall (0.9 mm) for grades 0-3
    records = ProcessedDataset(tiny_processed).records("train", "t0")
    table = measure_heights(records, per_grade=3, seed=0)
    assert table.groupby("grade").size().to_dict() == {0: 3, 1: 3, 2: 3, 3: 3}
    for grade, expected in zip(range(4), (16, 13, 10, 7)):
        rows = table[table["grade"] == grade]
        assert np.allclose(rows[["anterior", "middle", "posterior"]], expected * 0.9)
    assert np.allclose(table["anterior_ratio"], 1.0) and np.allclose(table["min_ratio"], 1.0)


def test_intensity_samples_separate_bone_from_soft_tissue(tiny_processed):
    records = ProcessedDataset(tiny_processed).records("train", "t0")
    samples = intensity_samples(records, per_grade=2, voxels=200, seed=0)
    assert set(samples["tissue"]) == {"cortical rim", "trabecular core", "surroundings"}
    assert set(samples["grade"]) == {0, 1, 2, 3}
    medians = samples.groupby("tissue")["hu"].median()
    assert medians["trabecular core"] > medians["surroundings"] + 200
    again = intensity_samples(records, per_grade=2, voxels=200, seed=0)
    assert samples.equals(again)  # seeded
