"""Saliency figures: where a network looked, over the vertebra's mid-sagittal slice."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from .common import _figure


def plot_saliency_gallery(explained: Sequence[dict], title: str, ncols: int = 4) -> Figure:
    """One panel per explained vertebra: bone-window input slice, the Grad-CAM map over it, the mask outlined.

    ``explained``: items of :func:`vfnb.inference.saliency.explain_records`. Each panel names
    the vertebra, its true and predicted grade, and whether the prediction was right.
    The slice is axis 0 through the vertebra's centre; superior up, anterior right.
    """
    items = list(explained)
    ncols = max(1, min(ncols, len(items)))
    nrows = -(-len(items) // ncols)
    fig = _figure(2.4 * ncols, 2.6 * nrows + 0.6)
    grid = fig.add_gridspec(nrows, ncols)
    for i, item in enumerate(items):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        x = item["input"]
        mask = x[2] > 0
        x0 = int(round(np.nonzero(mask)[0].mean())) if mask.any() else x.shape[1] // 2
        ax.imshow(x[1][x0].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.imshow(item["gradcam"][x0].T, cmap="inferno", alpha=0.45, origin="lower", vmin=0, vmax=1)
        if mask[x0].any():
            ax.contour(mask[x0].T, levels=[0.5], colors="#4fc3f7", linewidths=0.7, origin="lower")
        verdict = "right" if item["grade"] == item["pred"] else "wrong"
        ax.set_title(f"{item['name']}\ngrade {item['grade']} -> {item['pred']} ({verdict})", fontsize=7)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig
