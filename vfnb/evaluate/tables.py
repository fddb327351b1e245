"""The whole evaluation of a model (``evaluate_predictions``: whole set and per spine region), recall per level or
morphology, errors, and tables."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DatasetError
from ..levels import GRADES, label_from_level, spine_order
from .calibration import binary_calibration, calibration
from .fast import _metrics_from_arrays
from .intervals import Interval, _bootstrap_rows, finite_values
from .metrics import (METRIC_LABELS, MISSING, PAPER_REPORTED, PROB_COLUMNS, REGION_METRICS, REPORTED_METRICS, _div,
                      check_predictions, grade2_metrics, grade_metrics, jsonable, row_normalised, screening_metrics)
from .regions import REGION_TITLES, SPINE_REGIONS, region_masks


def _sort_key_for(column: str):
    def key(value: Any) -> tuple:
        if column in ("level", "label"):
            try:
                return (0, spine_order(label_from_level(value)), "")
            except Exception:
                pass
        return (1, 0.0, str(value))
    return key


def recall_by(df: pd.DataFrame, column: str, threshold: float | None = None) -> pd.DataFrame:
    """Recall per value of ``column`` (e.g. ``"level"`` or ``"morphology"``).

    Columns of the result: ``column``; ``n`` vertebrae; ``n_fractured`` (grade >= 1);
    ``accuracy`` (pred == grade, all vertebrae of that value); ``fracture_recall``
    (fractured vertebrae detected: ``fracture_prob >= threshold``, or ``pred >= 1``
    when ``threshold`` is None); ``n_grade1`` and ``grade1_recall`` (grade-1
    vertebrae graded exactly 1). NaN where a count is 0. Rows with a missing value
    in ``column`` (e.g. the morphology of a normal vertebra) are left out. Levels
    are sorted cranio-caudally, other values alphabetically.
    """
    if column not in df.columns:
        raise DatasetError(f"recall_by: column {column!r} not in the predictions (columns {list(df.columns)})")
    grade = df["grade"].to_numpy(np.int64)
    pred = df["pred"].to_numpy(np.int64)
    detected = pred >= 1 if threshold is None else df["fracture_prob"].to_numpy(float) >= float(threshold)
    work = pd.DataFrame({
        "key": df[column].to_numpy(),
        "n": 1,
        "correct": (pred == grade).astype(int),
        "fractured": (grade >= 1).astype(int),
        "found": ((grade >= 1) & detected).astype(int),
        "g1": (grade == 1).astype(int),
        "g1_right": ((grade == 1) & (pred == 1)).astype(int),
    }).dropna(subset=["key"])
    sums = work.groupby("key", sort=False).sum()
    table = pd.DataFrame({
        column: sums.index,
        "n": sums["n"].to_numpy(),
        "n_fractured": sums["fractured"].to_numpy(),
        "accuracy": _div(sums["correct"].to_numpy(), sums["n"].to_numpy()),
        "fracture_recall": _div(sums["found"].to_numpy(), sums["fractured"].to_numpy()),
        "n_grade1": sums["g1"].to_numpy(),
        "grade1_recall": _div(sums["g1_right"].to_numpy(), sums["g1"].to_numpy()),
    })
    table = table.iloc[sorted(range(len(table)), key=lambda i: _sort_key_for(column)(table[column].iloc[i]))]
    return table.reset_index(drop=True)


def most_confident_errors(df: pd.DataFrame, n: int | None = 12) -> pd.DataFrame:
    """Misgraded vertebrae (pred != grade), most confident first.

    Adds ``pred_prob`` (probability given to the predicted grade) and
    ``true_prob`` (probability given to the true grade); sorted by ``pred_prob``
    descending; the first ``n`` rows (all when ``n`` is None). Index of ``df`` kept.
    """
    check_predictions(df, "most_confident_errors")
    probs = df[list(PROB_COLUMNS)].to_numpy(float)
    rows = np.arange(len(df))
    out = df.assign(pred_prob=probs[rows, df["pred"].to_numpy(np.int64)],
                    true_prob=probs[rows, df["grade"].to_numpy(np.int64)])
    out = out[out["pred"] != out["grade"]].sort_values("pred_prob", ascending=False, kind="stable")
    return out if n is None else out.head(int(n))


def _bootstrapped_metrics(df: pd.DataFrame, threshold: float, n_boot: int, seed: int, alpha: float, n_bins: int,
                          group: str) -> dict[str, Interval]:
    """Every metric of :data:`REPORTED_METRICS` with its patient-bootstrap interval.

    Same as ``bootstrap_ci(df, lambda d: reported_metrics(d, threshold, n_bins))``, on
    arrays: no pandas per replicate.
    """
    arrays = (df["grade"].to_numpy(np.int64), df["pred"].to_numpy(np.int64), df[list(PROB_COLUMNS)].to_numpy(float),
              df["fracture_prob"].to_numpy(float))

    def statistic(rows):
        picked = arrays if rows is None else tuple(a[rows] for a in arrays)
        return _metrics_from_arrays(*picked, float(threshold), n_bins)

    return _bootstrap_rows(statistic, len(df), df[group].to_numpy(), n_boot, seed, alpha, min_valid=0.5)


def _evaluation_core(df: pd.DataFrame, threshold: float, n_boot: int, seed: int, alpha: float, n_bins: int,
                     group: str) -> dict:
    """What the whole set and each spine region report: counts, every metric with its interval, the matrices."""
    grades = df["grade"].to_numpy(np.int64)
    pred = df["pred"].to_numpy(np.int64)
    intervals = _bootstrapped_metrics(df, threshold, n_boot, seed, alpha, n_bins, group)
    grading = grade_metrics(grades, pred)
    screening = screening_metrics(grades, df["fracture_prob"].to_numpy(float), threshold)
    moderate = grade2_metrics(grades, pred, df[list(PROB_COLUMNS)].to_numpy(float))
    return {
        "n_vertebrae": int(len(df)),
        "n_patients": int(df[group].nunique()),
        "grade_counts": {g: grading["support"][g] for g in GRADES},
        "metrics": {name: intervals[name].as_dict() for name in REPORTED_METRICS},
        "confusion_matrix": grading["confusion_matrix"],
        "confusion_matrix_row_normalised": grading["confusion_matrix_row_normalised"],
        "confusion_labels": list(GRADES),
        "screening_counts": {k: screening[k] for k in ("tp", "fp", "tn", "fn", "n_fractured", "n_normal")},
        "grade2_counts": {k: moderate[k] for k in ("tp", "fp", "tn", "fn", "n_positive", "n_negative")},
    }


def evaluate_by_region(df: pd.DataFrame, threshold: float, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                       n_bins: int = 10, group: str = "image_id") -> dict:
    """The evaluation of each spine region (:data:`SPINE_REGIONS`) that has vertebrae in ``df``.

    Each region's rows are evaluated as a set of their own, at the same operating
    point, with the patient bootstrap over the patients that have vertebrae in that
    region. Returns region -> ``{"title", "labels"`` (its VerSe labels), and the
    fields of :func:`evaluate_predictions` that describe a set: ``n_vertebrae``,
    ``n_patients``, ``grade_counts``, ``metrics``, ``confusion_matrix``,
    ``confusion_matrix_row_normalised``, ``confusion_labels``, ``screening_counts``,
    ``grade2_counts}``. Empty when the table has no ``label`` or ``level`` column.
    Not JSON-cleaned (``evaluate_predictions`` does that).
    """
    out = {}
    for region, mask in region_masks(df).items():
        rows = df.iloc[np.flatnonzero(mask)]
        out[region] = {"title": REGION_TITLES[region], "labels": list(SPINE_REGIONS[region]),
                       **_evaluation_core(rows, threshold, n_boot, seed, alpha, n_bins, group)}
    return out


def evaluate_predictions(df: pd.DataFrame, threshold: float, n_boot: int = 1000, seed: int = 0,
                         alpha: float = 0.05, n_bins: int = 10, group: str = "image_id") -> dict:
    """The whole evaluation of one model on one split, as a strict-JSON dict.

    Args:
        df: predictions (see module docstring); read, never modified.
        threshold: screening operating point chosen on validation data
            (:func:`threshold_for_specificity`); fractured when ``fracture_prob >= threshold``.
        n_boot, seed, alpha, group: the patient bootstrap (see :func:`bootstrap_ci`).
        n_bins: calibration bins.

    Returns:
        ``metrics``: for each name in :data:`REPORTED_METRICS`
        ``{"value", "ci_low", "ci_high", "n_valid"}`` (bootstrap over patients; the
        interval is null when the metric was undefined in more than half of the
        replicates, e.g. grade-3 recall when few patients have a grade 3);
        ``confusion_matrix`` (4x4 counts, rows true grade 0-3, columns predicted),
        ``confusion_matrix_row_normalised`` (the same as shares of each true grade;
        null for a grade without vertebrae) and ``confusion_labels``; ``grade_counts``
        (true grade as a string "0"-"3" -> vertebrae, JSON keys being strings);
        ``screening_counts`` (tp, fp, tn, fn at the threshold); ``grade2_counts``
        (tp, fp, tn, fn of grade >= 2 by argmax); ``n_vertebrae``,
        ``n_patients``; ``threshold``; ``calibration`` and ``binary_calibration``
        (reliability bins, see :func:`calibration`); ``by_region``
        (:func:`evaluate_by_region`: thoracic and lumbar, each with its own metrics and
        intervals; empty without a ``label`` or ``level`` column); ``recall_by_level`` and, when a
        ``morphology`` column exists, ``recall_by_morphology`` (lists of row dicts,
        see :func:`recall_by`); ``bootstrap`` (settings); ``paper_reported``
        (:data:`PAPER_REPORTED`). Undefined numbers are ``None``.
    """
    check_predictions(df)
    if group not in df.columns:
        raise DatasetError(f"predictions: grouping column {group!r} not in the table (columns {list(df.columns)})")
    grades = df["grade"].to_numpy(np.int64)
    score = df["fracture_prob"].to_numpy(float)
    core = _evaluation_core(df, threshold, n_boot, seed, alpha, n_bins, group)
    result = {
        **{k: core[k] for k in ("n_vertebrae", "n_patients", "grade_counts")},
        "threshold": float(threshold),
        **{k: v for k, v in core.items() if k not in ("n_vertebrae", "n_patients", "grade_counts")},
        "calibration": calibration(df[list(PROB_COLUMNS)].to_numpy(float), grades, n_bins),
        "binary_calibration": binary_calibration(grades, score, n_bins),
        "by_region": evaluate_by_region(df, threshold, n_boot, seed, alpha, n_bins, group),
        "recall_by_level": recall_by(df, "level", threshold).to_dict(orient="records") if "level" in df else [],
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "alpha": float(alpha),
                      "confidence": 1.0 - float(alpha), "unit": group, "method": "percentile",
                      "min_valid_fraction": 0.5},
        "paper_reported": dict(PAPER_REPORTED),
    }
    if "morphology" in df.columns:
        result["recall_by_morphology"] = recall_by(df, "morphology", threshold).to_dict(orient="records")
    return jsonable(result)


def format_ci(entry: Any, digits: int = 2) -> str:
    """``{"value": .85, "ci_low": .8, "ci_high": .9}`` -> ``"0.85 [0.80, 0.90]"``; a bare number -> ``"0.85"``.

    :data:`MISSING` when the value is missing, undefined (NaN) or not a number; the
    brackets only when both ends of the interval are finite.
    """
    value, low, high = (entry.get("value"), entry.get("ci_low"), entry.get("ci_high")) if isinstance(entry, Mapping) \
        else (entry, None, None)
    if not finite_values([value]):
        return MISSING
    text = f"{value:.{digits}f}"
    if len(finite_values([low, high])) == 2:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def format_p(p: Any, digits: int = 3) -> str:
    """A p-value for a table: ``"< 0.001"`` below the smallest value ``digits`` can show, else rounded."""
    if not finite_values([p]):
        return MISSING
    floor = 10.0 ** -digits
    return f"< {floor:.{digits}f}" if p < floor else f"{p:.{digits}f}"


def _set_of(result: Mapping[str, Any], region: str | None) -> Mapping[str, Any]:
    """The whole set of an evaluation (``region`` None) or one of its regions ({} when it has none)."""
    return result if region is None else (result.get("by_region") or {}).get(region) or {}


def comparison_table(evaluations: Mapping[str, Mapping[str, Any]],
                     metrics: Sequence[str] = ("sensitivity", "specificity", "roc_auc", "pr_auc", "macro_f1",
                                               "quadratic_kappa", "weighted_f1", "accuracy", "recall_grade1", "ece"),
                     include_paper: bool = True, digits: int = 2, region: str | None = None) -> pd.DataFrame:
    """Side-by-side table: one row per metric, one column per model, cells "value [95 % CI]".

    Args:
        evaluations: model name -> :func:`evaluate_predictions` result (same data for all).
        metrics: metric names (see :data:`REPORTED_METRICS`).
        include_paper: add a last column with :data:`PAPER_REPORTED` (the paper's
            figures on its own data; :data:`MISSING` where it reported none). Never
            with ``region``: the paper reports the whole spine only.
        region: a key of :data:`SPINE_REGIONS` for that region's numbers (:data:`MISSING`
            for a model without it); None for the whole set.
    """
    columns: dict[str, list[str]] = {}
    for model, result in evaluations.items():
        values = _set_of(result, region).get("metrics") or {}
        columns[model] = [format_ci(values.get(m), digits) for m in metrics]
    if include_paper and region is None:
        columns["Paper (Wei et al. 2022, its own data)"] = [format_ci(PAPER_REPORTED.get(m), digits) for m in metrics]
    return pd.DataFrame(columns, index=pd.Index([METRIC_LABELS.get(m, m) for m in metrics], name="metric"))


def region_table(evaluations: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] = REGION_METRICS,
                 digits: int = 2) -> pd.DataFrame:
    """Per model, the whole set and each spine region: vertebrae, patients and ``metrics`` as "value [95 % CI]".

    Rows are (model, set): "All vertebrae", then the regions of :data:`SPINE_REGIONS`
    the evaluation has (none when its predictions carried no level); columns
    ``vertebrae``, ``patients`` and the labels of ``metrics``.
    """
    rows, index = [], []
    for model, result in evaluations.items():
        sets = [("All vertebrae", result)] + [(REGION_TITLES[r], result["by_region"][r]) for r in SPINE_REGIONS
                                              if r in (result.get("by_region") or {})]
        for title, entry in sets:
            index.append((model, title))
            rows.append({"vertebrae": entry.get("n_vertebrae"), "patients": entry.get("n_patients"),
                         **{METRIC_LABELS.get(m, m): format_ci((entry.get("metrics") or {}).get(m), digits)
                            for m in metrics}})
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["model", "vertebrae of"]))


def confusion_table(confusion: Any, digits: int = 2) -> pd.DataFrame:
    """A confusion matrix as a table whose cells show the count and the share of the true grade: ``"12 (0.80)"``.

    Args:
        confusion: a 4x4 matrix of counts (rows true grade, columns predicted) or an
            :func:`evaluate_predictions` result (or one of its regions) holding one.

    The share is the row-normalised value (the diagonal is each grade's recall);
    a grade without vertebrae shows :data:`MISSING` as its share.
    """
    counts = np.asarray(confusion["confusion_matrix"] if isinstance(confusion, Mapping) else confusion)
    if counts.shape != (len(GRADES), len(GRADES)):
        raise DatasetError(f"confusion_table: expected a {len(GRADES)}x{len(GRADES)} matrix of counts, "
                           f"got shape {counts.shape}")
    shares = row_normalised(counts)
    cells = [[f"{int(counts[i, j])} ({format_ci(shares[i, j], digits)})" for j in range(len(GRADES))]
             for i in range(len(GRADES))]
    return pd.DataFrame(cells, index=pd.Index([f"grade {g}" for g in GRADES], name="true"),
                        columns=pd.Index([f"grade {g}" for g in GRADES], name="predicted"))
