"""Metrics of the study (STUDY §1.6), confidence intervals by patient, operating points.

Inputs
------
Predictions are a pandas DataFrame from :func:`vfnb.predict.predict_patches`, one
row per vertebra, with columns ``image_id`` (the patient / CT), ``label``,
``level``, ``grade`` (true Genant grade 0-3), ``pred`` (predicted grade 0-3),
``p0 .. p3`` (predicted grade probabilities, rows sum to 1) and
``fracture_prob`` (= 1 - p0, the screening score); optional extra columns such
as ``morphology`` are kept.

Conventions
-----------
- Screening (binary): label = grade >= 1 ("fractured"); a vertebra is called
  fractured when ``fracture_prob >= threshold`` (ties at the threshold count as
  positive).
- Undefined values (recall of a grade with no vertebrae, AUC with one class only,
  ...) are ``NaN`` in the functions below, never an exception; the JSON produced
  by :func:`evaluate_predictions` writes them as ``null``.
- Confidence intervals are percentile intervals of a bootstrap over *patients*
  (``image_id``): vertebrae of one CT are correlated, so resampling vertebrae
  would give intervals that are too narrow.

The one-off metric functions (:func:`grade_metrics`, :func:`screening_metrics`)
call scikit-learn. The bootstrap recomputes the headline metrics 1000 times per
model, where scikit-learn's input checking dominates (~15 ms a replicate), so
:func:`reported_metrics` computes the same numbers with plain numpy from a
confusion matrix and sorted scores; the tests pin it to scikit-learn.

Typical use (notebook 02 picks the threshold, notebook 03 reports)::

    thr = threshold_for_specificity(val_df["grade"], val_df["fracture_prob"], target=0.99)
    result = evaluate_predictions(test_df, thr, n_boot=1000, seed=0)
    result["metrics"]["sensitivity"]   # {"value": .., "ci_low": .., "ci_high": .., "n_valid": ..}
    comparison_table({"SupCon": result, "CE baseline": ce_result})
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from .errors import DatasetError, ParamsError
from .levels import GRADES, NUM_GRADES, label_from_level, spine_order

PROB_COLUMNS = tuple(f"p{g}" for g in GRADES)
REQUIRED_COLUMNS = ("image_id", "grade", "pred", *PROB_COLUMNS, "fracture_prob")

#: What the paper reported on ITS OWN data (208 clinical CTs / 2423 vertebrae,
#: STUDY §1). Context for our tables, not a target our data can be compared
#: with number for number.
PAPER_REPORTED: dict[str, Any] = {
    "source": "Wei et al., BIBM 2022 (arXiv 2208.10698): reported on the paper's own "
              "208 clinical CTs / 2423 vertebrae, not on this data",
    "specificity": 0.99,
    "sensitivity": 0.85,
    "macro_f1": 0.77,
}

#: Metric names bootstrapped by :func:`evaluate_predictions`, in report order.
REPORTED_METRICS: tuple[str, ...] = (
    "sensitivity", "specificity", "ppv", "npv", "roc_auc", "pr_auc",
    "accuracy", "macro_f1", "weighted_f1",
    *(f"{kind}_grade{g}" for g in GRADES for kind in ("recall", "precision", "f1")),
    "ece", "binary_ece",
)

#: The study's headline numbers, in table order: the screening pair at the operating
#: point, the threshold-free AUC, then two numbers of 4-class grading.
HEADLINE_METRICS: tuple[str, ...] = ("sensitivity", "specificity", "roc_auc", "macro_f1", "recall_grade1")

#: How a metric turns the predicted probabilities into a decision. "operating point":
#: fractured when 1 - P(grade 0) reaches the threshold chosen on validation;
#: "threshold-free": over every threshold; "argmax": the most probable grade;
#: "calibration": the probabilities themselves. A model can be at specificity 0.99 at
#: its operating point while its argmax grades call many normal vertebrae fractured.
METRIC_DECISION: dict[str, str] = {
    **{k: "operating point" for k in ("sensitivity", "specificity", "ppv", "npv")},
    **{k: "threshold-free" for k in ("roc_auc", "pr_auc")},
    **{k: "argmax" for k in ("accuracy", "macro_f1", "weighted_f1")},
    **{f"{kind}_grade{g}": "argmax" for g in GRADES for kind in ("recall", "precision", "f1")},
    **{k: "calibration" for k in ("ece", "binary_ece")},
}

#: Human-readable names for tables, saying what each metric is computed on.
METRIC_LABELS: dict[str, str] = {
    "sensitivity": "Sensitivity (grade ≥ 1, at the operating point)",
    "specificity": "Specificity (grade ≥ 1, at the operating point)",
    "ppv": "PPV (grade ≥ 1, at the operating point)",
    "npv": "NPV (grade ≥ 1, at the operating point)",
    "roc_auc": "ROC AUC (grade ≥ 1, threshold-free)",
    "pr_auc": "PR AUC / average precision (grade ≥ 1, threshold-free)",
    "accuracy": "Accuracy (4 grades, argmax)",
    "macro_f1": "Macro-F1 (4 grades, argmax)",
    "weighted_f1": "Weighted F1 (4 grades, argmax)",
    "ece": "ECE, top-class confidence (4 grades)",
    "binary_ece": "ECE, fracture probability",
    **{f"{kind}_grade{g}": f"{kind.capitalize()} grade {g} (argmax)" for g in GRADES
       for kind in ("recall", "precision", "f1")},
}

#: What a missing or undefined number is shown as, everywhere.
MISSING = "n/a"


# ------------------------------------------------------------------ helpers
def _div(num: Any, den: Any) -> Any:
    """num / den with NaN where den == 0 (works on scalars and arrays)."""
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out.item() if out.ndim == 0 else out


def _as_grades(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DatasetError(f"{what}: expected a 1-D sequence of Genant grades, got shape {arr.shape}")
    if arr.size and (not np.all(np.isfinite(arr.astype(float))) or np.any(arr.astype(float) % 1 != 0)
                     or arr.min() < 0 or arr.max() >= NUM_GRADES):
        raise DatasetError(f"{what}: expected integer Genant grades 0-3, got values {sorted(set(arr.tolist()))[:8]}")
    return arr.astype(np.int64)


def _as_scores(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.shape != (n,):
        raise DatasetError(f"{what}: expected {n} scores to match the grades, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{what}: scores must be finite (found NaN or inf)")
    return arr


def _as_probs(probs: Any, n: int, what: str = "probs") -> np.ndarray:
    arr = np.asarray(probs, dtype=float)
    if arr.shape != (n, NUM_GRADES):
        raise DatasetError(f"{what}: expected grade probabilities of shape [{n}, {NUM_GRADES}], got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{what}: probabilities must be finite (found NaN or inf)")
    return arr


def check_predictions(df: pd.DataFrame, where: str = "predictions") -> None:
    """Raise :class:`DatasetError` unless ``df`` has the columns and values metrics need."""
    if not isinstance(df, pd.DataFrame):
        raise DatasetError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; expected {list(REQUIRED_COLUMNS)} "
                           "(as written by vfnb.predict.predict_patches)")
    if len(df) == 0:
        raise DatasetError(f"{where}: no rows (expected one row per vertebra)")
    _as_grades(df["grade"], f"{where} column 'grade'")
    _as_grades(df["pred"], f"{where} column 'pred'")
    _as_scores(df["fracture_prob"], len(df), f"{where} column 'fracture_prob'")
    _as_probs(df[list(PROB_COLUMNS)].to_numpy(), len(df), f"{where} columns {list(PROB_COLUMNS)}")


def jsonable(obj: Any) -> Any:
    """Copy of ``obj`` that strict JSON accepts: numpy -> Python, NaN/inf -> None, tuples -> lists."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, pd.DataFrame):
        return jsonable(obj.to_dict(orient="records"))
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


