"""2-D views of encoder features: UMAP or PCA, scattered by grade or by any per-vertebra value."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import DatasetError, ParamsError
from ..levels import GRADES, label_from_level, level_name, spine_order
from ..levels import GRADE_COLORS
from .common import _figure, _grade_label


def umap_embedding(embeddings: Any, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                   metric: str = "euclidean") -> np.ndarray:
    """2-D UMAP of ``[N, F]`` embeddings -> ``[N, 2]`` float array (arbitrary units).

    Deterministic for a given ``seed`` (UMAP then runs single-threaded).
    ``n_neighbors`` is reduced to N - 1 for small N. Fewer than 4 points cannot
    be laid out by UMAP: they get their first two principal components instead
    (zeros for one point). The first call in a process costs ~10 s (numba
    compilation).
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise DatasetError(f"umap_embedding: expected embeddings of shape [N, F] with N >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DatasetError("umap_embedding: embeddings contain NaN or inf")
    n = x.shape[0]
    if n < 4:
        return pca_embedding(x)
    import umap  # slow import (numba); only when needed

    reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, n - 1)), min_dist=float(min_dist),
                        metric=metric, random_state=int(seed), n_jobs=1,
                        # the spectral start needs more points than eigenvectors
                        init="spectral" if n > 10 else "random")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*k >= N.*")
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def _check_xy(xy: Any, n: int | None = None) -> np.ndarray:
    xy = np.asarray(xy, dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise DatasetError(f"expected 2-D coordinates of shape [N, 2], got {xy.shape}")
    if n is not None and xy.shape[0] != n:
        raise DatasetError(f"{xy.shape[0]} points but {n} values to colour them by")
    return xy


def _label_umap_axes(ax) -> None:
    ax.set_xlabel("UMAP 1 (arbitrary units)")
    ax.set_ylabel("UMAP 2 (arbitrary units)")
    ax.set_aspect("equal", adjustable="datalim")


def plot_umap(xy: Any, grades: Sequence[int], highlight_grade: int | None = 1,
              title: str = "UMAP of embeddings, by Genant grade") -> Figure:
    """Scatter of a 2-D embedding coloured by Genant grade; ``highlight_grade`` drawn on top, larger, outlined.

    Args:
        xy: ``[N, 2]`` from :func:`umap_embedding`.
        grades: N true grades 0-3.
        highlight_grade: the grade to emphasise (grade 1: the faint, mild fractures); None for none.
        title: says which model, split and stage (e.g. "SupCon, validation, after pretraining").
    """
    grades = np.asarray(grades).astype(int)
    xy = _check_xy(xy, grades.size)
    fig = _figure(6.4, 5.4)
    ax = fig.subplots()
    order = [g for g in GRADES if g != highlight_grade] + ([highlight_grade] if highlight_grade in GRADES else [])
    for g in order:
        sel = grades == g
        hl = g == highlight_grade
        ax.scatter(xy[sel, 0], xy[sel, 1], s=36 if hl else 14, c=GRADE_COLORS[g], alpha=0.95 if hl else 0.6,
                   edgecolors="k" if hl else "none", linewidths=0.6, zorder=3 if hl else 2,
                   label=f"grade {_grade_label(g)}, n={int(sel.sum())}")
    _label_umap_axes(ax)
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=1.2)
    return fig


def plot_umap_by(xy: Any, values: Sequence[Any], name: str, title: str | None = None) -> Figure:
    """Scatter of a 2-D embedding coloured by any per-vertebra value (e.g. ``name="level"``).

    Levels (``T12``, ``L1``, or VerSe labels) are ordered cranio-caudally and
    coloured along a sequential map; other categories get distinct colours;
    numeric values with more than 12 distinct values get a colour bar.
    """
    values = np.asarray(values, dtype=object)
    xy = _check_xy(xy, values.size)
    fig = _figure(7.2, 5.4)
    ax = fig.subplots()
    uniques = list(pd.unique(pd.Series(values).dropna()))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) for v in uniques)
    if numeric and len(uniques) > 12 and name not in ("level", "label"):
        points = ax.scatter(xy[:, 0], xy[:, 1], s=14, c=values.astype(float), cmap="viridis")
        fig.colorbar(points, ax=ax, label=name)
    else:
        try:  # level names or labels: cranio-caudal order
            keyed = sorted(uniques, key=lambda v: spine_order(label_from_level(v)))
            uniques = keyed
            colours = plt.get_cmap("viridis")(np.linspace(0, 1, max(len(uniques), 2)))
            pretty = {v: level_name(label_from_level(v)) for v in uniques}
        except Exception:
            uniques = sorted(uniques, key=str)
            cmap = plt.get_cmap("tab10" if len(uniques) <= 10 else "tab20")
            colours = [cmap(i % cmap.N) for i in range(len(uniques))]
            pretty = {v: str(v) for v in uniques}
        for value, colour in zip(uniques, colours):
            sel = values == value
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=colour, alpha=0.8, label=f"{pretty[value]} (n={int(sel.sum())})")
        ax.legend(title=name, fontsize=7, ncol=1 if len(uniques) <= 14 else 2, loc="center left",
                  bbox_to_anchor=(1.01, 0.5))
    _label_umap_axes(ax)
    ax.set_title(title or f"UMAP of embeddings, by {name}")
    return fig


PROJECTIONS = ("umap", "pca")


def pca_embedding(embeddings: Any) -> np.ndarray:
    """``[N, F]`` -> ``[N, 2]``: the first two principal components (zeros for fewer than 2 distinct points)."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0)
    if x.shape[0] < 2 or not np.any(x):
        return np.zeros((x.shape[0], 2), dtype=np.float32)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = np.zeros((x.shape[0], 2))
    k = min(2, s.size)
    out[:, :k] = u[:, :k] * s[:k]
    return out.astype(np.float32)


def embed_2d(embeddings: Any, method: str = "umap", seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """``[N, F]`` features -> ``[N, 2]``: UMAP (``"umap"``) or, for quick runs, PCA (``"pca"``)."""
    if method == "umap":
        return umap_embedding(embeddings, seed=seed, n_neighbors=n_neighbors)
    if method != "pca":
        raise ParamsError(f"parameter 'projection' = {method!r}: expected one of {', '.join(PROJECTIONS)}")
    return pca_embedding(embeddings)


def plot_embedding(xy: Any, values: Sequence[Any], method: str = "umap", by: str = "grade",
                   title: str = "") -> Figure:
    """:func:`plot_umap` (by grade, grade 1 outlined) or :func:`plot_umap_by` (any column), axes named after ``method``."""
    fig = plot_umap(xy, values, title=title) if by == "grade" else plot_umap_by(xy, values, by, title=title)
    if method == "pca":
        ax = fig.axes[0]
        ax.set_xlabel("principal component 1 (arbitrary units)")
        ax.set_ylabel("principal component 2 (arbitrary units)")
    return fig
