"""A segmenter's label map from SynthSpine's exact one (SynthSpine v2).

SynthSpine draws each vertebra's label exactly on its bone: the voxels whose centres
lie inside the vertebra. The label maps users bring come from segmentation models
(a VerSe model, TotalSegmentator), whose masks are generous: they reach about a
millimetre beyond the cortex, the boundary wanders, and now and then the label
spills into the neighbouring disc. A network trained only on exact masks sees, on a
user's scan, a mask channel and a share of soft tissue inside the mask it never saw.

:func:`segmenter_labels` grows every label into the unlabelled voxels within a
reach that varies smoothly over the scan (``seg_margin_mm``, varying over
``seg_margin_scale_mm``), plus, at a random share of endplates, a bump that lets the
label bleed a few millimetres into the disc. Each new voxel takes the label of the
neighbouring labelled voxel, so labels only ever grow into unlabelled voxels and
neighbours never overlap. The exact map is kept beside it
(``seg_exact/`` of the dataset): the grades were drawn on it, and the heights in
``synth_truth.csv`` are its heights.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .config import SynthConfig


def _crop(seg: np.ndarray, pad) -> tuple[slice, ...] | None:
    """The bounding box of the labels, widened by ``pad`` voxels per axis (clipped to the volume)."""
    found = ndimage.find_objects((seg > 0).astype(np.uint8))
    if not found:
        return None
    return tuple(slice(max(0, s.start - int(p)), min(n, s.stop + int(p))) for s, p, n in zip(found[0], pad, seg.shape))


def _smooth_curve(n: int, spacing: float, scale_mm: float, rng) -> np.ndarray:
    """A random curve over ``n`` voxels in [-1, 1], varying over about ``scale_mm`` (linear between random knots)."""
    knots = max(2, int(np.ceil(n * spacing / scale_mm)) + 1)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), rng.uniform(-1, 1, knots)).astype(np.float32)


def _margin_field(shape, spacing, scale_mm: float, low: float, high: float, rng) -> np.ndarray:
    """The label's reach (mm) over the crop, between ``low`` and ``high``, varying smoothly over ``scale_mm``.

    Sums and a product of random curves along each axis: cheap (separable), yet not
    constant along any line through the volume.
    """
    c = [_smooth_curve(n, s, scale_mm, rng) for n, s in zip(shape, spacing)]
    d = [_smooth_curve(n, s, scale_mm, rng) for n, s in zip(shape, spacing)]
    t = (c[0][:, None, None] + c[1][None, :, None] + c[2][None, None, :]) / 3.0 \
        + d[0][:, None, None] * d[1][None, :, None] * d[2][None, None, :]
    t = np.clip(0.5 + 0.5 * t, 0.0, 1.0)
    return np.float32(low) + np.float32(high - low) * t


def _bleed(shape, spacing, offset, points, amplitudes, width_mm: float) -> np.ndarray:
    """Extra reach (mm) along the slices: a Gaussian bump of ``amplitude`` around each point (full-grid voxel indices)."""
    out = np.zeros(shape, np.float32)
    axes = [(np.arange(n) + o) * s for n, o, s in zip(shape, offset, spacing)]
    for p, amp in zip(points, amplitudes):
        g = [np.exp(-0.5 * ((ax - c * s) / width_mm) ** 2).astype(np.float32) for ax, c, s in zip(axes, p, spacing)]
        out = np.maximum(out, np.float32(amp) * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :])
    return out


def _grow(labels: np.ndarray, reach: np.ndarray, step_mm: float, size: tuple) -> None:
    """Grow ``labels`` (in place) into unlabelled voxels, one neighbourhood (a box of ``size``) per step of
    ``step_mm``, while the step's distance stays within ``reach``; a new voxel takes a neighbour's label."""
    steps = int(np.ceil(float(reach.max()) / step_mm + 0.5))
    for k in range(1, steps + 1):
        allowed = reach > (k - 0.5) * step_mm
        if not allowed.any():
            return
        near = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)  # separable: fast
        new = (labels == 0) & (near > 0) & allowed
        labels[new] = near[new]


def segmenter_labels(seg: np.ndarray, spacing, bleed_points: list[np.ndarray], rng, config: SynthConfig) -> np.ndarray:
    """The generous label map (uint8, same grid; axes 0, 1 in-plane, axis 2 the slices) grown from the exact ``seg``.

    Growth goes first in-plane (8-neighbourhood, steps of the in-plane voxel size),
    then along the slices (steps of the slice spacing), each as far as the reach
    allows. ``bleed_points`` are candidate endplate centres (voxel indices); each
    becomes a bleed into the disc (extra reach along the slices) with probability
    ``config.p_seg_disc_bleed``. Random draws, in order: the bleed choices and sizes,
    the margin field.
    """
    spacing = np.asarray(spacing, float)
    chosen = [p for p in bleed_points if rng.random() < config.p_seg_disc_bleed]
    amplitudes = [float(rng.uniform(*config.seg_disc_bleed_mm)) for _ in chosen]
    reach_max = float(config.seg_margin_mm[1]) + (max(amplitudes) if amplitudes else 0.0)
    box = _crop(seg, np.ceil(reach_max / spacing) + 1)
    out = seg.copy()
    if box is None or reach_max <= 0:
        return out
    grown = seg[box].copy()
    reach = _margin_field(grown.shape, spacing, config.seg_margin_scale_mm, *config.seg_margin_mm, rng)
    _grow(grown, reach, float(min(spacing[0], spacing[1])), (3, 3, 1))
    if chosen:
        reach = reach + _bleed(grown.shape, spacing, [b.start for b in box], chosen, amplitudes, width_mm=7.0)
    _grow(grown, reach, float(spacing[2]), (1, 1, 3))
    out[box] = grown
    return out
