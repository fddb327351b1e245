"""Training the study's models: one call per model, as the registry describes it.

:func:`train_model` turns a model of :data:`vfnb.study.MODELS` into a checkpoint:
a given checkpoint is used as is (external validation); a run that ``runs/<model>/``
already holds, finished with the very parameters this call would train with, is
reused (a notebook cell executed again does not train again); otherwise
:func:`vfnb.training.engine.train` runs with the shared
:class:`~vfnb.study.records.TrainingSettings`, the model's budget and the checkpoint
of the model it starts from, and prints one line per epoch to the notebook. The
outcome is recorded in the run folder for the later notebooks and the report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ParamsError, VfnbError
from ..io import atomic_torch_save, atomic_write_yaml, load_yaml
from ..models.checkpoints import checkpoint_input, load_checkpoint_dict
from ..models.networks import network_for
from ..plots import plot_curves
from ..training.config import validate_params
from ..training.engine import LOG as TRAIN_LOG, train
from ..training.run_folder import RUN_LOCK
from .paths import resolve_path, shown_path
from .records import TrainedModel, TrainingSettings
from .registry import MODELS, PRETRAINED, needs_pretraining
from .run import say

def checkpoint_cube_size(path: str | os.PathLike) -> int:
    """The input cube edge (voxels) a checkpoint was trained at: the one size to use it at.

    A one-line use of the one source, :func:`vfnb.models.checkpoints.checkpoint_input`
    (the input block a loaded model carries as ``input_spec``; a released checkpoint,
    which records none, was trained at the study's 128 cube), for the notebook cells
    that need the size without loading the network. Every prediction of the study
    takes the size from the checkpoint, never from a notebook parameter, so an
    external checkpoint is always used at its own size.
    """
    return checkpoint_input(path).cube_size


def model_training_params(model: str, settings: Mapping[str, Any], budget: Mapping[str, Any], dataset: str,
                          tag: str, init_checkpoint: str | os.PathLike | None = None) -> dict:
    """The parameters :func:`vfnb.training.engine.train` gets for ``model``, validated (:class:`ParamsError` names the key).

    ``settings``: the shared settings; ``budget``: this model's training keys
    (``epochs``, ``lr``, ...: :meth:`ModelSpec.budget_of`).
    """
    spec = MODELS[model]
    params = {"mode": spec.mode, "dataset": str(dataset), "tag": tag,
              "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint), "progress": False,
              **dict(settings), **dict(budget)}
    return validate_params(params, where=f"study training params ({spec.mode})")


def relocate_training_runs(built: Path, final: Path) -> list[Path]:
    """Training runs built in the folder ``built`` name their start checkpoint where it ends up, under ``final``.

    A study is built in a staging folder and then moved to its ``--out`` folder; the
    fine-tuned models' ``params.yaml`` and checkpoints record the SupCon encoder they
    started from by its path at training time, inside the staging folder, which is
    gone after the move. Rewritten here (atomically, before the move) as the same
    file under ``final``, so the record names a file that exists and a notebook
    executed again in the final folder reuses these runs. Paths outside ``built``
    (a given checkpoint) are left as they are. Returns the files rewritten.
    """
    built, final = Path(built).resolve(), Path(final).resolve()

    def moved(value):
        if not isinstance(value, str) or not value:
            return None
        try:
            return str(final / Path(value).resolve().relative_to(built))
        except ValueError:
            return None

    changed = []
    for run_dir in sorted(p for p in (built / "runs").glob("*") if p.is_dir()):
        params_file = run_dir / "params.yaml"
        if params_file.is_file():
            params = load_yaml(params_file)
            new = moved(params.get("init_checkpoint")) if isinstance(params, dict) else None
            if new is not None:
                atomic_write_yaml(params_file, {**params, "init_checkpoint": new})
                changed.append(params_file)
        for ckpt_file in sorted(run_dir.glob("*.pt")):
            ckpt = load_checkpoint_dict(ckpt_file)
            params = ckpt.get("params")
            new = moved(params.get("init_checkpoint")) if isinstance(params, dict) else None
            if new is not None:
                atomic_torch_save({**ckpt, "params": {**params, "init_checkpoint": new}}, ckpt_file)
                changed.append(ckpt_file)
    return changed


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


class _CurrentStdout:
    """A stream that writes to whatever ``sys.stdout`` is at the time: in a kernel, the running cell's output."""

    def write(self, text: str) -> None:
        sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@contextlib.contextmanager
def epoch_lines():
    """While open, the training engine's line per epoch is printed too (to the cell), not only logged to ``run.log``.

    Skipped when :func:`vfnb.training.engine.show_progress` already prints them, so no line shows twice.
    """
    if any(getattr(h, "vfnb_progress", False) for h in TRAIN_LOG.handlers):
        yield
        return
    handler = logging.StreamHandler(_CurrentStdout())
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.INFO)
    TRAIN_LOG.addHandler(handler)
    try:
        yield
    finally:
        TRAIN_LOG.removeHandler(handler)