# ------------------------------------------------------------------ 4-class grading
def grade_metrics(y: Sequence[int], pred: Sequence[int]) -> dict:
    """4-class Genant grading metrics (scikit-learn).

    Args:
        y: true grades 0-3, length N.
        pred: predicted grades 0-3, length N.

    Returns:
        dict with ``accuracy``, ``macro_f1`` and ``weighted_f1`` (floats);
        ``precision``, ``recall``, ``f1``, ``support`` (dicts grade -> value, all
        four grades present); ``confusion_matrix`` (4x4 nested list, rows = true
        grade 0-3, columns = predicted grade 0-3, counts of vertebrae);
        ``labels`` [0, 1, 2, 3]; ``n``.

    Per-grade precision is NaN when nothing was predicted as that grade, recall
    NaN when the grade has no vertebrae, F1 NaN when both. Macro-F1 averages the
    grades present in ``y`` or ``pred`` (scikit-learn's default), so a grade absent
    from a small test set does not count as F1 = 0.
    """
    y = _as_grades(y, "grade_metrics: y")
    pred = _as_grades(pred, "grade_metrics: pred")
    if y.shape != pred.shape:
        raise DatasetError(f"grade_metrics: y has {y.size} grades but pred has {pred.size}")
    if y.size == 0:
        raise DatasetError("grade_metrics: no vertebrae (empty y)")
    labels = list(GRADES)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=np.nan)
    return {
        "n": int(y.size),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=np.nan)),
        "weighted_f1": float(skm.f1_score(y, pred, average="weighted", zero_division=np.nan)),
        "precision": {g: float(v) for g, v in zip(labels, precision)},
        "recall": {g: float(v) for g, v in zip(labels, recall)},
        "f1": {g: float(v) for g, v in zip(labels, f1)},
        "support": {g: int(v) for g, v in zip(labels, support)},
        "labels": labels,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
    }


