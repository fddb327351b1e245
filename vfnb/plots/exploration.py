"""Figures of the data: counts per grade and level, measured height ratios, CT intensities per tissue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..levels import GRADE_COLORS
from .common import _figure


def plot_count_heatmap(table: pd.DataFrame, title: str, xlabel: str, ylabel: str,
                       unit: str = "vertebrae (count)") -> Figure:
    """A count table (e.g. ``pd.crosstab(df.grade, df.level)``) as an annotated heatmap."""
    fig = _figure(max(5.0, 0.45 * table.shape[1] + 2.5), max(2.5, 0.45 * table.shape[0] + 1.5))
    ax = fig.subplots()
    sns.heatmap(table, annot=True, fmt="g", cmap="Blues", ax=ax, cbar_kws={"label": unit})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="y", rotation=0)
    return fig


def plot_height_ratios(heights: pd.DataFrame, title: str = "Measured vertebral-body height ratios") -> Figure:
    """Box plots of Ha/Hp and Hm/Hp per Genant grade (from :func:`vfnb.morphometry.samples.measure_heights`).

    The dashed line at 0.8 is a 20 % height loss, Genant's grade-1 boundary.
    """
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
    """One panel per tissue: HU density per Genant grade (from :func:`vfnb.morphometry.samples.intensity_samples`)."""
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
