"""Metrics agree with scikit-learn, operating points hit their target, CIs resample patients."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from vfnb import evaluate as ev
from vfnb.errors import DatasetError, ParamsError
from vfnb.levels import level_name


def make_predictions(n_patients: int = 20, per_patient: int = 10, seed: int = 0, skill: float = 1.5,
                     grade_mix=(0.7, 0.1, 0.1, 0.1), round_to: int | None = 2) -> pd.DataFrame:
    """A predictions table shaped like vfnb.inference.grading.predict_patches output (synthetic)."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    grade = rng.choice(4, size=n, p=grade_mix)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), grade] += skill
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    fracture_prob = 1 - probs[:, 0]
    if round_to is not None:  # rounded scores create ties, the hard case for AUC / AP / thresholds
        fracture_prob = np.round(fracture_prob, round_to)
    labels = np.tile(np.arange(8, 8 + per_patient), n_patients)
    return pd.DataFrame({
        "name": [f"pat{i // per_patient:03d}_{labels[i]}_{grade[i]}.nii.gz" for i in range(n)],
        "image_id": [f"pat{i // per_patient:03d}" for i in range(n)],
        "label": labels,
        "level": [level_name(v) for v in labels],
        "grade": grade,
        "pred": probs.argmax(axis=1),
        **{f"p{g}": probs[:, g] for g in range(4)},
        "fracture_prob": fracture_prob,
    })