def chance_macro_f1(y: Sequence[int], n_draws: int = 2000, seed: int = 0) -> dict:
    """Macro-F1 that graders blind to the image reach on the true grades ``y``.

    ``always_normal``: every vertebra called grade 0. ``uniform``: grades guessed
    uniformly at random (the mean over ``n_draws`` seeded draws). Macro-F1 as in
    :func:`grade_metrics` (grades present in ``y`` or the guesses).
    """
    y = _as_grades(y, "chance_macro_f1: y")
    if y.size == 0:
        raise DatasetError("chance_macro_f1: no vertebrae (empty y)")
    rng = np.random.default_rng(seed)
    uniform = [skm.f1_score(y, rng.integers(0, NUM_GRADES, y.size), average="macro", zero_division=0)
               for _ in range(int(n_draws))]
    return {"always_normal": float(skm.f1_score(y, np.zeros_like(y), average="macro", zero_division=0)),
            "uniform": float(np.mean(uniform))}


def permutation_p_value(y: Sequence[int], pred: Sequence[int], n_permutations: int = 2000, seed: int = 0) -> float:
    """One-sided p-value of the macro-F1 of ``pred`` against "predictions unrelated to the grades".

    The null distribution shuffles ``pred`` over the vertebrae (keeping how often each
    grade is predicted); p = (1 + #{shuffled macro-F1 >= observed}) / (1 + n_permutations).
    A small p says the grader is above chance; it says nothing about how far above.
    """
    y = _as_grades(y, "permutation_p_value: y")
    pred = _as_grades(pred, "permutation_p_value: pred")
    if y.shape != pred.shape or y.size == 0:
        raise DatasetError(f"permutation_p_value: y has {y.size} grades and pred {pred.size}; expected the same, > 0")
    observed = skm.f1_score(y, pred, average="macro", zero_division=0)
    rng = np.random.default_rng(seed)
    hits = sum(skm.f1_score(y, rng.permutation(pred), average="macro", zero_division=0) >= observed - 1e-12
               for _ in range(int(n_permutations)))
    return float((1 + hits) / (1 + int(n_permutations)))


# ------------------------------------------------------------------ binary screening
def screening_metrics(grade: Sequence[int], fracture_prob: Sequence[float], threshold: float) -> dict:
    """Binary screening (fractured = grade >= 1) at an operating point (scikit-learn).

    Args:
        grade: true Genant grades 0-3, length N.
        fracture_prob: screening score in [0, 1] (1 - P(grade 0)), length N.
        threshold: a vertebra is called fractured when ``fracture_prob >= threshold``.

    Returns:
        dict with ``sensitivity``, ``specificity``, ``ppv``, ``npv`` at the
        threshold; threshold-free ``roc_auc`` and ``pr_auc`` (average precision);
        counts ``tp``, ``fp``, ``tn``, ``fn``, ``n_fractured``, ``n_normal``;
        ``threshold``. A value that is undefined on these data (e.g. sensitivity
        or AUC without fractured vertebrae) is NaN.
    """
    grade = _as_grades(grade, "screening_metrics: grade")
    score = _as_scores(fracture_prob, grade.size, "screening_metrics: fracture_prob")
    positive = grade >= 1
    called = score >= float(threshold)
    tn, fp, fn, tp = skm.confusion_matrix(positive, called, labels=[False, True]).ravel()
    both_classes = 0 < positive.sum() < positive.size
    return {
        "threshold": float(threshold),
        "n_fractured": int(positive.sum()),
        "n_normal": int((~positive).sum()),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "roc_auc": float(skm.roc_auc_score(positive, score)) if both_classes else math.nan,
        "pr_auc": float(skm.average_precision_score(positive, score)) if both_classes else math.nan,
    }


