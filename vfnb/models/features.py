"""What an encoder's pooled features tell: one extraction loop and one probe.

- :func:`extract`: a stream of input batches through a :class:`~vfnb.models.networks.GradingModel`
  without gradients -> classifier logits, pooled features and grades (validation in
  training, prediction, the study's probe comparison all use it).
- :func:`fit_probe`: a classifier fitted on frozen pooled features. ``logreg`` is a
  class-balanced logistic regression on standardised features (the linear probe of
  STUDY §1.6); ``knn`` a 5-nearest-neighbour cosine vote.
- :func:`probe_predict`: fit on training features, grade validation features.
- :func:`probe_as_linear`: a fitted ``logreg`` probe as the model's feature standardisation
  and linear classifier, so training can start from it; :func:`calibrated_probe` picks the
  probe's regularisation on the validation features by :func:`balanced_cross_entropy`.

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
                logit = model.grade_logits(feature)
            logits.append(logit.float().cpu())
            features.append(feature.float().cpu())
            if "grade" in batch:
                grades.append(torch.as_tensor(batch["grade"]))
    if not features:
        return Features(np.zeros((0, model.classifier.out_features), np.float32),
                        np.zeros((0, model.num_features), np.float32), None)
    return Features(torch.cat(logits).numpy(), torch.cat(features).numpy(),
                    torch.cat(grades).numpy() if len(grades) == len(features) else None)


def fit_probe(kind: str, features: np.ndarray, grades: np.ndarray, seed: int = 0, C: float = 1.0):
    """A scikit-learn classifier of ``kind`` (``logreg`` or ``knn``) fitted on ``features`` ``[N, F]``, ``grades`` ``[N]``.

    ``C``: the logistic regression's inverse regularisation strength (scikit-learn's default 1).
    """
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        probe = KNeighborsClassifier(n_neighbors=min(5, len(grades)), metric="cosine")
    elif kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000,
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


@dataclass
class LinearProbe:
    """A logistic-regression probe in the model's terms: ``(f - mean) / scale``, then ``weight @ z + bias``."""

    mean: np.ndarray    # [F]
    scale: np.ndarray   # [F]
    weight: np.ndarray  # [num_grades, F]
    bias: np.ndarray    # [num_grades]
    C: float = 1.0

    def logits(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight.T + self.bias


def probe_as_linear(probe, num_grades: int, C: float = 1.0) -> LinearProbe:
    """A fitted ``logreg`` probe as the model's standardisation and ``num_grades``-way linear classifier.

    The classifier acts on the standardised feature, as the probe does (SGD from this start
    then steps where the probe was fitted, not in the raw features' badly conditioned space).
    Grades absent from the probe's training data get the bias :data:`ABSENT_GRADE_BIAS`.
    """
    scaler, logreg = probe[0], probe[-1]
    coef, intercept = logreg.coef_, logreg.intercept_
    if len(logreg.classes_) == 2:  # scikit-learn keeps one row for two classes: split it symmetrically
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = np.zeros((num_grades, coef.shape[1]))
    bias = np.full(num_grades, ABSENT_GRADE_BIAS)
    for row, grade in enumerate(logreg.classes_):
        weight[int(grade)] = coef[row]
        bias[int(grade)] = intercept[row]
    return LinearProbe(scaler.mean_.copy(), scaler.scale_.copy(), weight, bias, float(C))


def balanced_cross_entropy(logits: np.ndarray, grades: np.ndarray) -> float:
    """Cross-entropy averaged per grade, then over the grades present (every grade counts alike).

    The calibrated counterpart of macro-F1: on a validation set with a handful of
    moderate and severe vertebrae, macro-F1 jumps with one vertebra's argmax, while this
    loss moves smoothly with every vertebra's probabilities.
    """
    logits = np.asarray(logits, np.float64)
    grades = np.asarray(grades).astype(int)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -log_p[np.arange(len(grades)), grades]
    return float(np.mean([nll[grades == g].mean() for g in np.unique(grades)]))


PROBE_C_GRID = (0.001, 0.01, 0.1, 1.0)


def calibrated_probe(train: Features, val: Features, num_grades: int, seed: int = 0,
                     grid: Iterable[float] = PROBE_C_GRID) -> LinearProbe:
    """The ``logreg`` probe on ``train`` whose ``C`` (of ``grid``) gives the lowest validation
    :func:`balanced_cross_entropy`; the first of equals. Without validation grades, ``C`` = 1.

    Unregularised on a few hundred vertebrae, the probe is confidently wrong on what it
    has not seen (a validation loss far above a uniform guess's ln 4), and training from it
    first has to undo that.
    """
    fits = []
    for C in (grid if val.grades is not None and len(val.grades) else (1.0,)):
        linear = probe_as_linear(fit_probe("logreg", train.features, train.grades, seed, C=C), num_grades, C=C)
        loss = balanced_cross_entropy(linear.logits(val.features), val.grades) if val.grades is not None else 0.0
        fits.append((loss, linear))
    return min(fits, key=lambda fit: fit[0])[1]
