"""What an encoder's pooled features tell: one extraction loop and one probe.

- :func:`extract`: a stream of input batches through a :class:`~vfnb.models.networks.GradingModel`
  without gradients -> classifier logits, pooled features and grades (validation in
  training, prediction, the study's probe comparison all use it).
- :func:`fit_probe`: a classifier fitted on frozen pooled features. ``logreg`` is a
  class-balanced logistic regression on standardised features (the linear probe of
  STUDY §1.6); ``knn`` a 5-nearest-neighbour cosine vote.
- :func:`probe_predict`: fit on training features, grade validation features.
- :func:`probe_as_linear`: a fitted ``logreg`` probe written as the weights of the
  model's linear classifier (the scaler folded in), so training can start from it.

The fracture score of a probe is ``1 - P(grade 0)`` (STUDY §1.6).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

PROBES = ("logreg", "knn")
ABSENT_GRADE_BIAS = -30.0  # a grade the probe never saw gets this bias: never predicted


@dataclass
class Features:
    """Per vertebra: ``logits`` ``[N, G]``, pooled ``features`` ``[N, F]`` (float32) and ``grades`` ``[N]`` (or None)."""

    logits: np.ndarray
    features: np.ndarray
    grades: np.ndarray | None


def extract(model, batches: Iterable[Mapping], device, autocast: Callable = contextlib.nullcontext,
            channels_last: bool = False) -> Features:
    """Run ``batches`` (dicts with ``image`` ``[B, 3, S, S, S]`` and, when known, ``grade`` ``[B]``) through ``model``.

    ``model`` is a bare :class:`~vfnb.models.networks.GradingModel`, already on ``device`` and in
    the mode the caller wants (eval for every use in vfnb); no gradients are kept.
    ``autocast``: a context factory (bf16 autocast on CUDA in training);
    ``channels_last``: feed channels-last-3d tensors.
    """
    logits, features, grades = [], [], []
    with torch.no_grad():
        for batch in batches:
            x = batch["image"].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast():
                feature = model.embed(x)
                logit = model.classifier(feature)
            logits.append(logit.float().cpu())
            features.append(feature.float().cpu())
            if "grade" in batch:
                grades.append(torch.as_tensor(batch["grade"]))
    if not features:
        return Features(np.zeros((0, model.classifier.out_features), np.float32),
                        np.zeros((0, model.num_features), np.float32), None)
    return Features(torch.cat(logits).numpy(), torch.cat(features).numpy(),
                    torch.cat(grades).numpy() if len(grades) == len(features) else None)


def fit_probe(kind: str, features: np.ndarray, grades: np.ndarray, seed: int = 0):
    """A scikit-learn classifier of ``kind`` (``logreg`` or ``knn``) fitted on ``features`` ``[N, F]``, ``grades`` ``[N]``."""
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        probe = KNeighborsClassifier(n_neighbors=min(5, len(grades)), metric="cosine")
    elif kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                                   random_state=seed))
    else:
        raise ValueError(f"probe {kind!r} unknown; expected one of {', '.join(PROBES)}")
    return probe.fit(features, grades)


def probe_predict(kind: str, train_features, train_grades, val_features, seed: int = 0):
    """Fit a ``kind`` probe on training features; return validation ``(predicted grades, fracture scores)``."""
    probe = fit_probe(kind, train_features, train_grades, seed)
    classes = list(probe.classes_)
    proba = probe.predict_proba(val_features)
    score = 1.0 - proba[:, classes.index(0)] if 0 in classes else np.ones(len(val_features))
    return probe.predict(val_features), score


def probe_as_linear(probe, num_grades: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted ``logreg`` probe as ``(weight [num_grades, F], bias [num_grades])`` acting on raw features.

    The probe standardises ``z = (f - mean) / scale``; folded in, ``W = coef / scale`` and
    ``b = intercept - W @ mean``. Grades absent from the probe's training data get the
    bias :data:`ABSENT_GRADE_BIAS`.
    """
    scaler, logreg = probe[0], probe[-1]
    coef, intercept = logreg.coef_, logreg.intercept_
    if len(logreg.classes_) == 2:  # scikit-learn keeps one row for two classes: split it symmetrically
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_grades, coef.shape[1]))
    bias = np.full(num_grades, ABSENT_GRADE_BIAS)
    for row, grade in enumerate(logreg.classes_):
        weight[int(grade)] = coef[row] / scaler.scale_
        bias[int(grade)] = intercept[row] - weight[int(grade)] @ scaler.mean_
    return weight, bias
