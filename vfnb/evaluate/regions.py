"""Spine regions of a predictions table: which vertebrae are thoracic, which lumbar.

Fracture prevalence, vertebral shape and how readers grade differ between the thoracic
and the lumbar spine, so the field reports its numbers per region. A predictions table
says where each vertebra lies through its ``label`` column (VerSe label) or its
``level`` column (a name such as ``"T12"``, or a label as text); a table with neither
has no regions and is evaluated as a whole only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DatasetError, VfnbError
from ..levels import LEVEL_NAMES, label_from_level

#: VerSe labels of each region: thoracic T1-T12 (8-19) and the extra T13 (28), lumbar L1-L6 (20-25).
SPINE_REGIONS: dict[str, tuple[int, ...]] = {
    "thoracic": (*range(8, 20), 28),
    "lumbar": tuple(range(20, 26)),
}

#: How tables name each region.
REGION_TITLES: dict[str, str] = {"thoracic": "Thoracic (T1-T13)", "lumbar": "Lumbar (L1-L6)"}


def _labels_from_column(values: pd.Series, column: str, where: str) -> np.ndarray:
    """VerSe labels of one column (-1 where the value is missing); unknown values raise."""
    out = np.full(len(values), -1, dtype=np.int64)
    bad = []
    for i, value in enumerate(values.tolist()):
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            continue
        if isinstance(value, float) and not value.is_integer():
            bad.append(value)
            continue
        try:
            out[i] = label_from_level(int(value) if isinstance(value, (int, np.integer, float)) else value)
        except (VfnbError, ValueError):
            bad.append(value)
    if bad:
        raise DatasetError(f"{where} column {column!r}: values {sorted(map(str, set(bad)))[:8]} are not vertebra "
                           f"levels; expected VerSe labels {min(LEVEL_NAMES)}-{max(LEVEL_NAMES)} or names "
                           "C1-C7, T1-T13, L1-L6")
    return out


def vertebra_labels(df: pd.DataFrame, where: str = "predictions") -> np.ndarray | None:
    """The VerSe label of every row (-1 where unknown), or None when the table has no ``label`` or ``level`` column.

    ``label`` is read when present; a ``level`` column beside it must name the same
    vertebra on every row where both are given (a table whose two columns disagree
    cannot say which region a vertebra is in, so it is refused).

    Raises:
        DatasetError: a value that is no vertebra level, or ``label`` and ``level``
            naming different vertebrae on some row.
    """
    columns = [c for c in ("label", "level") if c in df.columns]
    if not columns:
        return None
    found = {c: _labels_from_column(df[c], c, where) for c in columns}
    labels = found[columns[0]]
    if len(columns) == 2:
        both = (found["label"] >= 0) & (found["level"] >= 0)
        clash = np.flatnonzero(both & (found["label"] != found["level"]))
        if clash.size:
            i = int(clash[0])
            raise DatasetError(f"{where}: columns 'label' and 'level' disagree on {clash.size} row(s), e.g. row {i}: "
                               f"label {df['label'].iloc[i]!r}, level {df['level'].iloc[i]!r}; expected the "
                               "level name of the VerSe label")
        labels = np.where(labels >= 0, labels, found["level"])
    return labels


def region_masks(df: pd.DataFrame, where: str = "predictions") -> dict[str, np.ndarray]:
    """Boolean row mask per region of :data:`SPINE_REGIONS` that has rows; empty without a level column.

    Vertebrae of neither region (cervical, or a missing level) are in no mask: they
    count in the whole set only.
    """
    labels = vertebra_labels(df, where)
    if labels is None:
        return {}
    masks = {region: np.isin(labels, members) for region, members in SPINE_REGIONS.items()}
    return {region: mask for region, mask in masks.items() if mask.any()}
