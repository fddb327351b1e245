"""Vertebral-body heights and CT intensities measured on pre-processed patches.

Genant grades are defined by height loss (STUDY §4), so notebook 00 checks that the
measured heights of each grade behave as the grades say, independently of how the
data were made; and it shows the intensities of the tissues the network sees.

Patches follow the patch axis convention (``[X, Y, Z]`` in RAS+: axis 1 posterior ->
anterior, axis 2 inferior -> superior; docs/ARCHITECTURE.md). Heights are in mm,
intensities in HU.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from ..io import load_nifti
from ..levels import level_name
from .sampling import pick_per_grade

#: Where the three heights are read along the body's antero-posterior run (0 = anterior wall).
HEIGHT_POSITIONS = {"anterior": 0.15, "middle": 0.5, "posterior": 0.85}
#: Width of the cortical rim (voxels) when intensities are sampled per tissue.
RIM_VOXELS = 2


def _body_run(columns: np.ndarray) -> tuple[int, int]:
    """First and last antero-posterior index of the run of mask columns that reaches the anterior edge.

    The spinal canal separates the vertebral body (anterior) from the posterior
    elements, so the body is the run of non-empty columns ending at the most anterior one.
    """
    ys = np.nonzero(columns)[0]
    front = int(ys.max())
    back = front
    while back - 1 >= 0 and columns[back - 1]:
        back -= 1
    return back, front


def body_heights(mask, spacing_mm: float = 1.0) -> dict:
    """Anterior / middle / posterior vertebral-body heights measured on a patch mask (mm).

    ``mask`` ``[X, Y, Z]`` in the patch convention. On the mid-sagittal slice (axis 0
    through the mask's centre), the body is the run of mask columns reaching the
    anterior edge; heights are the mask's extent along axis 2 at 15 %, 50 % and 85 %
    of that run, from anterior. Returns ``{"anterior", "middle", "posterior"}`` in mm
    (NaN when the slice is empty).
    """
    mask = np.asarray(mask) > 0
    nan = {name: float("nan") for name in HEIGHT_POSITIONS}
    if not mask.any():
        return nan
    x0 = int(round(np.nonzero(mask)[0].mean()))
    sagittal = mask[x0]  # [Y, Z]
    columns = sagittal.any(axis=1)
    if not columns.any():
        return nan
    back, front = _body_run(columns)
    length = front - back + 1

    def height(fraction: float) -> float:
        zs = np.nonzero(sagittal[int(round(front - fraction * (length - 1)))])[0]
        return float((zs.max() - zs.min() + 1) * spacing_mm) if zs.size else float("nan")

    return {name: height(fraction) for name, fraction in HEIGHT_POSITIONS.items()}


def measure_heights(records: Sequence[dict], per_grade: int = 40, seed: int = 0) -> pd.DataFrame:
    """Body heights and ratios of up to ``per_grade`` patches of each grade (reads their masks).

    Columns: ``name``, ``grade``, ``level``, ``anterior`` / ``middle`` / ``posterior``
    (mm), ``anterior_ratio`` = Ha/Hp, ``middle_ratio`` = Hm/Hp (wedge and biconcave
    deformity), ``min_ratio`` = min(Ha, Hm)/Hp. The patches are
    :func:`vfnb.data.sampling.pick_per_grade` of ``records``.
    """
    rows = []
    for record in pick_per_grade(records, per_grade, seed):
        mask, affine, _ = load_nifti(record["seg"])
        spacing = float(np.linalg.norm(affine[:3, 2]))  # axis 2 carries the height
        rows.append({"name": record["name"], "grade": int(record["grade"]), "level": level_name(record["label"]),
                     **body_heights(mask, spacing)})
    table = pd.DataFrame(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["anterior_ratio"] = table["anterior"] / table["posterior"]
        table["middle_ratio"] = table["middle"] / table["posterior"]
        table["min_ratio"] = np.minimum(table["anterior"], table["middle"]) / table["posterior"]
    return table


def _tissues(mask: np.ndarray) -> dict:
    """Boolean selections of the cortical rim, the trabecular core and the surroundings of a mask."""
    core = ndimage.binary_erosion(mask, iterations=RIM_VOXELS)
    return {"cortical rim": mask & ~core, "trabecular core": core, "surroundings": ~mask}


def intensity_samples(records: Sequence[dict], per_grade: int = 10, voxels: int = 3000,
                      seed: int = 0) -> pd.DataFrame:
    """HU values per tissue and grade from up to ``per_grade`` patches of each grade.

    Tissues: ``cortical rim`` (the mask's outer 2 voxels), ``trabecular core`` (the
    mask eroded by 2 voxels) and ``surroundings`` (outside the mask: discs, muscle,
    fat, neighbouring bone). Up to ``voxels`` values are drawn per patch and tissue.
    Columns: ``grade``, ``tissue``, ``hu``.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for record in pick_per_grade(records, per_grade, seed):
        image, _, _ = load_nifti(record["image"])
        for tissue, selection in _tissues(load_nifti(record["seg"])[0] > 0).items():
            values = image[selection]
            if values.size:
                values = rng.choice(values, size=min(voxels, values.size), replace=False)
                parts.append(pd.DataFrame({"grade": int(record["grade"]), "tissue": tissue,
                                           "hu": values.astype(float)}))
    return pd.concat(parts, ignore_index=True)
