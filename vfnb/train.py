"""One training engine for every mode (STUDY §1.4-1.6).

Modes (``params["mode"]``):

- ``supcon``: encoder + projection head with the SupCon loss only (classifier frozen).
  Validation: a probe on the pooled features (``probe``: ``"logreg"`` = class-balanced
  logistic regression fitted on the training vertebrae's centred views, ``"knn"`` =
  5-nearest-neighbour cosine vote, ``"none"``); the best checkpoint is the one with the
  highest probe macro-F1, or the lowest training loss with ``probe: none``.
- ``linear``: the encoder of ``init_checkpoint`` frozen (and kept in eval mode, so its
  batch-norm statistics stay), the classifier trained with CE on augmented views. With
  ``classifier_init: probe`` (default) the classifier starts from a class-balanced logistic
  regression (scikit-learn, on standardised pooled features of the training vertebrae's
  centred views, the scaler folded into the weights); SGD at the paper's lr on raw pooled
  features (small, of similar size for every vertebra) otherwise needs many epochs to
  leave chance level. ``random``: a freshly initialised classifier.
- ``finetune``: the whole network from ``init_checkpoint`` with CE. The classifier starts
  as in ``linear`` (``classifier_init``): from the probe, the gradient that first reaches
  the encoder comes from a classifier that already reads its features, not from a random
  one that pulls the pretrained features apart (linear probing, then fine-tuning).
- ``linear`` and ``finetune`` with ``classifier_init: probe``: the probe's start is itself a
  candidate (epoch 0), so model selection keeps it when training does not improve on it.
- ``joint``: the paper's recipe: CE on the *detached* pooled feature (trains only the
  classifier) + SupCon on the projections, equal weights.
- ``ce``: the baseline: same backbone, augmentation, sampler and budget, plain CE on
  ``ce_views`` views (2: both views as separate samples; 1: the first only).

Every mode draws class-balanced batches of ``batch_per_grade`` vertebrae per grade,
two augmented views each (``vfnb.data.transforms``), and uses SGD with ``lr``,
``momentum``, ``weight_decay`` and a per-epoch schedule (``step``: x ``lr_gamma`` at each
of ``lr_milestones``; ``cosine``: cosine annealing to 0 over ``epochs``). After every
epoch the model is evaluated on the ``val`` list (centred views; macro-F1 and accuracy
with scikit-learn, macro over the grades present in the labels or predictions) and
the best checkpoint is kept by validation macro-F1. The ``test`` list is never read.

A run folder holds ``params.yaml``, ``last.pt``, ``best.pt`` (atomic, via
:func:`vfnb.models.save_checkpoint`: model arguments, params, epoch, optimizer,
scheduler, RNG states, history, best metric), ``metrics.csv`` and ``history.json``
(one row per epoch: loss, lr, val macro-F1 and accuracy, val fracture AUC (screening
ROC AUC of 1 - P(grade 0); for ``supcon``, of the probe), epoch seconds, data-wait
fraction = time blocked waiting for the next batch / epoch training time).

Reproducibility: the model is initialised from ``seed``; batches depend on
``(seed, epoch)`` and each vertebra's augmentation on ``(seed, epoch, rank, step,
position)``, never on a worker's random stream. With ``augment_on: device`` (``auto``
on CUDA) the loader only reads the cached patches and the views are made on the training
device, batch by batch (:mod:`vfnb.data.device_augment`), from ``(seed, epoch, rank,
step)``; ``cpu`` keeps the MONAI transforms in the loader workers. A resumed run therefore ends with
exactly the weights of an uninterrupted one, whatever ``workers`` is, on a CPU with the
same number of torch threads (``threads``; float sums depend on it; cuDNN kernels on a
GPU may differ run to run).

Distributed: under ``torchrun --nproc_per_node=N -m vfnb train ...`` (``WORLD_SIZE`` > 1)
the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU; optional
SyncBatchNorm), every rank takes its own share of each global step's vertebrae, and
only rank 0 validates, prints and writes files (except the ``log_names`` debug logs).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import CheckpointError, ParamsError, VfnbError
from .io import atomic_write_json, atomic_write_text, atomic_write_yaml, load_yaml, parse_yaml

MODES = ("supcon", "linear", "finetune", "joint", "ce")

# Literal defaults (documented key by key in PARAM_HELP). The defaults suit the CPU
# study on SynthSpine; the paper's own settings are noted where they differ.
DEFAULT_PARAMS: dict[str, Any] = {
    "mode": "joint",            # supcon | linear | finetune | joint (paper) | ce (baseline)
    "dataset": None,            # processed dataset folder (required)
    "tag": "default",           # split tag: <split>_file_list.<tag>.yaml
    "backbone": "resnet10",     # resnet10 (light, CPU) | resnet18 | seresnet50 (paper)
    "backbone_kwargs": {},      # extra MONAI network arguments, e.g. {block_inplanes: [8, 16, 32, 64]}
    "head": "linear",           # projection head: linear (paper) | mlp
    "feature_dim": 128,         # projection size
    "cube_size": 48,            # input cube edge in voxels (paper: 128)
    "batch_per_grade": 3,       # vertebrae of each grade per batch (paper: 3 -> 12 vertebrae, 24 views)
    "epoch_mode": "balanced",   # balanced (paper: smallest grade / k batches) | replacement
    "batches_per_epoch": None,  # replacement mode only (null: as many as balanced)
    "epochs": 30,               # paper: up to 5000
    "lr": 0.005,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_schedule": "step",      # step | cosine
    "lr_milestones": [800, 900],  # step schedule: epochs at which lr *= lr_gamma (paper)
    "lr_gamma": 0.1,
    "temperature": 0.07,
    "base_temperature": 0.07,
    "ce_views": 2,              # ce mode: views per vertebra fed to CE (1 or 2)
    "views": 2,                 # augmented views drawn per vertebra (paper: 2)
    "augmentation": "paper",    # paper | weak (deviation for SupCon at small budgets; vfnb.data.transforms)
    "augment_on": "auto",       # auto (device on CUDA) | cpu (MONAI in loader workers) | device (vfnb.data.device_augment)
    "warmup_epochs": 0,         # linear learning-rate warm-up over this many epochs, step by step (paper: none)
    "probe": "logreg",          # supcon validation probe: logreg | knn | none
    "classifier_init": "probe",  # linear / finetune: classifier starts from a logistic-regression fit | random
    "init_checkpoint": None,    # required for linear / finetune; optional warm start otherwise
    "seed": 0,
    "device": "auto",           # auto (CUDA when present) | cpu | cuda | cuda:N
    "amp": "auto",              # bf16 autocast: auto = on CUDA only; false = off
    "channels_last": "auto",    # channels-last-3d memory format: auto = on GPU only
    "sync_bn": False,           # SyncBatchNorm under DDP (CUDA only; ignored on CPU)
    "workers": 2,               # DataLoader worker processes for training batches
    "threads": "auto",          # CPU torch threads per process: auto = max(1, cores / processes - workers)
    "eval_batch_size": 16,
    "log_names": False,         # debug: each rank writes names.rank<r>.jsonl (vertebrae per step)
    "progress": True,           # tqdm progress bar with the running loss (rank 0)
}

PARAM_HELP: dict[str, str] = {
    "mode": "training mode: " + ", ".join(MODES),
    "dataset": "path of a processed dataset folder",
    "tag": "split tag of the lists train/val_file_list.<tag>.yaml",
    "backbone": "encoder name (vfnb.models.BACKBONES)",
    "backbone_kwargs": "mapping of extra arguments the MONAI encoder accepts, integers at most 4096",
    "head": "projection head: linear or mlp",
    "feature_dim": "projection size (integer 1-65536)",
    "cube_size": "input cube edge in voxels (integer 8-512)",
    "batch_per_grade": "vertebrae of each grade per batch (positive integer)",
    "epoch_mode": "balanced or replacement",
    "batches_per_epoch": "batches per epoch in replacement mode (positive integer or null)",
    "epochs": "number of epochs (positive integer)",
    "lr": "SGD learning rate (> 0)",
    "momentum": "SGD momentum (0 <= m < 1)",
    "weight_decay": "SGD weight decay (>= 0)",
    "lr_schedule": "step or cosine",
    "lr_milestones": "list of epochs (non-negative integers) for the step schedule",
    "lr_gamma": "step schedule factor (> 0)",
    "temperature": "SupCon temperature (> 0)",
    "base_temperature": "SupCon base temperature (> 0)",
    "ce_views": "views per vertebra for the ce baseline: 1 or 2",
    "views": "augmented views per vertebra (integer >= 2)",
    "augmentation": "augmentation strength: paper or weak (vfnb.data.transforms.AUGMENTATIONS)",
    "augment_on": "where views are augmented: auto (device on CUDA, else cpu), cpu or device",
    "warmup_epochs": "epochs of linear learning-rate warm-up (integer >= 0, less than epochs)",
    "probe": "supcon validation probe: logreg, knn or none",
    "classifier_init": "linear and finetune modes, classifier start: probe or random",
    "init_checkpoint": "checkpoint path to start from (required for linear and finetune) or null",
    "seed": "integer random seed (>= 0)",
    "device": "auto, cpu, cuda or cuda:N",
    "amp": "auto, true or false",
    "channels_last": "auto, true or false",
    "sync_bn": "true or false",
    "workers": "DataLoader workers (integer >= 0)",
    "threads": "auto or a positive integer (torch intra-op threads on CPU)",
    "eval_batch_size": "validation batch size (positive integer)",
    "log_names": "true or false",
    "progress": "true or false",
}

AUGMENT_ON = ("auto", "cpu", "device")

# keys that may change when a run is resumed (they do not change what is computed)
RESUME_MUTABLE = ("epochs", "workers", "threads", "device", "eval_batch_size", "progress", "log_names", "dataset")


# ------------------------------------------------------------------ params
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


def _bad(key: str, value: Any, where: str) -> ParamsError:
    return ParamsError(f"{where}parameter {key!r} = {value!r} is invalid; expected {PARAM_HELP[key]}")


RENAMED_PARAMS = {"linear_init": "classifier_init"}  # old name -> current name


def validate_params(params: dict | None, where: str = "") -> dict:
    """Defaults updated with ``params``; raises :class:`ParamsError` naming the key.

    Unknown keys and values of the wrong type or outside their range are refused.
    Integers given as floats (``3.0``) are accepted as integers; returns a new dict.
    """
    from .data.transforms import AUGMENTATIONS
    from .models import BACKBONES, HEADS

    prefix = f"{where}: " if where else ""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ParamsError(f"{prefix}parameters must be a mapping of key: value, got {type(params).__name__}")
    for old, new in RENAMED_PARAMS.items():  # runs written before a rename still validate and resume
        if old in params:
            if new in params:
                raise ParamsError(f"{prefix}parameters {old!r} and {new!r} both given; {old!r} is the old "
                                  f"name of {new!r}, keep one")
            params = {(new if k == old else k): v for k, v in params.items()}
    unknown = [k for k in params if k not in DEFAULT_PARAMS]
    if unknown:
        raise ParamsError(f"{prefix}unknown parameter {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                          + f"; known: {', '.join(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **params}
    p["backbone_kwargs"] = dict(p["backbone_kwargs"]) if isinstance(p["backbone_kwargs"], dict) else p["backbone_kwargs"]
    p["lr_milestones"] = list(p["lr_milestones"]) if isinstance(p["lr_milestones"], (list, tuple)) else p["lr_milestones"]

    def as_int(key, low=None, nullable=False, high=None):
        v = p[key]
        if v is None and nullable:
            return
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not _is_int(v) or (low is not None and v < low) or (high is not None and v > high):
            raise _bad(key, p[key], prefix)
        p[key] = v

    def as_float(key, low=None, high=None, low_open=False):
        v = p[key]
        if not _is_number(v):
            raise _bad(key, v, prefix)
        v = float(v)
        if low is not None and (v <= low if low_open else v < low):
            raise _bad(key, v, prefix)
        if high is not None and v >= high:
            raise _bad(key, v, prefix)
        p[key] = v

    for key, options in (("mode", MODES), ("backbone", BACKBONES), ("head", HEADS),
                         ("epoch_mode", ("balanced", "replacement")), ("lr_schedule", ("step", "cosine")),
                         ("probe", ("logreg", "knn", "none")), ("classifier_init", ("probe", "random")),
                         ("augmentation", tuple(AUGMENTATIONS)), ("augment_on", AUGMENT_ON)):
        if not isinstance(p[key], str) or p[key] not in options:
            raise _bad(key, p[key], prefix)
    for key in ("amp", "channels_last"):
        if not (p[key] == "auto" or isinstance(p[key], bool)):
            raise _bad(key, p[key], prefix)
    for key in ("sync_bn", "log_names", "progress"):
        if not isinstance(p[key], bool):
            raise _bad(key, p[key], prefix)
    for key in ("dataset", "init_checkpoint"):
        if p[key] is not None and not isinstance(p[key], (str, os.PathLike)):
            raise _bad(key, p[key], prefix)
        if p[key] is not None:
            p[key] = str(p[key])
    if not isinstance(p["tag"], str) or not p["tag"]:
        raise _bad("tag", p["tag"], prefix)
    if not isinstance(p["device"], str) or not (p["device"] in ("auto", "cpu", "cuda")
                                               or (p["device"].startswith("cuda:") and p["device"][5:].isdigit())):
        raise _bad("device", p["device"], prefix)
    if not isinstance(p["backbone_kwargs"], dict) or not all(isinstance(k, str) for k in p["backbone_kwargs"]):
        raise _bad("backbone_kwargs", p["backbone_kwargs"], prefix)
    _check_backbone_kwargs(p["backbone"], p["backbone_kwargs"], prefix)
    as_int("feature_dim", 1, high=65536)
    as_int("cube_size", 8, high=512)
    as_int("batch_per_grade", 1)
    as_int("batches_per_epoch", 1, nullable=True)
    as_int("epochs", 1)
    as_int("ce_views", 1)
    if p["ce_views"] not in (1, 2):
        raise _bad("ce_views", p["ce_views"], prefix)
    as_int("views", 2)
    as_int("warmup_epochs", 0)
    if p["warmup_epochs"] >= p["epochs"] and p["warmup_epochs"] > 0:
        raise _bad("warmup_epochs", p["warmup_epochs"], prefix)
    as_int("seed", 0)
    as_int("workers", 0)
    as_int("eval_batch_size", 1)
    if p["threads"] != "auto":
        as_int("threads", 1)
    as_float("lr", 0.0, low_open=True)
    as_float("momentum", 0.0, 1.0)
    as_float("weight_decay", 0.0)
    as_float("lr_gamma", 0.0, low_open=True)
    as_float("temperature", 0.0, low_open=True)
    as_float("base_temperature", 0.0, low_open=True)
    milestones = p["lr_milestones"]
    if not isinstance(milestones, list) or not all(
            (_is_int(m) or (isinstance(m, float) and m.is_integer())) and m >= 0 for m in milestones):
        raise _bad("lr_milestones", milestones, prefix)
    p["lr_milestones"] = sorted(int(m) for m in milestones)
    if p["epoch_mode"] == "balanced" and p["batches_per_epoch"] is not None:
        raise ParamsError(f"{prefix}parameter 'batches_per_epoch' applies to epoch_mode 'replacement' only; "
                          "set it to null or set epoch_mode: replacement")
    if p["mode"] in ("linear", "finetune") and p["init_checkpoint"] is None:
        raise ParamsError(f"{prefix}parameter 'init_checkpoint' is required for mode {p['mode']!r} "
                          "(the checkpoint of a supcon or joint run)")
    return p


MAX_BACKBONE_INT = 4096  # widths, kernel sizes, layer counts: far beyond any sane 3D CNN


def _check_backbone_kwargs(backbone: str, kwargs: dict, prefix: str) -> None:
    """Refuse ``backbone_kwargs`` the MONAI network does not take, or integers that would exhaust memory."""
    import inspect

    if backbone == "seresnet50":
        from monai.networks.nets import SEResNet50 as net
    else:
        from monai.networks.nets import ResNet as net
    accepted = set(inspect.signature(net.__init__).parameters) - {"self", "spatial_dims", "in_channels",
                                                                 "n_input_channels", "num_classes", "block",
                                                                 "feed_forward", "args", "kwargs"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ParamsError(f"{prefix}parameter 'backbone_kwargs': {unknown} not accepted by the {backbone} "
                          f"encoder; expected some of {sorted(accepted)}")

    def ints(v):
        if isinstance(v, bool):
            return []
        if isinstance(v, (int, float)):
            return [v]
        if isinstance(v, (list, tuple)):
            return [x for item in v for x in ints(item)]
        return []

    for key, value in kwargs.items():
        if any(not math.isfinite(x) or abs(x) > MAX_BACKBONE_INT for x in ints(value)):
            raise ParamsError(f"{prefix}parameter 'backbone_kwargs': {key} = {value!r} is out of range; "
                              f"expected numbers up to {MAX_BACKBONE_INT}")


def parse_overrides(kv_overrides: Iterable[str]) -> dict:
    """``["lr=0.01", "lr_milestones=[10, 20]"]`` -> dict; values parsed as YAML (:func:`vfnb.io.parse_yaml`)."""
    out = {}
    for item in kv_overrides or []:
        if not isinstance(item, str) or "=" not in item:
            raise ParamsError(f"-p {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in DEFAULT_PARAMS:
            raise ParamsError(f"-p {item!r}: unknown parameter {key!r}; known: {', '.join(DEFAULT_PARAMS)}")
        out[key] = parse_yaml(text, f"-p {key}", ParamsError) if text.strip() else None
    return out


def load_params_files(params_files: Sequence[str | os.PathLike]) -> dict:
    """Merge YAML parameter files in order (later files win); validates the keys of each."""
    merged: dict = {}
    for path in params_files or []:
        data = load_yaml(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ParamsError(f"{path}: expected a mapping of parameter: value, got {type(data).__name__}")
        validate_params({**merged, **data}, where=str(path))
        merged.update(data)
    return merged


# ------------------------------------------------------------------ results
@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None  # 0: the start (the probe fit of linear / finetune) beat every epoch
    selected_by: str = "val_macro_f1"


class _Dist:
    """Process-group facts: rank, world size, device, and whether we own the group."""

    def __init__(self, device_param: str):
        import torch
        import torch.distributed as dist

        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        want_cuda = device_param.startswith("cuda") or (device_param == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise ParamsError(f"parameter 'device' = {device_param!r} but no CUDA device is available")
        if want_cuda:
            if self.world_size > 1:
                if self.local_rank >= torch.cuda.device_count():
                    raise ParamsError(f"process with LOCAL_RANK {self.local_rank} but this machine has "
                                      f"{torch.cuda.device_count()} CUDA device(s): start at most that many "
                                      "processes per node (torchrun --nproc_per_node), or set device: cpu")
                self.device = torch.device("cuda", self.local_rank)
            elif device_param.startswith("cuda:"):
                self.device = torch.device(device_param)
            else:  # "cuda" / "auto": the current device, with its index (set_device refuses a bare "cuda")
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
            self.world_size, self.rank = dist.get_world_size(), dist.get_rank()
        self.distributed = self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


class _SeededBatches:
    """Batch sampler wrapper: each index becomes ``(index, draw seed)`` from ``(seed, epoch, rank, step, position)``."""

    def __init__(self, sampler, seed: int, rank: int):
        self.sampler, self.seed, self.rank = sampler, int(seed), int(rank)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch  # fixed when the epoch's iterator starts
        for step, batch in enumerate(self.sampler):
            seeds = np.random.SeedSequence([self.seed, epoch, self.rank, step]).generate_state(len(batch))
            yield [(int(i), int(s)) for i, s in zip(batch, seeds)]


def augments_on_device(augment_on: str, device) -> bool:
    """Whether training views are augmented on ``device`` (``augment_on``: auto = on CUDA only)."""
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


def _loader_dataset(train_set, on_device: bool):
    """What the training DataLoader reads: augmented views (cpu) or the cached patches (device)."""
    if not on_device:
        return train_set
    from .data.device_augment import CachedPatches

    return CachedPatches(train_set)


def _device_views(batch, p: dict, epoch: int, rank: int, step: int, device):
    """A :class:`~vfnb.data.device_augment.CachedPatches` batch -> ``[B, V, 3, S, S, S]`` views on ``device``.

    The parameters are drawn from a generator seeded by ``(seed, epoch, rank, step)`` (the
    same key as :class:`_SeededBatches`, with a last entry that keeps the stream apart),
    so a resumed run draws the same views, whatever ``workers`` is.
    """
    import torch

    from .data.device_augment import augment_batch

    seed = int(np.random.SeedSequence([p["seed"], epoch, rank, step, DEVICE_AUGMENT_STREAM]).generate_state(1)[0])
    return augment_batch(batch, p["views"], p["augmentation"], p["cube_size"], torch.Generator().manual_seed(seed),
                         device)


DEVICE_AUGMENT_STREAM = 1


# ------------------------------------------------------------------ the engine
RUN_LOCK = ".vfnb-lock"  # held in the run folder by the run writing it (rank 0); see vfnb.io.claim_lock


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Check ``run_dir`` and, on rank 0, claim it with :data:`RUN_LOCK`; return the lock (None elsewhere).

    A new run needs a folder that does not exist or is empty; checked again once
    the lock is held, so of two runs started into one folder the second is refused.
    """
    from .io import claim_lock

    if resume:
        if not (run_dir / "last.pt").is_file():
            raise CheckpointError(f"{run_dir / 'last.pt'}: checkpoint file not found; cannot resume "
                                  "(start a new run without --resume)")
    else:
        _refuse_used_run_dir(run_dir)
    if not _is_rank0():
        return None
    if run_dir.exists() and not run_dir.is_dir():
        _refuse_used_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = claim_lock(run_dir / RUN_LOCK, f"{run_dir}: run folder")
    if not resume:
        try:
            _refuse_used_run_dir(run_dir)
        except VfnbError:
            lock.unlink(missing_ok=True)
            raise
    return lock


def _refuse_used_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(p.name != RUN_LOCK for p in run_dir.iterdir())):
        raise VfnbError(f"{run_dir}: run folder already exists and is not empty; choose another folder "
                        "(or pass --resume to continue the run in it)")


def _check_training_data(p: dict) -> None:
    """Refuse a missing dataset or an empty train/val list before the run folder is created."""
    from .data.processed import ProcessedDataset

    if p["dataset"] is None:
        raise ParamsError("parameter 'dataset' is required (path of a processed dataset folder)")
    dataset = ProcessedDataset(p["dataset"])
    for split in ("train", "val"):
        if not dataset.records(split, p["tag"]):
            raise ParamsError(f"{dataset.root}: the {split} list of tag {p['tag']!r} is empty; training needs "
                              "vertebrae in both the train and the val list")
    if p["init_checkpoint"] is not None and not Path(p["init_checkpoint"]).is_file():
        raise ParamsError(f"parameter 'init_checkpoint': {p['init_checkpoint']}: checkpoint file not found")
    if "WORLD_SIZE" not in os.environ and p["device"] != "auto":
        from .models import resolve_device

        resolve_device(p["device"])  # a CUDA device this machine lacks is refused here


def _discard_unfinished(run_dir: Path) -> None:
    """After a new run failed before its first checkpoint: empty the folder it claimed, so a re-run may use it."""
    import shutil

    if (run_dir / "last.pt").exists() or not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name == RUN_LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _merge_resume_params(saved: dict, given: dict | None, where: Path) -> dict:
    saved = validate_params(saved, where=str(where))
    if not given:
        return saved
    full = validate_params({**saved, **given})
    changed = [k for k in given if k not in RESUME_MUTABLE and full[k] != saved[k]]
    if changed:
        raise ParamsError(f"{where}: cannot resume with different {', '.join(repr(k) for k in changed)} "
                          f"(saved {', '.join(f'{k}={saved[k]!r}' for k in changed)}); only "
                          f"{', '.join(RESUME_MUTABLE)} may change")
    return full