def threshold_for_specificity(grade: Sequence[int], fracture_prob: Sequence[float], target: float = 0.99) -> float:
    """Operating point on validation data: the lowest threshold with specificity >= ``target``.

    The rule it serves is "fractured when ``fracture_prob >= threshold``".
    Candidates are the distinct observed scores (of any vertebra) plus the next
    float above the highest score (calls everything normal, specificity 1), so
    the answer always exists. Ties: vertebrae whose score equals the threshold
    are all called fractured, so a block of tied grade-0 scores is never split;
    if taking it would break the target, the threshold moves above the whole
    block. Specificity is compared with a 1e-9 tolerance against rounding
    (99 of 100 normals is specificity 0.99).

    Args:
        grade: true Genant grades 0-3 of the validation vertebrae.
        fracture_prob: their screening scores.
        target: required specificity in (0, 1]; the paper's operating point is 0.99.

    Returns:
        the threshold (float; may be just above 1.0 when no threshold <= 1 reaches the target).

    Raises:
        ParamsError: ``target`` outside (0, 1].
        DatasetError: no grade-0 vertebra, so specificity is undefined.
    """
    if not 0.0 < float(target) <= 1.0:
        raise ParamsError(f"target specificity {target!r}: expected a number in (0, 1]")
    grade = _as_grades(grade, "threshold_for_specificity: grade")
    score = _as_scores(fracture_prob, grade.size, "threshold_for_specificity: fracture_prob")
    normal_scores = np.sort(score[grade == 0])
    if normal_scores.size == 0:
        raise DatasetError("threshold_for_specificity: no grade-0 vertebrae in the data, so specificity "
                           "is undefined; choose the operating point on a split that has normal vertebrae")
    candidates = np.append(np.unique(score), np.nextafter(score.max(), np.inf))
    # normals with score < t are true negatives; searchsorted counts them for every candidate at once
    specificity = np.searchsorted(normal_scores, candidates, side="left") / normal_scores.size
    return float(candidates[np.argmax(specificity >= float(target) - 1e-9)])


# ------------------------------------------------------------------ calibration
def _reliability(confidence: np.ndarray, outcome: np.ndarray, n_bins: int, kind: str) -> dict:
    if int(n_bins) < 1:
        raise ParamsError(f"n_bins {n_bins!r}: expected a positive integer")
    n_bins = int(n_bins)
    # equal-width bins on [0, 1]; a confidence of exactly 1 goes to the last bin
    idx = np.clip((confidence * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    mean_conf = _div(np.bincount(idx, weights=confidence, minlength=n_bins), count)
    mean_outcome = _div(np.bincount(idx, weights=outcome.astype(float), minlength=n_bins), count)
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(mean_outcome[filled] - mean_conf[filled])) / max(confidence.size, 1))
    return {
        "kind": kind,
        "ece": ece if confidence.size else math.nan,
        "n": int(confidence.size),
        "n_bins": n_bins,
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_outcome.tolist(),
        "count": count.tolist(),
    }


def calibration(probs: Any, y: Sequence[int], n_bins: int = 10) -> dict:
    """Calibration of the top-class confidence of 4-class grading.

    Args:
        probs: ``[N, 4]`` grade probabilities (rows sum to 1).
        y: true grades 0-3, length N.
        n_bins: equal-width confidence bins on [0, 1].

    Returns:
        dict with ``ece`` (expected calibration error: sum over bins of
        (count / N) * |accuracy - confidence|), ``kind`` = "top-class", ``n``,
        ``n_bins``, ``bin_edges`` (n_bins + 1), and per bin ``confidence`` (mean
        top-class probability), ``accuracy`` (fraction whose argmax grade is
        right) and ``count`` (vertebrae); empty bins have NaN confidence/accuracy.
    """
    y = _as_grades(y, "calibration: y")
    probs = _as_probs(probs, y.size, "calibration: probs")
    return _reliability(probs.max(axis=1), probs.argmax(axis=1) == y, n_bins, "top-class")


