"""Confidence intervals: the percentile bootstrap over patients (one run), the t-interval across training runs (a sweep)."""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import DatasetError, ParamsError


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
