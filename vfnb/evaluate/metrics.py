"""The study's metrics, one call each (scikit-learn): 4-class grading, binary screening, the operating point.

Also what they share: the metric names and labels, input checks, and JSON-safe values."""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from ..errors import DatasetError, ParamsError
from ..levels import GRADES, NUM_GRADES

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
    "sensitivity_g2", "specificity_g2", "roc_auc_g2",
    "accuracy", "macro_f1", "weighted_f1", "quadratic_kappa",
    *(f"{kind}_grade{g}" for g in GRADES for kind in ("recall", "precision", "f1")),
    "ece", "binary_ece",
)

#: The study's headline numbers, in table order: the screening pair at the operating
#: point, the threshold-free AUC, then three numbers of 4-class grading (the
#: quadratic-weighted kappa being the field's own measure of agreement on grades).
HEADLINE_METRICS: tuple[str, ...] = ("sensitivity", "specificity", "roc_auc", "macro_f1", "quadratic_kappa",
                                     "recall_grade1")

#: The usual clinical cut beside grade >= 1: moderate or severe fractures (grade >= 2).
#: Sensitivity and specificity call a vertebra "grade >= 2" when its argmax grade is 2 or
#: 3 (the study chooses no operating point for this cut); the AUC scores it by p2 + p3.
GRADE2_METRICS: tuple[str, ...] = ("sensitivity_g2", "specificity_g2", "roc_auc_g2")

#: What the per-region tables show (thoracic, lumbar), beside the number of vertebrae.
REGION_METRICS: tuple[str, ...] = ("macro_f1", "quadratic_kappa", "sensitivity", "specificity", "roc_auc",
                                   *GRADE2_METRICS)

#: The values a metric can take, for intervals that must not claim impossible ones
#: (a t-interval across few runs); every metric not listed lies in [0, 1].
METRIC_RANGE: dict[str, tuple[float, float]] = {"quadratic_kappa": (-1.0, 1.0)}

#: How a metric turns the predicted probabilities into a decision. "operating point":
#: fractured when 1 - P(grade 0) reaches the threshold chosen on validation;
#: "threshold-free": over every threshold; "argmax": the most probable grade;
#: "calibration": the probabilities themselves. A model can be at specificity 0.99 at
#: its operating point while its argmax grades call many normal vertebrae fractured.
METRIC_DECISION: dict[str, str] = {
    **{k: "operating point" for k in ("sensitivity", "specificity", "ppv", "npv")},
    **{k: "threshold-free" for k in ("roc_auc", "pr_auc", "roc_auc_g2")},
    **{k: "argmax" for k in ("accuracy", "macro_f1", "weighted_f1", "quadratic_kappa", "sensitivity_g2",
                             "specificity_g2")},
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
    "sensitivity_g2": "Sensitivity (grade ≥ 2, argmax)",
    "specificity_g2": "Specificity (grade ≥ 2, argmax)",
    "roc_auc_g2": "ROC AUC (grade ≥ 2 scored by p2 + p3, threshold-free)",
    "accuracy": "Accuracy (4 grades, argmax)",
    "macro_f1": "Macro-F1 (4 grades, argmax)",
    "weighted_f1": "Weighted F1 (4 grades, argmax)",
    "quadratic_kappa": "Quadratic-weighted kappa (4 grades, argmax)",
    "ece": "ECE, top-class confidence (4 grades)",
    "binary_ece": "ECE, fracture probability",
    **{f"{kind}_grade{g}": f"{kind.capitalize()} grade {g} (argmax)" for g in GRADES
       for kind in ("recall", "precision", "f1")},
}

#: What a missing or undefined number is shown as, everywhere.
MISSING = "n/a"


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
                           "(as written by vfnb.inference.grading.predict_patches)")
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
        ``confusion_matrix_row_normalised`` (the same matrix as shares of each true
        grade, rows summing to 1; a row of NaN for a grade without vertebrae);
        ``quadratic_kappa`` (:func:`quadratic_kappa`); ``labels`` [0, 1, 2, 3]; ``n``.

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
    confusion = skm.confusion_matrix(y, pred, labels=labels)
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
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_row_normalised": row_normalised(confusion).tolist(),
        "quadratic_kappa": quadratic_kappa(y, pred),
    }