# ------------------------------------------------------------------ agreement with scikit-learn
def test_grade_metrics_agree_with_sklearn():
    df = make_predictions(seed=1)
    y, pred = df["grade"].to_numpy(), df["pred"].to_numpy()
    out = ev.grade_metrics(y, pred)
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert out["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert out["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3])
    for g in range(4):
        assert out["precision"][g] == pytest.approx(precision[g])
        assert out["recall"][g] == pytest.approx(recall[g])
        assert out["f1"][g] == pytest.approx(f1[g])
        assert out["support"][g] == support[g]
    assert out["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()


def test_grade_metrics_keep_absent_grades_in_a_4x4_matrix():
    out = ev.grade_metrics([0, 0, 1, 1], [0, 0, 0, 1])
    assert np.array(out["confusion_matrix"]).shape == (4, 4)
    assert out["confusion_matrix"] == [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert out["recall"][1] == pytest.approx(0.5)
    assert math.isnan(out["recall"][3]) and math.isnan(out["precision"][3])
    # macro-F1 averages the grades that occur (0 and 1), as scikit-learn does
    assert out["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_grade_metrics_reject_bad_grades():
    with pytest.raises(DatasetError, match="0-3"):
        ev.grade_metrics([0, 1, 4], [0, 1, 2])
    with pytest.raises(DatasetError):
        ev.grade_metrics([0, 1], [0, 1, 2])


def test_screening_metrics_hand_computed():
    grade = [0, 0, 0, 0, 0, 1, 2, 3, 1]
    score = [0.1, 0.2, 0.6, 0.3, 0.05, 0.7, 0.9, 0.4, 0.5]
    out = ev.screening_metrics(grade, score, threshold=0.5)
    # fractured: 0.7, 0.9, 0.5 called (>= 0.5 counts), 0.4 missed; normals: 0.6 is a false positive
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (3, 1, 1, 4)
    assert out["sensitivity"] == pytest.approx(3 / 4)
    assert out["specificity"] == pytest.approx(4 / 5)
    assert out["ppv"] == pytest.approx(3 / 4)
    assert out["npv"] == pytest.approx(4 / 5)
    positive = np.array(grade) >= 1
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(positive, score))
    assert out["pr_auc"] == pytest.approx(skm.average_precision_score(positive, score))


def test_screening_metrics_give_nan_not_a_crash_with_one_class():
    out = ev.screening_metrics([0, 0, 0], [0.1, 0.6, 0.3], 0.5)
    assert math.isnan(out["sensitivity"]) and math.isnan(out["roc_auc"]) and math.isnan(out["pr_auc"])
    assert out["specificity"] == pytest.approx(2 / 3)
    out = ev.screening_metrics([1, 2], [0.1, 0.6], 0.5)
    assert math.isnan(out["specificity"]) and out["sensitivity"] == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_reported_metrics_equal_sklearn_metrics(seed):
    df = make_predictions(seed=seed, round_to=1)  # heavy ties in the scores
    # also on a patient-bootstrap replicate (duplicated rows)
    rows = ev.bootstrap_indices(df["image_id"], len(df), 1, seed=seed)[0]
    for frame in (df, df.iloc[rows]):
        fast = ev.reported_metrics(frame, threshold=0.5)
        grading = ev.grade_metrics(frame["grade"], frame["pred"])
        screening = ev.screening_metrics(frame["grade"], frame["fracture_prob"], 0.5)
        cal = ev.calibration(frame[["p0", "p1", "p2", "p3"]].to_numpy(), frame["grade"])
        bcal = ev.binary_calibration(frame["grade"], frame["fracture_prob"])
        moderate = ev.grade2_metrics(frame["grade"], frame["pred"], frame[["p0", "p1", "p2", "p3"]].to_numpy())
        expected = {k: grading[k] for k in ("accuracy", "macro_f1", "weighted_f1", "quadratic_kappa")}
        for g in range(4):
            for kind in ("recall", "precision", "f1"):
                expected[f"{kind}_grade{g}"] = grading[kind][g]
        expected.update({k: screening[k] for k in ("sensitivity", "specificity", "ppv", "npv", "roc_auc", "pr_auc")})
        expected.update({k: moderate[k] for k in ev.GRADE2_METRICS})
        expected["ece"] = cal["ece"]
        expected["binary_ece"] = bcal["ece"]
        assert set(fast) == set(ev.REPORTED_METRICS) == set(expected)
        for name, value in expected.items():
            assert fast[name] == pytest.approx(value, nan_ok=True), name


# ------------------------------------------------------------------ operating point
def test_threshold_for_specificity_reaches_the_target_on_known_data():
    normals = np.arange(100) / 100.0  # 0.00 .. 0.99
    fractured = np.linspace(0.5, 0.995, 10)
    grade = np.r_[np.zeros(100, int), np.ones(10, int)]
    score = np.r_[normals, fractured]
    thr = ev.threshold_for_specificity(grade, score, target=0.99)
    # at most one normal (0.99) may be called fractured: the lowest such threshold lies above 0.98
    assert 0.98 < thr <= 0.99
    assert ev.screening_metrics(grade, score, thr)["specificity"] >= 0.99
    # any lower observed score misses the target
    lower = np.unique(score[score < thr])
    assert ev.screening_metrics(grade, score, lower[-1])["specificity"] < 0.99


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_threshold_for_specificity_is_the_lowest_that_works(target):
    df = make_predictions(seed=3, round_to=2)
    grade, score = df["grade"].to_numpy(), df["fracture_prob"].to_numpy()
    thr = ev.threshold_for_specificity(grade, score, target)
    assert ev.screening_metrics(grade, score, thr)["specificity"] >= target - 1e-12
    below = np.unique(score[score < thr])
    if below.size:
        assert ev.screening_metrics(grade, score, below[-1])["specificity"] < target


def test_threshold_for_specificity_never_splits_tied_normals():
    # two normals tied at the top: taking the tie would give specificity 0.98 < 0.99
    grade = np.r_[np.zeros(100, int), np.ones(5, int)]
    score = np.r_[np.full(2, 0.9), np.linspace(0, 0.5, 98), np.full(5, 0.9)]
    thr = ev.threshold_for_specificity(grade, score, 0.99)
    assert thr > 0.9
    out = ev.screening_metrics(grade, score, thr)
    assert out["specificity"] == 1.0 and out["sensitivity"] == 0.0


def test_threshold_for_specificity_rejects_bad_input():
    with pytest.raises(DatasetError, match="grade-0"):
        ev.threshold_for_specificity([1, 2, 3], [0.2, 0.5, 0.9], 0.99)
    with pytest.raises(ParamsError):
        ev.threshold_for_specificity([0, 1], [0.2, 0.5], 1.5)


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_contains_the_point_and_narrows_with_more_patients():
    accuracy = lambda d: float((d["grade"] == d["pred"]).mean())  # noqa: E731
    small = make_predictions(n_patients=20, seed=4)
    large = make_predictions(n_patients=200, seed=4)
    widths = []
    for df in (small, large):
        point, low, high = ev.bootstrap_ci(df, accuracy, n_boot=400, seed=0)
        assert point == pytest.approx(accuracy(df))
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < 0.6 * widths[0]  # ~ sqrt(20 / 200) = 0.32 expected


def test_bootstrap_resamples_whole_patients():
    # patient i has i + 1 vertebrae: a replicate made of whole patients holds a multiple of that per id
    sizes = np.arange(1, 9)
    df = pd.DataFrame({"image_id": np.repeat([f"p{i}" for i in range(8)], sizes),
                       "size": np.repeat(sizes, sizes)})
    whole = lambda d: float(all(len(rows) % rows["size"].iloc[0] == 0  # noqa: E731
                                for _, rows in d.groupby("image_id")))
    interval = ev.bootstrap_ci(df, whole, n_boot=200, seed=1)
    assert tuple(interval) == (1.0, 1.0, 1.0)
    assert interval.n_valid == 200
    # resampling vertebrae individually breaks patients apart
    assert ev.bootstrap_ci(df, whole, group=None, n_boot=200, seed=1).low == 0.0


def test_bootstrap_by_patient_is_wider_when_a_patients_vertebrae_are_identical():
    # 20 patients x 10 vertebrae; within a patient all are right or all wrong: 20 independent units, not 200
    correct = np.repeat(np.arange(20) % 2 == 0, 10)
    df = pd.DataFrame({"image_id": np.repeat(np.arange(20), 10), "correct": correct.astype(float)})
    mean = lambda d: float(d["correct"].mean())  # noqa: E731
    by_patient = ev.bootstrap_ci(df, mean, n_boot=500, seed=0)
    by_vertebra = ev.bootstrap_ci(df, mean, group=None, n_boot=500, seed=0)
    width_patient = by_patient.high - by_patient.low
    width_vertebra = by_vertebra.high - by_vertebra.low
    # expected 95 % widths: ~2 * 1.96 * sqrt(.25 / 20) = 0.44 vs sqrt(.25 / 200) -> 0.14
    assert width_patient > 0.3
    assert width_vertebra < 0.2


def test_bootstrap_skips_undefined_replicates_and_reports_them():
    # two patients; the statistic is undefined (NaN) whenever patient "b" is missing
    df = pd.DataFrame({"image_id": ["a", "a", "b"], "x": [1.0, 1.0, 3.0]})
    stat = lambda d: float(d.loc[d.image_id == "b", "x"].mean()) if (d.image_id == "b").any() else math.nan  # noqa: E731
    interval = ev.bootstrap_ci(df, stat, n_boot=400, seed=0)
    assert 200 < interval.n_valid < 400  # P(b drawn) = 3/4
    assert interval.point == 3.0 and interval.low == 3.0 == interval.high
    # too few valid replicates: no interval rather than a misleading one
    rare = ev.bootstrap_ci(df, stat, n_boot=400, seed=0, min_valid=0.9)
    assert math.isnan(rare.low) and rare.point == 3.0


def test_bootstrap_handles_dict_statistics_and_is_reproducible():
    df = make_predictions(seed=5)
    fn = lambda d: ev.reported_metrics(d, 0.5)  # noqa: E731
    first = ev.bootstrap_ci(df, fn, n_boot=100, seed=7)
    again = ev.bootstrap_ci(df, fn, n_boot=100, seed=7)
    other = ev.bootstrap_ci(df, fn, n_boot=100, seed=8)
    assert set(first) == set(ev.REPORTED_METRICS)
    assert tuple(first["roc_auc"]) == tuple(again["roc_auc"])
    assert tuple(first["roc_auc"]) != tuple(other["roc_auc"])


# ------------------------------------------------------------------ calibration
def test_ece_small_when_calibrated_large_when_over_confident():
    rng = np.random.default_rng(0)
    n = 20000
    probs = rng.dirichlet(np.ones(4) * 0.7, size=n)
    # labels drawn from the predicted probabilities: calibrated by construction
    y = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    calibrated = ev.calibration(probs, y)
    assert calibrated["ece"] < 0.02
    assert sum(calibrated["count"]) == n
    # sharpen the same probabilities: confidence goes up, accuracy does not
    sharp = probs**4
    sharp /= sharp.sum(axis=1, keepdims=True)
    over = ev.calibration(sharp, y)
    assert over["ece"] > 0.1
    occupied = np.array(over["count"]) > 0
    assert np.all(np.array(over["confidence"])[occupied] >= np.array(over["bin_edges"][:-1])[occupied])
    # binary version: fracture probability vs observed fracture fraction
    fracture_prob = 1 - probs[:, 0]
    assert ev.binary_calibration(y, fracture_prob)["ece"] < 0.02
    assert ev.binary_calibration(y, np.round(fracture_prob))["ece"] > 0.1


# ------------------------------------------------------------------ assembled evaluation
def test_evaluate_predictions_is_strict_json_and_consistent():
    df = make_predictions(seed=6)
    df["morphology"] = np.where(df["grade"] == 0, None, np.where(df.index % 2 == 0, "wedge", "biconcave"))
    df.loc[df["grade"] == 3, ["grade"]] = 2  # no grade 3 at all: its recall is undefined
    before = df.copy()
    out = ev.evaluate_predictions(df, threshold=0.4, n_boot=200, seed=0)
    pd.testing.assert_frame_equal(df, before)  # input untouched
    json.dumps(out, allow_nan=False)
    assert set(out["metrics"]) == set(ev.REPORTED_METRICS)
    y, pred = df["grade"], df["pred"]
    assert out["metrics"]["macro_f1"]["value"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert out["metrics"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y >= 1, df["fracture_prob"]))
    assert out["metrics"]["recall_grade3"]["value"] is None
    for name in ("sensitivity", "specificity", "roc_auc", "macro_f1", "quadratic_kappa", "recall_grade1", "ece",
                 "sensitivity_g2", "specificity_g2", "roc_auc_g2"):
        entry = out["metrics"][name]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    assert out["n_patients"] == 20 and out["n_vertebrae"] == 200
    assert sum(map(sum, out["confusion_matrix"])) == 200
    assert out["grade_counts"]["3"] == 0
    assert out["threshold"] == 0.4
    counts = out["screening_counts"]
    assert counts["tp"] + counts["fn"] == int((y >= 1).sum())
    assert [row["level"] for row in out["recall_by_level"]][:3] == ["T1", "T2", "T3"]
    assert {row["morphology"] for row in out["recall_by_morphology"]} == {"wedge", "biconcave"}
    assert out["paper_reported"]["specificity"] == 0.99


def test_evaluate_predictions_names_missing_columns():
    df = make_predictions(n_patients=3).drop(columns=["fracture_prob"])
    with pytest.raises(DatasetError, match="fracture_prob"):
        ev.evaluate_predictions(df, 0.5, n_boot=10)


def test_recall_by_hand_computed_and_in_spine_order():
    df = pd.DataFrame({
        "image_id": ["a"] * 6,
        "level": ["L1", "T12", "T13", "L1", "T12", "L1"],
        "grade": [1, 0, 2, 1, 1, 0],
        "pred": [1, 0, 0, 0, 0, 1],
        "fracture_prob": [0.8, 0.1, 0.3, 0.6, 0.2, 0.7],
    })
    table = ev.recall_by(df, "level", threshold=0.5)
    assert table["level"].tolist() == ["T12", "T13", "L1"]
    l1 = table.set_index("level").loc["L1"]
    assert l1["n"] == 3 and l1["n_fractured"] == 2
    assert l1["accuracy"] == pytest.approx(1 / 3)
    assert l1["fracture_recall"] == pytest.approx(1.0)  # 0.8 and 0.6 >= 0.5
    assert l1["grade1_recall"] == pytest.approx(0.5)
    t12 = table.set_index("level").loc["T12"]
    assert t12["fracture_recall"] == 0.0 and t12["grade1_recall"] == 0.0
    # without a threshold, "detected" means a predicted grade >= 1
    assert ev.recall_by(df, "level").set_index("level").loc["L1", "fracture_recall"] == pytest.approx(0.5)


def test_most_confident_errors_sorted_by_predicted_probability():
    df = make_predictions(seed=7)
    errors = ev.most_confident_errors(df, n=5)
    assert len(errors) == 5
    assert (errors["pred"] != errors["grade"]).all()
    assert errors["pred_prob"].is_monotonic_decreasing
    wrong = df[df["pred"] != df["grade"]]
    assert errors["pred_prob"].iloc[0] == pytest.approx(wrong[["p0", "p1", "p2", "p3"]].max(axis=1).max())


def test_comparison_table_puts_models_next_to_the_paper():
    df = make_predictions(seed=8)
    a = ev.evaluate_predictions(df, 0.5, n_boot=50)
    table = ev.comparison_table({"SupCon": a, "CE baseline": a})
    assert list(table.columns)[:2] == ["SupCon", "CE baseline"]
    assert "own data" in table.columns[-1]
    assert table.loc[ev.METRIC_LABELS["specificity"]].iloc[-1] == "0.99"
    assert table.loc[ev.METRIC_LABELS["roc_auc"]].iloc[-1] == ev.MISSING  # not reported by the paper
    assert "[" in table.loc[ev.METRIC_LABELS["macro_f1"], "SupCon"]


def test_format_ci_and_p_mark_missing_values_one_way():
    assert ev.format_ci({"value": 0.85, "ci_low": 0.8, "ci_high": 0.9}) == "0.85 [0.80, 0.90]"
    assert ev.format_ci({"value": 0.5, "ci_low": None, "ci_high": None}) == "0.50"
    assert ev.format_ci(0.5) == "0.50"
    for missing in ({"value": None}, None, float("nan"), {"value": float("nan"), "ci_low": 0.1, "ci_high": 0.2}):
        assert ev.format_ci(missing) == ev.MISSING
    assert ev.format_p(0.0004998) == "< 0.001"  # 1 / 2001: the smallest p of 2000 permutations
    assert ev.format_p(0.0123) == "0.012" and ev.format_p(None) == ev.MISSING


def test_every_reported_metric_says_how_it_decides():
    assert set(ev.METRIC_DECISION) == set(ev.REPORTED_METRICS) <= set(ev.METRIC_LABELS)
    assert set(ev.HEADLINE_METRICS) <= set(ev.REPORTED_METRICS)
    for name in ev.REPORTED_METRICS:
        kind = ev.METRIC_DECISION[name]
        if kind in ("operating point", "threshold-free", "argmax"):
            assert kind in ev.METRIC_LABELS[name], name


def test_evaluate_predictions_intervals_equal_the_generic_bootstrap():
    # evaluate_predictions bootstraps arrays directly (speed); it must match bootstrap_ci on the DataFrame
    df = make_predictions(seed=9)
    out = ev.evaluate_predictions(df, 0.5, n_boot=60, seed=3)
    generic = ev.bootstrap_ci(df, lambda d: ev.reported_metrics(d, 0.5), n_boot=60, seed=3)
    for name in ev.REPORTED_METRICS:
        entry = out["metrics"][name]
        expected = [None if math.isnan(v) else v for v in generic[name]]
        assert [entry["value"], entry["ci_low"], entry["ci_high"]] == pytest.approx(expected), name


def test_chance_macro_f1_of_image_blind_graders():
    from vfnb.evaluate import chance_macro_f1

    y = [0] * 80 + [1] * 10 + [2] * 7 + [3] * 3
    chance = chance_macro_f1(y, seed=0)
    # always 0: F1 of grade 0 = 2*80/(80+100), averaged over the 4 grades present
    assert chance["always_normal"] == pytest.approx(2 * 80 / 180 / 4)
    assert 0.1 < chance["uniform"] < chance["always_normal"]
    assert chance_macro_f1(y, seed=0) == chance
    with pytest.raises(DatasetError):
        chance_macro_f1([])


def test_permutation_p_value_separates_graders_from_noise():
    from vfnb.evaluate import permutation_p_value

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 120)
    perfect = permutation_p_value(y, y, n_permutations=500, seed=0)
    assert perfect == pytest.approx(1 / 501)
    unrelated = permutation_p_value(y, rng.integers(0, 4, 120), n_permutations=500, seed=0)
    assert unrelated > 0.05
    assert permutation_p_value(y, np.zeros_like(y), n_permutations=200) == 1.0  # a constant grader never beats chance
    with pytest.raises(DatasetError):
        permutation_p_value(y, y[:-1])


def test_fracture_auc_matches_scikit_learn_and_needs_both_classes():
    y = [0, 0, 1, 2, 3, 0, 1]
    score = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.3]
    assert ev.fracture_auc(y, score) == pytest.approx(skm.roc_auc_score(np.array(y) > 0, score))
    assert ev.fracture_auc([0, 0], [0.1, 0.2]) is None


