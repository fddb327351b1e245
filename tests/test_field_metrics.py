"""The field's measures: quadratic-weighted kappa, the grade >= 2 cut, thoracic / lumbar, confusion-matrix shares.

Each is checked against scikit-learn or a hand-computed answer, in the one-off
functions, the numpy path the bootstrap uses and the assembled evaluation.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from vfnb import evaluate as ev
from vfnb.errors import DatasetError
from vfnb.evaluate.fast import _quadratic_kappa
from vfnb.levels import level_name
from vfnb.sweep.report import SWEEP_METRICS, aggregate

GRADES = [0, 1, 2, 3]


def sk_kappa(y, pred) -> float:
    return skm.cohen_kappa_score(y, pred, labels=GRADES, weights="quadratic")


def table(grade, pred, score2=None, labels=None, patients=None, threshold_score=None) -> pd.DataFrame:
    """A predictions table from grades and predicted grades; p2 + p3 = ``score2`` when given."""
    grade, pred = np.asarray(grade), np.asarray(pred)
    n = grade.size
    probs = np.full((n, 4), 0.02)
    probs[np.arange(n), pred] = 0.94
    if score2 is not None:  # p0 = 1 - score, p2 = p3 = score / 2
        s = np.asarray(score2, dtype=float)
        probs = np.c_[1 - s, np.zeros(n), s / 2, s / 2]
    df = pd.DataFrame({
        "image_id": patients if patients is not None else [f"p{i % 5}" for i in range(n)],
        "grade": grade, "pred": pred, **{f"p{g}": probs[:, g] for g in GRADES},
        "fracture_prob": 1 - probs[:, 0] if threshold_score is None else threshold_score,
    })
    if labels is not None:
        df["label"] = labels
        df["level"] = [level_name(v) for v in labels]
    return df


def random_table(n_patients=24, per_patient=12, seed=0, skill=1.2) -> pd.DataFrame:
    """Patients with thoracic and lumbar vertebrae (T6-L3 with a T13 in some), grades skewed to normal."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        labels = list(range(13, 20)) + ([28] if p % 4 == 0 else []) + list(range(20, 20 + per_patient - 7))
        for label in labels:
            grade = int(rng.choice(4, p=(0.6, 0.15, 0.15, 0.1)))
            logits = rng.normal(size=4)
            logits[grade] += skill
            probs = np.exp(logits) / np.exp(logits).sum()
            rows.append({"image_id": f"pat{p:02d}", "label": label, "level": level_name(label), "grade": grade,
                         "pred": int(probs.argmax()), **{f"p{g}": probs[g] for g in GRADES},
                         "fracture_prob": 1 - probs[0]})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ quadratic-weighted kappa
@pytest.mark.parametrize("seed", range(6))
def test_kappa_equals_sklearn_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 300))
    mix = rng.dirichlet(np.ones(4) * 0.6)  # skewed, grades often absent from small sets
    y = rng.choice(4, size=n, p=mix)
    pred = np.where(rng.random(n) < 0.6, y, rng.choice(4, size=n, p=mix))
    expected = sk_kappa(y, pred)
    cm = skm.confusion_matrix(y, pred, labels=GRADES)
    assert ev.quadratic_kappa(y, pred) == pytest.approx(expected, nan_ok=True)
    assert _quadratic_kappa(cm) == pytest.approx(expected, nan_ok=True)
    assert ev.grade_metrics(y, pred)["quadratic_kappa"] == pytest.approx(expected, nan_ok=True)


def test_kappa_hand_computed_perfect_and_chance():
    # observed weighted disagreement 1 (one 0 -> 1); expected by chance 2 * 3 / 4 + 2 * 1 / 4 = 2
    assert ev.quadratic_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.5)
    # a severe fracture called normal costs 9, called moderate 1
    far = ev.quadratic_kappa([0, 3, 0, 3], [0, 0, 0, 3])
    near = ev.quadratic_kappa([0, 3, 0, 3], [0, 2, 0, 3])
    assert near > far
    y = np.random.default_rng(0).choice(4, size=400)
    assert ev.quadratic_kappa(y, y) == 1.0
    unrelated = np.random.default_rng(1).choice(4, size=20000)
    assert abs(ev.quadratic_kappa(np.random.default_rng(2).choice(4, size=20000), unrelated)) < 0.03


