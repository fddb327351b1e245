"""Every reported metric of one predictions table with plain numpy, for the bootstrap.

The bootstrap recomputes the metrics 1000 times per model, where scikit-learn's input
checking dominates (~15 ms a replicate); these functions give the same numbers from a
confusion matrix and sorted scores in well under a millisecond (tests pin them to
scikit-learn)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..levels import GRADES, NUM_GRADES
from .calibration import _reliability
from .metrics import PROB_COLUMNS, _as_grades, _as_scores, _div


def _ranking_counts(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true, false) positives at each distinct threshold, highest score first."""
    order = np.argsort(-score, kind="stable")
    s = score[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # last index of each tied block
    tps = np.cumsum(positive[order])[last].astype(float)
    return tps, (last + 1.0) - tps


def _roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    # trapezoidal area under the ROC points of all distinct thresholds (as scikit-learn)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    tps, fps = _ranking_counts(positive, score)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def fracture_auc(grade: Sequence[int], score: Sequence[float]) -> float | None:
    """Screening ROC AUC (fractured = grade >= 1) of ``score``; None when only one class is present."""
    grade = _as_grades(grade, "fracture_auc: grade")
    auc = _roc_auc(grade >= 1, _as_scores(score, grade.size, "fracture_auc: score"))
    return None if math.isnan(auc) else auc


def _average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    # sum over distinct thresholds (descending) of (R_k - R_{k-1}) * P_k, as scikit-learn
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        return math.nan
    tps, fps = _ranking_counts(positive, score)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * tps / (tps + fps)))


_GRADE_DISTANCE2 = (np.arange(NUM_GRADES)[:, None] - np.arange(NUM_GRADES)[None, :]) ** 2.0


def _quadratic_kappa(cm: np.ndarray) -> float:
    """Quadratic-weighted kappa from a 4x4 confusion matrix: 1 - observed / chance-expected weighted disagreement.

    The weights are squared grade distances over all four grades, as in
    :func:`vfnb.evaluate.metrics.quadratic_kappa` (the normalisation by (K - 1)^2
    cancels in the ratio). NaN when chance already agrees perfectly.
    """
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    expected = float(rows @ _GRADE_DISTANCE2 @ cols) / cm.sum()
    return 1.0 - float(np.sum(_GRADE_DISTANCE2 * cm)) / expected if expected > 0 else math.nan


def _metrics_from_arrays(grade: np.ndarray, pred: np.ndarray, probs: np.ndarray,
                          score: np.ndarray, threshold: float, n_bins: int) -> dict[str, float]:
    cm = np.bincount(grade * NUM_GRADES + pred, minlength=NUM_GRADES**2).reshape(NUM_GRADES, NUM_GRADES)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = _div(tp, support)
    precision = _div(tp, predicted)
    f1 = _div(2 * tp, support + predicted)
    present = (support + predicted) > 0
    out: dict[str, float] = {
        "accuracy": float(tp.sum() / grade.size),
        "macro_f1": float(np.mean(f1[present])),
        "weighted_f1": float(np.sum(np.nan_to_num(f1) * support) / support.sum()),
        "quadratic_kappa": _quadratic_kappa(cm),
    }
    for g in GRADES:
        out[f"recall_grade{g}"] = float(recall[g])
        out[f"precision_grade{g}"] = float(precision[g])
        out[f"f1_grade{g}"] = float(f1[g])
    positive = grade >= 1
    called = score >= threshold
    s_tp = float(np.sum(positive & called))
    s_fn = float(np.sum(positive & ~called))
    s_fp = float(np.sum(~positive & called))
    s_tn = float(np.sum(~positive & ~called))
    ratio = lambda a, b: a / b if b > 0 else math.nan  # noqa: E731  (scalar _div, cheaper in the bootstrap)
    out["sensitivity"] = ratio(s_tp, s_tp + s_fn)
    out["specificity"] = ratio(s_tn, s_tn + s_fp)
    out["ppv"] = ratio(s_tp, s_tp + s_fp)
    out["npv"] = ratio(s_tn, s_tn + s_fn)
    out["roc_auc"] = _roc_auc(positive, score)
    out["pr_auc"] = _average_precision(positive, score)
    # grade >= 2 (moderate or severe): argmax decision from the confusion matrix, AUC on p2 + p3
    g2_tp, g2_fn = float(cm[2:, 2:].sum()), float(cm[2:, :2].sum())
    g2_tn, g2_fp = float(cm[:2, :2].sum()), float(cm[:2, 2:].sum())
    out["sensitivity_g2"] = ratio(g2_tp, g2_tp + g2_fn)
    out["specificity_g2"] = ratio(g2_tn, g2_tn + g2_fp)
    out["roc_auc_g2"] = _roc_auc(grade >= 2, probs[:, 2] + probs[:, 3])
    out["ece"] = _reliability(probs.max(axis=1), probs.argmax(axis=1) == grade, n_bins, "top-class")["ece"]
    out["binary_ece"] = _reliability(score, positive, n_bins, "binary")["ece"]
    return out


def reported_metrics(df: pd.DataFrame, threshold: float, n_bins: int = 10) -> dict[str, float]:
    """Every metric in :data:`REPORTED_METRICS` for one predictions table (fast numpy path).

    Same numbers as :func:`grade_metrics`, :func:`screening_metrics`,
    :func:`grade2_metrics` and :func:`calibration` (tested against scikit-learn), computed in well under a
    millisecond so that :func:`bootstrap_ci` can call it 1000 times. Names:
    ``accuracy``, ``macro_f1``, ``weighted_f1``, ``recall_grade{g}``,
    ``precision_grade{g}``, ``f1_grade{g}`` (g = 0-3), ``quadratic_kappa``, ``sensitivity``,
    ``specificity``, ``ppv``, ``npv`` (at ``fracture_prob >= threshold``),
    ``roc_auc``, ``pr_auc``, ``sensitivity_g2``, ``specificity_g2`` (grade >= 2, argmax),
    ``roc_auc_g2`` (p2 + p3), ``ece`` (top-class), ``binary_ece`` (fracture_prob).
    Undefined values are NaN. Input is not validated here (see :func:`check_predictions`).
    """
    return _metrics_from_arrays(
        df["grade"].to_numpy(np.int64), df["pred"].to_numpy(np.int64),
        df[list(PROB_COLUMNS)].to_numpy(float), df["fracture_prob"].to_numpy(float),
        float(threshold), n_bins)
