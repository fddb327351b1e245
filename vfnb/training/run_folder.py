"""A training run's folder: claimed by one run, its checkpoints kept by one selection rule, its history.

A run folder holds ``params.yaml``, ``best.pt``, ``last.pt``, ``history.json`` and
``metrics.csv``. A new run needs a folder that does not exist or is empty, and rank 0
holds :data:`RUN_LOCK` in it while it writes (:func:`vfnb.io.claim_lock`), so two runs
never write one folder. The :class:`Checkpointer` writes ``best.pt`` whenever the
:class:`Selection` rule says an epoch beats every earlier one, then ``last.pt`` (the
state a resumed run continues from) and the history files, each atomically.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .distributed import is_main_process
from ..errors import CheckpointError, VfnbError
from ..io import atomic_write_json, atomic_write_text, claim_lock
from ..models.checkpoints import rng_state, save_checkpoint

RUN_LOCK = ".vfnb-lock"  # held in the run folder by the run writing it (rank 0)


@dataclass(frozen=True)
class Selection:
    """The one rule that picks ``best.pt``: the history column ``key``, higher or lower is better."""

    name: str  # as reported (TrainResult.selected_by, the checkpoint's selected_by)
    key: str
    lower_is_better: bool = False

    def better(self, value, best) -> bool:
        """Whether ``value`` beats ``best``; a missing value (a diverged epoch) never does."""
        if value is None or value != value:
            return False
        return best is None or (value < best if self.lower_is_better else value > best)


@dataclass
class TrainResult:
    """What :func:`vfnb.training.engine.train` produced."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: list = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int | None = None  # 0: the start (the probe fit of linear / finetune) beat every epoch
    selected_by: str = "val_macro_f1"


class Checkpointer:
    """``best.pt`` (kept by the :class:`Selection` rule), ``last.pt``, ``history.json`` and ``metrics.csv`` of a run."""

    def __init__(self, run_dir: Path, params: dict, selection: Selection, ckpt: dict | None = None,
                 provenance: dict | None = None):
        self.run_dir, self.params, self.selection = run_dir, params, selection
        self.provenance = dict(provenance or {})  # run_id, training_data: written into every checkpoint
        self.history = list(ckpt.get("history", [])) if ckpt else []
        self.epochs_done = int(ckpt["epoch"]) if ckpt else 0
        self.best, self.best_epoch = _resumed_best(ckpt, self.history, self.selection)

    def _state(self, epoch: int, optimizer, scheduler) -> dict:
        return dict(params=self.params, epoch=epoch, optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), rng=rng_state(), history=self.history,
                    best_metric=self.best, best_epoch=self.best_epoch, selected_by=self.selection.name,
                    **self.provenance)

    def start(self, model, score: float, optimizer, scheduler) -> None:
        """The model before any step is a candidate too (epoch 0), scored ``score``."""
        self.best, self.best_epoch = score, 0
        save_checkpoint(self.run_dir / "best.pt", model, **self._state(0, optimizer, scheduler))

    def end_of_epoch(self, model, row: dict, optimizer, scheduler) -> bool:
        """Record ``row``; write ``best.pt`` when it is the best so far, then ``last.pt`` and the history files."""
        self.history.append(row)
        value = row[self.selection.key]
        improved = self.selection.better(value, self.best)
        if improved:
            self.best, self.best_epoch = value, row["epoch"]
        state = self._state(row["epoch"], optimizer, scheduler)
        # best first: if the run dies between the two writes, the resumed epoch rewrites both
        if improved:
            save_checkpoint(self.run_dir / "best.pt", model, **state)
        save_checkpoint(self.run_dir / "last.pt", model, **state)
        write_history(self.run_dir, self.history)
        return improved

    def result(self) -> TrainResult:
        if self.history and self.best_epoch is None:
            raise VfnbError(f"{self.run_dir}: no epoch gave finite validation outputs (the training diverged); "
                            "no best.pt was written; train again with a lower lr")
        return TrainResult(run_dir=self.run_dir, best_checkpoint=self.run_dir / "best.pt",
                           last_checkpoint=self.run_dir / "last.pt", history=self.history, best_metric=self.best,
                           best_epoch=self.best_epoch, selected_by=self.selection.name)


def _resumed_best(ckpt: dict | None, history: list, selection: Selection):
    """``(best value, best epoch)`` of a resumed run, read from its history (epoch 0: the stored probe-start score)."""
    if not ckpt or ckpt.get("best_epoch") is None:
        return None, None
    best_epoch = int(ckpt["best_epoch"])
    if 1 <= best_epoch <= len(history):
        return history[best_epoch - 1][selection.key], best_epoch
    return ckpt.get("best_metric"), best_epoch


def write_history(run_dir: Path, history: list[dict]) -> None:
    """``history.json`` and ``metrics.csv`` (the same rows; empty cells for None)."""
    atomic_write_json(run_dir / "history.json", history)
    columns = list(history[0]) if history else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())


def prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Check ``run_dir`` and, on rank 0, claim it with :data:`RUN_LOCK`; return the lock (None elsewhere).

    A new run needs a folder that does not exist or is empty; checked again once
    the lock is held, so of two runs started into one folder the second is refused.
    """
    if resume:
        if not (run_dir / "last.pt").is_file():
            raise CheckpointError(f"{run_dir / 'last.pt'}: checkpoint file not found; cannot resume "
                                  "(start a new run without --resume)")
    else:
        refuse_used_run_dir(run_dir)
    if not is_main_process():
        return None
    if run_dir.exists() and not run_dir.is_dir():
        refuse_used_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = claim_lock(run_dir / RUN_LOCK, f"{run_dir}: run folder")
    if not resume:
        try:
            refuse_used_run_dir(run_dir)
        except VfnbError:
            lock.unlink(missing_ok=True)
            raise
    return lock


def refuse_used_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(p.name != RUN_LOCK for p in run_dir.iterdir())):
        raise VfnbError(f"{run_dir}: run folder already exists and is not empty; choose another folder "
                        "(or pass --resume to continue the run in it)")


def discard_unfinished(run_dir: Path) -> None:
    """After a new run failed before its first checkpoint: empty the folder it claimed, so a re-run may use it."""
    if (run_dir / "last.pt").exists() or not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name == RUN_LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
