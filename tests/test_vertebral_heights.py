"""Vertebral-body heights measured on rasterised shapes of known size (boxes and wedges).

Each shape is a vertebral body (a box, or a symmetric wedge whose anterior and
posterior walls have known heights) tilted in the sagittal plane, with posterior
elements behind a spinal canal, rasterised on grids of different (anisotropic)
spacing. The measurement must recover the heights at its positions to within
one voxel.
"""

import numpy as np
import pytest

from vfnb.morphometry.heights import (HEIGHT_POSITIONS, body_heights, expected_posterior_height,
                                         height_ratios, neighbour_labels)


def _vertebra(h_anterior, h_posterior, depth, tilt_deg, spacing, width=30.0, canal=6.0, posterior_elements=True,
              concavity=0.0):
    """Rasterise a body (a wedge; a box when the heights are equal) + posterior elements.

    Body frame: u along antero-posterior (0 at the posterior wall, ``depth`` at the
    anterior wall), v supero-inferior centred on the body; the frame is tilted by
    ``tilt_deg`` in the sagittal (y, z) plane. Returns the mask ``[X, Y, Z]``.
    """
    sx, sy, sz = spacing
    extent = 2.2 * max(depth + canal + 15, h_anterior, h_posterior)
    shape = (int(np.ceil(width * 1.4 / sx)), int(np.ceil(extent / sy)), int(np.ceil(extent / sz)))
    x, y, z = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    # off the grid, so that no wall passes exactly through a row of voxel centres
    centre = np.array([shape[0] * sx, shape[1] * sy, shape[2] * sz]) / 2 + 0.37 * np.array(spacing)
    t = np.radians(tilt_deg)
    si = np.array([np.sin(t), np.cos(t)])   # (y, z) components of the body's supero-inferior axis
    ap = np.array([np.cos(t), -np.sin(t)])  # and of its antero-posterior axis
    dy, dz = y - centre[1], z - centre[2]
    u = dy * ap[0] + dz * ap[1] + depth / 2  # 0 at the posterior wall
    v = dy * si[0] + dz * si[1]
    half = (h_posterior + (h_anterior - h_posterior) * u / depth) / 2
    # biconcave: both endplates sunk towards the middle by ``concavity`` of the height, V-shaped
    half = half * (1 - concavity * np.clip(1 - np.abs(2 * u / depth - 1), 0, 1))
    lateral = np.abs(x - centre[0]) <= width / 2
    body = lateral & (u >= 0) & (u <= depth) & (np.abs(v) <= half)
    mask = body
    if posterior_elements:
        # lamina + spinous process: a block behind the canal, joined to nothing in the mid-sagittal plane
        arch = (np.abs(x - centre[0]) <= 4) & (u <= -canal) & (u >= -canal - 12) & (np.abs(v) <= 5)
        mask = mask | arch
    return mask


def _expected(h_anterior, h_posterior, name):
    """Wedge height at the measurement position ``name`` (fraction of depth from the front)."""
    return h_anterior + (h_posterior - h_anterior) * HEIGHT_POSITIONS[name]


CASES = [
    # (Ha at the anterior wall, Hp at the posterior wall, depth, tilt, spacing)
    (25.0, 25.0, 32.0, 0.0, (1.0, 1.0, 1.0)),        # box, aligned
    (25.0, 25.0, 32.0, 20.0, (1.0, 1.0, 1.0)),       # box, tilted (lordosis)
    (22.0, 22.0, 30.0, -30.0, (0.8, 0.7, 1.3)),      # box, tilted the other way, anisotropic
    (14.0, 26.0, 34.0, 0.0, (1.0, 1.0, 1.0)),        # wedge: anterior collapse
    (14.0, 26.0, 34.0, 15.0, (0.9, 0.6, 1.1)),       # tilted wedge, anisotropic
    (28.0, 20.0, 30.0, -10.0, (1.2, 1.2, 0.8)),      # reverse wedge
]


@pytest.mark.parametrize("h_anterior,h_posterior,depth,tilt,spacing", CASES)
def test_heights_of_known_shapes_within_a_voxel(h_anterior, h_posterior, depth, tilt, spacing):
    mask = _vertebra(h_anterior, h_posterior, depth, tilt, spacing)
    out = body_heights(mask, spacing)
    voxel = max(spacing)
    for name in HEIGHT_POSITIONS:
        assert out[name] == pytest.approx(_expected(h_anterior, h_posterior, name), abs=voxel), name
    assert out["depth"] == pytest.approx(depth, abs=1.5 * voxel)  # a diagnostic: corners of the staircase bulge
    assert out["tilt_deg"] == pytest.approx(tilt, abs=3.0)


def test_posterior_elements_are_not_measured():
    """With the arch removed the heights are the same: the canal separates body and arch."""
    spacing = (1.0, 1.0, 1.0)
    with_arch = body_heights(_vertebra(18.0, 25.0, 32.0, 10.0, spacing), spacing)
    without = body_heights(_vertebra(18.0, 25.0, 32.0, 10.0, spacing, posterior_elements=False), spacing)
    assert with_arch == without


def test_isotropic_spacing_number_equals_triple():
    mask = _vertebra(20.0, 24.0, 30.0, 5.0, (1.0, 1.0, 1.0))
    assert body_heights(mask, 1.0) == body_heights(mask, (1.0, 1.0, 1.0))
    doubled = body_heights(mask, 2.0)
    assert doubled["middle"] == pytest.approx(2 * body_heights(mask, 1.0)["middle"])


