"""Heights on the CT's own grid in every ``vfnb predict`` table, and the grader that needs no training.

Whatever grades a scan, each vertebra's row carries its heights measured on the
label map's own voxel grid (:mod:`vfnb.morphometry.scan_heights`): the same numbers
for any checkpoint and for none. A vertebra that is not assessable (its body cut by
the scan's field of view, or no measurable body) is never graded: its grade and
probabilities are left empty and ``warnings`` says why.

Without a checkpoint the **morphometry** grader grades each vertebra from those
heights with Genant's bands (:func:`vfnb.morphometry.graders.genant_grade` on the
height loss against the vertebra's own posterior wall and its neighbours' posterior
heights). A rule gives a grade, not probabilities: ``p0`` .. ``p3`` and
``fracture_prob`` stay empty, and the fracture decision is grade >= 1.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..levels import NUM_GRADES
from ..morphometry.graders import GENANT_BANDS, genant_grade
from ..morphometry.scan_heights import HEIGHT_COLUMNS, RATIO_COLUMNS, heights_rows, measure_scan_vertebrae

#: The ``grader`` of a table graded without a checkpoint.
HEIGHTS_GRADER = "morphometry"
PROB_COLUMNS = tuple(f"p{g}" for g in range(NUM_GRADES))
#: Columns every ``vfnb predict`` table has, in this order (``grader`` first after the level).
GRADE_COLUMNS = ("label", "level", "grader", "pred", *PROB_COLUMNS, "fracture_prob")
HEIGHTS_TABLE_COLUMNS = (*HEIGHT_COLUMNS, *RATIO_COLUMNS, "borderline", "assessable")
NOT_ASSESSABLE = "not assessable"


def scan_heights(label_map: np.ndarray, affine: np.ndarray, labels: Sequence[int]) -> pd.DataFrame:
    """Heights of ``labels`` on the label map's grid: one row each, columns ``label``, ``level``,
    :data:`HEIGHTS_TABLE_COLUMNS` and ``problems`` (list of reasons, empty when assessable)."""
    return pd.DataFrame(heights_rows(measure_scan_vertebrae(label_map, affine, labels), GENANT_BANDS))


def _warnings(previous: Sequence[str], problems: Sequence) -> list[str]:
    out = []
    for before, reasons in zip(previous, problems):
        notes = [str(before)] if str(before or "") else []
        notes += [f"{NOT_ASSESSABLE}: {reason}" for reason in reasons]
        out.append("; ".join(notes))
    return out


def with_heights(table: pd.DataFrame, heights: pd.DataFrame, grader: str) -> pd.DataFrame:
    """``table`` (rows of graded vertebrae with ``label``) joined with their ``heights``, by label.

    Rows of vertebrae that are not assessable lose their grade and probabilities
    (left empty); their reasons are added to ``warnings``. Columns:
    :data:`GRADE_COLUMNS`, :data:`HEIGHTS_TABLE_COLUMNS`, then any others of
    ``table``, ``warnings`` last.
    """
    by_label = heights.set_index("label")
    missing = [int(l) for l in table["label"] if int(l) not in by_label.index]
    if missing:
        raise ValueError(f"no heights for labels {missing}")
    joined = by_label.loc[[int(l) for l in table["label"]]].reset_index()
    out = table.reset_index(drop=True).copy()
    out["grader"] = grader
    for column in HEIGHTS_TABLE_COLUMNS:
        out[column] = joined[column].to_numpy()
    out["borderline"] = out["borderline"].astype(bool)
    out["assessable"] = out["assessable"].astype(bool)
    blank = ~out["assessable"].to_numpy()
    out["pred"] = pd.array(out["pred"], dtype="Int64")
    out.loc[blank, "pred"] = pd.NA
    for column in (*PROB_COLUMNS, "fracture_prob"):
        out[column] = out[column].astype(np.float64)
        out.loc[blank, column] = np.nan
    previous = out["warnings"] if "warnings" in out else [""] * len(out)
    out["warnings"] = _warnings(list(previous), joined["problems"])
    others = [c for c in out.columns if c not in (*GRADE_COLUMNS, *HEIGHTS_TABLE_COLUMNS, "warnings")]
    return out[[*GRADE_COLUMNS, *HEIGHTS_TABLE_COLUMNS, *others, "warnings"]]


def morphometry_grades(heights: pd.DataFrame) -> pd.DataFrame:
    """The morphometry grader's table for :func:`scan_heights` rows: Genant's band of each assessable loss.

    No probabilities: ``p0`` .. ``p3`` and ``fracture_prob`` are empty (NaN).
    """
    table = pd.DataFrame({
        "label": pd.array(heights["label"].astype(int), dtype="int64"),
        "level": heights["level"].astype(str),
        "pred": pd.array(genant_grade(heights["height_loss"].to_numpy(float)), dtype="Int64"),
    })
    for column in (*PROB_COLUMNS, "fracture_prob"):
        table[column] = np.nan
    table["warnings"] = ""
    return with_heights(table, heights, HEIGHTS_GRADER)
