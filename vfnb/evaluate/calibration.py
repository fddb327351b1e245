"""Reliability of predicted probabilities: bins of confidence against observed frequency, and the ECE."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import ParamsError
from .metrics import _as_grades, _as_probs, _as_scores, _div


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