def _set_trainable(model, mode: str) -> None:
    """Freeze what a mode does not train, so DDP and the optimizer only see the rest."""
    trainable = {
        "supcon": ("encoder", "head"),
        "linear": ("classifier",),
        "finetune": ("encoder", "classifier"),
        "joint": ("encoder", "head", "classifier"),
        "ce": ("encoder", "classifier"),
    }[mode]
    for name in ("encoder", "head", "classifier"):
        for prm in getattr(model, name).parameters():
            prm.requires_grad_(name in trainable)


def _build_network(p: dict):
    import torch

    from .models import build_model, load_checkpoint

    torch.manual_seed(p["seed"])
    if p["init_checkpoint"] is not None:
        # the architecture comes from the checkpoint (vfnb or the study's released format)
        model = load_checkpoint(p["init_checkpoint"])
        if p["mode"] in ("linear", "finetune"):
            model.classifier.reset_parameters()  # a fresh classifier, as in linear evaluation
    else:
        try:
            model = build_model(p["backbone"], in_channels=3, head=p["head"], feature_dim=p["feature_dim"],
                                **p["backbone_kwargs"])
        except (TypeError, ValueError, RuntimeError, IndexError, AssertionError) as exc:
            raise ParamsError(f"parameter 'backbone_kwargs' {p['backbone_kwargs']!r} cannot build the "
                              f"{p['backbone']} encoder ({type(exc).__name__}: {exc})") from None
    return model