def test_kappa_is_nan_not_an_error_when_undefined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning leaks from the undefined case either
        assert math.isnan(ev.quadratic_kappa([0, 0, 0], [0, 0, 0]))
        assert math.isnan(ev.quadratic_kappa([2, 2], [2, 2]))
    assert math.isnan(_quadratic_kappa(skm.confusion_matrix([1, 1], [1, 1], labels=GRADES)))
    assert ev.quadratic_kappa([0, 0], [1, 1]) == 0.0  # one class in y, another predicted: chance, defined
    df = table([0] * 6, [0] * 6)
    out = ev.evaluate_predictions(df, 0.5, n_boot=20)
    assert out["metrics"]["quadratic_kappa"]["value"] is None
    assert ev.format_ci(out["metrics"]["quadratic_kappa"]) == ev.MISSING == "n/a"
    assert math.isnan(ev.reported_metrics(df, 0.5)["quadratic_kappa"])


# ------------------------------------------------------------------ grade >= 2
# grades 2,3,2,3 are positive; argmax >= 2 finds three of them and calls one grade-1 vertebra >= 2
G2_GRADE = [0, 1, 2, 3, 2, 0, 1, 3]
G2_PRED = [0, 2, 2, 1, 3, 0, 1, 3]
# p2 + p3: positives 0.9, 0.3, 0.8, 0.7; negatives 0.1, 0.6, 0.2, 0.4 -> 14 of 16 pairs ordered, AUC 0.875
G2_SCORE = [0.1, 0.6, 0.9, 0.3, 0.8, 0.2, 0.4, 0.7]


def test_grade2_metrics_hand_computed():
    df = table(G2_GRADE, G2_PRED, score2=G2_SCORE)
    probs = df[["p0", "p1", "p2", "p3"]].to_numpy()
    out = ev.grade2_metrics(G2_GRADE, G2_PRED, probs)
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (3, 1, 1, 3)
    assert out["sensitivity_g2"] == pytest.approx(0.75)
    assert out["specificity_g2"] == pytest.approx(0.75)
    assert out["roc_auc_g2"] == pytest.approx(0.875)
    fast = ev.reported_metrics(df, 0.5)
    for name in ev.GRADE2_METRICS:
        assert fast[name] == pytest.approx(out[name]), name
    result = ev.evaluate_predictions(df, 0.5, n_boot=30)
    assert result["metrics"]["roc_auc_g2"]["value"] == pytest.approx(0.875)
    assert result["grade2_counts"] == {"tp": 3, "fp": 1, "tn": 3, "fn": 1, "n_positive": 4, "n_negative": 4}
    # the grade >= 1 screening of the same table is a different question, with its own answer
    assert result["metrics"]["sensitivity"]["value"] != result["metrics"]["sensitivity_g2"]["value"]


def test_grade2_metrics_undefined_without_a_moderate_fracture():
    out = ev.grade2_metrics([0, 1, 1], [0, 2, 1], np.full((3, 4), 0.25))
    assert math.isnan(out["sensitivity_g2"]) and math.isnan(out["roc_auc_g2"])
    assert out["specificity_g2"] == pytest.approx(2 / 3)
    with pytest.raises(DatasetError, match="probs"):
        ev.grade2_metrics([0, 1], [0, 1], np.full((2, 3), 0.3))


