"""The study's answer in words (vfnb.study.answer) on the run's page and the sweep's, and the link from a sweep's run."""

from __future__ import annotations

import json

import pytest

from test_evaluate import make_predictions
from vfnb.study.answer import run_answer, study_comparisons, sweep_answer, sweep_answer_rows
from vfnb.study.report import sweep_page_of, write_report


def interval(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high, "n_valid": 1000}


def metrics_doc(supcon_f1, ce_f1, f1_interval, kappa_interval=(-0.1, 0.1), morphometry_f1=None):
    """A metrics.json with the SupCon probe, CE and (optionally) a morphometry grader, and their paired differences."""
    models = {"supcon_linear": {"metrics": {"macro_f1": interval(supcon_f1, 0, 1), "quadratic_kappa": interval(0.6, 0, 1)}},
              "ce": {"metrics": {"macro_f1": interval(ce_f1, 0, 1), "quadratic_kappa": interval(0.6, 0, 1)}}}
    comparisons = {"supcon_linear - ce": {
        "model": "supcon_linear", "baseline": "ce", "confidence": 0.95,
        "metrics": {"macro_f1": interval(supcon_f1 - ce_f1, *f1_interval), "quadratic_kappa": interval(0.0, *kappa_interval)}}}
    if morphometry_f1 is not None:
        models["morphometry_logistic"] = {"metrics": {"macro_f1": interval(morphometry_f1, 0, 1)}}
        best = max(("supcon_linear", supcon_f1), ("ce", ce_f1), key=lambda x: x[1])
        d = best[1] - morphometry_f1
        comparisons[f"{best[0]} - morphometry_logistic"] = {
            "model": best[0], "baseline": "morphometry_logistic", "confidence": 0.95,
            "metrics": {"macro_f1": interval(d, d - 0.05, d + 0.05)}}
    return {"models": models, "comparisons": comparisons, "test": {"vertebrae": 120, "patients": 12}}


def test_the_sentence_follows_the_interval_of_the_difference():
    wins = " ".join(run_answer(metrics_doc(0.70, 0.50, (0.10, 0.30)), synthetic=True))
    assert "macro-F1 0.70 against 0.50, a difference of +0.20 (paired 95 % interval +0.10 to +0.30)" in wins
    assert "SupCon is better on this test set" in wins and "cross-entropy is better" not in wins
    loses = " ".join(run_answer(metrics_doc(0.40, 0.60, (-0.30, -0.10)), synthetic=True))
    assert "a difference of −0.20 (paired 95 % interval −0.30 to −0.10): cross-entropy is better" in loses
    assert "SupCon is better" not in loses
    overlaps = " ".join(run_answer(metrics_doc(0.52, 0.50, (-0.05, 0.09)), synthetic=True))
    assert "+0.02 (paired 95 % interval −0.05 to +0.09): they cannot be told apart on this test set" in overlaps
    assert "is better" not in overlaps.split("quadratic")[0]
    assert len({wins, loses, overlaps}) == 3


def test_the_answer_names_the_data_and_the_morphometry_ruler():
    text = run_answer(metrics_doc(0.40, 0.60, (-0.3, -0.1), morphometry_f1=0.75), synthetic=True)
    assert "the best network (Cross-entropy baseline) against the best morphometry grader" in text[1]
    assert "macro-F1 0.60 against 0.75" in text[1] and "measuring heights is better on this test set" in text[1]
    assert text[-1].startswith("These are synthetic data (SynthSpine, 120 test vertebrae of 12 patients)")
    assert "synthetic" not in run_answer(metrics_doc(0.4, 0.6, (-0.3, -0.1)), synthetic=False)[-1]
    assert run_answer({}, synthetic=True) == []


def test_a_run_without_paired_intervals_states_the_difference_but_no_verdict():
    doc = metrics_doc(0.70, 0.50, (0.1, 0.3))
    del doc["comparisons"]
    text = run_answer(doc, synthetic=True)[0]
    assert "a difference of +0.20 (no paired interval was recorded" in text and "is better" not in text


