"""Does a CT look like a CT, and a label map like a vertebra label map?

Grading a volume that is not a CT in Hounsfield units (a 0/1 mask given as the CT, a
scan of -1000 HU everywhere, a normalised image) or a label map that is not one (a
background shifted to label 1 by a stray ``scl_inter``, one label over the whole
scan) gives confident grades on nonsense. These checks run on what was read, before
any vertebra is graded, and say what is implausible in the units of the field.

- :func:`ct_problems`: reasons to refuse a CT (empty list: plausible).
- :func:`ct_notes`: things to say about a CT that is still graded.
- :func:`label_map_problems`: reasons to refuse a label map, per vertebra where it applies.

The bounds are wide on purpose (they catch a wrong file, not an unusual patient):
CT values span air (about -1000 HU) to dense bone (over 1000 HU) and metal (a few
thousand, clipped by most scanners at 3071 or 32767); a vertebra, processes included,
spans well under 15 cm in every direction.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MIN_HU_RANGE = 300.0  # a CT of a body holds at least air or fat and bone: a far wider spread than this
HU_LOW, HU_HIGH = -4096.0, 40000.0  # outside these no scanner's HU lies (padding -3024 and metal included)
BONE_HU = 150.0  # trabecular bone of even an osteoporotic vertebra's cortex reaches this
MAX_VERTEBRA_MM = 150.0  # largest extent of one vertebra (transverse processes included) along any axis
MAX_LABEL_SHARE = 0.5  # one label over half of the scan is background or a body outline, not a vertebra


def _sample(image: np.ndarray, limit: int = 2_000_000) -> np.ndarray:
    """A strided sample of the voxels (percentiles of a 512 x 512 x 400 CT without copying it whole)."""
    flat = np.asarray(image).reshape(-1)
    step = max(1, flat.size // limit)
    return flat[::step].astype(np.float64, copy=False)


def ct_problems(image: np.ndarray) -> list[str]:
    """Why ``image`` cannot be a CT in HU: a near-constant volume, values no scanner writes, no bone."""
    values = _sample(image)
    if values.size == 0:
        return ["the CT holds no voxels"]
    low, high = float(values.min()), float(values.max())
    full_low, full_high = float(np.min(image)), float(np.max(image))
    problems = []
    if full_low < HU_LOW or full_high > HU_HIGH:
        problems.append(f"values from {full_low:.4g} to {full_high:.4g}; CT values in HU lie between about "
                        f"{HU_LOW:.0f} and {HU_HIGH:.0f} (air -1000, bone above 200, metal a few thousand)")
    if high - low < MIN_HU_RANGE:
        problems.append(f"values span only {low:.4g} to {high:.4g}; a CT in HU spans air or fat to bone "
                        f"(at least {MIN_HU_RANGE:.0f} HU): is this a mask, a normalised image or an empty scan?")
    elif float(np.percentile(values, 99.9)) < BONE_HU:
        problems.append(f"no voxel of bone density (99.9th percentile {np.percentile(values, 99.9):.0f} HU, "
                        f"bone is above {BONE_HU:.0f} HU); expected a CT in HU showing the spine")
    return problems


def ct_notes(image: np.ndarray) -> list[str]:
    """Notes on a plausible CT: values that are not whole numbers of HU (a resampled or processed image)."""
    values = _sample(image, 200_000)
    if np.asarray(image).dtype.kind == "f" and not np.allclose(values, np.round(values), atol=1e-3):
        return ["CT values are not whole numbers of HU (resampled or processed?); graded as given"]
    return []


def label_map_problems(labels: np.ndarray, spacing_mm: Sequence[float], names: dict[int, str] | None = None) -> list[str]:
    """Why ``labels`` (integer vertebra labels, 0 background) cannot be a vertebra label map.

    ``spacing_mm``: voxel size along each array axis; ``names``: label -> level name
    for the messages. Refused: a label over more than half of the scan, a vertebra
    extending over more than :data:`MAX_VERTEBRA_MM` along an axis.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        labels = labels.astype(np.int64)
    counts = np.bincount(labels.reshape(-1).clip(0), minlength=1)
    boxes = ndimage.find_objects(labels.clip(0))  # one pass: the bounding box of every label
    problems = []
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        name = (names or {}).get(value, f"label {value}")
        if counts[value] > MAX_LABEL_SHARE * labels.size:
            problems.append(f"{name} covers {100 * counts[value] / labels.size:.0f} % of the scan: a background or "
                            "body outline, not a vertebra (a label map with scl_inter or scl_slope set, or the "
                            "wrong file?)")
            continue
        extent = [(s.stop - s.start) * float(step) for s, step in zip(box, spacing_mm)]
        if max(extent) > MAX_VERTEBRA_MM:
            problems.append(f"{name} spans {' x '.join(f'{e:.0f}' for e in extent)} mm; one vertebra spans at most "
                            f"about {MAX_VERTEBRA_MM:.0f} mm along any axis (several structures under one label?)")
    return problems
