"""Vertebral-body heights measured on the CT's own voxel grid, whatever model grades the scan.

The study measures heights on pre-processed patches (:mod:`vfnb.morphometry.graders`),
whose masks were resampled (nearest neighbour) to the network's patch size: the
numbers then move with the checkpoint's patch size. A user's scan is measured here
instead, once, on the label map as it was given:

1. **Crop and reorient, no resampling.** Each vertebra's bounding box (plus one
   voxel) is cut from the label map and its axes are permuted and flipped to the
   closest RAS+ axes (:func:`nibabel.orientations.io_orientation`, the logic of
   ``as_closest_canonical``), so the crop follows the patch axis convention
   (axis 0 left -> right, 1 posterior -> anterior, 2 inferior -> superior) with the
   scan's real, anisotropic voxel spacing. The same CT stored RAS, LPS or with its
   axes permuted gives the same crop, hence the same heights.
2. **The body's centroid plane.** A first sagittal slice through the vertebra's
   centroid finds the body (:func:`~vfnb.morphometry.heights.vertebral_body`) and its
   frame; the body in 3D is then the vertebra's voxels in front of that posterior
   wall (the pedicles and the arch lie behind it), and the mid-sagittal plane is
   that body's centroid plane.
3. **Partial volume across sagittal slices.** The centroid plane usually falls
   between two sagittal slices (3 mm apart in a sagittally acquired scan). Both
   are measured with :func:`~vfnb.morphometry.heights.sagittal_heights` and the
   heights are interpolated linearly to the plane's position, instead of taking the
   nearest slice (which would jump by a slice as the plane moves, and differ
   between a scan and its left-right mirror). Within each slice the outline is
   placed between voxel centres by the same linear interpolation the patch
   measurement uses, so a body spanning ``n`` slices of ``s`` mm measures ``n s``.
4. **Assessable or not.** A vertebra whose body reaches the scan's outermost voxel
   layer is cut by the field of view: its heights are those of the visible part, so
   it is *not assessable* (never graded) and says which edge cut it. So is one whose
   heights could not be measured (no body in the mid-sagittal slice). Posterior
   elements at the border (a spinous process cut laterally) do not matter.

Neighbours for the crush ratio are the assessable vertebrae one level above and
below (:func:`~vfnb.morphometry.heights.expected_posterior_height`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..levels import level_name
from ..data.preprocess import label_boxes
from .heights import HEIGHT_NAMES, nan_heights, expected_posterior_height, height_ratios, sagittal_heights, vertebral_body

#: Height loss within this many percentage points (as a fraction) of a Genant band edge is ``borderline``.
BORDERLINE_MARGIN = 0.02
#: Column names of the heights in mm, in the order of :data:`~vfnb.morphometry.heights.HEIGHT_NAMES`.
HEIGHT_COLUMNS = tuple(f"{name}_height_mm" for name in HEIGHT_NAMES)
RATIO_COLUMNS = ("anterior_ratio", "middle_ratio", "posterior_ratio", "height_loss")
#: Where each side of each RAS+ axis lies on the patient, for "touches the scan's ... edge".
EDGE_NAMES = (("left", "right"), ("posterior", "anterior"), ("inferior", "superior"))

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass
class VertebraCrop:
    """One vertebra cut from the label map and reoriented to RAS+ (no resampling).

    ``mask``: bool ``[X, Y, Z]``; ``spacing``: mm along each of its axes;
    ``at_edge[axis][side]``: True where that face of the crop is the scan's own
    outer voxel layer (side 0 = low index, 1 = high index).
    """

    mask: np.ndarray
    spacing: tuple[float, float, float]
    at_edge: tuple[tuple[bool, bool], ...]


@dataclass
class VertebraHeights:
    """Heights of one vertebra on the scan grid (mm), and why it is not assessable (empty when it is)."""

    label: int
    heights: dict
    problems: list[str] = field(default_factory=list)

    @property
    def assessable(self) -> bool:
        return not self.problems


def ras_crop(label_map: np.ndarray, affine: np.ndarray, label: int, box: Box, margin: int = 1) -> VertebraCrop:
    """The voxels of ``label`` within ``box`` (+ ``margin``), axes permuted/flipped to the closest RAS+ ones."""
    import nibabel as nib

    shape = label_map.shape
    region = tuple(slice(max(0, a - margin), min(n, b + margin)) for (a, b), n in zip(box, shape))
    mask = label_map[region] == label
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=float))
    spacing = np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)
    ras_spacing = [0.0, 0.0, 0.0]
    at_edge = [[False, False] for _ in range(3)]
    for axis, (target, flip) in enumerate(ornt):
        target = int(target)
        ras_spacing[target] = float(spacing[axis])
        low, high = region[axis].start == 0, region[axis].stop == shape[axis]
        at_edge[target] = [low, high] if flip > 0 else [high, low]
    mask = np.ascontiguousarray(nib.orientations.apply_orientation(mask, ornt))
    return VertebraCrop(mask, tuple(ras_spacing), tuple(tuple(e) for e in at_edge))


def _slice_heights(mask: np.ndarray, x: int, spacing) -> tuple[dict, tuple | None]:
    return sagittal_heights(vertebral_body(mask[x]), spacing[1], spacing[2])


def _body_voxels(mask: np.ndarray, spacing, frame) -> np.ndarray:
    """The vertebra's voxels in front of the body's posterior wall (``frame`` from a sagittal slice)."""
    ap, back = frame
    y = np.arange(mask.shape[1])[:, None] * spacing[1]
    z = np.arange(mask.shape[2])[None, :] * spacing[2]
    in_front = y * ap[0] + z * ap[1] >= back
    return mask & in_front[None]


def _interpolated(mask: np.ndarray, x: float, spacing) -> dict:
    """Heights at the (fractional) sagittal position ``x``: the two bracketing slices, weighted by distance."""
    i0 = int(np.floor(x))
    t = x - i0
    picks = [(i0, 1.0 - t)] + ([(i0 + 1, t)] if t > 1e-9 and i0 + 1 < mask.shape[0] else [])
    measured = [(_slice_heights(mask, i, spacing)[0], w) for i, w in picks]
    out = {}
    for key in measured[0][0]:
        pairs = [(h[key], w) for h, w in measured if np.isfinite(h[key])]
        total = sum(w for _, w in pairs)
        out[key] = float(sum(v * w for v, w in pairs) / total) if pairs and total > 0 else float("nan")
    return out


def _centre_x(mask: np.ndarray) -> float:
    """The centroid of ``mask`` along axis 0 (left -> right), in voxel indices."""
    counts = mask.sum(axis=(1, 2))
    return float((np.arange(mask.shape[0]) * counts).sum() / counts.sum())


def _edges_touched(body: np.ndarray, at_edge) -> list[str]:
    touched = []
    for axis in range(3):
        for side, index in ((0, 0), (1, body.shape[axis] - 1)):
            if at_edge[axis][side] and np.take(body, index, axis=axis).any():
                touched.append(EDGE_NAMES[axis][side])
    return touched


def measure_crop(label: int, crop: VertebraCrop) -> VertebraHeights:
    """Heights of one reoriented vertebra crop at its body's centroid plane, with its problems."""
    mask, spacing = crop.mask, crop.spacing
    nan = nan_heights()
    if not mask.any():
        return VertebraHeights(label, nan, ["the label map holds no voxel of it"])
    first = int(round(_centre_x(mask)))
    _, frame = _slice_heights(mask, first, spacing)
    if frame is None:
        return VertebraHeights(label, nan, ["no vertebral body found in its mid-sagittal slice: heights cannot be "
                                            "measured"])
    body = _body_voxels(mask, spacing, frame)
    if not body.any():
        body = mask
    heights = _interpolated(mask, _centre_x(body), spacing)
    problems = []
    touched = _edges_touched(body, crop.at_edge)
    if touched:
        problems.append(f"the vertebral body touches the scan's {' and '.join(touched)} edge: it is cut by the "
                        "field of view, its measured heights are those of the visible part only")
    if not all(np.isfinite(heights[name]) for name in HEIGHT_NAMES):
        problems.append("heights cannot be measured on its mid-sagittal slice (body too small or broken up)")
    return VertebraHeights(label, heights, problems)


