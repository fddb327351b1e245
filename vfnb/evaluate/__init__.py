"""Metrics of the study (STUDY §1.6), confidence intervals by patient, operating points.

Inputs
------
Predictions are a pandas DataFrame from :func:`vfnb.inference.grading.predict_patches`, one
row per vertebra, with columns ``image_id`` (the patient / CT), ``label``,
``level``, ``grade`` (true Genant grade 0-3), ``pred`` (predicted grade 0-3),
``p0 .. p3`` (predicted grade probabilities, rows sum to 1) and
``fracture_prob`` (= 1 - p0, the screening score); optional extra columns such
as ``morphology`` are kept.

Conventions
-----------
- Screening (binary): label = grade >= 1 ("fractured"); a vertebra is called
  fractured when ``fracture_prob >= threshold`` (ties at the threshold count as
  positive). Beside it, the clinical cut grade >= 2 (moderate or severe): called
  when the argmax grade is 2 or 3, scored threshold-free by ``p2 + p3``.
- Grading agreement: macro-F1 and the field's quadratic-weighted kappa over the
  four grades (disagreements weigh by the squared grade distance).
- Regions: with a ``label`` or ``level`` column, the thoracic (T1-T13) and lumbar
  (L1-L6) vertebrae are also evaluated as sets of their own (:mod:`.regions`).
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

Modules: :mod:`.metrics` (names, labels, checks; grading, screening, operating point),
:mod:`.calibration`, :mod:`.fast` (the numpy path the bootstrap uses),
:mod:`.intervals` (patient bootstrap; t-interval across runs), :mod:`.paired` (the paired bootstrap of a
difference between two models on the same patients), :mod:`.regions` (thoracic / lumbar) and :mod:`.tables`
(``evaluate_predictions`` and the tables built from it). This file only re-exports.
"""

from .calibration import binary_calibration, calibration
from .fast import fracture_auc, reported_metrics
from .intervals import Interval, bootstrap_ci, bootstrap_indices, finite_values, mean_interval
from .metrics import (GRADE2_METRICS, HEADLINE_METRICS, METRIC_DECISION, METRIC_LABELS, METRIC_RANGE, MISSING,
                      PAPER_REPORTED, PROB_COLUMNS, REGION_METRICS, REPORTED_METRICS, REQUIRED_COLUMNS,
                      chance_macro_f1, check_predictions, grade2_metrics, grade_metrics, jsonable, permutation_p_value,
                      quadratic_kappa, row_normalised, screening_metrics, threshold_for_specificity)
from .paired import PAIRED_METRICS, paired_difference
from .regions import REGION_TITLES, SPINE_REGIONS, region_masks, vertebra_labels
from .tables import (comparison_table, confusion_table, evaluate_by_region, evaluate_predictions, format_ci, format_p,
                     most_confident_errors, recall_by, region_table)

__all__ = ["GRADE2_METRICS", "HEADLINE_METRICS", "Interval", "METRIC_DECISION", "METRIC_LABELS", "METRIC_RANGE",
           "MISSING", "PAIRED_METRICS", "PAPER_REPORTED", "PROB_COLUMNS", "REGION_METRICS", "REGION_TITLES", "REPORTED_METRICS",
           "REQUIRED_COLUMNS", "SPINE_REGIONS", "binary_calibration", "bootstrap_ci", "bootstrap_indices",
           "calibration", "chance_macro_f1", "check_predictions", "comparison_table", "confusion_table",
           "evaluate_by_region", "evaluate_predictions", "finite_values", "format_ci", "format_p", "fracture_auc",
           "grade2_metrics", "grade_metrics", "jsonable", "mean_interval", "most_confident_errors",
           "paired_difference", "permutation_p_value", "quadratic_kappa", "recall_by", "region_masks", "region_table",
           "reported_metrics", "row_normalised", "screening_metrics", "threshold_for_specificity",
           "vertebra_labels"]