def binary_calibration(grade: Sequence[int], fracture_prob: Sequence[float], n_bins: int = 10) -> dict:
    """Calibration of the screening score ``fracture_prob`` as a probability of grade >= 1.

    Same dict as :func:`calibration` with ``kind`` = "binary": per bin,
    ``confidence`` is the mean predicted fracture probability and ``accuracy``
    the observed fraction of fractured vertebrae.
    """
    grade = _as_grades(grade, "binary_calibration: grade")
    score = _as_scores(fracture_prob, grade.size, "binary_calibration: fracture_prob")
    return _reliability(score, grade >= 1, n_bins, "binary")


# ------------------------------------------------------------------ fast headline metrics
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
    out["ece"] = _reliability(probs.max(axis=1), probs.argmax(axis=1) == grade, n_bins, "top-class")["ece"]
    out["binary_ece"] = _reliability(score, positive, n_bins, "binary")["ece"]
    return out


def reported_metrics(df: pd.DataFrame, threshold: float, n_bins: int = 10) -> dict[str, float]:
    """Every metric in :data:`REPORTED_METRICS` for one predictions table (fast numpy path).

    Same numbers as :func:`grade_metrics`, :func:`screening_metrics` and
    :func:`calibration` (tested against scikit-learn), computed in well under a
    millisecond so that :func:`bootstrap_ci` can call it 1000 times. Names:
    ``accuracy``, ``macro_f1``, ``weighted_f1``, ``recall_grade{g}``,
    ``precision_grade{g}``, ``f1_grade{g}`` (g = 0-3), ``sensitivity``,
    ``specificity``, ``ppv``, ``npv`` (at ``fracture_prob >= threshold``),
    ``roc_auc``, ``pr_auc``, ``ece`` (top-class), ``binary_ece`` (fracture_prob).
    Undefined values are NaN. Input is not validated here (see :func:`check_predictions`).
    """
    return _metrics_from_arrays(
        df["grade"].to_numpy(np.int64), df["pred"].to_numpy(np.int64),
        df[list(PROB_COLUMNS)].to_numpy(float), df["fracture_prob"].to_numpy(float),
        float(threshold), n_bins)


# ------------------------------------------------------------------ bootstrap
class Interval(tuple):
    """``(point, low, high)`` of a bootstrap confidence interval; unpacks as a 3-tuple.

    Attributes: ``point``, ``low``, ``high``, ``n_valid`` (replicates where the
    statistic was defined), ``n_boot`` (replicates drawn).
    """

    def __new__(cls, point: float, low: float, high: float, n_valid: int, n_boot: int):
        self = super().__new__(cls, (float(point), float(low), float(high)))
        self.n_valid = int(n_valid)
        self.n_boot = int(n_boot)
        return self

    point = property(lambda self: self[0])
    low = property(lambda self: self[1])
    high = property(lambda self: self[2])

    def as_dict(self) -> dict:
        """``{"value", "ci_low", "ci_high", "n_valid"}`` (floats may be NaN)."""
        return {"value": self.point, "ci_low": self.low, "ci_high": self.high, "n_valid": self.n_valid}

    def __repr__(self) -> str:
        return f"Interval(point={self.point:.4g}, low={self.low:.4g}, high={self.high:.4g}, valid={self.n_valid}/{self.n_boot})"


