"""Predictions and evaluation as the notebooks use them: each checkpoint at its own input size.

- :func:`predict`: a checkpoint on records, at the cube size the checkpoint records
  (the loaded model's ``input_spec``, :func:`vfnb.models.checkpoints.checkpoint_input`),
  with SynthSpine's fracture morphology added;
- :func:`probe_comparison`: does an encoder's feature space separate the grades?
- :func:`operating_point` / :func:`read_operating_points`: the screening threshold;
- :func:`metrics_document`: the content of ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from ..errors import ParamsError
from ..evaluate.operating_points import read_operating_points as read_points_file
from ..evaluate import (PAPER_REPORTED, chance_macro_f1, format_ci, format_p, fracture_auc, grade_metrics,
                        permutation_p_value, screening_metrics, threshold_for_specificity)
from ..models.checkpoints import load_checkpoint
from ..inference.grading import predict_patches
from ..models.features import probe_predict
from .paths import resolve_path
from .records import OperatingPoint
from .registry import model_title

#: The column of :func:`probe_comparison` holding the permutation test (a p-value, not a probability).
PERMUTATION_P = "permutation p-value (macro-F1 vs chance)"


def _add_morphology(table: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """SynthSpine's fracture morphology per vertebra (``None`` for normal vertebrae), when known."""
    if truth is None or not {"case", "label", "morphology"} <= set(truth.columns):
        return table
    morph = truth[["case", "label", "morphology"]].rename(columns={"case": "image_id"})
    morph["image_id"] = morph["image_id"].astype(str)
    table = table.merge(morph, on=["image_id", "label"], how="left")
    # a normal vertebra has no fracture morphology: keep it out of per-morphology recall
    table.loc[table["grade"] == 0, "morphology"] = None
    table["morphology"] = table["morphology"].replace({"none": None, "": None})
    return table


def predict(checkpoint: str | os.PathLike, records: Sequence[dict], data=None, device: str = "auto"):
    """``(table, embeddings)`` of a checkpoint on records, at the checkpoint's own cube size.

    The size is the loaded model's ``input_spec`` (read from the checkpoint once, with
    the weights), the one source :func:`vfnb.study.training.checkpoint_cube_size` reads too.

    ``data`` (a :class:`~vfnb.study.StudyData`): adds SynthSpine's ``morphology`` column when known.
    """
    model = load_checkpoint(checkpoint)
    table, embeddings = predict_patches(model, records, device=device)
    table["grade"] = table["grade"].astype("int64")
    return _add_morphology(table, data.truth() if data is not None else None), embeddings


def probe_comparison(stages: Mapping[str, Any], train_records: Sequence[dict], val_records: Sequence[dict],
                     cube_size: int, device: str = "auto", seed: int = 0, n_permutations: int = 2000):
    """How well a linear probe grades validation vertebrae from each encoder's pooled features.

    ``stages``: name -> model (e.g. the random initialisation and the SupCon encoder),
    all read at ``cube_size``. For each, a class-balanced logistic regression on
    standardised features of the training vertebrae (centred views) predicts the
    validation vertebrae. Returns a DataFrame indexed by stage (then two image-blind
    chance rows) with validation ``macro-F1``, ``fracture AUC`` (1 - P(grade 0),
    fractured = grade >= 1) and the permutation test :data:`PERMUTATION_P`
    (:func:`vfnb.evaluate.permutation_p_value`).
    """
    train_y = np.array([int(r["grade"]) for r in train_records])
    val_y = np.array([int(r["grade"]) for r in val_records])
    rows = {}
    for stage, model in stages.items():
        _, train_f = predict_patches(model, train_records, cube_size, device=device)
        _, val_f = predict_patches(model, val_records, cube_size, device=device)
        pred, score = probe_predict("logreg", train_f, train_y, val_f, seed)
        auc = fracture_auc(val_y, score)
        rows[stage] = {"macro-F1": float(f1_score(val_y, pred, average="macro", zero_division=0)),
                       "fracture AUC": float("nan") if auc is None else auc,
                       PERMUTATION_P: permutation_p_value(val_y, pred, n_permutations, seed)}
    chance = chance_macro_f1(val_y, seed=seed)
    rows["chance: always grade 0"] = {"macro-F1": chance["always_normal"], "fracture AUC": 0.5}
    rows["chance: uniform guess"] = {"macro-F1": chance["uniform"], "fracture AUC": 0.5}
    return pd.DataFrame(rows).T


