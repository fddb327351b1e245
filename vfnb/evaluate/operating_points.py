"""Operating points: the record and the one reader of a study's ``operating_points.json``.

Notebook 02 writes the file (one :class:`OperatingPoint` per model); two places read it
back: a later study (parameter ``operating_points_from``, :mod:`vfnb.study.evaluation`)
and ``vfnb predict --operating-points`` (:mod:`vfnb.inference.command`). Both go through
:func:`read_operating_points`, so a malformed file is refused with the same message
(file, model, field, what was expected) wherever it is read. It lives here, below both
``study`` and ``inference``, and needs neither torch nor pandas.

Every number is checked where it is read: a threshold is a finite number (not a
boolean) in [0, 1] (or the next float above 1, which a threshold chosen for
specificity 1 can be: it calls every vertebra normal), specificities, sensitivity and
the ROC AUC numbers in [0, 1]; the error names the file, the model and the field.
``run_id`` is the identity of the training run whose checkpoint the point was chosen
for (:mod:`vfnb.training.data_record`), so a user of the checkpoint can tell a point
of this checkpoint from one of another run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ParamsError


@dataclass(frozen=True)
class OperatingPoint:
    """A screening threshold on the fracture probability, and what it gave where it was chosen.

    A vertebra is called fractured (grade >= 1) when ``1 - P(grade 0) >= threshold``.
    """

    threshold: float
    target_specificity: float | None = None
    val_specificity: float | None = None
    val_sensitivity: float | None = None
    val_roc_auc: float | None = None
    chosen_on: str = "validation"
    run_id: str | None = None  # the training run of the checkpoint it was chosen for; None: not recorded

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, where: str, required: Sequence[str] = ("threshold",)) -> "OperatingPoint":
        """The record of one entry; ``where`` names file and model in the error; ``required``: numeric fields."""
        missing = [k for k in required if not isinstance(data, Mapping) or not _is_number(data.get(k))]
        if missing:
            raise ParamsError(f"{where}: expected an operating point with numeric {', '.join(repr(k) for k in missing)}")
        for key in PROBABILITY_FIELDS:
            if data.get(key) is not None:
                _check_probability(data[key], key, where)
        if data.get("run_id") is not None and not isinstance(data["run_id"], str):
            raise ParamsError(f"{where}: field 'run_id' is {data['run_id']!r}; expected a string (the training run's "
                              "identity) or null")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


#: Fields that are probabilities or rates: finite numbers in [0, 1] (the threshold may be the next float above 1).
PROBABILITY_FIELDS = ("threshold", "target_specificity", "val_specificity", "val_sensitivity", "val_roc_auc")
_ABOVE_ONE = math.nextafter(1.0, 2.0)


def _check_probability(value, key: str, where: str) -> None:
    high = _ABOVE_ONE if key == "threshold" else 1.0
    if not _is_number(value) or not math.isfinite(value) or not 0.0 <= value <= high:
        raise ParamsError(f"{where}: field {key!r} is {value!r}; expected a finite number in [0, 1]"
                          + (" (not true/false)" if isinstance(value, bool) else ""))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_table(path: str | os.PathLike) -> dict:
    """The JSON object of ``path`` (model name -> operating point); raises naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found (expected a study's operating_points.json)")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ParamsError(f"{path}: cannot read it as a study's operating_points.json ({exc})") from None
    if not isinstance(table, dict) or not table:
        raise ParamsError(f"{path}: expected a JSON object of model name -> operating point")
    return table


def read_operating_points(path: str | os.PathLike, models: Sequence[str] | None = None,
                          required: Sequence[str] = ("threshold",), model_option: str = "--model"
                          ) -> dict[str, OperatingPoint]:
    """The operating points of ``models`` in ``path``; ``None``: the file's only model.

    ``required``: the fields each must hold as numbers (the per-scan report also shows
    validation specificity and sensitivity). ``model_option`` names, in the error, how a
    user says which model when the file holds several.
    """
    table = read_table(path)
    if models is None:
        if len(table) != 1:
            raise ParamsError(f"{path}: holds the operating points of {', '.join(table)}; say which with {model_option}")
        models = list(table)
    out = {}
    for model in models:
        if model not in table:
            raise ParamsError(f"{path}: no operating point for model {model!r} (models there: {', '.join(table)})")
        out[model] = OperatingPoint.from_dict(table[model], f"{path}: model {model!r}", required)
    return out