def bootstrap_indices(groups: Sequence[Any] | None, n_rows: int, n_boot: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of ``n_boot`` cluster-bootstrap replicates.

    Each replicate draws as many groups as there are, with replacement, and
    takes *all* rows of every drawn group (a group drawn twice appears twice).
    ``groups=None`` resamples rows individually.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        codes = np.arange(n_rows)
    else:
        codes, _ = pd.factorize(np.asarray(groups), use_na_sentinel=False)
    n_groups = int(codes.max()) + 1 if n_rows else 0
    order = np.argsort(codes, kind="stable")  # rows grouped together
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.cumsum(sizes) - sizes
    draws = rng.integers(0, n_groups, size=(int(n_boot), n_groups))
    out = []
    for chosen in draws:
        lengths = sizes[chosen]
        # position within the concatenation -> position in `order`: start of its group + offset
        shift = np.repeat(starts[chosen] - (np.cumsum(lengths) - lengths), lengths)
        out.append(order[shift + np.arange(lengths.sum())])
    return out


def _interval(point: float, values: np.ndarray, alpha: float, min_valid: float, n_boot: int) -> Interval:
    valid = values[np.isfinite(values)]
    if valid.size == 0 or valid.size < min_valid * n_boot:
        return Interval(point, math.nan, math.nan, valid.size, n_boot)
    low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Interval(point, low, high, valid.size, n_boot)


def bootstrap_ci(df: pd.DataFrame, metric_fn: Callable[[pd.DataFrame], Any], group: str | None = "image_id",
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, min_valid: float = 0.5):
    """Percentile confidence interval by resampling patients (groups) with replacement.

    Args:
        df: one row per vertebra.
        metric_fn: ``metric_fn(df_like) -> float`` or ``-> dict[str, float]``; it is
            called once on ``df`` (the point estimate) and once per replicate on a
            resampled DataFrame in which every drawn patient brings all its rows.
        group: column naming the resampling unit (the patient / CT, ``image_id``);
            ``None`` resamples vertebrae individually (too narrow for correlated
            vertebrae: use only to compare).
        n_boot: number of replicates; seed: numpy seed (same seed, same intervals).
        alpha: 0.05 gives a 95 % interval (2.5th and 97.5th percentiles).
        min_valid: replicates where the statistic is NaN/inf, or where ``metric_fn``
            raises ValueError / ZeroDivisionError (e.g. no fractured vertebra drawn),
            are skipped; the interval uses the valid ones and is NaN when fewer than
            ``min_valid * n_boot`` are valid. ``Interval.n_valid`` says how many were.

    Returns:
        :class:`Interval` ``(point, low, high)`` for a scalar statistic, or a dict
        name -> Interval for a dict-valued one.
    """
    if group is not None and group not in df.columns:
        raise DatasetError(f"bootstrap_ci: grouping column {group!r} not in the table (columns {list(df.columns)})")
    if len(df) == 0:
        raise DatasetError("bootstrap_ci: empty table")
    groups = None if group is None else df[group].to_numpy()
    return _bootstrap_rows(lambda rows: metric_fn(df if rows is None else df.iloc[rows]), len(df), groups,
                           n_boot, seed, alpha, min_valid)


def _bootstrap_rows(statistic: Callable[[np.ndarray | None], Any], n_rows: int, groups: np.ndarray | None,
                    n_boot: int, seed: int, alpha: float, min_valid: float):
    """:func:`bootstrap_ci` on a statistic of row indices (``None`` = all rows, the point estimate)."""
    if not 0 < alpha < 1:
        raise ParamsError(f"alpha {alpha!r}: expected a number in (0, 1)")
    if int(n_boot) < 1:
        raise ParamsError(f"n_boot {n_boot!r}: expected a positive integer")
    point = statistic(None)
    is_dict = isinstance(point, Mapping)
    keys = list(point) if is_dict else [None]
    values = np.full((int(n_boot), len(keys)), np.nan)
    for b, rows in enumerate(bootstrap_indices(groups, n_rows, n_boot, seed)):
        try:
            stat = statistic(rows)
        except (ValueError, ZeroDivisionError):
            continue
        values[b] = [stat[k] for k in keys] if is_dict else [stat]
    intervals = [_interval(float(point[k]) if is_dict else float(point), values[:, j], alpha, min_valid, int(n_boot))
                 for j, k in enumerate(keys)]
    return dict(zip(keys, intervals)) if is_dict else intervals[0]


# ------------------------------------------------------------------ tables
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


# ------------------------------------------------------------------ everything
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


# ------------------------------------------------------------------ across training runs
def finite_values(values) -> list[float]:
    """The finite numbers of ``values`` as floats (None, NaN, inf and non-numbers left out)."""
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_interval(values: Sequence[float], confidence: float = 0.95,
                  bounds: tuple[float, float] | None = None) -> dict:
    """``n``, ``mean``, ``sd`` (n - 1), the ``confidence`` t-interval of the mean, ``min``, ``max``.

    Non-finite values are left out. With fewer than 2 values ``sd`` and the interval
    are ``None`` (shown as "n/a"); with none, everything but ``n`` is ``None``.
    ``bounds``: the range the quantity can take (``(0, 1)`` for a metric, ``(-1, 1)``
    for a difference of two); the interval is clipped to it (with few runs the
    t-interval is wide and would otherwise claim impossible values).
    """
    from scipy import stats

    x = finite_values(values)
    n = len(x)
    out = {"n": n, "mean": None, "sd": None, "ci_low": None, "ci_high": None, "min": None, "max": None}
    if n == 0:
        return out
    out.update(mean=statistics.fmean(x), min=min(x), max=max(x))
    if n > 1:
        sd = statistics.stdev(x)
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        low, high = out["mean"] - half, out["mean"] + half
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out.update(sd=sd, ci_low=low, ci_high=high)
    return out
