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
from ..data.resample import voxel_spacing
from ..data.sampling import pick_per_grade
from .heights import body_heights  # noqa: F401 - the one height measurement (re-exported)

#: Width of the cortical rim (voxels) when intensities are sampled per tissue.
RIM_VOXELS = 2


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
        spacing = voxel_spacing(affine)  # mm per voxel along each patch axis
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