def _changed(saved: Mapping[str, Any], wanted: Mapping[str, Any], shown: int = 4) -> str:
    """The parameters that differ between a saved run and this call, as ``key old -> new`` (at most ``shown``)."""
    keys = [k for k in wanted if saved.get(k) != wanted[k]]
    text = ", ".join(f"{k} {saved.get(k)!r} -> {wanted[k]!r}" for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def unreusable(run_dir: Path, params: Mapping[str, Any]) -> str | None:
    """Why the run in ``run_dir`` cannot stand for training with ``params``; ``None`` when it can.

    It can when it finished (``last.pt`` holds every epoch, no run holds the folder)
    with the same parameters, and the checkpoint it started from has not been
    written since it began (a retrained SupCon encoder makes its fine-tuned models
    stale). ``""`` when the folder holds no run at all.
    """
    if not (run_dir / "params.yaml").is_file():
        return ""
    saved = validate_params(load_yaml(run_dir / "params.yaml"), where=str(run_dir / "params.yaml"))
    if saved != dict(params):
        return f"it was trained with other parameters ({_changed(saved, params)})"
    if (run_dir / RUN_LOCK).exists() or not (run_dir / "best.pt").is_file() or not (run_dir / "last.pt").is_file():
        return "it did not finish"
    start = params.get("init_checkpoint")
    if start and Path(start).stat().st_mtime_ns > (run_dir / "params.yaml").stat().st_mtime_ns:
        return f"the checkpoint it starts from ({shown_path(start)}) was written again since"
    if int(load_checkpoint_dict(run_dir / "last.pt").get("epoch", -1)) != params["epochs"]:
        return "it did not finish"
    return None


def _finished(run, model: str) -> TrainedModel:
    """What training ``model`` gave, as recorded in ``training.json``, else as its run folder keeps it."""
    recorded = run.training_summary().models.get(model)
    if recorded is not None and recorded.source == "trained" and \
            resolve_path(recorded.checkpoint, run.root) == run.checkpoint(model):
        return dataclasses.replace(recorded, checkpoint=str(run.checkpoint(model)))
    last = load_checkpoint_dict(run.model_dir(model) / "last.pt")
    return TrainedModel(model, str(run.checkpoint(model)), "trained", int(last["epoch"]), last.get("best_epoch"),
                        last.get("selected_by"), last.get("best_metric"))


def _train(run, model: str, params: dict) -> TrainedModel:
    """Train ``model`` into a fresh ``runs/<model>/`` with ``params``, its epochs printed as they end."""
    if run.model_dir(model).exists():
        shutil.rmtree(run.model_dir(model))  # a stale or half-written run inside this study's own folder
    say(f"{model}: training ({params['mode']}, {params['epochs']} epochs) ...")
    start = time.monotonic()
    with epoch_lines():
        result = train(params, run.model_dir(model))
    outcome = TrainedModel(model, str(result.best_checkpoint), "trained", len(result.history), result.best_epoch,
                           result.selected_by, result.best_metric, round(time.monotonic() - start, 1))
    say(_describe(outcome, params["mode"]))
    return outcome


def _trained_or_reused(run, model: str, params: dict) -> TrainedModel:
    """The run already in ``runs/<model>/`` when it finished with ``params`` (said so); else a new training."""
    try:
        why = unreusable(run.model_dir(model), params)
    except (OSError, VfnbError) as exc:  # an unreadable params.yaml or checkpoint: not a run to keep
        why = f"it cannot be read ({exc})"
    if why is None:
        say(f"{model}: already trained with these parameters in {run.relative(run.model_dir(model))}: reused, "
            "not trained again (change a parameter to train anew)")
        return _finished(run, model)
    if why:
        say(f"{model}: {run.relative(run.model_dir(model))} is not reused: {why}")
    return _train(run, model, params)


def train_model(run, model: str, data, settings: TrainingSettings, budget,
                checkpoints: Mapping[str, str] | None = None, reuse: bool = False) -> TrainedModel:
    """Train ``model`` into ``runs/<model>/`` (or take its checkpoint); record and return the outcome.

    Executed again with the same parameters (a notebook cell run twice), it returns
    the finished run in ``runs/<model>/`` instead of training again; with any
    parameter changed (or a start checkpoint trained again), it trains anew and says why.

    Args:
        run: the :class:`~vfnb.study.StudyRun`.
        model: a name in :data:`vfnb.study.MODELS`.
        data: the :class:`~vfnb.study.StudyData` to train on (train and val lists).
        settings: the settings every model shares.
        budget: the study's parameters (:class:`~vfnb.study.StudyParams`), holding this
            model's budget (e.g. ``supcon_epochs``, ``supcon_lr``): a notebook passes ``p``.
        checkpoints: model -> checkpoint used as is, without training (external validation).
        reuse: keep an existing ``runs/<model>/best.pt`` whatever parameters it was trained with.
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
        outcome = _trained_or_reused(run, model, params)
    return run.record_trained(outcome)


def pretrain(run, data, settings: TrainingSettings, models, budget,
             checkpoints: Mapping[str, str] | None = None, reuse: bool = False) -> TrainedModel | None:
    """Notebook 01: the SupCon encoder, when a model of ``models`` starts from it or a checkpoint names it."""
    if not needs_pretraining(models, checkpoints):
        say("no SupCon model in 'models': nothing to pretrain")
        return None
    return train_model(run, PRETRAINED, data, settings, budget, checkpoints=checkpoints, reuse=reuse)


def initial_model(settings):
    """The untrained network every training run starts from, in eval mode.

    ``settings``: the study's :class:`TrainingSettings` (or a mapping of the same keys,
    ``backbone_kwargs`` included when given): built by
    :func:`vfnb.models.networks.network_for`, the factory training uses, seeded as
    training seeds it.
    """
    return network_for(settings).eval()


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