def readable(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``table`` for display: numbers rounded, p-values as ``"< 0.001"`` rather than ``0.000``."""
    out = table.copy().astype(object)
    for column in out.columns:
        fmt = format_p if column == PERMUTATION_P else (lambda v: format_ci(v, digits))
        out[column] = [fmt(v) for v in table[column]]
    return out


def validation_grading(tables: Mapping[str, pd.DataFrame], seed: int = 0) -> pd.DataFrame:
    """4-class grading of each model's validation predictions (argmax grades), one column per model.

    Rows: accuracy, macro-F1, weighted F1, recall per grade and the permutation
    p-value of the macro-F1 against predictions unrelated to the grades.
    """
    columns = {}
    for model, table in tables.items():
        g = grade_metrics(table["grade"], table["pred"])
        columns[model_title(model)] = {
            "accuracy": g["accuracy"], "macro-F1": g["macro_f1"], "weighted F1": g["weighted_f1"],
            **{f"recall grade {k}": v for k, v in g["recall"].items()},
            PERMUTATION_P: permutation_p_value(table["grade"], table["pred"], seed=seed)}
    frame = pd.DataFrame(columns)
    return readable(frame.T).T


def operating_point(val_table: pd.DataFrame, target_specificity: float) -> OperatingPoint:
    """The validation operating point: threshold for ``target_specificity`` and what it gives on validation."""
    threshold = threshold_for_specificity(val_table["grade"], val_table["fracture_prob"], target_specificity)
    at = screening_metrics(val_table["grade"], val_table["fracture_prob"], threshold)
    return OperatingPoint(threshold, float(target_specificity), at["specificity"], at["sensitivity"], at["roc_auc"],
                          "validation")


def read_operating_points(path: str | os.PathLike, models: Sequence[str]) -> dict[str, OperatingPoint]:
    """Thresholds chosen in another run (its ``operating_points.json``), for ``models``.

    The file is read by :func:`vfnb.evaluate.operating_points.read_operating_points`,
    the reader ``vfnb predict`` uses too; each point is marked as chosen elsewhere.
    """
    path = resolve_path(path)
    if not path.is_file():
        raise ParamsError(f"parameter 'operating_points_from': {path} not found (expected a run's operating_points.json)")
    points = read_points_file(path, list(models))
    return {m: dataclasses.replace(p, chosen_on=f"validation of another run ({path})") for m, p in points.items()}


def paper_row() -> dict:
    """The paper's reported figures, labelled as the paper's, on its own data (for metrics.json)."""
    return {"label": "Paper (Wei et al. 2022), as reported on its own data", "data": PAPER_REPORTED["source"],
            "metrics": {k: {"value": v} for k, v in PAPER_REPORTED.items() if isinstance(v, (int, float))}}


def per_grade_table(results: Mapping[str, dict]) -> pd.DataFrame:
    """Per-grade precision / recall / F1 with CIs, one row per (model, grade)."""
    rows = []
    for model, result in results.items():
        m = result["metrics"]
        for g in range(4):
            rows.append({"model": model_title(model), "grade": g,
                         "vertebrae": result["grade_counts"].get(str(g), result["grade_counts"].get(g)),
                         "precision": format_ci(m.get(f"precision_grade{g}")),
                         "recall": format_ci(m.get(f"recall_grade{g}")),
                         "F1": format_ci(m.get(f"f1_grade{g}"))})
    return pd.DataFrame(rows).set_index(["model", "grade"])


def metrics_document(results: Mapping[str, dict], data, operating_points: Mapping[str, OperatingPoint],
                     n_boot: int, comparisons: Mapping[str, dict] | None = None) -> dict:
    """The content of ``metrics.json``: every number per model with its CI, and the paper's row.

    ``comparisons``: the paired differences between models
    (:func:`vfnb.study.answer.study_comparisons`), from which the report states the answer.
    """
    any_result = next(iter(results.values()), {})
    boot = any_result.get("bootstrap", {})
    points = {m: (p.as_dict() if isinstance(p, OperatingPoint) else dict(p)) for m, p in operating_points.items()}
    return {
        "schema": 1,
        "dataset": data.describe(),
        "split": "test",
        "test": {"vertebrae": any_result.get("n_vertebrae"), "patients": any_result.get("n_patients"),
                 "grade_counts": any_result.get("grade_counts")},
        "operating_point": {"target_specificity": next(iter(points.values()), {}).get("target_specificity"),
                            "chosen_on": "validation", "per_model": points},
        "ci": {"method": "percentile bootstrap over patients (image_id)", "level": boot.get("confidence", 0.95),
               "n_boot": n_boot},
        "models": {m: {"title": model_title(m), **r} for m, r in results.items()},
        **({"comparisons": dict(comparisons)} if comparisons else {}),
        "paper": paper_row(),
    }