def test_empty_mask_gives_nan_and_bad_shape_an_error():
    out = body_heights(np.zeros((8, 8, 8)), 1.0)
    assert all(np.isnan(v) for v in out.values())
    with pytest.raises(ValueError, match="X, Y, Z"):
        body_heights(np.zeros((8, 8)), 1.0)


def test_ratios_and_height_loss():
    out = height_ratios({"anterior": 15.0, "middle": 18.0, "posterior": 20.0})
    assert out["anterior_ratio"] == pytest.approx(0.75)
    assert out["middle_ratio"] == pytest.approx(0.9)
    assert np.isnan(out["posterior_ratio"])
    assert out["height_loss"] == pytest.approx(0.25)
    crush = height_ratios({"anterior": 20.0, "middle": 20.0, "posterior": 20.0}, expected_posterior=30.0)
    assert crush["height_loss"] == pytest.approx(1 - 20 / 30)
    tall = height_ratios({"anterior": 22.0, "middle": 21.0, "posterior": 20.0})
    assert tall["height_loss"] == 0.0


def test_neighbours_follow_the_spine_including_t13():
    # T12 = 19, T13 = 28, L1 = 20, L2 = 21
    assert neighbour_labels(28, [19, 28, 20]) == [19, 20]
    assert neighbour_labels(19, [18, 19, 28, 20]) == [18, 28]
    assert neighbour_labels(19, [18, 19, 20]) == [18, 20]
    assert neighbour_labels(21, [19, 21]) == []          # L1 missing: no neighbour above; none below
    heights = {18: 20.0, 19: float("nan"), 20: 24.0, 21: 26.0}
    assert expected_posterior_height(heights, 20) == pytest.approx(26.0)  # T12 unmeasured -> L2 only
    assert expected_posterior_height({20: 24.0}, 20) is None


# ---------------------------------------------------------------- the graders
from vfnb.morphometry.graders import GENANT_BANDS, LogisticGrader, genant_grade, grade_probabilities, prediction_table  # noqa: E402


def test_genant_bands():
    loss = np.array([0.0, 0.199, 0.20, 0.249, 0.25, 0.40, 0.401, 0.9, np.nan])
    assert genant_grade(loss).tolist() == [0, 0, 1, 1, 2, 3, 3, 3, 0]  # an edge takes the higher grade
    assert GENANT_BANDS == (0.20, 0.25, 0.40)


def _table(losses, grades):
    import pandas as pd

    losses = np.asarray(losses, dtype=float)
    return pd.DataFrame({"name": [f"v{i}" for i in range(len(losses))], "image_id": "s", "label": 20, "level": "L1",
                         "grade": grades, "anterior_ratio": 1 - losses, "middle_ratio": 1 - losses / 2,
                         "posterior_ratio": np.nan, "height_loss": losses})


def test_rule_is_one_hot_and_logistic_learns_the_bands():
    rng = np.random.default_rng(0)
    grades = np.repeat([0, 1, 2, 3], 40)
    centres = np.array([0.08, 0.225, 0.32, 0.5])
    losses = centres[grades] + rng.normal(0, 0.01, grades.size)
    train = _table(losses, grades)
    rule = grade_probabilities("morphometry_rule", train, train)
    assert np.all(rule.sum(axis=1) == 1) and np.all(rule.max(axis=1) == 1)
    assert (rule.argmax(axis=1) == grades).mean() > 0.95
    learned = LogisticGrader().fit(train).predict_proba(train)
    assert learned.shape == (160, 4) and np.allclose(learned.sum(axis=1), 1)
    assert (learned.argmax(axis=1) == grades).mean() > 0.95
    table = prediction_table(train, learned)
    assert np.allclose(table["fracture_prob"], 1 - learned[:, 0]) and (table["pred"] == learned.argmax(1)).all()
    with pytest.raises(ValueError, match="morphometry_rule"):
        grade_probabilities("morphometry_magic", train, train)


def test_logistic_grader_fills_missing_features_with_training_medians():
    train = _table([0.05, 0.1, 0.3, 0.5] * 5, [0, 0, 2, 3] * 5)
    grader = LogisticGrader().fit(train)
    test = _table([np.nan], [0])
    prob = grader.predict_proba(test)
    assert np.all(np.isfinite(prob)) and prob[0, 1] == 0.0  # grade 1 never seen in training: probability 0


@pytest.mark.parametrize("tilt", [-35.0, -25.0, 25.0, 35.0])
def test_steeply_tilted_anisotropic_wedge_within_a_voxel(tilt):
    spacing = (0.9, 0.6, 1.1)
    out = body_heights(_vertebra(14.0, 26.0, 34.0, tilt, spacing), spacing)
    for name in HEIGHT_POSITIONS:
        assert out[name] == pytest.approx(_expected(14.0, 26.0, name), abs=max(spacing)), name


@pytest.mark.parametrize("tilt", [-25.0, 13.0, 22.0, 31.0])
def test_a_deep_biconcave_body_tilted_at_3mm_slices_keeps_its_frame(tilt):
    """The frame follows the endplates' rims, not their sunken middle, so a tilted biconcave body is not turned."""
    spacing, concavity = (0.8, 0.8, 3.0), 0.45
    out = body_heights(_vertebra(26.0, 24.0, 34.0, tilt, spacing, concavity=concavity), spacing)
    for name in HEIGHT_POSITIONS:
        from_back = 1 - HEIGHT_POSITIONS[name]
        sunk = 1 - concavity * (1 - abs(2 * from_back - 1))
        assert out[name] == pytest.approx(_expected(26.0, 24.0, name) * sunk, abs=2.0), (name, out)
    assert out["tilt_deg"] == pytest.approx(tilt, abs=4.0)
