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


#: A map whose values span less than this share of the figure's colour scale shows no place that stands out.
FLAT_RANGE = 0.05


def map_note(item: dict, scale: float | None = None) -> str:
    """``"empty map ..."``, ``"flat map ..."``, ``"evenly spread map ..."`` or ``""``: what a reader must know first.

    ``item``: one of :func:`vfnb.inference.saliency.explain_records` (its ``gradcam_raw``
    or ``gradcam``, and its region ``shares`` when present). ``scale``: the figure's
    colour scale (the largest unscaled value among its maps); a map spanning less than
    :data:`FLAT_RANGE` of it is flat.
    """
    heat = _shown_map(item)
    if not heat.size or not np.isfinite(heat).all() or float(heat.max()) <= 0:
        return "empty map (no positive evidence anywhere)"
    if scale and (float(heat.max()) - float(heat.min())) / scale < FLAT_RANGE:
        return f"flat map (spans under {100 * FLAT_RANGE:.0f} % of the scale)"
    shares = item.get("shares") or {}
    ratios = [v["share"] / v["volume"] for v in shares.values() if v.get("volume") and np.isfinite(v["share"])]
    if ratios and max(ratios) < EVEN_SPREAD and min(ratios) > 1 / EVEN_SPREAD:
        return "evenly spread map (no region stands out)"
    return ""


def _shown_map(item: dict) -> np.ndarray:
    """The map a panel shows: the unscaled Grad-CAM when the item has it, else the map scaled to its own range."""
    return np.asarray(item.get("gradcam_raw", item["gradcam"]), dtype=float)


def figure_scale(items: Sequence[dict]) -> tuple[float, str]:
    """``(top, label)``: the one colour scale of a gallery (0 to ``top``) and its colour bar's words.

    With every item's unscaled map the scale runs to the largest value among them, so
    colours compare strengths between panels (the label is short: a long colour-bar
    label stretches the figure); otherwise (maps each scaled to [0, 1]
    before they reached the figure) it is 0-1 and the label says colours compare places
    within a map only.
    """
    if items and all("gradcam_raw" in item for item in items):
        top = max((float(np.nanmax(_shown_map(item))) for item in items), default=0.0)
        if top > 0:
            return top, "Grad-CAM, one scale\nfor every panel"
    return 1.0, "Grad-CAM, each map\nscaled to its own range"


def panel_title(item: dict, note: str = "") -> str:
    """``"T6 of synth-s0-0013: grade 0, predicted 0 (right)"``, then ``note`` on its own line when there is one.

    The record name stands in when it is not a patch name.
    """
    name = str(item.get("name") or "")
    try:
        patch = parse_patch_name(name)
        where = f"{level_name(patch.label)} of {patch.image_id}"
    except DatasetError:
        where = name
    verdict = "right" if item["grade"] == item["pred"] else "wrong"
    return f"{where}\ngrade {item['grade']}, predicted {item['pred']} ({verdict})" + (f"\n{note}" if note else "")


def plot_saliency_gallery(explained: Sequence[dict], title: str, ncols: int = 4) -> Figure:
    """One panel per explained vertebra: bone-window input slice, the Grad-CAM map over it, the mask outlined.

    ``explained``: items of :func:`vfnb.inference.saliency.explain_records`. Every panel
    uses ONE colour scale (:func:`figure_scale`) and the figure has one colour bar, so
    a bright panel is a strong map, not a weak map stretched to its own range. Each
    panel's title names the vertebra (level and scan), its true and predicted grade,
    whether the prediction was right, and says when its map is empty, flat or evenly
    spread (:func:`map_note`). The slice is axis 0 through the vertebra's centre;
    superior up, anterior right.
    """
    items = list(explained)
    ncols = max(1, min(ncols, len(items)))
    nrows = -(-len(items) // ncols)
    top, label = figure_scale(items)
    fig = _figure(2.4 * ncols + 0.8, 2.9 * nrows + 0.6)
    grid = fig.add_gridspec(nrows, ncols)
    axes = []
    for i, item in enumerate(items):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        axes.append(ax)
        x = item["input"]
        mask = x[2] > 0
        x0 = int(round(np.nonzero(mask)[0].mean())) if mask.any() else x.shape[1] // 2
        ax.imshow(x[1][x0].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.imshow(_shown_map(item)[x0].T, cmap="inferno", alpha=0.45, origin="lower", vmin=0, vmax=top)
        if mask[x0].any():
            ax.contour(mask[x0].T, levels=[0.5], colors="#4fc3f7", linewidths=0.7, origin="lower")
        note = map_note(item, top)
        ax.set_title(panel_title(item, note), fontsize=7)
        ax.set_axis_off()
    if axes:
        fig.colorbar(ScalarMappable(Normalize(0, top), cmap="inferno"), ax=axes, shrink=0.5, label=label)
    fig.suptitle(title, fontsize=10)
    return fig
