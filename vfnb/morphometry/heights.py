"""Quantitative morphometry: vertebral-body heights from a patch's label map.

Genant's semi-quantitative grades are bands of vertebral *height loss* (grade 1:
20-25 %, grade 2: 25-40 %, grade 3: over 40 %). Before trusting a CNN, a reader
wants to know what measuring the heights already achieves. This module measures
them; :mod:`vfnb.morphometry.graders` turns them into graders.

The measurement works in the mid-sagittal plane of a pre-processed patch (patch
axis convention: axis 0 left-right, axis 1 posterior -> anterior, axis 2
inferior -> superior; see :mod:`vfnb.data.preprocess`):

1. **Mid-sagittal slice**: the slice along axis 0 through the mask's centroid.
2. **Body vs posterior elements**: in that slice the spinal canal separates the
   vertebral body from the lamina and spinous process, so the body is the
   connected region (8-connectivity) that reaches furthest anterior. The pedicles,
   which do join the two, lie lateral to the mid-sagittal plane.
3. **The body's own frame**: the antero-posterior axis follows the body's
   endplates (the mean slope of its top and bottom outlines, refined until it
   settles), so a body tilted in the sagittal plane (lordosis, kyphosis) is
   measured across, not along the patch grid (tilts up to about 40 degrees).
4. **Heights** at 15 %, 50 % and 85 % of the body's depth from the anterior
   wall (anterior Ha, middle Hm, posterior Hp; 15 % in from each wall avoids the
   rounded corners and osteophytes): the body's extent along the
   supero-inferior axis among the pixels whose antero-posterior coordinate lies
   within half a voxel of that position, plus one pixel's footprint (pixel
   centres span one pixel less than the object).

Relative height loss (the quantity Genant's bands are defined on):
``1 - min(Ha / Hp, Hm / Hp, Hp / Hp_expected)``, where ``Hp_expected`` is the mean
posterior height of the vertebra's measured neighbours (the levels above and
below in the same scan) when there are any: a wedge or biconcave deformity
lowers Ha or Hm against the vertebra's own posterior wall, a crush lowers Hp
against the neighbours'.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..levels import spine_order

HEIGHT_POSITIONS = {"anterior": 0.15, "middle": 0.5, "posterior": 0.85}  # fraction of depth from the front
HEIGHT_NAMES = tuple(HEIGHT_POSITIONS)


def nan_heights() -> dict:
    return {**{name: float("nan") for name in HEIGHT_NAMES}, "depth": float("nan"), "tilt_deg": float("nan")}


def mid_sagittal_slice(mask: np.ndarray) -> np.ndarray:
    """The ``[Y, Z]`` slice of a ``[X, Y, Z]`` mask through its centroid along axis 0."""
    mask = np.asarray(mask) > 0
    x0 = int(round(float(np.nonzero(mask)[0].mean())))
    return mask[x0]


def vertebral_body(sagittal: np.ndarray) -> np.ndarray:
    """The body in a mid-sagittal ``[Y, Z]`` mask slice: the 8-connected region reaching furthest anterior."""
    regions, n = ndimage.label(sagittal, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return regions > 0
    ys = np.nonzero(regions)[0]
    front = ys.max()
    anterior_label = int(regions[front][regions[front] > 0][0])
    return regions == anterior_label


def _rotate(points_mm: np.ndarray, tilt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(u, v, ap, si)``: the points along the antero-posterior / supero-inferior axes of a frame tilted by ``tilt`` rad."""
    ap = np.array([np.cos(tilt), -np.sin(tilt)])
    si = np.array([np.sin(tilt), np.cos(tilt)])
    return points_mm @ ap, points_mm @ si, ap, si


def _endplate_slope(u: np.ndarray, v: np.ndarray, bin_mm: float) -> float:
    """Mean slope (dv/du) of the top and bottom outlines between their posterior and anterior rims.

    Each outline's height is taken in two windows near the walls (10-30 % and
    70-90 % of the body's depth), where the endplates' rims lie, and the slope is
    the line through the two: a concave endplate (its middle sunk, as in a
    biconcave fracture) does not tilt the frame, whatever the body's own tilt.
    """
    windows = [np.quantile(u, q) for q in ((0.10, 0.30), (0.70, 0.90))]
    slopes = []
    for pick in (np.max, np.min):
        rims = []
        for lo, hi in windows:
            keep = (u >= lo) & (u <= hi)
            bins = np.floor((u[keep] - lo) / bin_mm).astype(int)
            outline = [pick(v[keep][bins == b]) for b in np.unique(bins)]
            rims.append((float(u[keep].mean()), float(np.median(outline))) if outline else None)
        if None not in rims and rims[1][0] > rims[0][0]:
            slopes.append((rims[1][1] - rims[0][1]) / (rims[1][0] - rims[0][0]))
    return float(np.mean(slopes)) if slopes else 0.0


