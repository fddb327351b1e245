"""Where a loaded model comes from: its checkpoint, training mode, run identity and training data.

:func:`vfnb.models.checkpoints.model_from_checkpoint` sets ``model.origin`` to a
:class:`CheckpointOrigin`, so whoever grades with the model (``vfnb predict``) can
refuse a checkpoint whose classifier was never trained, match operating points to
the run that made the checkpoint and say what data the network has seen
(:mod:`vfnb.inference.safety`). The ``training_data`` block is written by
:mod:`vfnb.training.data_record`; checkpoints written before it existed, and the
study's released ones, have none (``training_data`` None: "training data unknown").
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError
from ..levels import NUM_GRADES

RANGE_FIELDS = ("patch_spacing_mm", "hu_percentiles", "vertebra_median_hu")


@dataclass(frozen=True)
class CheckpointOrigin:
    """What a checkpoint says about how it was made.

    ``path``: the file; ``released``: one of the study's released checkpoints (no
    vfnb fields); ``mode``: the training mode (``supcon``, ``linear``, ``finetune``,
    ``joint``, ``ce``), None when not recorded; ``run_id``: the training run's
    identity, None when not recorded; ``training_data``: the checked block of
    :mod:`vfnb.training.data_record`, None when not recorded.
    """

    path: str
    released: bool = False
    mode: str | None = None
    run_id: str | None = None
    training_data: dict | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: Any) -> "CheckpointOrigin":
        if ckpt.get("format") != "vfnb":
            return cls(str(path), released=True)
        params = ckpt.get("params") if isinstance(ckpt.get("params"), dict) else {}
        mode = params.get("mode")
        run_id = ckpt.get("run_id")
        if run_id is not None and not (isinstance(run_id, str) and run_id):
            raise CheckpointError(f"{path}: field 'run_id' is {run_id!r}; expected a non-empty string")
        block = ckpt.get("training_data")
        return cls(str(path), mode=mode if isinstance(mode, str) else None, run_id=run_id,
                   training_data=None if block is None else checked_training_data(block, f"{path}"))


def checked_training_data(block: Any, where: str) -> dict:
    """The ``training_data`` block, its fields checked; :class:`CheckpointError` names the field."""
    if not isinstance(block, dict):
        raise CheckpointError(f"{where}: field 'training_data' is a {type(block).__name__}; expected a dict")
    if block.get("synthetic") not in (True, False, None):
        raise CheckpointError(f"{where}: field 'training_data.synthetic' is {block.get('synthetic')!r}; "
                              "expected true, false or null")
    counts = block.get("grade_counts")
    if counts is not None and (not isinstance(counts, dict) or set(map(str, counts)) - {str(g) for g in range(NUM_GRADES)}
                               or not all(_count(v) for v in counts.values())):
        raise CheckpointError(f"{where}: field 'training_data.grade_counts' is {counts!r}; expected counts "
                              f"(integers >= 0) of grades 0-{NUM_GRADES - 1}")
    for key in RANGE_FIELDS:
        _check_range(block.get(key), f"{where}: field 'training_data.{key}'")
    spacing = block.get("source_spacing_mm")
    if spacing is not None:
        if not isinstance(spacing, dict):
            raise CheckpointError(f"{where}: field 'training_data.source_spacing_mm' is {spacing!r}; expected "
                                  "{'smallest': [lo, hi], 'largest': [lo, hi]} or null")
        for key in ("smallest", "largest"):
            _check_range(spacing.get(key), f"{where}: field 'training_data.source_spacing_mm.{key}'")
    return dict(block)


def _count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _check_range(value, what: str) -> None:
    if value is None:
        return
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value) and value[0] <= value[1])
    if not ok:
        raise CheckpointError(f"{what} is {value!r}; expected [low, high] numbers or null")