# ------------------------------------------------------------------ regions
def test_region_masks_from_label_or_level():
    labels = [5, 8, 19, 28, 20, 25, 26]  # C5, T1, T12, T13, L1, L6, sacrum
    df = table([0] * 7, [0] * 7, labels=labels)
    masks = ev.region_masks(df)
    assert masks["thoracic"].tolist() == [False, True, True, True, False, False, False]
    assert masks["lumbar"].tolist() == [False, False, False, False, True, True, False]
    by_level = ev.region_masks(df.drop(columns=["label"]))
    by_label = ev.region_masks(df.drop(columns=["level"]))
    for region in ("thoracic", "lumbar"):
        assert by_level[region].tolist() == masks[region].tolist() == by_label[region].tolist()
    assert ev.region_masks(df.drop(columns=["label", "level"])) == {}
    only_lumbar = table([0, 0], [0, 0], labels=[21, 22])
    assert set(ev.region_masks(only_lumbar)) == {"lumbar"}


def test_region_masks_refuse_unknown_or_contradicting_levels():
    df = table([0, 0], [0, 0], labels=[8, 20])
    df.loc[1, "level"] = "T2"
    with pytest.raises(DatasetError, match="'label' and 'level' disagree"):
        ev.region_masks(df)
    bad = table([0, 0], [0, 0]).assign(label=[8, 99])
    with pytest.raises(DatasetError, match="column 'label'.*99"):
        ev.evaluate_predictions(bad, 0.5, n_boot=5)
    missing = table([0, 0], [0, 0]).assign(level=["L1", None])
    assert ev.region_masks(missing)["lumbar"].tolist() == [True, False]


def test_evaluation_per_region_agrees_with_the_region_alone():
    df = random_table(seed=3)
    out = ev.evaluate_predictions(df, 0.5, n_boot=80, seed=4)
    json.dumps(out, allow_nan=False)
    regions = out["by_region"]
    assert set(regions) == {"thoracic", "lumbar"}
    thoracic_rows = df["label"].isin([*range(8, 20), 28])
    assert regions["thoracic"]["n_vertebrae"] == int(thoracic_rows.sum())  # T13 counted as thoracic
    assert regions["lumbar"]["n_vertebrae"] == int(df["label"].between(20, 25).sum())
    assert regions["thoracic"]["n_vertebrae"] + regions["lumbar"]["n_vertebrae"] == out["n_vertebrae"]
    for region, entry in regions.items():
        part = df[thoracic_rows] if region == "thoracic" else df[~thoracic_rows]
        assert entry["n_patients"] == part["image_id"].nunique()
        assert entry["metrics"]["macro_f1"]["value"] == pytest.approx(skm.f1_score(part.grade, part.pred,
                                                                                      average="macro"))
        assert entry["metrics"]["quadratic_kappa"]["value"] == pytest.approx(sk_kappa(part.grade, part.pred))
        assert entry["metrics"]["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(part.grade >= 1,
                                                                                         part.fracture_prob))
        assert entry["confusion_matrix"] == skm.confusion_matrix(part.grade, part.pred, labels=GRADES).tolist()
        # the region's interval is the patient bootstrap of the region's own rows
        generic = ev.bootstrap_ci(part, lambda d: ev.reported_metrics(d, 0.5), n_boot=80, seed=4)
        for name in ev.REGION_METRICS:
            got = entry["metrics"][name]
            assert [got["value"], got["ci_low"], got["ci_high"]] == pytest.approx(list(generic[name])), name
    without = ev.evaluate_predictions(df.drop(columns=["label", "level"]), 0.5, n_boot=10)
    assert without["by_region"] == {}
    assert without["metrics"]["macro_f1"] == ev.evaluate_predictions(df, 0.5, n_boot=10)["metrics"]["macro_f1"]


def test_bootstrap_intervals_hold_the_point_estimates():
    out = ev.evaluate_predictions(random_table(seed=5), 0.5, n_boot=200, seed=0)
    for entry in (out, *out["by_region"].values()):
        for name in ev.REGION_METRICS:
            m = entry["metrics"][name]
            assert m["ci_low"] is not None and m["ci_low"] <= m["value"] <= m["ci_high"], name
            assert m["ci_low"] < m["ci_high"], name  # a real interval, not a copied point


