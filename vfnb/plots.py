"""Figures of the study, and the UMAP of embeddings.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` whose axes
are labelled with units and whose title says which data it shows (pass
``title=`` to name the split and model). Figures are built with
``Figure(...)`` rather than ``pyplot``, so they do not pile up in pyplot's list
and a notebook shows each exactly once: make it the cell's last expression or
call ``display(fig)``. ``save_figure(fig, path)`` writes a PNG atomically.

Image conventions: patches are ``[X, Y, Z]`` in RAS+ (axis 0 patient left ->
right, axis 1 posterior -> anterior, axis 2 inferior -> superior). A
mid-sagittal view fixes axis 0 and shows superior up and anterior to the right.

Typical notebook use::

    from vfnb import evaluate, plots
    fig = plots.plot_confusion(result["confusion_matrix"], title="SupCon, test split")
    plots.save_figure(fig, run_dir / "figures" / "confusion_supcon.png")
    fig
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt  # imported so that IPython registers its display hook for Figure
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .data.channels import BONE_WINDOW, SOFT_TISSUE_WINDOW
from .errors import DatasetError, ParamsError
from .io import atomic_path
from .levels import GRADE_NAMES, GRADES, MAX_LABEL, label_from_level, level_name, spine_order

#: One colour per Genant grade, the same in every figure (grade 1, the faint one, stands out).
GRADE_COLORS = {0: "#8c9bab", 1: "#ff7f0e", 2: "#d62728", 3: "#6a1b9a"}
CHANNEL_NAMES = (
    f"ch 0: soft-tissue window (L {SOFT_TISSUE_WINDOW[0]:g} / W {SOFT_TISSUE_WINDOW[1]:g} HU)",
    f"ch 1: bone window (L {BONE_WINDOW[0]:g} / W {BONE_WINDOW[1]:g} HU)",
    f"ch 2: vertebra mask x label/{MAX_LABEL}",
)


def _grade_label(g: int) -> str:
    return f"{g} ({GRADE_NAMES[g]})"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


# ------------------------------------------------------------------ saving
def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG to ``path`` (``.png``) atomically, then close it; returns the path.

    An existing file at ``path`` is replaced (figures live inside a run folder
    that the study builds afresh). Parent folders are created.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ParamsError(f"{path}: figure file name must end in .png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)  # no-op for figures not owned by pyplot; frees those that are
    return path


# ------------------------------------------------------------------ classification figures
def plot_confusion(confusion: Any, title: str = "Confusion matrix", labels: Sequence[int] = GRADES) -> Figure:
    """Confusion matrix as counts (left) and row-normalised (right: recall per true grade).

    Args:
        confusion: ``[4, 4]`` counts, rows = true grade, columns = predicted
            (``grade_metrics(...)["confusion_matrix"]`` or ``evaluate_predictions``).
        title: says which model and split.
        labels: the grades of the rows/columns.
    """
    import seaborn as sns

    counts = np.asarray(confusion, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise DatasetError(f"plot_confusion: expected a square {len(labels)}x{len(labels)} matrix, got {counts.shape}")
    row_sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(row_sums > 0, counts / np.where(row_sums > 0, row_sums, 1), np.nan)
    names = [_grade_label(g) for g in labels]
    fig = _figure(11, 4.6)
    axes = fig.subplots(1, 2)
    sns.heatmap(counts.astype(int), annot=True, fmt="d", cmap="Blues", ax=axes[0], xticklabels=names,
                yticklabels=names, cbar_kws={"label": "vertebrae (count)"})
    sns.heatmap(normalised, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, ax=axes[1], xticklabels=names,
                yticklabels=names, cbar_kws={"label": "fraction of the true grade (0-1)"})
    axes[0].set_title("Counts")
    axes[1].set_title("Row-normalised (diagonal = recall)")
    for ax in axes:
        ax.set_xlabel("Predicted Genant grade")
        ax.set_ylabel("True Genant grade")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(title)
    return fig


def _curve_inputs(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, pd.DataFrame):
        missing = [c for c in ("grade", "fracture_prob") if c not in data.columns]
        if missing:
            raise DatasetError(f"predictions of {name!r}: missing column(s) {missing}")
        grade, score = data["grade"].to_numpy(), data["fracture_prob"].to_numpy(float)
    else:
        grade, score = (np.asarray(a) for a in data)
    positive = np.asarray(grade) >= 1
    return positive, np.asarray(score, dtype=float)


#: Line styles and markers given to the curves of one figure in turn, so that two
#: models with identical curves (e.g. a fine-tuned model that kept its start) stay visible.
LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _style(i: int) -> dict:
    # earlier curves drawn thicker, so a later identical one (dashed, dotted) shows on top of it
    return {"color": f"C{i}", "ls": LINE_STYLES[i % len(LINE_STYLES)][0], "lw": 2.4 - 0.2 * (i % len(LINE_STYLES))}


def _same_as(data: Mapping[str, Any], key) -> dict[str, str]:
    """name -> the first earlier name whose ``key(data)`` is equal (identical curves get a legend note)."""
    seen: list[tuple[str, Any]] = []
    same = {}
    for name, value in data.items():
        signature = key(value)
        match = next((other for other, sig in seen if _equal(sig, signature)), None)
        if match is not None:
            same[name] = match
        seen.append((name, signature))
    return same


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)


def _legend_name(name: str, same: Mapping[str, str]) -> str:
    return f"{name} (identical to {same[name]})" if name in same else name


def plot_roc(curves: Mapping[str, Any], title: str = "ROC, fracture screening (grade >= 1)",
             thresholds: Mapping[str, float] | None = None) -> Figure:
    """ROC curves of several models on one axes, AUC in the legend.

    Args:
        curves: model name -> predictions DataFrame (``grade``, ``fracture_prob``)
            or a ``(grades, fracture_prob)`` pair.
        title: says which split.
        thresholds: optional model name -> operating point; marks the point where
            ``fracture_prob >= threshold``.

    Each model has its own colour and line style; a model whose scores equal an
    earlier one's says so in the legend (its curve lies exactly on the other).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    inputs = {name: _curve_inputs(data, name) for name, data in curves.items()}
    same = _same_as(inputs, lambda pair: pair)
    fig = _figure(5.6, 5.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    for i, (name, (positive, score)) in enumerate(inputs.items()):
        style, shown = _style(i), _legend_name(name, same)
        both = 0 < positive.sum() < positive.size
        if both:
            fpr, tpr, _ = roc_curve(positive, score)
            ax.plot(fpr, tpr, **style, label=f"{shown} (AUC {roc_auc_score(positive, score):.3f})")
        else:
            ax.plot([], [], **style, label=f"{shown} (AUC undefined: one class only)")
        if thresholds and name in thresholds and both:
            called = score >= thresholds[name]
            ax.plot(called[~positive].mean(), called[positive].mean(), LINE_STYLES[i % len(LINE_STYLES)][1],
                    c=style["color"], mec="k", ms=7 - i, label=f"{name}: operating point (threshold {thresholds[name]:.3g})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false-positive rate, fraction)")
    ax.set_ylabel("Sensitivity (true-positive rate, fraction)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def plot_pr(curves: Mapping[str, Any], title: str = "Precision-recall, fracture screening (grade >= 1)") -> Figure:
    """Precision-recall curves of several models on one axes, average precision in the legend.

    ``curves`` as in :func:`plot_roc` (styles and identical curves too). The dotted
    line is the prevalence of fractured vertebrae (precision of a random ranking) in
    the first model's data.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    inputs = {name: _curve_inputs(data, name) for name, data in curves.items()}
    same = _same_as(inputs, lambda pair: pair)
    fig = _figure(5.6, 5.2)
    ax = fig.subplots()
    for i, (name, (positive, score)) in enumerate(inputs.items()):
        style, shown = _style(i), _legend_name(name, same)
        if i == 0 and positive.size:
            ax.axhline(positive.mean(), ls=":", c="0.5", lw=1, label=f"prevalence {positive.mean():.2f}")
        if 0 < positive.sum() < positive.size:
            precision, recall, _ = precision_recall_curve(positive, score)
            ax.step(recall, precision, where="post", **style,
                    label=f"{shown} (AP {average_precision_score(positive, score):.3f})")
        else:
            ax.plot([], [], **style, label=f"{shown} (AP undefined: one class only)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("Recall = sensitivity (fraction of fractured vertebrae)")
    ax.set_ylabel("Precision = PPV (fraction)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def _calibration_arrays(cal: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    conf = np.array([np.nan if v is None else v for v in cal["confidence"]], dtype=float)
    acc = np.array([np.nan if v is None else v for v in cal["accuracy"]], dtype=float)
    return conf, acc, np.asarray(cal["count"], dtype=float)


def plot_reliability(calibrations: Mapping[str, Any], title: str = "Reliability diagram") -> Figure:
    """Reliability diagram with the count of vertebrae per bin underneath.

    Args:
        calibrations: one dict from :func:`vfnb.evaluate.calibration` /
            ``binary_calibration`` (or ``evaluate_predictions(...)["calibration"]``),
            or model name -> such dict to overlay several models (each with its own
            line style and marker; identical diagrams are named in the legend).
        title: says which model(s) and split.
    """
    if "ece" in calibrations and "confidence" in calibrations:
        calibrations = {"model": calibrations}
    binary = {c.get("kind", "top-class") for c in calibrations.values()} == {"binary"}
    same = _same_as(calibrations, _calibration_arrays)
    fig = _figure(5.6, 6.2)
    ax, ax_count = fig.subplots(2, 1, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect calibration")
    for i, (name, cal) in enumerate(calibrations.items()):
        edges = np.asarray(cal["bin_edges"], dtype=float)
        conf, acc, count = _calibration_arrays(cal)
        filled = count > 0
        ece, shown = cal.get("ece"), _legend_name(name, same)
        ax.plot(conf[filled], acc[filled], marker=LINE_STYLES[i % len(LINE_STYLES)][1], ms=6 - i, **_style(i),
                label=f"{shown} (ECE {ece:.3f})" if ece is not None else shown)
        width = np.diff(edges) / max(len(calibrations), 1)
        ax_count.bar(edges[:-1] + i * width, count, width=width, align="edge", color=f"C{i}", alpha=0.7)
    for a in (ax, ax_count):
        a.set_xlim(0, 1)
        a.set_xlabel("Predicted fracture probability (0-1)" if binary else "Confidence = top-class probability (0-1)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Observed fraction fractured (grade >= 1)" if binary else "Observed accuracy (fraction correct)")
    ax_count.set_ylabel("vertebrae (count)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    ax.grid(alpha=0.3)
    return fig


#: Legend names of the training-history keys (:mod:`vfnb.train`).
CURVE_LABELS = {
    "loss": "training loss",
    "loss_no_structure": "loss with no grade structure",
    "val_macro_f1": "validation macro-F1",
    "val_accuracy": "validation accuracy",
    "val_fracture_auc": "validation fracture AUC (grade ≥ 1)",
    "val_probe_macro_f1": "validation probe macro-F1",
    "val_probe_fracture_auc": "validation probe fracture AUC (grade ≥ 1)",
    "proj_cos_own_view": "two views of one vertebra",
    "proj_cos_same_grade": "same grade",
    "proj_cos_other_grade": "other grades",
    "lr": "learning rate",
}
_NOT_CURVES = {"epoch", "step", "steps", "g_step", "time", "time_s", "seconds", "wall_s", "elapsed_s",
               "epoch_seconds", "data_wait_fraction"}


def _curve_groups(frame: pd.DataFrame, keys: Sequence[str] | None) -> dict[str, list[str]]:
    numeric = [c for c in frame.columns if c not in _NOT_CURVES and pd.api.types.is_numeric_dtype(frame[c])]
    if keys is not None:
        unknown = [k for k in keys if k not in frame.columns]
        if unknown:
            raise DatasetError(f"plot_curves: key(s) {unknown} not in the history (keys {list(frame.columns)})")
        numeric = [k for k in keys if pd.api.types.is_numeric_dtype(frame[k])]
    groups = {
        "loss": [k for k in numeric if "loss" in k],
        "metric": [k for k in numeric if "loss" not in k and k != "lr" and not k.startswith("proj_cos")],
        "cosine": [k for k in numeric if k.startswith("proj_cos")],
        "lr": [k for k in numeric if k == "lr"],
    }
    groups = {g: ks for g, ks in groups.items() if ks}
    if not groups:
        raise DatasetError(f"plot_curves: no numeric values to plot (keys {list(frame.columns)})")
    return groups


def plot_curves(history: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None,
                title: str = "Learning curves", loss_reference: tuple[str, float] | None = None,
                selected_epoch: int | None = None, start: Mapping[str, float] | None = None) -> Figure:
    """Learning curves from a training history (list of per-epoch dicts).

    Keys containing ``loss`` share one panel (nats), ``lr`` gets a log-scale
    panel, ``proj_cos_*`` (:class:`vfnb.losses.ProjectionSimilarity`) a cosine panel,
    every other numeric key (``val_macro_f1``, ``val_accuracy``, ...) a metrics panel
    (0-1); legends use :data:`CURVE_LABELS`. The x axis is ``epoch`` (integer ticks)
    when present, else the row number + 1. ``keys`` restricts which keys are drawn.
    Values missing in some epochs are skipped, not drawn as zeros.

    Args:
        loss_reference: ``(label, value)`` drawn as a dashed line on the loss panel
            (e.g. :meth:`vfnb.losses.SupConLoss.uninformative_value`).
        selected_epoch: the epoch model selection kept, marked on every panel.
        start: values at epoch 0 (before any training step, e.g. the validation
            macro-F1 of a fine-tuning's start), drawn as the first point of their curves.
    """
    if not history:
        raise DatasetError("plot_curves: the training history is empty (expected a list of per-epoch dicts)")
    frame = pd.DataFrame(list(history))
    if start and "epoch" in frame and 0 not in set(frame["epoch"]):
        frame = pd.concat([pd.DataFrame([{"epoch": 0, **start}]), frame], ignore_index=True)
    x = frame["epoch"].to_numpy(float) if "epoch" in frame else np.arange(1, len(frame) + 1, dtype=float)
    groups = _curve_groups(frame, keys)
    ylabels = {"loss": "Loss (nats)", "metric": "Metric value (fraction, 0-1)",
               "cosine": "Mean cosine between projections", "lr": "Learning rate (log scale)"}
    fig = _figure(6.4, 2.6 * len(groups) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(groups), 1, sharex=True))
    for ax, (group, group_keys) in zip(axes, groups.items()):
        for key in group_keys:
            y = frame[key].to_numpy(float) if key in frame else np.full(len(frame), np.nan)
            ok = np.isfinite(y)
            # the learning rate changes in steps at epoch boundaries
            ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, ms=3, label=CURVE_LABELS.get(key, key),
                    drawstyle="steps-post" if group == "lr" else "default")
        if group == "loss" and loss_reference is not None:
            ax.axhline(float(loss_reference[1]), ls="--", c="0.5", lw=1, label=str(loss_reference[0]))
        if selected_epoch is not None:
            ax.axvline(selected_epoch, ls=":", c="k", lw=1.2, label=f"selected checkpoint (epoch {selected_epoch})")
        ax.set_ylabel(ylabels[group])
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if group == "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(title)
    return fig


# ------------------------------------------------------------------ embeddings
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


# ------------------------------------------------------------------ images
def _mask_centre(mask: np.ndarray | None, axis: int, size: int) -> int:
    if mask is None or not np.any(mask):
        return size // 2
    other = tuple(a for a in range(mask.ndim) if a != axis)
    profile = np.asarray(mask > 0).sum(axis=other)
    return int(round(float(np.average(np.arange(size), weights=profile))))


def _split_item(item: Any, channel: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Gallery item -> (display volume [X, Y, Z], mask or None, kind "channel"/"hu")."""
    mask = None
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise DatasetError("plot_patch_gallery: an item must be an array or an (image, mask) pair")
        item, mask = item
        mask = None if mask is None else np.asarray(mask)
    image = np.asarray(item)
    if image.ndim == 4:
        if image.shape[0] != 3 or not 0 <= channel < 3:
            raise DatasetError(f"plot_patch_gallery: expected [3, X, Y, Z] network inputs and channel 0-2, "
                               f"got shape {image.shape}, channel {channel}")
        if mask is None:
            mask = image[2] > 0  # the position-code channel is the vertebra mask
        volume, kind = image[channel], "channel"
    elif image.ndim == 3:
        volume, kind = image, "hu"
    else:
        raise DatasetError(f"plot_patch_gallery: expected a [3, X, Y, Z] or [X, Y, Z] array, got shape {image.shape}")
    if mask is not None and mask.shape != volume.shape:
        raise DatasetError(f"plot_patch_gallery: mask shape {mask.shape} differs from image shape {volume.shape}")
    return volume, mask, kind


def _show_sagittal(ax, volume: np.ndarray, mask: np.ndarray | None, vmin: float, vmax: float):
    x0 = _mask_centre(mask, 0, volume.shape[0])
    # [Y, Z] -> transpose so rows are Z; origin lower puts superior up, anterior (high Y) right
    image = ax.imshow(volume[x0].T, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    if mask is not None and np.any(mask[x0]):
        ax.contour((mask[x0] > 0).T.astype(float), levels=[0.5], colors="yellow", linewidths=0.6, origin="lower")
    ax.set_xlabel("posterior → anterior (voxels)", fontsize=7)
    ax.set_ylabel("inferior → superior (voxels)", fontsize=7)
    ax.tick_params(labelsize=6)
    return image


def plot_patch_gallery(images: Sequence[Any], titles: Sequence[str] | None = None, channel: int = 1,
                       ncols: int = 6, title: str = "Vertebra patches, mid-sagittal") -> Figure:
    """Mid-sagittal slices of several patches in a grid.

    Args:
        images: each a network input ``[3, X, Y, Z]`` (``channel`` is shown, scaled
            0-1; the mask channel outlines the vertebra) or an ``(image, mask)``
            pair where image is a ``[3, X, Y, Z]`` input or an ``[X, Y, Z]`` HU patch
            (shown in the bone window) and mask ``[X, Y, Z]`` is outlined in yellow.
        titles: one per image (e.g. "verse004 L1, grade 1 -> pred 0 (p 0.93)").
        channel: which input channel to show (0 soft tissue, 1 bone, 2 mask code).
        ncols: panels per row.
        title: says which data.

    The slice is axis 0 at the vertebra's centre (the mask's centre of mass,
    else the middle); superior is up and anterior to the right.
    """
    items = list(images)
    if not items:
        raise DatasetError("plot_patch_gallery: no images to show")
    if titles is not None and len(titles) != len(items):
        raise DatasetError(f"plot_patch_gallery: {len(items)} images but {len(titles)} titles")
    ncols = max(1, min(int(ncols), len(items)))
    nrows = -(-len(items) // ncols)
    fig = _figure(2.3 * ncols, 2.5 * nrows + 0.5)
    grid = fig.add_gridspec(nrows, ncols)
    for i, item in enumerate(items):
        volume, mask, kind = _split_item(item, channel)
        if kind == "hu":
            vmin, vmax = BONE_WINDOW[0] - BONE_WINDOW[1] / 2, BONE_WINDOW[0] + BONE_WINDOW[1] / 2
        else:
            vmin, vmax = 0.0, 1.0
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        _show_sagittal(ax, volume, mask, vmin, vmax)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    if _split_item(items[0], channel)[2] == "channel":
        what = CHANNEL_NAMES[channel]
    else:
        what = f"HU in the bone window (L {BONE_WINDOW[0]:g} / W {BONE_WINDOW[1]:g} HU)"
    fig.suptitle(f"{title}; {what}", fontsize=10)
    return fig


def plot_input_channels(x: Any, title: str = "Network input channels") -> Figure:
    """The three input channels of one patch ``[3, X, Y, Z]``: mid-sagittal (top) and mid-coronal (bottom).

    Channels are scaled 0-1 (STUDY §1.3); slices pass through the vertebra's centre.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] != 3:
        raise DatasetError(f"plot_input_channels: expected a [3, X, Y, Z] network input, got shape {x.shape}")
    mask = x[2] > 0
    y0 = _mask_centre(mask, 1, x.shape[2])
    fig = _figure(11, 7.4)
    axes = fig.subplots(2, 3)
    for c in range(3):
        image = _show_sagittal(axes[0, c], x[c], mask if c < 2 else None, 0.0, 1.0)
        axes[0, c].set_title(CHANNEL_NAMES[c] + "\nsagittal", fontsize=8)
        # coronal: fix axis 1; rows Z (superior up), columns X (patient left -> right)
        axes[1, c].imshow(x[c][:, y0, :].T, origin="lower", cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[1, c].set_title("coronal", fontsize=8)
        axes[1, c].set_xlabel("patient left → right (voxels)", fontsize=7)
        axes[1, c].set_ylabel("inferior → superior (voxels)", fontsize=7)
        axes[1, c].tick_params(labelsize=6)
        fig.colorbar(image, ax=axes[:, c], shrink=0.6, label="scaled intensity (0-1)")
    fig.suptitle(title)
    return fig


def _label_colormap() -> ListedColormap:
    # a fixed colour per VerSe label so a level has the same colour in every figure
    base = plt.get_cmap("tab20")
    return ListedColormap([base(i % 20) for i in range(MAX_LABEL + 1)])


def plot_scan_views(ct_hu: Any, seg: Any, affine: Any, title: str = "Whole scan",
                    window: tuple[float, float] = BONE_WINDOW) -> Figure:
    """Sagittal and coronal views of a whole CT with the vertebra label overlay.

    Args:
        ct_hu: ``[I, J, K]`` CT in HU, in any voxel orientation.
        seg: ``[I, J, K]`` vertebra label map (VerSe labels 1-28, 0 background).
        affine: ``4x4`` voxel -> world (mm) of both.
        title: says which case.
        window: (level, width) in HU for the grey scale; bone window by default.

    The volume is brought to RAS+ (``nibabel.as_closest_canonical``) first, so
    superior is up, anterior right (sagittal) and patient left -> right
    (coronal) whatever the file's orientation; axes are in mm from the voxel
    spacing, so the proportions are true. The sagittal plane passes through the
    spine's median left-right position, the coronal one through its median
    anterior-posterior position. Levels are named at their centroid.
    """
    import nibabel as nib

    ct_hu = np.asarray(ct_hu)
    seg = np.asarray(seg)
    affine = np.asarray(affine, dtype=float)
    if ct_hu.ndim != 3 or ct_hu.shape != seg.shape:
        raise DatasetError(f"plot_scan_views: expected CT and label map of the same 3-D shape, "
                           f"got {ct_hu.shape} and {seg.shape}")
    if affine.shape != (4, 4):
        raise DatasetError(f"plot_scan_views: expected a 4x4 affine, got shape {affine.shape}")
    ct_img = nib.as_closest_canonical(nib.Nifti1Image(ct_hu, affine))
    seg_img = nib.as_closest_canonical(nib.Nifti1Image(seg, affine))
    ct = np.asanyarray(ct_img.dataobj)
    labels = np.asanyarray(seg_img.dataobj).astype(np.int16)
    spacing = np.asarray(ct_img.header.get_zooms()[:3], dtype=float)
    x0 = _median_index(labels, 0)
    y0 = _median_index(labels, 1)
    vmin, vmax = window[0] - window[1] / 2, window[0] + window[1] / 2
    cmap = _label_colormap()
    nx, ny, nz = ct.shape
    views = [
        ("sagittal", ct[x0].T, labels[x0].T, (spacing[1], spacing[2]), (ny, nz),
         "posterior → anterior (mm)"),
        ("coronal", ct[:, y0, :].T, labels[:, y0, :].T, (spacing[0], spacing[2]), (nx, nz),
         "patient left → right (mm)"),
    ]
    height_mm = nz * spacing[2]
    width_mm = ny * spacing[1] + nx * spacing[0]
    fig = _figure(min(12.0, 2.0 + 7.0 * width_mm / max(height_mm, 1.0)), 7.0)
    axes = fig.subplots(1, 2, width_ratios=[ny * spacing[1], nx * spacing[0]])
    image = None
    for ax, (name, grey, lab, (sh, sv), (nh, nv), xlabel) in zip(axes, views):
        extent = (0, nh * sh, 0, nv * sv)  # voxel edges in mm: true proportions
        image = ax.imshow(grey, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, extent=extent,
                          interpolation="nearest", aspect="equal")
        ax.imshow(np.ma.masked_equal(lab, 0), origin="lower", cmap=cmap, vmin=-0.5, vmax=MAX_LABEL + 0.5,
                  alpha=0.4, extent=extent, interpolation="nearest", aspect="equal")
        for label in np.unique(lab[lab > 0]):
            rows, cols = np.nonzero(lab == label)
            try:
                text = level_name(int(label))
            except Exception:
                text = str(label)
            ax.text((cols.mean() + 0.5) * sh, (rows.mean() + 0.5) * sv, text, fontsize=6, color="white",
                    ha="center", va="center")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("inferior → superior (mm)")
        ax.set_title(name)
    fig.colorbar(image, ax=axes, shrink=0.7, label="CT (HU)")
    fig.suptitle(title)
    return fig


def _median_index(labels: np.ndarray, axis: int) -> int:
    if not np.any(labels):
        return labels.shape[axis] // 2
    return int(np.median(np.nonzero(labels)[axis]))


# ------------------------------------------------------------------ tables as figures
def plot_recall_by(table: pd.DataFrame, column: str, value: str = "fracture_recall",
                   title: str | None = None) -> Figure:
    """Bar chart of a :func:`vfnb.evaluate.recall_by` table (e.g. fracture recall per level), n above bars."""
    if column not in table.columns or value not in table.columns:
        raise DatasetError(f"plot_recall_by: expected columns {column!r} and {value!r}, got {list(table.columns)}")
    count_col = "n_fractured" if value == "fracture_recall" else "n_grade1" if value == "grade1_recall" else "n"
    fig = _figure(max(5.0, 0.4 * len(table) + 2), 3.8)
    ax = fig.subplots()
    heights = table[value].to_numpy(float)
    positions = np.arange(len(table))
    ax.bar(positions, np.nan_to_num(heights), color="C0")
    for p, h, n in zip(positions, heights, table[count_col].to_numpy()):
        ax.text(p, (0 if np.isnan(h) else h) + 0.02, f"n={int(n)}", ha="center", fontsize=6)
    ax.set_xticks(positions, [str(v) for v in table[column]], rotation=90 if len(table) > 8 else 0)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel(column)
    ax.set_ylabel(f"{value.replace('_', ' ')} (fraction, 0-1)")
    ax.set_title(title or f"{value.replace('_', ' ')} by {column}")
    return fig


def plot_count_heatmap(table: pd.DataFrame, title: str, xlabel: str, ylabel: str,
                       unit: str = "vertebrae (count)") -> Figure:
    """A count table (e.g. ``pd.crosstab(df.grade, df.level)``) as an annotated heatmap."""
    import seaborn as sns

    fig = _figure(max(5.0, 0.45 * table.shape[1] + 2.5), max(2.5, 0.45 * table.shape[0] + 1.5))
    ax = fig.subplots()
    sns.heatmap(table, annot=True, fmt="g", cmap="Blues", ax=ax, cbar_kws={"label": unit})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    return fig


# ------------------------------------------------------------------ data exploration
def plot_height_ratios(heights: pd.DataFrame, title: str = "Measured vertebral-body height ratios") -> Figure:
    """Box plots of Ha/Hp and Hm/Hp per Genant grade (from :func:`vfnb.data.morphometry.measure_heights`).

    The dashed line at 0.8 is a 20 % height loss, Genant's grade-1 boundary.
    """
    import seaborn as sns

    long = heights.melt(id_vars=["grade"], value_vars=["anterior_ratio", "middle_ratio"], var_name="ratio",
                        value_name="value").dropna()
    long["ratio"] = long["ratio"].map({"anterior_ratio": "anterior / posterior (Ha/Hp)",
                                       "middle_ratio": "middle / posterior (Hm/Hp)"})
    fig = _figure(9, 4)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (name, part) in zip(axes, long.groupby("ratio")):
        sns.boxplot(data=part, x="grade", y="value", hue="grade", palette=GRADE_COLORS, ax=ax, legend=False)
        ax.axhline(0.8, ls="--", c="0.5", lw=1)
        ax.set_title(name)
        ax.set_xlabel("Genant grade")
        ax.set_ylabel("height ratio (mm / mm)")
    fig.suptitle(f"{title} (dashed: 0.8, i.e. 20 % height loss)")
    return fig


def plot_intensity_histograms(samples: pd.DataFrame, title: str = "CT intensities per tissue and grade") -> Figure:
    """One panel per tissue: HU density per Genant grade (from :func:`vfnb.data.morphometry.intensity_samples`)."""
    tissues = list(dict.fromkeys(samples["tissue"]))
    fig = _figure(4.2 * len(tissues), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(tissues)))
    for ax, tissue in zip(axes, tissues):
        part = samples[samples["tissue"] == tissue]
        low, high = np.percentile(part["hu"], [0.5, 99.5])
        bins = np.linspace(low, high, 60)
        for grade, values in part.groupby("grade")["hu"]:
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=GRADE_COLORS[int(grade)],
                    label=f"grade {grade}")
        ax.set_title(tissue)
        ax.set_xlabel("CT intensity (HU)")
        ax.set_ylabel("density (1/HU)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig
