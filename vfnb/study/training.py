"""Training the study's models: one call per model, as the registry describes it.

:func:`train_model` turns a model of :data:`vfnb.study.MODELS` into a checkpoint:
a given checkpoint is used as is (external validation), a previous one is reused on
request, otherwise :func:`vfnb.train.train` runs with the shared
:class:`~vfnb.study.records.TrainingSettings`, the model's budget and the checkpoint
of the model it starts from. The outcome is recorded in the run folder for the
later notebooks and the report.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import ParamsError
from ..models import build_model, checkpoint_input
from ..plots import plot_curves
from ..config import validate_params
from ..train import train
from .paths import resolve_path, shown_path
from .records import TrainedModel, TrainingSettings
from .registry import MODELS, PRETRAINED, needs_pretraining
from .run import say

def checkpoint_cube_size(path: str | os.PathLike) -> int:
    """The input cube edge (voxels) a checkpoint was trained at: the one size to use it at.

    From the checkpoint's input block (:func:`vfnb.models.checkpoint_input`; a released
    checkpoint, which records none, was trained at the study's 128 cube). Every
    prediction of the study takes the size from here, never from a notebook
    parameter, so an external checkpoint is always used at its own size.
    """
    return checkpoint_input(path).cube_size


def model_training_params(model: str, settings: Mapping[str, Any], budget: Mapping[str, Any], dataset: str,
                          tag: str, init_checkpoint: str | os.PathLike | None = None) -> dict:
    """The parameters :func:`vfnb.train.train` gets for ``model``, validated (:class:`ParamsError` names the key).

    ``settings``: the shared settings; ``budget``: this model's training keys
    (``epochs``, ``lr``, ...: :meth:`ModelSpec.budget_of`).
    """
    spec = MODELS[model]
    params = {"mode": spec.mode, "dataset": str(dataset), "tag": tag,
              "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint), "progress": False,
              **dict(settings), **dict(budget)}
    return validate_params(params, where=f"study training params ({spec.mode})")


def _given_checkpoint(model: str, checkpoints: Mapping[str, str] | None) -> Path | None:
    given = (checkpoints or {}).get(model)
    if not given:
        return None
    path = resolve_path(given)
    if not path.is_file():
        raise ParamsError(f"parameter 'checkpoints' names {path} for {model!r}, but that file does not exist")
    return path


def _start_of(run, model: str) -> Path | None:
    """The checkpoint ``model`` starts from (the SupCon encoder for the SupCon models), when recorded."""
    starts_from = MODELS[model].starts_from
    if starts_from is None:
        return None
    if not run.has_checkpoint(starts_from):
        raise ParamsError(f"model {model!r} starts from the {starts_from!r} encoder, but there is none: keep a "
                          f"supcon_* model in 'models' so 01 trains it, or name one in 'checkpoints' under "
                          f"{starts_from!r}")
    return run.checkpoint_of(starts_from)


def _describe(outcome: TrainedModel, mode: str) -> str:
    best = "n/a" if outcome.best_metric is None else f"{outcome.best_metric:.3f}"
    when = "" if outcome.best_epoch is None else f" at epoch {outcome.best_epoch}"
    if outcome.kept_start:
        when += " (the classifier's probe fit, before any training step: training did not improve on it)"
    return (f"{outcome.model}: {outcome.epochs} epochs of {mode} in {outcome.seconds:.0f} s; "
            f"best {outcome.selected_by} {best}{when} (validation)")


def train_model(run, model: str, data, settings: TrainingSettings, budget,
                checkpoints: Mapping[str, str] | None = None, reuse: bool = False) -> TrainedModel:
    """Train ``model`` into ``runs/<model>/`` (or take its checkpoint); record and return the outcome.

    Args:
        run: the :class:`~vfnb.study.StudyRun`.
        model: a name in :data:`vfnb.study.MODELS`.
        data: the :class:`~vfnb.study.StudyData` to train on (train and val lists).
        settings: the settings every model shares.
        budget: the study's parameters (:class:`~vfnb.study.StudyParams`), holding this
            model's budget (e.g. ``supcon_epochs``, ``supcon_lr``): a notebook passes ``p``.
        checkpoints: model -> checkpoint used as is, without training (external validation).
        reuse: keep an existing ``runs/<model>/best.pt`` instead of training again.
    """
    if model not in MODELS:
        raise ParamsError(f"parameter 'models': unknown model {model!r}; expected some of {', '.join(MODELS)}")
    spec = MODELS[model]
    given = _given_checkpoint(model, checkpoints)
    if given is not None:
        say(f"{model}: using the given checkpoint {shown_path(given)} (no training)")
        outcome = TrainedModel(model, str(given), source="given")
    elif reuse and run.checkpoint(model).is_file():
        say(f"{model}: reusing {run.relative(run.checkpoint(model))}")
        outcome = TrainedModel(model, str(run.checkpoint(model)), source="reused")
    else:
        params = model_training_params(model, settings.as_dict(), spec.budget_of(budget), data.processed, data.tag,
                                       _start_of(run, model))
        if run.model_dir(model).exists():
            shutil.rmtree(run.model_dir(model))  # a stale or half-written run inside this study's own folder
        say(f"{model}: training ({spec.mode}, {params['epochs']} epochs) ...")
        start = time.monotonic()
        result = train(params, run.model_dir(model))
        outcome = TrainedModel(model, str(result.best_checkpoint), "trained", len(result.history), result.best_epoch,
                               result.selected_by, result.best_metric, round(time.monotonic() - start, 1))
        say(_describe(outcome, spec.mode))
    return run.record_trained(outcome)


def pretrain(run, data, settings: TrainingSettings, models, budget,
             checkpoints: Mapping[str, str] | None = None, reuse: bool = False) -> TrainedModel | None:
    """Notebook 01: the SupCon encoder, when a model of ``models`` starts from it or a checkpoint names it."""
    if not needs_pretraining(models, checkpoints):
        say("no SupCon model in 'models': nothing to pretrain")
        return None
    return train_model(run, PRETRAINED, data, settings, budget, checkpoints=checkpoints, reuse=reuse)


def initial_model(backbone: str, head: str, feature_dim: int, seed: int = 0, **kw):
    """The untrained network every training run starts from (seeded as training seeds it)."""
    torch.manual_seed(int(seed))
    return build_model(backbone=backbone, head=head, feature_dim=feature_dim, **kw).eval()


def training_curves(run, model: str, keys: Sequence[str], title: str,
                    loss_reference: tuple[str, float] | None = None):
    """The learning curves of ``model`` (a Figure), with the selected epoch marked; ``None`` when it was not trained.

    When model selection kept the start (epoch 0: the probe's fit, for linear and
    fine-tuning), that start is drawn as the first point of the validation macro-F1.
    """
    history = run.history(model)
    if not history:
        return None
    trained = run.training_summary().models.get(model)
    selected = trained.best_epoch if trained is not None else None
    start = {trained.selected_by: trained.best_metric} if trained is not None and trained.kept_start else None
    return plot_curves(history, keys=[k for k in keys if k in history[0]], title=title,
                       loss_reference=loss_reference, selected_epoch=selected, start=start)