# ------------------------------------------------------------------ confusion matrix, names and tables
def test_confusion_matrix_counts_and_row_shares():
    out = ev.grade_metrics([0, 0, 0, 1, 1, 3], [0, 0, 1, 1, 0, 2])
    shares = np.array(out["confusion_matrix_row_normalised"])
    assert shares[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert shares[1].tolist() == pytest.approx([0.5, 0.5, 0, 0])
    assert np.isnan(shares[2]).all()  # no grade-2 vertebra: nothing to share out
    assert shares[3].tolist() == pytest.approx([0, 0, 1, 0])
    df = table([0, 0, 0, 1, 1, 3], [0, 0, 1, 1, 0, 2])
    result = ev.evaluate_predictions(df, 0.5, n_boot=10)
    assert result["confusion_matrix_row_normalised"][2] == [None] * 4
    assert result["confusion_matrix_row_normalised"][0] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    cells = ev.confusion_table(result)
    assert cells.loc["grade 0", "grade 1"] == "1 (0.33)"
    assert cells.loc["grade 2", "grade 2"] == "0 (n/a)"
    assert cells.loc["grade 3", "grade 2"] == "1 (1.00)"


def test_new_names_are_reported_labelled_and_tabled():
    new = ("quadratic_kappa", "sensitivity_g2", "specificity_g2", "roc_auc_g2")
    assert set(new) <= set(ev.REPORTED_METRICS) and set(ev.REPORTED_METRICS) <= set(ev.METRIC_LABELS)
    assert "quadratic_kappa" in ev.HEADLINE_METRICS
    assert ev.METRIC_LABELS["sensitivity_g2"] == "Sensitivity (grade ≥ 2, argmax)"
    assert "p2 + p3" in ev.METRIC_LABELS["roc_auc_g2"] and "kappa" in ev.METRIC_LABELS["quadratic_kappa"]
    assert ev.METRIC_DECISION["roc_auc_g2"] == "threshold-free" and ev.METRIC_DECISION["specificity_g2"] == "argmax"
    a = ev.evaluate_predictions(random_table(seed=6), 0.5, n_boot=30)
    assert set(new) <= set(a["metrics"]) and set(new) <= set(a["by_region"]["lumbar"]["metrics"])
    headline = ev.comparison_table({"SupCon": a})
    assert "[" in headline.loc[ev.METRIC_LABELS["quadratic_kappa"], "SupCon"]
    lumbar = ev.comparison_table({"SupCon": a}, metrics=new, region="lumbar")
    assert list(lumbar.columns) == ["SupCon"]  # the paper reports no region
    assert lumbar.loc[ev.METRIC_LABELS["quadratic_kappa"], "SupCon"] == ev.format_ci(
        a["by_region"]["lumbar"]["metrics"]["quadratic_kappa"])
    regions = ev.region_table({"SupCon": a, "CE": a})
    assert regions.index.tolist()[:3] == [("SupCon", "All vertebrae"), ("SupCon", "Thoracic (T1-T13)"),
                                          ("SupCon", "Lumbar (L1-L6)")]
    assert regions.loc[("SupCon", "Lumbar (L1-L6)"), "vertebrae"] == a["by_region"]["lumbar"]["n_vertebrae"]
    assert ev.METRIC_LABELS["quadratic_kappa"] in regions.columns


def test_sweep_aggregates_the_new_metrics_within_their_range():
    assert {"quadratic_kappa", "sensitivity_g2", "specificity_g2", "roc_auc_g2"} <= set(SWEEP_METRICS)
    kappas = {"supcon_linear": [-0.9, -0.95, -0.2], "ce": [0.9, 0.95, 0.99]}
    runs = [{"metrics": {m: {"quadratic_kappa": kappas[m][i], "sensitivity_g2": 0.5} for m in kappas}}
            for i in range(3)]
    models, paired = aggregate(runs)
    low = models["supcon_linear"]["quadratic_kappa"]["ci_low"]
    assert low == -1.0  # clipped at kappa's own floor, not at 0
    assert models["ce"]["sensitivity_g2"]["mean"] == 0.5
    diff = paired["supcon_linear - ce"]["metrics"]["quadratic_kappa"]
    assert diff["mean"] == pytest.approx(np.mean(np.subtract(kappas["supcon_linear"], kappas["ce"])))
    assert diff["ci_low"] >= -2.0 and diff["wins"] == 0


def test_sweep_report_shows_kappa_grade2_and_regions(tmp_path):
    from vfnb.sweep import run_sweep

    kappa = {0: 0.6, 1: 0.7, 2: 0.8}

    def run_one(params_files, overrides, out, progress=True):
        import yaml
        seed = yaml.safe_load(open(params_files[-1]).read())["seed"]
        entry = lambda v: {"value": v, "ci_low": 0.0, "ci_high": 1.0, "n_valid": 100}  # noqa: E731
        metrics = {k: entry(0.5) for k in SWEEP_METRICS} | {"quadratic_kappa": entry(kappa[seed])}
        regions = {"lumbar": {"metrics": {"quadratic_kappa": entry(kappa[seed] - 0.3), "macro_f1": entry(0.4)}}}
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"dataset": {"name": "SynthSpine", "synthetic": True}, "models": {
            m: {"title": m, "metrics": metrics, "by_region": regions} for m in ("supcon_linear", "ce")}}))
        (out / "index.html").write_text("<html></html>")
        return out

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("study_params: []\noverrides: {supcon_epochs: 1, supcon_warmup_epochs: 0}\n"
                     "grid: {seed: [0, 1, 2]}\n")
    out = tmp_path / "sw"
    assert run_sweep([sweep], out=out, progress=False, run_one=run_one).ok
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["models"]["ce"]["metrics"]["quadratic_kappa"]["mean"] == pytest.approx(0.7)
    assert doc["models"]["ce"]["metrics"]["roc_auc_g2"]["mean"] == pytest.approx(0.5)
    lumbar = doc["by_region"]["lumbar"]["supcon_linear"]
    assert lumbar["quadratic_kappa"]["mean"] == pytest.approx(0.4) and lumbar["quadratic_kappa"]["n"] == 3
    assert lumbar["roc_auc"]["n"] == 0  # not in these runs' regions: n/a, not 0
    assert "thoracic" not in doc["by_region"]
    assert {row["metric"] for row in doc["answer"]["table"]} >= {"quadratic-weighted kappa"}
    for page in ((out / "index.html").read_text(), (out / "summary.md").read_text()):
        assert ev.METRIC_LABELS["quadratic_kappa"] in page and ev.METRIC_LABELS["sensitivity_g2"] in page
        assert "Lumbar (L1-L6)" in page and "Thoracic and lumbar vertebrae across runs" in page
        assert "0.40 [" in page  # the lumbar kappa's mean across runs


