"""A CT must look like a CT and a label map like a vertebra label map before anything is graded."""

import numpy as np
import pytest

from vfnb.data.plausibility import ct_notes, ct_problems, label_map_problems


def _ct(shape=(40, 40, 30)) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full(shape, -1000.0)
    image[5:35, 5:35, :] = 40 + rng.normal(0, 10, (30, 30, shape[2]))  # soft tissue
    image[15:25, 15:25, :] = 300.0  # bone
    return np.round(image).astype(np.int16)


@pytest.mark.parametrize("image, expected", [
    (np.full((20, 20, 20), -1000, np.int16), "values span only -1000 to -1000"),
    ((_ct() > 0).astype(np.uint8), "values span only 0 to 1"),
    (np.where(_ct() > 200, 1e30, _ct()).astype(np.float64), "values from -1000 to 1e\\+30"),
    (np.clip(_ct(), -1000, 90), "no voxel of bone density"),
])
def test_what_is_not_a_ct_in_hu_is_refused_saying_why(image, expected):
    problems = ct_problems(image)
    assert problems and any(__import__("re").search(expected, p) for p in problems), problems


def test_a_plausible_ct_passes_and_a_resampled_one_is_noted():
    assert ct_problems(_ct()) == [] and ct_notes(_ct()) == []
    assert "not whole numbers" in ct_notes(_ct().astype(np.float32) + 0.37)[0]


def test_label_maps_that_are_no_vertebra_maps_are_refused_naming_the_level():
    labels = np.zeros((60, 60, 60), np.uint8)
    labels[20:40, 20:40, 10:20] = 20  # a 20 x 20 x 10 mm L1 at 1 mm voxels
    assert label_map_problems(labels, (1.0, 1.0, 1.0), {20: "L1"}) == []
    shifted = labels + 1  # scl_inter = 1: the background became label 1 and every level moved by one
    problems = label_map_problems(shifted, (1.0, 1.0, 1.0), {1: "C1", 21: "L2"})
    assert any(p.startswith("C1 covers 98 % of the scan") for p in problems)
    whole = np.zeros((40, 60, 70), np.uint8)
    whole[2:38, 2:58, 2:68] = 20  # one label over 110 x 170 x 190 mm
    problems = label_map_problems(whole, (2.75, 2.9, 2.8), {20: "L1"})
    assert problems == ["L1 covers 79 % of the scan: a background or body outline, not a vertebra (a label map "
                        "with scl_inter or scl_slope set, or the wrong file?)"]
    big = np.zeros((100, 100, 100), np.uint8)
    big[10:90, 40:60, 40:60] = 20
    assert "L1 spans 160 x 40 x 40 mm" in label_map_problems(big, (2.0, 2.0, 2.0), {20: "L1"})[0]
