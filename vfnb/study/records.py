"""The typed records the notebooks hand to each other through the run folder.

Each record is a frozen dataclass written as JSON by one notebook and read back by a
later one through a :class:`vfnb.study.StudyRun` accessor, so a notebook never reads
a file by name nor a value by string key:

- :class:`TrainingSettings` (``training.json``, written by 01): the network and
  training settings every model of the study shares;
- :class:`TrainedModel` (``training.json``, one per model, written by 01 and 02):
  which checkpoint a model uses, and how its training selected it;
- :class:`OperatingPoint` (``operating_points.json``, written by 02): the screening
  threshold chosen on validation (defined in :mod:`vfnb.evaluate.operating_points`,
  whose reader ``vfnb predict`` shares).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ParamsError
from ..evaluate.operating_points import OperatingPoint

__all__ = ["TrainingSettings", "TrainedModel", "TrainingSummary", "OperatingPoint"]


@dataclass(frozen=True)
class TrainingSettings:
    """The settings every model of the study shares (backbone, input, sampler, optimiser, ...).

    The SupCon models and the cross-entropy baseline share backbone, optimiser and the
    class-balanced sampler, so the comparison isolates the objective; SupCon pretraining
    sets its own batch size, epoch length, augmentation and budget (the study's
    ``supcon_*`` parameters, :data:`vfnb.study.MODELS`), which replace these for it. Each field is the training
    parameter of the same name (:mod:`vfnb.training.engine`); notebook 01 takes them from the
    study's parameters (:meth:`vfnb.study.StudyParams.training_settings`).
    """

    backbone: str
    head: str
    feature_dim: int
    cube_size: int
    batch_per_grade: int
    epoch_mode: str
    batches_per_epoch: int | None
    momentum: float
    weight_decay: float
    lr_schedule: str
    lr_milestones: list
    lr_gamma: float
    temperature: float
    base_temperature: float
    probe: str
    seed: int
    device: str
    amp: Any
    workers: int

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.keys()}


@dataclass(frozen=True)
class TrainedModel:
    """The checkpoint a model of the study uses, and how it was obtained.

    Attributes:
        model: the study's name of the model (:data:`vfnb.study.MODELS`).
        checkpoint: its checkpoint, relative to the run folder when inside it.
        source: ``"trained"`` (here), ``"given"`` (``checkpoints`` parameter, not
            trained) or ``"reused"`` (``reuse_checkpoints``).
        epochs: epochs trained (0 unless trained here).
        best_epoch: the epoch model selection kept; 0 is the start (the probe's fit
            for linear / finetune), so a fine-tuned model with ``best_epoch == 0`` is
            its starting point unchanged.
        selected_by: the validation number that selected it (e.g. ``val_macro_f1``).
        best_metric: that number at ``best_epoch``.
        seconds: training time.
    """

    model: str
    checkpoint: str
    source: str = "trained"
    epochs: int = 0
    best_epoch: int | None = None
    selected_by: str | None = None
    best_metric: float | None = None
    seconds: float | None = None

    @property
    def kept_start(self) -> bool:
        """Training did not improve on its start: the checkpoint is the start itself."""
        return self.source == "trained" and self.best_epoch == 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainingSummary:
    """``training.json``: the shared settings and, per model, the checkpoint it uses."""

    settings: TrainingSettings
    models: dict[str, TrainedModel] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"settings": self.settings.as_dict(), "models": {m: t.as_dict() for m, t in self.models.items()}}

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> "TrainingSummary":
        try:
            settings = TrainingSettings(**data["settings"])
            models = {m: TrainedModel(**entry) for m, entry in (data.get("models") or {}).items()}
        except (KeyError, TypeError) as exc:
            raise ParamsError(f"{where}: not a training summary written by this version of vfnb ({exc})") from None
        return cls(settings, models)
