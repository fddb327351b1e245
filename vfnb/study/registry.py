"""What the study is made of: its notebooks and its models, each named once.

A model of the study is a training mode (:mod:`vfnb.training.engine`), the model it starts from,
a title for tables, and the study parameters that set its budget. Notebooks 01 and 02
train what this table says, :class:`vfnb.study.StudyParams` checks every
entry before notebook 00 starts, and the report and the sweep take titles from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

NOTEBOOKS = ("00_data_exploration", "01_supcon_pretraining", "02_finetuning", "03_evaluation")
NOTEBOOK_TITLES = {
    "00_data_exploration": "Data exploration",
    "01_supcon_pretraining": "SupCon pretraining",
    "02_finetuning": "Linear probe, fine-tuning and the cross-entropy baseline",
    "03_evaluation": "Test-set evaluation",
}

#: The encoder every SupCon model starts from (trained in notebook 01, not graded on the test set).
PRETRAINED = "supcon"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study.

    Attributes:
        mode: the training mode of :func:`vfnb.training.engine.train` (``supcon``, ``linear``,
            ``finetune``, ``ce``).
        starts_from: the model whose checkpoint it starts from (``None``: from scratch).
        title: its name in tables and figures.
        budget: training parameter -> the study parameter that sets it for this model
            (every model has ``epochs`` and ``lr``).
        notebook: the notebook that trains it.
    """

    mode: str
    starts_from: str | None
    title: str
    budget: Mapping[str, str] = field(default_factory=dict)
    notebook: str = "02_finetuning"

    def budget_of(self, params) -> dict:
        """This model's training parameters (e.g. ``epochs``, ``lr``) from ``params``.

        ``params``: the study's :class:`~vfnb.study.StudyParams`, or a mapping of study
        parameters (a missing key is ``None``).
        """
        if isinstance(params, Mapping):
            return {train_key: params.get(study_key) for train_key, study_key in self.budget.items()}
        return {train_key: getattr(params, study_key) for train_key, study_key in self.budget.items()}


MODELS: dict[str, ModelSpec] = {
    PRETRAINED: ModelSpec("supcon", None, "SupCon pretraining (encoder only)",
                          {"epochs": "supcon_epochs", "lr": "supcon_lr", "augmentation": "supcon_augmentation",
                           "warmup_epochs": "supcon_warmup_epochs", "batch_per_grade": "supcon_batch_per_grade",
                           "batches_per_epoch": "supcon_batches_per_epoch"}, notebook="01_supcon_pretraining"),
    "supcon_linear": ModelSpec("linear", PRETRAINED, "SupCon encoder + linear probe",
                               {"epochs": "linear_epochs", "lr": "linear_lr"}),
    "supcon_finetune": ModelSpec("finetune", PRETRAINED, "SupCon encoder, fine-tuned",
                                 {"epochs": "finetune_epochs", "lr": "finetune_lr"}),
    "ce": ModelSpec("ce", None, "Cross-entropy baseline", {"epochs": "ce_epochs", "lr": "ce_lr"}),
}

#: The models graded on the test set, in the order tables list them, and their titles.
GRADERS = tuple(name for name in MODELS if name != PRETRAINED)
MODEL_TITLES = {name: MODELS[name].title for name in GRADERS}


#: The morphometry baseline (notebook 03; :mod:`vfnb.morphometry.graders`): measured, not trained.
MORPHOMETRY_TITLES = {"morphometry_rule": "Morphometry: Genant bands on measured heights",
                      "morphometry_logistic": "Morphometry: logistic regression on height ratios"}


def model_title(model: str) -> str:
    """The title of ``model`` in tables (its name when the registry does not know it)."""
    if model in MODELS:
        return MODELS[model].title
    return MORPHOMETRY_TITLES.get(model, model)


def needs_pretraining(models: Sequence[str], checkpoints: Mapping[str, str] | None = None) -> bool:
    """Whether notebook 01 must provide the SupCon encoder: a model starts from it, or a checkpoint names it."""
    return any(MODELS[m].starts_from == PRETRAINED for m in models if m in MODELS) or PRETRAINED in (checkpoints or {})
