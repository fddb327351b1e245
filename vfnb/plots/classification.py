"""Figures of grading and screening: confusion matrices, ROC, precision-recall, reliability, learning curves, recall per level.

Several models on one axes each get their own colour, line style and marker; a model
whose curve equals an earlier one's says so in the legend (a fine-tuned model that kept
its start draws exactly on the linear probe's curve)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ..errors import DatasetError
from ..levels import GRADES
from .common import LINE_STYLES, _figure, _grade_label, _legend_name, _same_as, _style, legend_below


def confusion_cell_texts(counts: np.ndarray) -> np.ndarray:
    """``"12\n40 %"`` per cell: the count, then its share of the true grade (row); ``"0\n–"`` in an empty row."""
    counts = np.asarray(counts, dtype=int)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(100.0 * counts, rows, out=np.full(counts.shape, np.nan), where=rows > 0)
    return np.array([[f"{c}\n{'–' if np.isnan(p) else f'{p:.0f} %'}" for c, p in zip(cr, pr)]
                     for cr, pr in zip(counts, shares)])


def plot_confusion(confusion: Any, title: str = "Confusion matrix", labels: Sequence[int] = GRADES) -> Figure:
    """Confusion matrix: each cell gives the count and its share of the true grade, coloured by that share.

    Args:
        confusion: ``[4, 4]`` counts, rows = true grade, columns = predicted
            (``grade_metrics(...)["confusion_matrix"]`` or ``evaluate_predictions``).
        title: says which model and split.
        labels: the grades of the rows/columns.

    One matrix, large type: the report shows key figures at half the page's width, so
    a reader sees at once how many vertebrae of each grade went where (the diagonal's
    share is that grade's recall). A grade without vertebrae has an empty (white) row.
    """
    counts = np.asarray(confusion, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise DatasetError(f"plot_confusion: expected a square {len(labels)}x{len(labels)} matrix, got {counts.shape}")
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    names = [_grade_label(g) for g in labels]
    fig = _figure(7.6, 6.4)
    ax = fig.subplots()
    sns.heatmap(shares, annot=confusion_cell_texts(counts), fmt="", cmap="Blues", vmin=0, vmax=1, ax=ax,
                xticklabels=names, yticklabels=names, linewidths=1, linecolor="white",
                cbar_kws={"label": "share of the true grade (row)"}, annot_kws={"fontsize": 16})
    ax.set_xlabel("Predicted Genant grade", fontsize=13)
    ax.set_ylabel("True Genant grade", fontsize=13)
    ax.tick_params(axis="both", labelsize=12)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title("Vertebrae per cell, and their share of the true grade (diagonal = recall)", fontsize=11)
    fig.suptitle(title, fontsize=14)
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
    inputs = {name: _curve_inputs(data, name) for name, data in curves.items()}
    same = _same_as(inputs, lambda pair: pair)
    fig = _figure(5.6, 5.2 + 0.16 * (1 + len(inputs) * (2 if thresholds else 1)))
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
    legend_below(fig, ax)
    ax.grid(alpha=0.3)
    return fig


def plot_pr(curves: Mapping[str, Any], title: str = "Precision-recall, fracture screening (grade >= 1)") -> Figure:
    """Precision-recall curves of several models on one axes, average precision in the legend.

    ``curves`` as in :func:`plot_roc` (styles and identical curves too). The dotted
    line is the prevalence of fractured vertebrae (precision of a random ranking) in
    the first model's data.
    """
    inputs = {name: _curve_inputs(data, name) for name, data in curves.items()}
    same = _same_as(inputs, lambda pair: pair)
    fig = _figure(5.6, 5.2 + 0.16 * (1 + len(inputs)))
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
    legend_below(fig, ax)
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
    fig = _figure(5.6, 6.2 + 0.16 * (1 + len(calibrations)))
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
    legend_below(fig, ax)
    ax.grid(alpha=0.3)
    return fig


#: Legend names of the training-history keys (:mod:`vfnb.training.engine`).
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
    panel, ``proj_cos_*`` (:class:`vfnb.models.losses.ProjectionSimilarity`) a cosine panel,
    every other numeric key (``val_macro_f1``, ``val_accuracy``, ...) a metrics panel
    (0-1); legends use :data:`CURVE_LABELS`. The x axis is ``epoch`` (integer ticks)
    when present, else the row number + 1. ``keys`` restricts which keys are drawn.
    Values missing in some epochs are skipped, not drawn as zeros.

    Args:
        loss_reference: ``(label, value)`` drawn as a dashed line on the loss panel
            (e.g. :meth:`vfnb.models.losses.SupConLoss.uninformative_value`).
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