def row_normalised(confusion: Any) -> np.ndarray:
    """A confusion matrix (rows = true grade) as shares of each row: the diagonal is the recall of each grade.

    A row without vertebrae (a grade absent from the data) is NaN, not 0: nothing
    was there to be graded right or wrong.
    """
    counts = np.asarray(confusion, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise DatasetError(f"row_normalised: expected a square confusion matrix, got shape {counts.shape}")
    return np.asarray(_div(counts, counts.sum(axis=1, keepdims=True)), dtype=float).reshape(counts.shape)


def quadratic_kappa(y: Sequence[int], pred: Sequence[int]) -> float:
    """Cohen's kappa with quadratic weights over the four Genant grades (scikit-learn).

    Disagreements weigh by the squared distance in grades, so calling a severe
    fracture normal costs nine times calling it moderate. The weights are taken over
    all four grades (``labels=[0, 1, 2, 3]``), not only the grades that occur: without
    that, scikit-learn would put a grade absent from a small set at distance 1 from
    its neighbours' neighbours. 1 is perfect agreement, 0 what chance gives.

    Returns NaN where kappa is undefined (the agreement expected by chance is already
    perfect, e.g. every vertebra of ``y`` and ``pred`` the same grade).
    """
    y = _as_grades(y, "quadratic_kappa: y")
    pred = _as_grades(pred, "quadratic_kappa: pred")
    if y.shape != pred.shape or y.size == 0:
        raise DatasetError(f"quadratic_kappa: y has {y.size} grades and pred {pred.size}; expected the same, > 0")
    with warnings.catch_warnings():  # undefined kappa: NaN by replace_undefined_by, the warning is noise
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = skm.cohen_kappa_score(y, pred, labels=list(GRADES), weights="quadratic",
                                      replace_undefined_by=np.nan)
    return float(value) if math.isfinite(value) else math.nan


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


def grade2_metrics(grade: Sequence[int], pred: Sequence[int], probs: Any) -> dict:
    """Moderate or severe fractures (grade >= 2), the usual clinical cut, beside screening's grade >= 1.

    Args:
        grade: true Genant grades 0-3, length N.
        pred: predicted grades 0-3 (argmax), length N: a vertebra is called
            "grade >= 2" when ``pred >= 2`` (no operating point is chosen for this cut).
        probs: ``[N, 4]`` grade probabilities; the threshold-free score is p2 + p3.

    Returns:
        dict with ``sensitivity_g2``, ``specificity_g2`` (argmax decision),
        ``roc_auc_g2`` (p2 + p3, every threshold; scikit-learn) and the counts
        ``tp``, ``fp``, ``tn``, ``fn``, ``n_positive`` (grade >= 2), ``n_negative``.
        NaN where undefined (no vertebra of grade >= 2, or none below).
    """
    grade = _as_grades(grade, "grade2_metrics: grade")
    pred = _as_grades(pred, "grade2_metrics: pred")
    if pred.shape != grade.shape:
        raise DatasetError(f"grade2_metrics: grade has {grade.size} values but pred has {pred.size}")
    probs = _as_probs(probs, grade.size, "grade2_metrics: probs")
    positive = grade >= 2
    called = pred >= 2
    tn, fp, fn, tp = skm.confusion_matrix(positive, called, labels=[False, True]).ravel()
    score = probs[:, 2] + probs[:, 3]
    return {
        "n_positive": int(positive.sum()), "n_negative": int((~positive).sum()),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
        "sensitivity_g2": _div(tp, tp + fn),
        "specificity_g2": _div(tn, tn + fp),
        "roc_auc_g2": float(skm.roc_auc_score(positive, score)) if 0 < positive.sum() < positive.size else math.nan,
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