def _fit_classifier_from_probe(model, dataset, batch_size: int, device, seed: int) -> None:
    """Set ``model.classifier`` to a class-balanced logistic regression on the frozen pooled features.

    Fitted on standardised features ``z = (f - mean) / scale`` of the centred views of
    ``dataset``; the scaler is folded in, so the classifier still acts on raw features:
    ``W = coef / scale``, ``b = intercept - W @ mean``. Grades absent from ``dataset``
    get a bias of -30 (never predicted).
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    loader = torch.utils.data.DataLoader(dataset.as_eval(), batch_size=batch_size, shuffle=False)
    model.eval()
    _, feats, grades = _forward_all(model, loader, device, contextlib.nullcontext, False)
    scaler = StandardScaler().fit(feats)
    clf = LogisticRegression(class_weight="balanced", max_iter=2000, random_state=seed)
    clf.fit(scaler.transform(feats), grades)
    coef = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
    intercept = clf.intercept_ if len(clf.classes_) > 2 else np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    weight = np.zeros(tuple(model.classifier.weight.shape))
    bias = np.full(model.classifier.bias.shape, -30.0)
    for row, grade in enumerate(clf.classes_):
        weight[int(grade)] = coef[row] / scaler.scale_
        bias[int(grade)] = intercept[row] - weight[int(grade)] @ scaler.mean_
    with torch.no_grad():
        model.classifier.weight.copy_(torch.as_tensor(weight, dtype=model.classifier.weight.dtype))
        model.classifier.bias.copy_(torch.as_tensor(bias, dtype=model.classifier.bias.dtype))


def _macro_f1_accuracy(y_true, y_pred) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return (float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            float(accuracy_score(y_true, y_pred)))


def _forward_all(model, loader, device, autocast, channels_last):
    """Centred views through the model: ``(logits [N, 4], pooled features [N, F], grades [N])`` as numpy."""
    import torch

    logits, feats, grades = [], [], []
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast():
                f = model.embed(x)
                lg = model.classifier(f)
            logits.append(lg.float().cpu())
            feats.append(f.float().cpu())
            grades.append(batch["grade"])
    return torch.cat(logits).numpy(), torch.cat(feats).numpy(), torch.cat(grades).numpy()


def probe_predict(kind: str, train_feats, train_y, val_feats, seed: int):
    """Fit a probe on training features; return validation ``(predicted grades, fracture scores)``.

    ``kind``: ``logreg`` (class-balanced logistic regression on standardised features)
    or ``knn`` (5 nearest neighbours, cosine). The fracture score is 1 - P(grade 0).
    """
    if kind == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        clf = KNeighborsClassifier(n_neighbors=min(5, len(train_y)), metric="cosine")
    else:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000,
                                                                 random_state=seed))
    clf.fit(train_feats, train_y)
    classes = list(clf.classes_)
    proba = clf.predict_proba(val_feats)
    score = 1.0 - proba[:, classes.index(0)] if 0 in classes else np.ones(len(val_feats))
    return clf.predict(val_feats), score


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_json(run_dir / "history.json", history)
    columns = list(history[0]) if history else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def train(params: dict | None, run_dir: str | os.PathLike, resume: bool = False, *,
          stop_after_epochs: int | None = None) -> TrainResult:
    """Train one model; see the module docstring for modes, outputs and reproducibility.

    ``params``: keys of :data:`DEFAULT_PARAMS` (missing keys take the defaults; with
    ``resume=True`` it may be ``None``: the run's saved params are used, and only
    :data:`RESUME_MUTABLE` keys may differ). ``run_dir`` must not exist or be empty
    unless ``resume``. ``stop_after_epochs`` stops after that many epochs of *this*
    call (simulates an interruption; resume continues). Returns a :class:`TrainResult`.
    """
    from .models import load_checkpoint_dict

    from .io import release_lock

    run_dir = Path(run_dir)
    ckpt = None
    if resume:
        if not (run_dir / "last.pt").is_file():
            _prepare_run_dir(run_dir, resume)  # raises, naming the missing checkpoint
        ckpt = load_checkpoint_dict(run_dir / "last.pt")
        if not isinstance(ckpt.get("params"), dict):
            raise CheckpointError(f"{run_dir / 'last.pt'}: field 'params' missing; not a vfnb training checkpoint")
        p = _merge_resume_params(ckpt["params"], params, run_dir / "last.pt")
    else:
        p = validate_params(params)
    # everything the user can get wrong is checked before the run folder is created
    _check_training_data(p)
    lock = _prepare_run_dir(run_dir, resume)
    try:
        return _train_claimed(p, run_dir, ckpt, stop_after_epochs)
    except BaseException:
        if not resume and lock is not None:
            _discard_unfinished(run_dir)
        raise
    finally:
        release_lock(lock)


def _train_claimed(p, run_dir, ckpt, stop_after_epochs):
    import torch

    dist_ctx = _Dist(p["device"])
    threads_before = torch.get_num_threads()
    if dist_ctx.device.type == "cpu":
        # On a small CPU, OpenMP threads spinning against busy DataLoader workers can slow each
        # step many-fold; leave one core per worker (measured on 2 cores: 1 thread + 2 workers
        # was the fastest setting, with < 2 % of the step time waiting for data).
        torch.set_num_threads(_cpu_threads(p["threads"], p["workers"], dist_ctx.world_size))
    try:
        return _train(p, run_dir, ckpt, dist_ctx, stop_after_epochs)
    finally:
        torch.set_num_threads(threads_before)
        dist_ctx.close()


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


def _cpu_threads(threads, workers: int, world_size: int) -> int:
    if threads != "auto":
        return int(threads)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, world_size) - int(workers))


def _train(p, run_dir, ckpt, dist_ctx, stop_after_epochs):
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    from . import evaluate
    from .data.processed import ProcessedDataset
    from .data.sampling import ClassBalancedBatchSampler
    from .data.transforms import build_dataset
    from .losses import ProjectionSimilarity, SupConLoss
    from .models import rng_state, save_checkpoint, set_rng_state

    device, main, mode = dist_ctx.device, dist_ctx.main, p["mode"]
    dist_ctx.barrier()  # every rank has checked run_dir before rank 0 writes to it
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(run_dir / "params.yaml", p)

    # ---- data: the train and val lists only (the test list is never opened)
    dataset = ProcessedDataset(p["dataset"])
    train_records = dataset.records("train", p["tag"])
    val_records = dataset.records("val", p["tag"]) if main else []
    for split, records in (("train", train_records), ("val", val_records if main else [None])):
        if not records:
            raise ParamsError(f"{dataset.root}: the {split} list of tag {p['tag']!r} is empty; training needs "
                              "vertebrae in both the train and the val list")
    train_set = build_dataset(train_records, p["cube_size"], train=True, cache=True, seed=p["seed"],
                              augmentation=p["augmentation"], views=p["views"])
    sampler = ClassBalancedBatchSampler(train_set.grades, per_grade=p["batch_per_grade"], mode=p["epoch_mode"],
                                        batches_per_epoch=p["batches_per_epoch"], seed=p["seed"],
                                        rank=dist_ctx.rank, world_size=dist_ctx.world_size)
    on_device = augments_on_device(p["augment_on"], device)
    loader = torch.utils.data.DataLoader(
        _loader_dataset(train_set, on_device), batch_sampler=_SeededBatches(sampler, p["seed"], dist_ctx.rank), num_workers=p["workers"],
        persistent_workers=p["workers"] > 0, pin_memory=device.type == "cuda",
        prefetch_factor=4 if p["workers"] > 0 else None)
    prefetched = None  # the next epoch's batch iterator, started early so workers fill it meanwhile
    if p["workers"] > 0 and ckpt is None:
        sampler.set_epoch(0)  # workers start (and augment) while the model and validation data are built
        prefetched = iter(loader)
    if main:
        val_set = build_dataset(val_records, p["cube_size"], train=False, cache=True)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=p["eval_batch_size"], shuffle=False)
        probe_loader = None
        if mode in ("supcon", "ce") and p["probe"] != "none":
            probe_loader = torch.utils.data.DataLoader(train_set.as_eval(), batch_size=p["eval_batch_size"],
                                                       shuffle=False)

    # ---- model, optimizer, schedule
    model = _build_network(p)
    _set_trainable(model, mode)
    use_amp = device.type == "cuda" and p["amp"] in ("auto", True)
    channels_last = p["channels_last"] is True or (p["channels_last"] == "auto" and device.type == "cuda")
    if dist_ctx.distributed and p["sync_bn"]:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif main:  # PyTorch's SyncBatchNorm runs on CUDA only
            print("note: sync_bn ignored on CPU (SyncBatchNorm needs CUDA); each process keeps its own "
                  "batch-norm statistics", file=sys.stderr)
    model = model.to(device)
    start_from_probe = ckpt is None and mode in ("linear", "finetune") and p["classifier_init"] == "probe"
    if start_from_probe:
        # deterministic, so every rank computes the same start (DDP also broadcasts rank 0's)
        _fit_classifier_from_probe(model, train_set, p["eval_batch_size"], device, p["seed"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    trainable = [prm for prm in model.parameters() if prm.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    if p["lr_schedule"] == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=p["epochs"])
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=p["lr_milestones"], gamma=p["lr_gamma"])
    history: list[dict] = []
    start_epoch, best, best_epoch = 0, None, None
    selected_by = ("train_loss" if (mode == "supcon" and p["probe"] == "none") else "val_macro_f1")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if p["lr_schedule"] == "cosine":
            scheduler.T_max = p["epochs"]  # epochs may have been extended for the resumed run
        set_rng_state(ckpt["rng"])
        history = list(ckpt.get("history", []))
        start_epoch = int(ckpt["epoch"])
        best, best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
    net = model
    if dist_ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    supcon = SupConLoss(temperature=p["temperature"], base_temperature=p["base_temperature"])

    def autocast():
        if use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    if main and start_from_probe:
        # The probe fit is itself a candidate ("epoch 0"): SGD on augmented views starts from it,
        # and model selection by validation macro-F1 keeps it when SGD does not improve on it.
        model.eval()
        logits, _, val_y = _forward_all(model, val_loader, device, autocast, channels_last)
        best, best_epoch = _macro_f1_accuracy(val_y, logits.argmax(1))[0], 0
        save_checkpoint(run_dir / "best.pt", model, params=p, epoch=0, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=rng_state(), history=[], best_metric=best,
                        best_epoch=0, selected_by=selected_by)
    names_log = (run_dir / f"names.rank{dist_ctx.rank}.jsonl") if p["log_names"] else None
    epochs_this_call = 0
    for epoch in range(start_epoch, p["epochs"]):
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        if prefetched is None:
            sampler.set_epoch(epoch)
            batches = iter(loader)
        else:
            batches = prefetched
        net.train()
        if mode == "linear":
            model.encoder.eval()  # frozen encoder: keep its batch-norm statistics
        loss_sum = torch.zeros(2, dtype=torch.float64)  # [sum of batch losses, batches]
        similarity = ProjectionSimilarity()
        wait = 0.0
        t_start = time.perf_counter()
        bar = tqdm(total=len(sampler), desc=f"{mode} epoch {epoch + 1}/{p['epochs']}", leave=False,
                   disable=not (main and p["progress"]), file=sys.stderr, dynamic_ncols=True)
        for step in range(len(sampler)):
            t_wait = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t_wait
            views = (_device_views(batch, p, epoch, dist_ctx.rank, step, device) if on_device
                     else batch["image"])  # [B, V, 3, S, S, S]
            grades = batch["grade"].to(device)
            if mode == "ce" and p["ce_views"] == 1:
                views = views[:, :1]
            n, v = views.shape[:2]
            x = views.reshape((n * v,) + tuple(views.shape[2:])).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast():
                logits, projected = net(x, detach_classifier=(mode == "joint"))
            loss = torch.zeros((), device=device)
            if mode in ("supcon", "joint"):
                loss = loss + supcon(projected.float().reshape(n, v, -1), grades)
            if mode != "supcon":
                loss = loss + F.cross_entropy(logits.float(), grades.repeat_interleave(v))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with warmup(optimizer, epoch * len(sampler) + step, p["warmup_epochs"] * len(sampler)):
                optimizer.step()
            if mode in ("supcon", "joint"):
                similarity.add(projected.detach().float().reshape(n, v, -1), grades)
            loss_value = float(loss.detach())
            loss_sum += torch.tensor([loss_value, 1.0], dtype=torch.float64)
            if names_log is not None:
                with open(names_log, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"epoch": epoch, "step": step, "names": list(batch["name"])}) + "\n")
            bar.set_postfix(loss=f"{loss_sum[0].item() / loss_sum[1].item():.4f}")
            bar.update(1)
        bar.close()
        epoch_seconds = time.perf_counter() - t_start
        prefetched = None
        if p["workers"] > 0 and epoch + 1 < p["epochs"] and (
                stop_after_epochs is None or epochs_this_call + 1 < stop_after_epochs):
            # workers augment the next epoch's first batches while this process validates; batches
            # depend on (seed, epoch) only, so starting early changes nothing but the waiting
            sampler.set_epoch(epoch + 1)
            prefetched = iter(loader)
        lr = float(optimizer.param_groups[0]["lr"])
        scheduler.step()
        if dist_ctx.distributed:
            import torch.distributed as dist

            dist.all_reduce(loss_sum)  # the epoch loss over every rank's batches
        train_loss = float(loss_sum[0] / max(loss_sum[1], 1.0))

        improved = False
        if main:
            model.eval()
            if mode == "supcon" and p["probe"] == "none":
                f1 = acc = auc = None
            else:
                logits, feats, val_y = _forward_all(model, val_loader, device, autocast, channels_last)
            probe_f1 = probe_auc = None
            if probe_loader is not None:
                _, train_feats, train_y = _forward_all(model, probe_loader, device, autocast, channels_last)
                pred, score = probe_predict(p["probe"], train_feats, train_y, feats, p["seed"])
                probe_f1 = _macro_f1_accuracy(val_y, pred)[0]
                probe_auc = evaluate.fracture_auc(val_y, score)
            if mode == "supcon":
                if probe_loader is not None:
                    f1, acc = _macro_f1_accuracy(val_y, pred)
                    auc = probe_auc
            else:
                f1, acc = _macro_f1_accuracy(val_y, logits.argmax(1))
                p_normal = torch.softmax(torch.as_tensor(logits), dim=1)[:, 0].numpy()
                auc = evaluate.fracture_auc(val_y, 1.0 - p_normal)
            row = {"epoch": epoch + 1, "steps": (epoch + 1) * len(sampler), "loss": train_loss, "lr": lr,
                   "val_macro_f1": f1, "val_accuracy": acc, "val_fracture_auc": auc,
                   "val_probe_macro_f1": probe_f1, "val_probe_fracture_auc": probe_auc,
                   "epoch_seconds": round(epoch_seconds, 4), "data_wait_fraction": round(wait / epoch_seconds, 4)}
            if mode == "supcon":
                row["loss_no_structure"] = supcon.uninformative_value(n * v)
            if mode in ("supcon", "joint"):
                row.update(similarity.means())
            history.append(row)
            metric = -train_loss if selected_by == "train_loss" else f1
            if best is None or metric > best:
                best, best_epoch, improved = metric, epoch + 1, True
            state = dict(params=p, epoch=epoch + 1, optimizer=optimizer.state_dict(),
                         scheduler=scheduler.state_dict(), rng=rng_state(), history=history,
                         best_metric=best, best_epoch=best_epoch, selected_by=selected_by)
            # best first: if the run dies between the two writes, the resumed epoch rewrites both
            if improved:
                save_checkpoint(run_dir / "best.pt", model, **state)
            save_checkpoint(run_dir / "last.pt", model, **state)
            _write_metrics(run_dir, history)
            if p["progress"]:
                shown = "n/a" if f1 is None else f"{f1:.3f}"
                print(f"{mode} epoch {epoch + 1}/{p['epochs']}: loss {train_loss:.4f}, val macro-F1 {shown}, "
                      f"{epoch_seconds:.1f} s, data wait {wait / epoch_seconds:.0%}", file=sys.stderr)
        dist_ctx.barrier()  # other ranks wait for validation and the checkpoint
        epochs_this_call += 1

    if main and not history:
        raise ParamsError(f"{run_dir}: nothing to train (epochs = {p['epochs']} already done)")
    best_value = None if best is None else (-best if selected_by == "train_loss" else best)
    return TrainResult(run_dir=run_dir, best_checkpoint=run_dir / "best.pt", last_checkpoint=run_dir / "last.pt",
                       history=history, best_metric=best_value, best_epoch=best_epoch, selected_by=selected_by)


def train_from_cli(params_files: Sequence[str | os.PathLike], kv_overrides: Sequence[str],
                   out: str | os.PathLike | None, resume: bool = False) -> TrainResult:
    """``vfnb train --params FILE ... -p key=value ... --out DIR [--resume]``.

    Parameter files are merged in order, then the ``-p`` overrides (values parsed as
    YAML). With ``--resume`` and no parameters, the run's saved parameters are used.
    """
    if out is None:
        raise ParamsError("--out is required: the run folder to create (or to resume with --resume)")
    params = load_params_files(params_files)
    params.update(parse_overrides(kv_overrides))
    if not resume or params:
        validate_params(params, where="vfnb train")
    result = train(params if (params or not resume) else None, out, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
        print(f"wrote {result.run_dir} (best {result.selected_by} {shown}; {result.best_checkpoint.name})")
    return result
