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

Modules: :mod:`.common` (colours, saving, line styles), :mod:`.classification`
(confusion, ROC, PR, reliability, learning curves, recall per level),
:mod:`.embedding` (UMAP / PCA views), :mod:`.images` (patches, input channels, whole
scans) and :mod:`.exploration` (counts, height ratios, intensities). This file only
re-exports.
"""

from .classification import (CURVE_LABELS, plot_confusion, plot_curves, plot_pr, plot_recall_by, plot_reliability,
                             plot_roc)
from ..levels import GRADE_COLORS
from .common import CHANNEL_NAMES, LINE_STYLES, save_figure
from .embedding import PROJECTIONS, embed_2d, pca_embedding, plot_embedding, plot_umap, plot_umap_by, umap_embedding
from .exploration import plot_count_heatmap, plot_height_ratios, plot_intensity_histograms
from .images import plot_input_channels, plot_patch_gallery, plot_scan_views
from .saliency import plot_saliency_gallery

__all__ = ["CHANNEL_NAMES", "CURVE_LABELS", "GRADE_COLORS", "LINE_STYLES", "PROJECTIONS", "embed_2d", "pca_embedding",
           "plot_confusion", "plot_count_heatmap", "plot_curves", "plot_embedding", "plot_height_ratios",
           "plot_input_channels", "plot_intensity_histograms", "plot_patch_gallery", "plot_pr", "plot_recall_by",
           "plot_reliability", "plot_roc", "plot_saliency_gallery", "plot_scan_views", "plot_umap", "plot_umap_by", "save_figure",
           "umap_embedding"]