def measure_scan_vertebrae(label_map: np.ndarray, affine: np.ndarray, labels: Iterable[int]) -> list[VertebraHeights]:
    """Heights of each of ``labels`` (VerSe) on the label map's own grid (voxel -> RAS mm ``affine``), in that order."""
    boxes = label_boxes(label_map)
    out = []
    for label in (int(l) for l in labels):
        if label not in boxes:
            out.append(VertebraHeights(label, nan_heights(), ["the label map holds no voxel of it"]))
            continue
        out.append(measure_crop(label, ras_crop(label_map, affine, label, boxes[label])))
    return out


def borderline(height_loss, bands: Sequence[float], margin: float = BORDERLINE_MARGIN) -> np.ndarray:
    """True where a height loss lies within ``margin`` of one of the Genant band edges ``bands`` (NaN: False)."""
    loss = np.asarray(height_loss, dtype=float)
    near = np.zeros(loss.shape, dtype=bool)
    for edge in bands:
        near |= np.abs(loss - edge) <= margin + 1e-12
    return near & np.isfinite(loss)


def heights_rows(measured: Sequence[VertebraHeights], bands: Sequence[float]) -> list[dict]:
    """One dict per vertebra: ``label``, ``level``, heights (mm), ratios, loss, ``borderline``, ``assessable``, ``problems``.

    The expected posterior height comes from the assessable neighbours only (a
    vertebra cut by the field of view is no reference). A vertebra that is not
    assessable keeps its measured heights (of the visible part) but gets no ratios,
    no loss and no borderline flag.
    """
    posterior = {m.label: m.heights["posterior"] for m in measured if m.assessable}
    rows = []
    for m in measured:
        row = {"label": m.label, "level": level_name(m.label),
               **{column: m.heights[name] for column, name in zip(HEIGHT_COLUMNS, HEIGHT_NAMES)}}
        if m.assessable:
            ratios = height_ratios(m.heights, expected_posterior_height(posterior, m.label))
        else:
            ratios = {name: float("nan") for name in RATIO_COLUMNS}
        row.update(ratios)
        row["borderline"] = bool(borderline(row["height_loss"], bands)) if m.assessable else False
        row["assessable"] = m.assessable
        row["problems"] = list(m.problems)
        rows.append(row)
    return rows

