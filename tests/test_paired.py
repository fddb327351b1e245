"""The paired patient bootstrap of a difference between two models (vfnb.evaluate.paired)."""

from __future__ import annotations

import numpy as np
import pytest

from test_evaluate import make_predictions
from vfnb import evaluate as ev
from vfnb.errors import DatasetError, ParamsError


def test_the_interval_holds_the_point_difference_and_the_point_is_the_plain_difference():
    good, poor = make_predictions(seed=1, skill=3.0), make_predictions(seed=1, skill=0.5)
    diff = ev.paired_difference(good, poor, n_boot=300, seed=0)
    for metric in ev.PAIRED_METRICS:
        d = diff[metric]
        assert d.low <= d.point <= d.high, metric
        own = ev.grade_metrics(good["grade"], good["pred"])[metric] - ev.grade_metrics(poor["grade"], poor["pred"])[metric]
        assert d.point == pytest.approx(own), metric
    assert diff["macro_f1"].low > 0  # a much better model is told apart


def test_identical_predictions_give_a_zero_width_interval_at_zero():
    table = make_predictions(seed=2)
    diff = ev.paired_difference(table, table.sample(frac=1, random_state=0), n_boot=200)  # rows in another order
    for metric, d in diff.items():
        assert (d.point, d.low, d.high) == (0.0, 0.0, 0.0), metric


def test_pairing_makes_the_interval_narrower_than_independent_resampling():
    # the same model twice with a few vertebrae changed: paired resampling keeps the shared patient effects out
    a = make_predictions(seed=3, skill=1.5)
    b = a.copy()
    flip = np.arange(0, len(b), 17)
    b.loc[flip, "pred"] = (b.loc[flip, "pred"] + 1) % 4
    paired = ev.paired_difference(a, b, ["macro_f1"], n_boot=300, seed=0)["macro_f1"]
    own_a = ev.evaluate_predictions(a, 0.5, n_boot=300, seed=0)["metrics"]["macro_f1"]
    own_b = ev.evaluate_predictions(b, 0.5, n_boot=300, seed=1)["metrics"]["macro_f1"]
    unpaired_width = np.hypot(own_a["ci_high"] - own_a["ci_low"], own_b["ci_high"] - own_b["ci_low"])
    assert paired.high - paired.low < 0.5 * unpaired_width


def test_other_reported_metrics_take_each_models_operating_point():
    a, b = make_predictions(seed=4), make_predictions(seed=4, skill=0.2)
    diff = ev.paired_difference(a, b, ["sensitivity"], thresholds=(0.3, 0.9), n_boot=50)["sensitivity"]
    sens = lambda t, thr: ((t["fracture_prob"] >= thr) & (t["grade"] >= 1)).sum() / (t["grade"] >= 1).sum()  # noqa: E731
    assert diff.point == pytest.approx(sens(a, 0.3) - sens(b, 0.9))


def test_tables_of_different_vertebrae_or_references_are_refused():
    a = make_predictions(seed=5)
    with pytest.raises(DatasetError, match="different vertebrae"):
        ev.paired_difference(a, a.iloc[1:], n_boot=10)
    other = a.copy()
    other.loc[0, "grade"] = (other.loc[0, "grade"] + 1) % 4
    with pytest.raises(DatasetError, match="'grade' differs"):
        ev.paired_difference(a, other, n_boot=10)
    with pytest.raises(DatasetError, match="more than once"):
        ev.paired_difference(a, a.assign(name=a["name"].iloc[0]), n_boot=10)
    with pytest.raises(ParamsError, match="unknown metric"):
        ev.paired_difference(a, a, ["f2"], n_boot=10)
