"""The paired patient bootstrap of a difference between two models graded on the same test vertebrae.

Each model's own interval (:func:`vfnb.evaluate.tables.evaluate_predictions`) resamples
patients for that model alone; two overlapping intervals do not say whether the two
models differ, because both are measured on the same patients and their errors are
correlated. The interval of the *difference* is built here by drawing the same patients
for both models in every replicate and taking metric(a) - metric(b) on that draw, so the
patient-to-patient variation both models share cancels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import DatasetError, ParamsError
from ..levels import NUM_GRADES
from .fast import _metrics_from_arrays, _quadratic_kappa
from .intervals import Interval, _bootstrap_rows
from .metrics import PROB_COLUMNS, REPORTED_METRICS, check_predictions

#: The grading metrics the study's answer compares (argmax grades: no threshold involved).
PAIRED_METRICS = ("macro_f1", "quadratic_kappa")


def _vertebra_keys(df: pd.DataFrame, what: str) -> pd.Index:
    """One key per vertebra: its patch ``name`` when there is one, else ``image_id`` + ``label``."""
    if "name" in df.columns:
        keys = pd.Index(df["name"].astype(str))
    elif "label" in df.columns:
        keys = pd.Index(df["image_id"].astype(str) + "/" + df["label"].astype(str))
    else:
        raise DatasetError(f"{what}: no 'name' nor 'label' column to pair vertebrae by (columns {list(df.columns)})")
    if keys.has_duplicates:
        raise DatasetError(f"{what}: vertebra {keys[keys.duplicated()][0]!r} appears more than once")
    return keys


def aligned_pair(a: pd.DataFrame, b: pd.DataFrame, group: str = "image_id") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``a`` and ``b`` row by row on the same vertebrae (``b`` reordered to ``a``'s order).

    Refuses two tables that do not hold the same vertebrae, or that put one vertebra
    in different patients or give it different reference grades: the difference of
    their metrics would not be a comparison on one test set.
    """
    check_predictions(a, "paired_difference: first model's predictions")
    check_predictions(b, "paired_difference: second model's predictions")
    key_a, key_b = _vertebra_keys(a, "first model's predictions"), _vertebra_keys(b, "second model's predictions")
    if set(key_a) != set(key_b):
        only = sorted(set(key_a) ^ set(key_b))
        raise DatasetError(f"paired_difference: the two prediction tables hold different vertebrae ({len(only)} in "
                           f"one only, e.g. {only[0]!r}); expected the same test vertebrae for both models")
    b = b.set_axis(key_b).loc[key_a].reset_index(drop=True)
    a = a.reset_index(drop=True)
    for column in (group, "grade"):
        if not np.array_equal(a[column].astype(str).to_numpy(), b[column].astype(str).to_numpy()):
            raise DatasetError(f"paired_difference: column {column!r} differs between the two tables for the same "
                               "vertebrae; expected one reference per vertebra")
    return a, b


#: Metrics read off the 4x4 confusion matrix alone: the bootstrap needs no more than a bincount for them.
CONFUSION_METRICS = ("macro_f1", "quadratic_kappa", "accuracy")


def _confusion_metrics(grade: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Macro-F1, the quadratic-weighted kappa and accuracy, as :func:`vfnb.evaluate.reported_metrics` computes them."""
    cm = np.bincount(grade * NUM_GRADES + pred, minlength=NUM_GRADES**2).reshape(NUM_GRADES, NUM_GRADES)
    tp = np.diag(cm).astype(float)
    both = cm.sum(axis=1) + cm.sum(axis=0)
    present = both > 0
    return {"macro_f1": float(np.mean(2 * tp[present] / both[present])), "quadratic_kappa": _quadratic_kappa(cm),
            "accuracy": float(tp.sum() / grade.size)}


def _arrays(df: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return (df["grade"].to_numpy(np.int64), df["pred"].to_numpy(np.int64), df[list(PROB_COLUMNS)].to_numpy(float),
            df["fracture_prob"].to_numpy(float))


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, metrics: Sequence[str] = PAIRED_METRICS,
                      thresholds: tuple[float, float] = (0.5, 0.5), group: str = "image_id", n_boot: int = 1000,
                      seed: int = 0, alpha: float = 0.05, n_bins: int = 10) -> dict[str, Interval]:
    """metric(a) - metric(b) with its paired patient-bootstrap interval, per metric.

    Args:
        a, b: predictions of two models on the same vertebrae (one row each, any order;
            paired by ``name``, else ``image_id`` + ``label``).
        metrics: names of :data:`vfnb.evaluate.REPORTED_METRICS`.
        thresholds: each model's operating point (used by the metrics read at it:
            sensitivity, specificity, PPV, NPV; the grading metrics ignore it).
        group, n_boot, seed, alpha: as :func:`vfnb.evaluate.bootstrap_ci`; with the same
            seed and table order the replicates draw the same patients as each model's
            own interval.

    Returns:
        name -> :class:`Interval` of the difference (point = the difference on the
        whole test set; NaN interval when fewer than half the replicates define it).
        Two identical tables give 0 with a 0-width interval.
    """
    unknown = [m for m in metrics if m not in REPORTED_METRICS]
    if unknown:
        raise ParamsError(f"paired_difference: unknown metric(s) {unknown}; expected names of REPORTED_METRICS")
    a, b = aligned_pair(a, b, group)
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    threshold_a, threshold_b = (float(t) for t in thresholds)

    def of(arrays, threshold):
        if set(metrics) <= set(CONFUSION_METRICS):
            return _confusion_metrics(arrays[0], arrays[1])
        return _metrics_from_arrays(*arrays, threshold, n_bins)

    def statistic(rows):
        pick = (lambda arrays: arrays) if rows is None else (lambda arrays: tuple(x[rows] for x in arrays))
        first, second = of(pick(arrays_a), threshold_a), of(pick(arrays_b), threshold_b)
        return {m: first[m] - second[m] for m in metrics}

    return _bootstrap_rows(statistic, len(a), a[group].to_numpy(), n_boot, seed, alpha, min_valid=0.5)
