"""Morphometry graders: what measuring vertebral heights alone achieves.

The clinical baseline for the CNNs. Each vertebra's heights are measured from
its patch label map (:func:`vfnb.morphometry.heights.body_heights`), its
relative height loss computed against its own posterior wall and its measured
neighbours (:func:`~vfnb.morphometry.heights.height_ratios`), and graded:

- ``morphometry_rule``: Genant's bands applied to the measured loss (under 20 %
  normal, 20-25 % mild, 25-40 % moderate, over 40 % severe). A rule gives one
  grade, not probabilities: its grade probabilities are one-hot, so its
  fracture AUC is that of a yes/no decision.
- ``morphometry_logistic``: a class-balanced multinomial logistic regression on
  the height ratios and the loss, fitted on the training list only; it can learn
  that a thoracic vertebra is normally a little wedged, which the fixed bands
  cannot.

A vertebra whose heights cannot be measured (an empty or degenerate mask) is
graded from missing values: the rule calls it normal, the regression sees the
training median; :func:`measure_records` counts them in ``unmeasured``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..data.resample import voxel_spacing
from .heights import body_heights, with_ratios
from ..io import load_nifti
from ..levels import NUM_GRADES, level_name

GENANT_BANDS = (0.20, 0.25, 0.40)  # lower edges of height loss for grades 1, 2, 3 (an edge takes the higher grade)
FEATURES = ("anterior_ratio", "middle_ratio", "posterior_ratio", "height_loss")
MORPHOMETRY_MODELS = ("morphometry_rule", "morphometry_logistic")


def measure_records(records: Sequence[dict]) -> pd.DataFrame:
    """Heights, ratios and height loss of every patch in ``records``, one row each, in order.

    Neighbours are the measured vertebrae of the same scan (``image_id``) found in
    ``records``. Columns: ``name``, ``image_id``, ``label``, ``level``, ``grade``,
    ``anterior``/``middle``/``posterior``/``depth`` (mm), ``tilt_deg``,
    ``expected_posterior`` (mm, NaN without neighbours), the ratios of
    :data:`FEATURES` and ``measured`` (False when the heights were not measurable).
    """
    ids, measured = [], []
    for record in records:
        mask, affine, _ = load_nifti(record["seg"])
        ids.append({"name": record["name"], "image_id": record["image_id"], "label": int(record["label"]),
                    "level": level_name(record["label"]), "grade": int(record["grade"])})
        measured.append((record["image_id"], int(record["label"]), body_heights(mask, voxel_spacing(affine))))
    table = pd.DataFrame([{**i, **m} for i, m in zip(ids, with_ratios(measured))])
    table["measured"] = np.isfinite(table["height_loss"])
    return table


def genant_grade(height_loss: np.ndarray | float) -> np.ndarray:
    """Genant grade (0-3) of each relative height loss (NaN -> 0: not measurable, not called fractured)."""
    loss = np.nan_to_num(np.asarray(height_loss, dtype=float), nan=0.0)
    return np.searchsorted(np.asarray(GENANT_BANDS), loss, side="right")


def one_hot(grades: np.ndarray, num_grades: int = NUM_GRADES) -> np.ndarray:
    """``[N]`` grades -> ``[N, num_grades]`` probabilities with all mass on the grade."""
    return np.eye(num_grades)[np.asarray(grades, dtype=int)]


@dataclass
class LogisticGrader:
    """Multinomial logistic regression on the height features, class-balanced.

    Missing features (no neighbours, unmeasurable masks) are replaced by the
    training median of that feature, so a vertebra at the end of a scan is graded
    from its own ratios.
    """

    seed: int = 0
    medians: dict = field(default_factory=dict)
    pipeline: object = None

    def _matrix(self, table: pd.DataFrame) -> np.ndarray:
        return np.column_stack([table[f].fillna(self.medians[f]).to_numpy(float) for f in FEATURES])

    def fit(self, table: pd.DataFrame) -> "LogisticGrader":
        self.medians = {f: float(np.nanmedian(table[f])) if table[f].notna().any() else 1.0 for f in FEATURES}
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(
            class_weight="balanced", max_iter=2000, random_state=self.seed))
        self.pipeline.fit(self._matrix(table), table["grade"].to_numpy(int))
        return self

    def predict_proba(self, table: pd.DataFrame) -> np.ndarray:
        """``[N, NUM_GRADES]`` grade probabilities (grades absent from training get 0)."""
        prob = np.zeros((len(table), NUM_GRADES))
        prob[:, self.pipeline.classes_] = self.pipeline.predict_proba(self._matrix(table))
        return prob


def grade_probabilities(model: str, train: pd.DataFrame, table: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """``[N, NUM_GRADES]`` probabilities of one morphometry model for the rows of ``table``."""
    if model == "morphometry_rule":
        return one_hot(genant_grade(table["height_loss"]))
    if model == "morphometry_logistic":
        return LogisticGrader(seed=seed).fit(train).predict_proba(table)
    raise ValueError(f"morphometry model {model!r} unknown; expected one of {', '.join(MORPHOMETRY_MODELS)}")


def prediction_table(table: pd.DataFrame, prob: np.ndarray) -> pd.DataFrame:
    """A morphometry model's predictions in the columns of :func:`vfnb.inference.grading.predict_patches`.

    ``table``: rows of :func:`measure_records`; ``prob``: ``[N, NUM_GRADES]``. The
    fracture probability is ``1 - P(grade 0)``, as for the networks.
    """
    out = table[["name", "image_id", "label", "level", "grade"]].copy().reset_index(drop=True)
    out["pred"] = prob.argmax(axis=1).astype("int64")
    for g in range(NUM_GRADES):
        out[f"p{g}"] = prob[:, g].astype(np.float64)
    out["fracture_prob"] = 1.0 - prob[:, 0].astype(np.float64)
    return out


def predict_morphometry(model: str, train_records: Sequence[dict], records: Sequence[dict],
                        seed: int = 0) -> pd.DataFrame:
    """Grade ``records`` with one morphometry model (fitted on ``train_records`` when it learns)."""
    train = measure_records(train_records) if model == "morphometry_logistic" else None
    table = measure_records(records)
    return prediction_table(table, grade_probabilities(model, train, table, seed=seed))
