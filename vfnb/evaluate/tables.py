"""The whole evaluation of a model (``evaluate_predictions``), recall per level or morphology, errors, and tables."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DatasetError
from ..levels import GRADES, label_from_level, spine_order
from .calibration import binary_calibration, calibration
from .fast import _metrics_from_arrays
from .intervals import _bootstrap_rows, finite_values
from .metrics import (METRIC_LABELS, MISSING, PAPER_REPORTED, PROB_COLUMNS, REPORTED_METRICS, _div, check_predictions,
                      grade_metrics, jsonable, screening_metrics)


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
        ``confusion_matrix`` (4x4, rows true grade 0-3, columns predicted) and
        ``confusion_labels``; ``grade_counts`` (true grade as a string "0"-"3" -> vertebrae,
        JSON keys being strings);
        ``screening_counts`` (tp, fp, tn, fn at the threshold); ``n_vertebrae``,
        ``n_patients``; ``threshold``; ``calibration`` and ``binary_calibration``
        (reliability bins, see :func:`calibration`); ``recall_by_level`` and, when a
        ``morphology`` column exists, ``recall_by_morphology`` (lists of row dicts,
        see :func:`recall_by`); ``bootstrap`` (settings); ``paper_reported``
        (:data:`PAPER_REPORTED`). Undefined numbers are ``None``.
    """
    check_predictions(df)
    grades = df["grade"].to_numpy(np.int64)
    score = df["fracture_prob"].to_numpy(float)
    if group not in df.columns:
        raise DatasetError(f"predictions: grouping column {group!r} not in the table (columns {list(df.columns)})")
    # same as bootstrap_ci(df, lambda d: reported_metrics(d, threshold, n_bins)), on arrays: no pandas per replicate
    arrays = (grades, df["pred"].to_numpy(np.int64), df[list(PROB_COLUMNS)].to_numpy(float), score)

    def statistic(rows):
        picked = arrays if rows is None else tuple(a[rows] for a in arrays)
        return _metrics_from_arrays(*picked, float(threshold), n_bins)

    intervals = _bootstrap_rows(statistic, len(df), df[group].to_numpy(), n_boot, seed, alpha, min_valid=0.5)
    grading = grade_metrics(grades, df["pred"].to_numpy(np.int64))
    screening = screening_metrics(grades, score, threshold)
    result = {
        "n_vertebrae": int(len(df)),
        "n_patients": int(df[group].nunique()),
        "grade_counts": {g: grading["support"][g] for g in GRADES},
        "threshold": float(threshold),
        "metrics": {name: intervals[name].as_dict() for name in REPORTED_METRICS},
        "confusion_matrix": grading["confusion_matrix"],
        "confusion_labels": list(GRADES),
        "screening_counts": {k: screening[k] for k in ("tp", "fp", "tn", "fn", "n_fractured", "n_normal")},
        "calibration": calibration(df[list(PROB_COLUMNS)].to_numpy(float), grades, n_bins),
        "binary_calibration": binary_calibration(grades, score, n_bins),
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


def comparison_table(evaluations: Mapping[str, Mapping[str, Any]],
                     metrics: Sequence[str] = ("sensitivity", "specificity", "roc_auc", "pr_auc", "macro_f1",
                                               "weighted_f1", "accuracy", "recall_grade1", "ece"),
                     include_paper: bool = True, digits: int = 2) -> pd.DataFrame:
    """Side-by-side table: one row per metric, one column per model, cells "value [95 % CI]".

    Args:
        evaluations: model name -> :func:`evaluate_predictions` result (same data for all).
        metrics: metric names (see :data:`REPORTED_METRICS`).
        include_paper: add a last column with :data:`PAPER_REPORTED` (the paper's
            figures on its own data; :data:`MISSING` where it reported none).
    """
    columns: dict[str, list[str]] = {}
    for model, result in evaluations.items():
        columns[model] = [format_ci(result["metrics"].get(m), digits) for m in metrics]
    if include_paper:
        columns["Paper (Wei et al. 2022, its own data)"] = [format_ci(PAPER_REPORTED.get(m), digits) for m in metrics]
    return pd.DataFrame(columns, index=pd.Index([METRIC_LABELS.get(m, m) for m in metrics], name="metric"))
