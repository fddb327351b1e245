"""One training engine for every mode (STUDY §1.4-1.6).

:func:`train` reads like the SupCon reference code: build the data, build the model
and optimiser, then per epoch :func:`train_one_epoch`, :func:`validate` and the
:class:`Checkpointer`. What a mode does is a row of :data:`OBJECTIVES`:

- ``supcon``: encoder + projection head with the SupCon loss only. Validation grades
  with a probe on the pooled features (``probe``: ``logreg``, ``knn``, :mod:`vfnb.models.features`;
  with ``none`` the lowest training loss is kept).
- ``linear``: the encoder of ``init_checkpoint`` frozen (and kept in eval mode, so its
  batch-norm statistics stay), the classifier trained with CE on augmented views.
- ``finetune``: the whole network from ``init_checkpoint`` with CE.
- ``joint``: the paper's recipe: CE on the *detached* pooled feature (it trains the
  classifier only) + SupCon on the projections, equal weights.
- ``ce``: the baseline: same backbone, augmentation, sampler and budget, plain CE on
  ``ce_views`` views (2: both views as separate samples; 1: the first only).

``linear`` and ``finetune`` start their classifier, with ``classifier_init: probe``,
from a class-balanced logistic regression on the frozen features of the training
vertebrae's centred views (:func:`vfnb.models.features.probe_as_linear`): SGD at the paper's
rate on raw pooled features otherwise needs many epochs to leave chance level, and
fine-tuning then starts from a classifier that already reads the features instead of
a random one that pulls them apart. That start is itself a candidate (epoch 0), so
model selection keeps it when training does not improve on it.

Every mode draws class-balanced batches of augmented views (:mod:`vfnb.data.batches`)
and uses SGD with a per-epoch schedule (``step`` or ``cosine``) and an optional
step-by-step warm-up. After every epoch the main process validates on the ``val``
list (centred views; macro-F1 over the grades present, accuracy, fracture AUC of
``1 - P(grade 0)``) and keeps the best checkpoint by validation macro-F1. The ``test``
list is never read.

A training folder holds ``params.yaml``, ``last.pt`` and ``best.pt`` (atomic, via
:func:`vfnb.models.checkpoints.save_checkpoint`: model arguments, input block, params, epoch,
optimizer, scheduler, RNG states, history, best metric and epoch, the run's ``run_id`` and what it
was trained on, ``training_data``: :mod:`vfnb.training.data_record`), ``metrics.csv`` and
``history.json`` (one row per epoch: loss, lr, the validation numbers, the validation
probe for supcon and ce, SupCon's no-structure loss and projection cosines, epoch
seconds, data-wait fraction = time blocked waiting for the next batch / epoch time).

Progress: one line per epoch (training folder, mode, epoch, loss, validation metric, seconds) is
logged at INFO on the ``vfnb.training.engine`` logger (:func:`show_progress` prints it; raise
the logger's level to silence it); ``progress: true`` adds a progress bar per epoch.

Reproducibility: the model is initialised from ``seed``, batches and views depend on
``(seed, epoch, rank, step)`` only, so a resumed run ends with exactly the weights of
an uninterrupted one, whatever ``workers`` is, on a CPU with the same number of torch
threads (``threads``; float sums depend on it; cuDNN kernels on a GPU may differ run
to run).

Distributed: under ``torchrun --nproc_per_node=N -m vfnb train ...`` the model is
wrapped in DistributedDataParallel (:mod:`vfnb.training.distributed`; optional SyncBatchNorm on
CUDA), every rank takes its own share of each global step's vertebrae, and only rank 0
validates, logs and writes files (except the ``log_names`` debug logs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import evaluate
# validate_params and parse_overrides are re-exported: callers of the engine find them here too
from .config import RESUME_MUTABLE, TrainConfig, load_params_files, parse_overrides, validate_params
from ..data.processed import ProcessedDataset
from .distributed import Processes, is_main_process, training_processes
from ..errors import CheckpointError, ParamsError
from ..models.features import balanced_cross_entropy, calibrated_probe, extract, probe_predict
from ..io import atomic_write_yaml, refuse_outputs_over_inputs, release_lock
from ..models.losses import ProjectionSimilarity, SupConLoss
from ..models.networks import ModelInput, network_for, resolve_device
from ..models.checkpoints import load_checkpoint, load_checkpoint_dict, set_rng_state
from .data_record import run_provenance
from .run_folder import Checkpointer, Selection, TrainResult, discard_unfinished, prepare_run_dir

LOG = logging.getLogger("vfnb.training.engine")
PARTS = ("encoder", "head", "classifier")


# ------------------------------------------------------------------ what each mode does
@dataclass(frozen=True)
class Objective:
    """One training mode: which parts learn, with which losses, and how validation grades."""

    trains: tuple            # parts of the GradingModel that learn; the others are frozen
    supcon: bool = False     # SupCon on the projections of every view
    cross_entropy: bool = False  # CE of the classifier on every view
    detach_classifier: bool = False  # CE sees the detached feature: it trains the classifier only
    frozen_encoder: bool = False  # the encoder stays in eval mode (its batch-norm statistics are kept)
    from_checkpoint: bool = False  # starts from init_checkpoint, classifier reset (classifier_init)
    graded_by_probe: bool = False  # validation grades come from the probe, not the classifier
    probe: bool = False      # a probe on the pooled features is also recorded (val_probe_*)
    ce_views: bool = False   # ce_views picks how many views feed CE


OBJECTIVES = {
    "supcon": Objective(("encoder", "head"), supcon=True, graded_by_probe=True, probe=True),
    "linear": Objective(("classifier",), cross_entropy=True, frozen_encoder=True, from_checkpoint=True),
    "finetune": Objective(("encoder", "classifier"), cross_entropy=True, from_checkpoint=True),
    "joint": Objective(("encoder", "head", "classifier"), supcon=True, cross_entropy=True, detach_classifier=True),
    "ce": Objective(("encoder", "classifier"), cross_entropy=True, probe=True, ce_views=True),
}


def selection_for(config: TrainConfig) -> Selection:
    """Which epoch ``best.pt`` keeps: ``select_by``; ``auto`` is the validation loss for the modes that
    start from the probe (linear, finetune: the start is a candidate, and on a small validation set
    macro-F1 rewards whichever epoch's argmax happened to flip one rare-grade vertebra), validation
    macro-F1 otherwise; supcon without a probe keeps the lowest training loss."""
    objective = OBJECTIVES[config.mode]
    if objective.graded_by_probe and config.probe == "none":
        return Selection("train_loss", "loss", lower_is_better=True)
    key = config.select_by
    if key == "auto":
        key = "val_loss" if objective.from_checkpoint else "val_macro_f1"
    if key == "val_loss" and not objective.graded_by_probe:
        return Selection("val_loss", "val_loss", lower_is_better=True)
    return Selection("val_macro_f1", "val_macro_f1")


# ------------------------------------------------------------------ entry points
def train(params: dict | TrainConfig | None, run_dir: str | os.PathLike, resume: bool = False, *,
          stop_after_epochs: int | None = None) -> TrainResult:
    """Train one model; see the module docstring for modes, outputs and reproducibility.

    ``params``: a :class:`~vfnb.training.config.TrainConfig` or a dict of its fields (missing keys
    take the defaults; with ``resume=True`` it may be ``None``: the run's saved params
    are used, and only :data:`~vfnb.training.config.RESUME_MUTABLE` keys may differ). ``run_dir``
    must not exist or be empty unless ``resume``. ``stop_after_epochs`` stops after
    that many epochs of *this* call (simulates an interruption; resume continues).
    """
    run_dir = Path(run_dir)
    ckpt = None
    if isinstance(params, TrainConfig):
        params = params.as_dict()
    if resume:
        if not (run_dir / "last.pt").is_file():
            prepare_run_dir(run_dir, resume)  # raises, naming the missing checkpoint
        ckpt = load_checkpoint_dict(run_dir / "last.pt")
        if not isinstance(ckpt.get("params"), dict):
            raise CheckpointError(f"{run_dir / 'last.pt'}: field 'params' missing; not a vfnb training checkpoint")
        config = _resumed_config(ckpt["params"], params, run_dir / "last.pt")
    else:
        config = TrainConfig.from_params(params)
    _check_training_data(config)  # everything the user can get wrong, before the run folder is created
    refuse_outputs_over_inputs({"the run folder": run_dir},
                               {"dataset": config.dataset, "init_checkpoint": config.init_checkpoint or None})
    lock = prepare_run_dir(run_dir, resume)
    try:
        with training_processes(config.device, config.threads, config.workers) as processes:
            return _run(config, run_dir, ckpt, processes, stop_after_epochs)
    except BaseException:
        if not resume and lock is not None:
            discard_unfinished(run_dir)
        raise
    finally:
        release_lock(lock)


def train_from_cli(params_files: Sequence[str | os.PathLike], kv_overrides: Sequence[str],
                   out: str | os.PathLike | None, resume: bool = False) -> TrainResult:
    """``vfnb train --params FILE ... -p key=value ... --out DIR [--resume]``.

    Parameter files are merged in order, then the ``-p`` overrides (values read as
    YAML, an empty value as null). With ``--resume`` and no parameters, the run's
    saved parameters are used.
    """
    if out is None:
        raise ParamsError("--out is required: the run folder to create (or to resume with --resume)")
    params = load_params_files(params_files)
    params.update(parse_overrides(kv_overrides))
    if not resume or params:
        TrainConfig.from_params(params, where="vfnb train")
    result = train(params if (params or not resume) else None, out, resume=resume)
    if is_main_process():
        shown = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
        print(f"wrote {result.run_dir} (best {result.selected_by} {shown}; {result.best_checkpoint.name})")
    return result


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (notebook kernels and tests replace it)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def show_progress(stream=None, level: int = logging.INFO) -> logging.Handler:
    """Print the per-epoch lines of :data:`LOG` to ``stream`` (default: the current stderr).

    Replaces the handler an earlier call added, so calling it again never doubles the
    lines; returns the handler (``LOG.removeHandler(handler)`` stops it).
    """
    for old in [h for h in LOG.handlers if getattr(h, "vfnb_progress", False)]:
        LOG.removeHandler(old)
    handler = _CurrentStderr() if stream is None else logging.StreamHandler(stream)
    handler.vfnb_progress = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(level)
    return handler


# ------------------------------------------------------------------ the loop
def _run(config: TrainConfig, run_dir: Path, ckpt: dict | None, processes: Processes,
         stop_after_epochs: int | None) -> TrainResult:
    processes.barrier()  # every rank has checked run_dir before rank 0 writes to it
    if processes.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(run_dir / "params.yaml", config.as_dict())
    # MONAI-based: imported here, so that importing vfnb.training.engine (and its re-exports) stays light
    from ..data.batches import training_data

    data = training_data(config, processes, start_first_epoch=ckpt is None,
                         with_probe=OBJECTIVES[config.mode].probe and config.probe != "none")
    state = build_training_state(config, data, processes, ckpt)
    provenance = run_provenance(config, ckpt) if processes.main else {}  # run_id, training_data (data_record)
    checkpointer = Checkpointer(run_dir, config.as_dict(), selection_for(config), ckpt, provenance)
    if processes.main and state.starts_from_probe:
        checkpointer.start(state.model, validate_classifier(state, data), state.optimizer, state.scheduler)
    last = config.epochs if stop_after_epochs is None else min(config.epochs, checkpointer.epochs_done
                                                                 + stop_after_epochs)
    for epoch in range(checkpointer.epochs_done, last):
        stats = train_one_epoch(state, data.batches, epoch, run_dir)
        if config.workers > 0 and epoch + 1 < last:
            data.batches.start(epoch + 1)  # workers prepare the next epoch while this one is validated
        lr = float(state.optimizer.param_groups[0]["lr"])
        state.scheduler.step()
        loss = processes.sum(stats.pop("loss_sum"))  # the epoch loss over every rank's batches
        if processes.main:
            row = {"epoch": epoch + 1, "steps": (epoch + 1) * len(data.batches),
                   "loss": float(loss[0] / max(loss[1], 1.0)), "lr": lr, **validate(state, data)}
            row.update(_timing_and_structure(state, stats))
            checkpointer.end_of_epoch(state.model, row, state.optimizer, state.scheduler)
            _log_epoch(run_dir, config, row)
        processes.barrier()  # other ranks wait for validation and the checkpoint
    return checkpointer.result()


def train_one_epoch(state: "TrainingState", batches, epoch: int, run_dir: Path) -> dict:
    """One pass over ``epoch``'s batches: forward every view, the objective's losses, one SGD step per batch."""
    config, objective = state.config, state.objective
    state.net.train()
    if objective.frozen_encoder:
        state.model.encoder.eval()  # frozen encoder: keep its batch-norm statistics
    elif frozen_bn_statistics(config):
        for module in state.model.encoder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()  # normalise with the start's statistics; the affine parameters still train
    loss_sum = torch.zeros(2, dtype=torch.float64)  # [sum of batch losses, batches]
    similarity, wait, started, steps = ProjectionSimilarity(), 0.0, time.perf_counter(), len(batches)
    stream = batches.epoch(epoch)
    bar = tqdm(total=steps, desc=f"{config.mode} epoch {epoch + 1}/{config.epochs}", leave=False, file=sys.stderr,
               disable=not (state.processes.main and config.progress), dynamic_ncols=True)
    for step in range(steps):
        waited = time.perf_counter()
        batch = next(stream)
        wait += time.perf_counter() - waited
        x, grades, n, v = _step_input(state, batches.views(batch, epoch, step), batch["grade"])
        with state.autocast():
            logits, projected = state.net(x, detach_classifier=objective.detach_classifier)
        loss = objective_loss(state, logits, projected, grades, n, v)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with warmup(state.optimizer, epoch * steps + step, config.warmup_epochs * steps):
            state.optimizer.step()
        if objective.supcon:
            similarity.add(projected.detach().float().reshape(n, v, -1), grades)
        loss_sum += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
        _log_names(state, run_dir, epoch, step, batch)
        bar.set_postfix(loss=f"{loss_sum[0].item() / loss_sum[1].item():.4f}")
        bar.update(1)
    bar.close()
    return {"loss_sum": loss_sum, "seconds": time.perf_counter() - started, "wait": wait,
            "similarity": similarity, "views_per_batch": n * v}


def _step_input(state: "TrainingState", views: torch.Tensor, grades: torch.Tensor):
    """Views ``[B, V, 3, S, S, S]`` -> the network input ``[B * V, 3, S, S, S]`` on the device, grades, B, V."""
    if state.objective.ce_views and state.config.ce_views == 1:
        views = views[:, :1]
    n, v = views.shape[:2]
    x = views.reshape((n * v,) + tuple(views.shape[2:])).to(state.device, non_blocking=True)
    if state.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x, grades.to(state.device), n, v


def objective_loss(state: "TrainingState", logits, projected, grades, n: int, v: int) -> torch.Tensor:
    """The objective's loss of one batch: SupCon on the projections and/or CE on every view's logits."""
    loss = torch.zeros((), device=state.device)
    if state.objective.supcon:
        loss = loss + state.supcon(projected.float().reshape(n, v, -1), grades)
    if state.objective.cross_entropy:
        loss = loss + F.cross_entropy(logits.float(), grades.repeat_interleave(v))
    return loss


def validate(state: "TrainingState", data) -> dict:
    """The validation columns of a history row (main process only; None where a mode has no such number)."""
    config, objective = state.config, state.objective
    row = dict.fromkeys(("val_macro_f1", "val_accuracy", "val_fracture_auc", "val_loss", "val_probe_macro_f1",
                         "val_probe_fracture_auc"))
    if objective.graded_by_probe and config.probe == "none":
        return row
    state.model.eval()
    val = _extract(state, data.val_loader)
    if data.probe_loader is not None:
        train_part = _extract(state, data.probe_loader)
        pred, score = probe_predict(config.probe, train_part.features, train_part.grades, val.features, config.seed)
        row["val_probe_macro_f1"] = macro_f1_accuracy(val.grades, pred)[0]
        row["val_probe_fracture_auc"] = evaluate.fracture_auc(val.grades, score)
    if objective.graded_by_probe:
        row["val_macro_f1"], row["val_accuracy"] = macro_f1_accuracy(val.grades, pred)
        row["val_fracture_auc"] = row["val_probe_fracture_auc"]
    elif not np.isfinite(val.logits).all():
        # the training diverged: the worst validation numbers, so selection keeps an earlier epoch
        LOG.warning("%s: non-finite validation outputs (the training diverged; try a lower lr)", config.mode)
        row.update(val_macro_f1=0.0, val_accuracy=0.0)  # val_loss stays None: never selected
    else:
        row["val_macro_f1"], row["val_accuracy"] = macro_f1_accuracy(val.grades, val.logits.argmax(1))
        p_normal = torch.softmax(torch.as_tensor(val.logits), dim=1)[:, 0].numpy()
        row["val_fracture_auc"] = evaluate.fracture_auc(val.grades, 1.0 - p_normal)
        row["val_loss"] = balanced_cross_entropy(val.logits, val.grades)
    return row


def validate_classifier(state: "TrainingState", data) -> float:
    """The selection metric of the classifier as it is (the probe start of linear / finetune)."""
    return validate(state, data)[selection_for(state.config).key]


def _extract(state: "TrainingState", loader):
    return extract(state.model, loader, state.device, state.autocast, state.channels_last)


def macro_f1_accuracy(y_true, y_pred) -> tuple[float, float]:
    """Macro-F1 over the grades present in either argument, and accuracy (scikit-learn)."""
    return (float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            float(accuracy_score(y_true, y_pred)))


def _timing_and_structure(state: "TrainingState", stats: dict) -> dict:
    seconds = stats["seconds"]
    out = {"epoch_seconds": round(seconds, 4), "data_wait_fraction": round(stats["wait"] / seconds, 4)}
    if state.objective.supcon and not state.objective.cross_entropy:  # the reference is for a loss of SupCon alone
        out["loss_no_structure"] = state.supcon.uninformative_value(stats["views_per_batch"])
    if state.objective.supcon:
        out.update(stats["similarity"].means())
    return out


def _log_epoch(run_dir: Path, config: TrainConfig, row: dict) -> None:
    metric = row["val_macro_f1"]
    what = "val macro-F1" + (" (probe)" if OBJECTIVES[config.mode].graded_by_probe else "")
    shown = "n/a" if metric is None else f"{metric:.3f}"
    LOG.info(f"{run_dir.name} ({config.mode}) epoch {row['epoch']}/{config.epochs}: loss {row['loss']:.4f}, "
             f"{what} {shown}, {row['epoch_seconds']:.1f} s, data wait {row['data_wait_fraction']:.0%}")


def _log_names(state: "TrainingState", run_dir: Path, epoch: int, step: int, batch) -> None:
    if state.config.log_names:
        with open(run_dir / f"names.rank{state.processes.rank}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"epoch": epoch, "step": step, "names": list(batch["name"])}) + "\n")


@contextlib.contextmanager
def warmup(optimizer, step: int, warmup_steps: int):
    """Scale every group's learning rate by ``min(1, (step + 1) / warmup_steps)`` for one optimizer step.

    A linear warm-up, step by step, on top of the per-epoch schedule: inside the block
    the rate is ``scheduled * factor``; after it the scheduled rate is restored, so the
    epoch scheduler (cosine's recursion reads the group's rate) never sees the factor.
    ``warmup_steps`` 0: no change.
    """
    factor = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield factor
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled):
            group["lr"] = lr


# ------------------------------------------------------------------ building the run
@dataclass
class TrainingState:
    """Everything one training step needs: the configuration, its objective, the model and the optimiser."""

    config: TrainConfig
    objective: Objective
    processes: Processes
    model: torch.nn.Module  # the bare GradingModel (checkpoints, validation)
    net: torch.nn.Module    # what the step runs: the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    supcon: SupConLoss
    use_amp: bool
    channels_last: bool
    starts_from_probe: bool

    @property
    def device(self) -> torch.device:
        return self.processes.device

    def autocast(self):
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_training_state(config: TrainConfig, data, processes: Processes, ckpt: dict | None) -> TrainingState:
    """The model (seeded, or from ``init_checkpoint``), its frozen parts, optimiser and schedule; resumed from ``ckpt``."""
    device, objective = processes.device, OBJECTIVES[config.mode]
    model = build_network(config)
    model.input_spec = ModelInput(cube_size=config.cube_size, patch_size=data.patch_size or config.cube_size)
    for part in PARTS:  # freeze what the objective does not train, so DDP and the optimizer see the rest
        getattr(model, part).requires_grad_(part in objective.trains)
    model = _maybe_sync_bn(model, config, processes).to(device)
    starts_from_probe = ckpt is None and objective.from_checkpoint and config.classifier_init == "probe"
    if starts_from_probe:
        # deterministic, so every rank computes the same start (DDP also broadcasts rank 0's)
        classifier_from_probe(model, data, config, device)
    channels_last = uses_channels_last(config.channels_last, device, config.backbone)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.SGD(parameter_groups(model, config), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    if config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_milestones,
                                                         gamma=config.lr_gamma)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if config.lr_schedule == "cosine":
            scheduler.T_max = config.epochs  # epochs may have been extended for the resumed run
        set_rng_state(ckpt["rng"])
    net = model
    if processes.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return TrainingState(config, objective, processes, model, net, optimizer, scheduler,
               SupConLoss(temperature=config.temperature, base_temperature=config.base_temperature),
               use_amp=device.type == "cuda" and config.amp in ("auto", True), channels_last=channels_last,
               starts_from_probe=starts_from_probe)


def parameter_groups(model, config: TrainConfig) -> list[dict]:
    """The trained parameters as SGD groups: everything but the encoder at ``lr`` (group 0, the logged
    rate), the encoder at ``lr * encoder_lr_scale`` (fine-tuning moves a pretrained encoder gently
    while its new classifier learns at full rate)."""
    encoder = {id(p) for p in model.encoder.parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]
    if config.encoder_lr_scale == 1.0:
        return [{"params": trained}]  # one rate: one group, as optimizer states written before this option hold
    groups = [{"params": [p for p in trained if id(p) not in encoder]}]
    encoder_params = [p for p in trained if id(p) in encoder]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.lr * config.encoder_lr_scale})
    return [g for g in groups if g["params"]]


def frozen_bn_statistics(config: TrainConfig) -> bool:
    """Whether the encoder's batch-norm layers normalise with their stored statistics while training."""
    if config.bn_statistics == "auto":
        return OBJECTIVES[config.mode].from_checkpoint
    return config.bn_statistics == "frozen"


CHANNELS_LAST_ON_CPU = ("resnet10", "resnet18")  # backbones whose CPU step is faster in channels-last-3d


def uses_channels_last(channels_last, device: torch.device, backbone: str) -> bool:
    """Whether the step runs in the channels-last-3d memory format.

    ``auto``: on CUDA always; on the CPU for the basic-block ResNets
    (:data:`CHANNELS_LAST_ON_CPU`), whose 3D convolution backward oneDNN runs much faster
    on channels-last tensors at the study's cube sizes, but not for SEResNet50, whose
    step is slower so (benchmarks ``steps``, BENCHMARKS.md). The values are the same up
    to float rounding (tests/test_step_settings.py).
    """
    if channels_last == "auto":
        return device.type == "cuda" or backbone in CHANNELS_LAST_ON_CPU
    return channels_last is True


def build_network(config: TrainConfig):
    """A fresh network seeded with ``seed`` (:func:`vfnb.models.networks.network_for`), or the one of
    ``init_checkpoint`` (classifier reset for linear / finetune)."""
    torch.manual_seed(config.seed)
    if config.init_checkpoint is not None:
        model = load_checkpoint(config.init_checkpoint)  # vfnb or the study's released format
        if OBJECTIVES[config.mode].from_checkpoint:
            model.classifier.reset_parameters()  # a fresh classifier, as in linear evaluation
        return model
    return network_for(config)


def _maybe_sync_bn(model, config: TrainConfig, processes: Processes):
    if not (processes.distributed and config.sync_bn):
        return model
    if processes.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if processes.main:  # PyTorch's SyncBatchNorm runs on CUDA only
        LOG.warning("note: sync_bn ignored on CPU (SyncBatchNorm needs CUDA); each process keeps its own "
                    "batch-norm statistics")
    return model


def classifier_from_probe(model, data, config: TrainConfig, device) -> None:
    """Start ``model``'s classifier from the logistic-regression probe on the centred training views' features.

    The probe's regularisation is chosen on the validation views (:func:`vfnb.models.features.calibrated_probe`);
    its standardisation becomes the model's fixed ``feature_norm``, its weights the classifier.
    """
    model.eval()
    loader = torch.utils.data.DataLoader(data.train_set.as_eval(), batch_size=config.eval_batch_size, shuffle=False)
    train_part, val = extract(model, loader, device), extract(model, data.val_loader, device)
    probe = calibrated_probe(train_part, val, model.classifier.out_features, config.seed)
    LOG.info("%s: classifier starts from the logistic-regression probe (C = %g, chosen on validation)",
             config.mode, probe.C)
    with torch.no_grad():
        for target, value in ((model.feature_norm.mean, probe.mean), (model.feature_norm.scale, probe.scale),
                              (model.classifier.weight, probe.weight), (model.classifier.bias, probe.bias)):
            target.copy_(torch.as_tensor(value, dtype=target.dtype))


# ------------------------------------------------------------------ run folders and resuming
def _resumed_config(saved: dict, given: dict | None, where: Path) -> TrainConfig:
    saved = validate_params(saved, where=str(where))
    if not given:
        return TrainConfig.from_params(saved)
    full = validate_params({**saved, **given})
    changed = [k for k in given if k not in RESUME_MUTABLE and full[k] != saved[k]]
    if changed:
        raise ParamsError(f"{where}: cannot resume with different {', '.join(repr(k) for k in changed)} "
                          f"(saved {', '.join(f'{k}={saved[k]!r}' for k in changed)}); only "
                          f"{', '.join(RESUME_MUTABLE)} may change")
    return TrainConfig.from_params(full)


def _check_training_data(config: TrainConfig) -> None:
    """Refuse a missing dataset, an empty train/val list, a missing start checkpoint or an absent device."""
    if config.dataset is None:
        raise ParamsError("parameter 'dataset' is required (path of a processed dataset folder)")
    dataset = ProcessedDataset(config.dataset)
    for split in ("train", "val"):
        if not dataset.records(split, config.tag):
            raise ParamsError(f"{dataset.root}: the {split} list of tag {config.tag!r} is empty; training needs "
                              "vertebrae in both the train and the val list")
    if config.init_checkpoint is not None and not Path(config.init_checkpoint).is_file():
        raise ParamsError(f"parameter 'init_checkpoint': {config.init_checkpoint}: checkpoint file not found")
    if "WORLD_SIZE" not in os.environ and config.device != "auto":
        resolve_device(config.device)  # a CUDA device this machine lacks is refused here