def test_study_report_shows_kappa_grade2_and_regions(tmp_path):
    from vfnb.study import merge_params, write_report

    with_levels = ev.evaluate_predictions(random_table(seed=7), 0.5, n_boot=30)
    no_levels = ev.evaluate_predictions(random_table(seed=7).drop(columns=["label", "level"]), 0.5, n_boot=30)
    for result, has_regions in ((with_levels, True), (no_levels, False)):
        (tmp_path / "metrics.json").write_text(json.dumps({"models": {"ce": {"title": "CE baseline", **result}}}))
        index, summary = write_report(tmp_path, merge_params([]), {})
        for page in (index.read_text(), summary.read_text()):
            assert "Quadratic-weighted kappa" in page and ev.METRIC_LABELS["roc_auc_g2"] in page
            assert ev.format_ci(result["metrics"]["quadratic_kappa"]) in page  # a headline column
            assert ev.format_ci(result["metrics"]["sensitivity_g2"]) in page
            assert ("Lumbar (L1-L6)" in page) == has_regions
        if has_regions:
            lumbar = result["by_region"]["lumbar"]
            assert ev.format_ci(lumbar["metrics"]["quadratic_kappa"]) in summary.read_text()
            assert f"| CE baseline | Lumbar (L1-L6) | {lumbar['n_vertebrae']} |" in summary.read_text()
