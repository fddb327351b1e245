"""Saliency figures: where a network looked, over the vertebra's mid-sagittal slice."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..data.processed import parse_patch_name
from ..errors import DatasetError
from ..levels import level_name
from .common import _figure

#: A map whose share in every region lies within this factor of the region's share of the cube
#: is spread evenly: it points nowhere in particular, however bright its min-max scaling makes it look.
EVEN_SPREAD = 1.25


def map_note(item: dict) -> str:
    """``"empty map ..."``, ``"evenly spread map ..."`` or ``""``: what a reader must know before reading colours into it.

    ``item``: one of :func:`vfnb.inference.saliency.explain_records` (its ``gradcam`` and,
    when present, its region ``shares``).
    """
    heat = np.asarray(item["gradcam"], dtype=float)
    if not heat.size or not np.isfinite(heat).all() or float(heat.max()) <= 0:
        return "empty map (no positive evidence anywhere)"
    shares = item.get("shares") or {}
    ratios = [v["share"] / v["volume"] for v in shares.values() if v.get("volume") and np.isfinite(v["share"])]
    if ratios and max(ratios) < EVEN_SPREAD and min(ratios) > 1 / EVEN_SPREAD:
        return "evenly spread map (no region stands out)"
    return ""


def panel_title(item: dict) -> str:
    """``"T6 of synth-s0-0013: grade 0, predicted 0 (right)"``; the record name when it is not a patch name."""
    name = str(item.get("name") or "")
    try:
        patch = parse_patch_name(name)
        where = f"{level_name(patch.label)} of {patch.image_id}"
    except DatasetError:
        where = name
    verdict = "right" if item["grade"] == item["pred"] else "wrong"
    return f"{where}\ngrade {item['grade']}, predicted {item['pred']} ({verdict})"


def plot_saliency_gallery(explained: Sequence[dict], title: str, ncols: int = 4) -> Figure:
    """One panel per explained vertebra: bone-window input slice, the Grad-CAM map over it, the mask outlined.

    ``explained``: items of :func:`vfnb.inference.saliency.explain_records`. Each panel names
    the vertebra (level and scan), its true and predicted grade, and whether the
    prediction was right; an empty or near-uniform map (:func:`map_note`) is said so on
    its panel. Grad-CAM maps are each scaled to their own range (0-1), so one colour bar
    serves the figure: colours compare places within a map, not strengths between maps.
    The slice is axis 0 through the vertebra's centre; superior up, anterior right.
    """
    items = list(explained)
    ncols = max(1, min(ncols, len(items)))
    nrows = -(-len(items) // ncols)
    fig = _figure(2.4 * ncols + 0.8, 2.7 * nrows + 0.6)
    grid = fig.add_gridspec(nrows, ncols)
    axes = []
    for i, item in enumerate(items):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        axes.append(ax)
        x = item["input"]
        mask = x[2] > 0
        x0 = int(round(np.nonzero(mask)[0].mean())) if mask.any() else x.shape[1] // 2
        ax.imshow(x[1][x0].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.imshow(item["gradcam"][x0].T, cmap="inferno", alpha=0.45, origin="lower", vmin=0, vmax=1)
        if mask[x0].any():
            ax.contour(mask[x0].T, levels=[0.5], colors="#4fc3f7", linewidths=0.7, origin="lower")
        note = map_note(item)
        if note:
            ax.text(0.5, 0.04, note, transform=ax.transAxes, ha="center", va="bottom", fontsize=6.5, color="white",
                    bbox={"facecolor": "black", "alpha": 0.7, "pad": 2, "edgecolor": "none"})
        ax.set_title(panel_title(item), fontsize=7)
        ax.set_axis_off()
    if axes:
        fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="inferno"), ax=axes, shrink=0.5,
                     label="Grad-CAM, each map scaled to its own range (0-1)")
    fig.suptitle(title, fontsize=10)
    return fig