def test_comparisons_from_predictions_feed_the_sentence():
    tables = {"supcon_linear": make_predictions(seed=7, skill=3.0), "supcon_finetune": make_predictions(seed=7, skill=1.0),
              "ce": make_predictions(seed=7, skill=0.3), "morphometry_rule": make_predictions(seed=7, skill=3.0)}
    comparisons = study_comparisons(tables, dict.fromkeys(tables, 0.5), n_boot=100, seed=0)
    assert set(comparisons) == {"supcon_linear - ce", "supcon_finetune - ce", "supcon_linear - morphometry_rule",
                                "supcon_finetune - morphometry_rule", "ce - morphometry_rule"}
    same = comparisons["supcon_linear - morphometry_rule"]["metrics"]["macro_f1"]  # identical tables
    assert (same["value"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    from vfnb import evaluate as ev
    doc = {"models": {m: {"metrics": {k: {"value": ev.grade_metrics(t["grade"], t["pred"])[k]}
                                      for k in ("macro_f1", "quadratic_kappa")}} for m, t in tables.items()},
           "comparisons": comparisons, "test": {}}
    text = run_answer(doc, synthetic=True)
    assert text[0].startswith("Does SupCon beat cross-entropy? SupCon encoder + linear probe (the better SupCon grader")
    assert "SupCon is better on this test set" in text[0]
    assert "they cannot be told apart on this test set" in text[1]  # the same predictions as the ruler


def sweep_run(name, supcon, ce, low=None, high=None):
    run = {"name": name, "grid": {"seed": int(name[-1])},
           "metrics": {"supcon_linear": {"macro_f1": supcon}, "ce": {"macro_f1": ce}}}
    if low is not None:
        run["comparisons"] = {"supcon_linear - ce": {"metrics": {"macro_f1": interval(supcon - ce, low, high)}}}
    return run


def test_the_sweep_answer_counts_wins_and_states_the_mean_difference():
    runs = [sweep_run("seed-0", 0.60, 0.50, 0.02, 0.2), sweep_run("seed-1", 0.62, 0.50, -0.01, 0.25),
            sweep_run("seed-2", 0.58, 0.50, 0.01, 0.15)]
    first = sweep_answer(runs, synthetic=True)[0]
    assert "Over 3 runs" in first and "SupCon encoder + linear probe won 3 of 3 runs and the cross-entropy baseline 0" in first
    assert "mean difference +0.10 (sd 0.02" in first and "SupCon is better across these runs" in first
    assert "told them apart in 2 of 3" in first
    mixed = sweep_answer([sweep_run("seed-0", 0.6, 0.5), sweep_run("seed-1", 0.4, 0.5)], synthetic=True)[0]
    assert "won 1 of 2 runs and the cross-entropy baseline 1" in mixed and "cannot be told apart across these runs" in mixed
    assert sweep_answer(runs, synthetic=True)[-1].startswith("These are synthetic data")
    head, rows = sweep_answer_rows(runs)
    assert head[-1].startswith("Higher") and rows[1][0] == "seed-1"
    assert rows[1][1][3] == "+0.12 [−0.01, +0.25]"
    assert rows[1][1][4] == "SupCon; not told apart" and rows[0][1][4] == "SupCon; told apart"


def test_only_a_sweeps_run_links_the_sweep_page(tmp_path):
    metrics = metrics_doc(0.7, 0.5, (0.1, 0.3))
    standalone = tmp_path / "results" / "default"
    sweep = tmp_path / "sweeps" / "seeds"
    in_sweep = sweep / "runs" / "seed-0"
    not_a_sweep = tmp_path / "other" / "runs" / "seed-0"  # a folder named runs without a sweep's plan
    for run in (standalone, in_sweep, not_a_sweep):
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "plan.json").write_text("{}")
    pages = {run: write_report(run, {}, {"data": {"synthetic": True}}) for run in (standalone, in_sweep, not_a_sweep)}
    assert sweep_page_of(in_sweep) == "../../index.html" and sweep_page_of(standalone) is None
    index, summary = (p.read_text() for p in pages[in_sweep])
    assert "<a href='../../index.html'>the sweep's page</a>" in index
    assert "[the sweep's page](../../index.html)" in summary
    for run in (standalone, not_a_sweep):
        index, summary = (p.read_text() for p in pages[run])
        assert "../../index.html" not in index and "sweep" not in summary
        # the answer opens the page: before the introduction and the headline table
        assert index.index("The answer on this test set") < index.index("This report reproduces") < index.index("Headline")
        assert "SupCon is better on this test set" in index and "SupCon is better on this test set" in summary


@pytest.mark.parametrize("synthetic", [True, False])
def test_the_answer_box_says_whether_the_data_are_synthetic(tmp_path, synthetic):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics_doc(0.7, 0.5, (0.1, 0.3))))
    index, _ = write_report(tmp_path, {}, {"data": {"synthetic": synthetic}})
    box = index.read_text().split("<div class='answer'>")[1].split("</div>")[0]
    assert ("These are synthetic data" in box) == synthetic