# ------------------------------------------------------------------ operating_points.json: the one reader
def test_the_operating_points_reader_names_file_model_and_field(tmp_path):
    """The study (``operating_points_from``) and ``vfnb predict`` read through it: one set of messages."""
    from vfnb.evaluate.operating_points import OperatingPoint, read_operating_points
    from vfnb.inference.outputs import read_operating_point
    from vfnb.study.evaluation import read_operating_points as study_read

    path = tmp_path / "operating_points.json"
    point = {"threshold": 0.4, "target_specificity": 0.9, "val_specificity": 0.91, "val_sensitivity": 0.7}
    path.write_text(json.dumps({"ce": point, "supcon_linear": {"threshold": "high"}}))
    assert read_operating_points(path, ["ce"]) == {"ce": OperatingPoint(**point)}
    assert study_read(path, ["ce"])["ce"].chosen_on.startswith("validation of another run")
    assert read_operating_point(path, "ce")["model"] == f"ce of {path}"
    for call in (lambda: read_operating_points(path, ["supcon_linear"]), lambda: study_read(path, ["supcon_linear"]),
                 lambda: read_operating_point(path, "supcon_linear")):
        with pytest.raises(ParamsError, match=r"operating_points\.json: model 'supcon_linear': expected an operating "
                                              r"point with numeric 'threshold'"):
            call()
    with pytest.raises(ParamsError, match=r"no operating point for model 'sup' \(models there: ce, supcon_linear\)"):
        read_operating_point(path, "sup")
    with pytest.raises(ParamsError, match="say which with --model"):
        read_operating_point(path, None)
    path.write_text(json.dumps({"ce": {"threshold": 0.4}}))
    with pytest.raises(ParamsError, match="numeric 'val_specificity', 'val_sensitivity'"):
        read_operating_point(path, None)  # the report shows them: required there
    path.write_text("[1, 2]")
    with pytest.raises(ParamsError, match=r"operating_points\.json: expected a JSON object of model name"):
        study_read(path, ["ce"])
    with pytest.raises(ParamsError, match=r"parameter 'operating_points_from': .* not found"):
        study_read(tmp_path / "missing.json", ["ce"])
