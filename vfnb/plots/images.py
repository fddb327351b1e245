"""Images: vertebra patches (network inputs or HU) in a gallery, input channels, whole scans with their labels.

A mid-sagittal view fixes axis 0 and shows superior up and anterior to the right."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from ..data.channels import BONE_WINDOW
from ..errors import DatasetError
from ..levels import MAX_LABEL, level_name
from .common import CHANNEL_NAMES, _figure


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