def body_frame(points_mm: np.ndarray, bin_mm: float = 1.0, iterations: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Unit antero-posterior and supero-inferior axes of a body's ``[N, 2]`` (y, z) mm points.

    The antero-posterior axis follows the endplates: starting from the patch axes,
    the frame is turned by the mean slope of the body's top and bottom outlines
    from rim to rim (:func:`_endplate_slope`) until it no longer moves. A body
    tilted as a whole comes out level; a wedge whose endplates converge is measured
    along the bisector of its endplates.
    """
    tilt = 0.0
    for _ in range(iterations):
        u, v, _, _ = _rotate(points_mm, tilt)
        step = np.arctan(_endplate_slope(u, v, bin_mm))
        tilt -= step  # an outline rising anteriorly (dv/du > 0) turns the antero-posterior axis up
        if abs(step) < 1e-4:
            break
    _, _, ap, si = _rotate(points_mm, tilt)
    return ap, si


def body_heights(mask: np.ndarray, spacing_mm: Sequence[float] | float = 1.0) -> dict:
    """Anterior / middle / posterior body heights of one vertebra's patch mask.

    Args:
        mask: ``[X, Y, Z]`` label map of the vertebra (non-zero = vertebra), patch
            axis convention.
        spacing_mm: voxel size, one number (isotropic) or ``(sx, sy, sz)``.

    Returns:
        ``{"anterior", "middle", "posterior"}`` heights in mm, ``"depth"`` (the body's
        antero-posterior extent, mm) and ``"tilt_deg"`` (the body's supero-inferior
        axis against patch axis 2 in the sagittal plane, + = top tilted anterior);
        all NaN when the mask is empty.
    """
    mask = np.asarray(mask) > 0
    if mask.ndim != 3:
        raise ValueError(f"mask must be [X, Y, Z], got shape {mask.shape}")
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if not mask.any():
        return nan_heights()
    return sagittal_heights(vertebral_body(mid_sagittal_slice(mask)), spacing[1], spacing[2])[0]


def sagittal_heights(body: np.ndarray, sy: float, sz: float) -> tuple[dict, tuple[np.ndarray, float] | None]:
    """Heights of a body outlined in one sagittal ``[Y, Z]`` slice with voxels of ``sy`` x ``sz`` mm.

    Returns ``(heights, frame)``: the dict of :func:`body_heights`, and ``(ap, back)``,
    the unit antero-posterior axis of the body's frame (in the slice's (y, z) mm) and
    the position of its posterior wall along it (mm), so a caller can tell the body
    from the posterior elements off the slice; ``frame`` is None (and the heights
    NaN) when the slice holds fewer than three points of body.
    """
    points, pixel = _fine_outline_points(np.asarray(body, dtype=bool), sy, sz)
    if len(points) < 3:
        return nan_heights(), None
    ap, si = body_frame(points, bin_mm=2 * max(sy, sz))
    u, v = points @ ap, points @ si
    # fine pixel centres lie half a (fine) pixel inside the outline
    front, back = u.max() + pixel / 2, u.min() - pixel / 2
    depth = front - back
    band = max(sy, sz) / 2
    out = {"depth": float(depth), "tilt_deg": float(np.degrees(np.arctan2(si[0], si[1])))}
    for name, fraction in HEIGHT_POSITIONS.items():
        out[name] = _height_at(u, v, front - fraction * depth, band, pixel)
    return out, (ap, float(back))


def _height_at(u: np.ndarray, v: np.ndarray, at: float, band: float, pixel: float) -> float:
    """The body's extent along ``v`` at ``u = at``: the median over fine columns within ``band`` of it.

    Each fine column (one ``pixel`` wide in ``u``) gives its own extent; the median
    of those, rather than the extent of the whole band, keeps the staircase of a
    tilted endplate on coarse slices (3 mm) from adding a step to every height.
    """
    near = np.abs(u - at) <= band
    if not near.any():
        return float("nan")
    columns = np.floor((u[near] - at) / pixel).astype(np.int64)
    order = np.argsort(columns, kind="stable")
    columns, heights = columns[order], v[near][order]
    starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
    extents = np.maximum.reduceat(heights, starts) - np.minimum.reduceat(heights, starts) + pixel
    return float(np.median(extents))


def _fine_outline_points(body: np.ndarray, sy: float, sz: float, per_voxel: int = 4) -> tuple[np.ndarray, float]:
    """``([N, 2] (y, z) mm centres, pixel mm)`` of the body resampled on a fine isotropic grid.

    The binary slice is interpolated linearly onto pixels of ``min(sy, sz) /
    per_voxel`` mm and thresholded at one half, so its outline runs between the
    voxel centres (where the object's edge most likely is) instead of on them, on
    any (anisotropic) voxel grid.
    """
    pixel = min(sy, sz) / per_voxel
    zoom = (sy / pixel, sz / pixel)
    fine = ndimage.zoom(body.astype(np.float32), zoom, order=1, grid_mode=True, mode="grid-constant") > 0.5
    iy, iz = np.nonzero(fine)
    # fine pixel i has its centre at (i + 0.5) / zoom - 0.5 voxels of the original grid
    y = ((iy + 0.5) / zoom[0] - 0.5) * sy
    z = ((iz + 0.5) / zoom[1] - 0.5) * sz
    return np.stack([y, z], axis=1), pixel


def height_ratios(heights: Mapping[str, float], expected_posterior: float | None = None) -> dict:
    """Genant's ratios and the relative height loss of one vertebra.

    ``anterior_ratio`` = Ha / Hp (wedge), ``middle_ratio`` = Hm / Hp (biconcave),
    ``posterior_ratio`` = Hp / Hp_expected (crush; NaN without neighbours) and
    ``height_loss`` = 1 - the smallest of the available ratios, clipped at 0.
    """
    ha, hm, hp = (float(heights[name]) for name in HEIGHT_NAMES)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = {"anterior_ratio": ha / hp, "middle_ratio": hm / hp,
                  "posterior_ratio": hp / expected_posterior if expected_posterior else float("nan")}
    finite = [r for r in ratios.values() if np.isfinite(r)]
    loss = max(0.0, 1.0 - min(finite)) if finite else float("nan")
    return {**{k: float(v) for k, v in ratios.items()}, "height_loss": float(loss)}


def neighbour_labels(label: int, present: Sequence[int]) -> list[int]:
    """The labels among ``present`` just above and just below ``label`` on the spine.

    Nearest in cranio-caudal order (T13 sits between T12 and L1), at most one
    level away: a missing level leaves that side without a neighbour.
    """
    own = spine_order(label)
    above = [l for l in present if -1.0 <= spine_order(l) - own < 0]
    below = [l for l in present if 0 < spine_order(l) - own <= 1.0]
    out = []
    if above:
        out.append(max(above, key=spine_order))
    if below:
        out.append(min(below, key=spine_order))
    return out


def expected_posterior_height(level_heights: Mapping[int, float], label: int) -> float | None:
    """Mean posterior height (mm) of the measured neighbours of ``label`` in one scan.

    ``level_heights`` maps the scan's VerSe labels to their measured Hp (NaN when
    unmeasurable); ``None`` when no neighbour was measured.
    """
    measured = [l for l, h in level_heights.items() if np.isfinite(h)]
    values = [level_heights[n] for n in neighbour_labels(label, measured)]
    return float(np.mean(values)) if values else None


def with_ratios(vertebrae: Sequence[tuple[str, int, Mapping]]) -> list[dict]:
    """Each measured vertebra's heights with its ratios and height loss, neighbours from its own scan.

    ``vertebrae``: ``(scan id, VerSe label, body_heights(...))`` per vertebra, in any
    order. Returns, in the same order, the heights plus ``expected_posterior`` (mm,
    NaN without measured neighbours) and the entries of :func:`height_ratios`.
    """
    posterior: dict[str, dict[int, float]] = {}
    for scan, label, heights in vertebrae:
        posterior.setdefault(scan, {})[int(label)] = heights["posterior"]
    out = []
    for scan, label, heights in vertebrae:
        expected = expected_posterior_height(posterior[scan], int(label))
        out.append({**heights, "expected_posterior": float("nan") if expected is None else expected,
                    **height_ratios(heights, expected)})
    return out
