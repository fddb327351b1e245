"""Class-balanced batches (STUDY §1.5): ``k`` vertebrae of every Genant grade per batch.

``mode="balanced"`` (the paper): each epoch shuffles every grade and deals it out in
chunks of ``k`` without replacement; an epoch has ``(size of the smallest grade) / k``
batches, so every vertebra of the smallest grade is seen once per epoch and the
larger grades are subsampled (a different subset each epoch).

``mode="replacement"``: ``batches_per_epoch`` batches (default: as many as
``"balanced"`` would give); each batch draws ``k`` vertebrae of every grade without
replacement inside the batch, with replacement across batches, so epochs can be
longer than the smallest grade allows.

Several processes (DistributedDataParallel): all ranks build the same sequence of
*global* steps from ``(seed, epoch)``; at each step every grade contributes
``k * world_size`` distinct vertebrae and rank ``r`` takes the ``r``-th group of ``k``.
Ranks therefore see different vertebrae within a step (in both modes, when a grade
has at least ``k * world_size`` vertebrae) and all ranks run the same number of
steps (a balanced epoch has ``smallest grade // (k * world_size)`` steps).

Batches are balanced over the grades present in ``grades`` (normally all four);
a grade with fewer than ``k`` vertebrae is refused.

The module also draws the small per-grade samples the study's figures show
(:func:`pick_per_grade`) and random subsets for embeddings (:func:`subsample`).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ParamsError

MODES = ("balanced", "replacement")


class ClassBalancedBatchSampler:
    """Yield lists of dataset indices, ``per_grade`` of each grade, grade by grade.

    ``grades[i]`` is the Genant grade of dataset item ``i``. Deterministic for a given
    ``(seed, epoch)``; call :meth:`set_epoch` before each epoch. ``len(sampler)`` is the
    number of batches this rank yields per epoch.
    """

    def __init__(self, grades: Sequence[int], per_grade: int = 3, mode: str = "balanced",
                 batches_per_epoch: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1):
        if mode not in MODES:
            raise ParamsError(f"sampler mode {mode!r} unknown; expected one of {', '.join(MODES)}")
        if int(per_grade) < 1:
            raise ParamsError(f"batch_per_grade {per_grade!r} must be a positive integer")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} outside 0..{int(world_size) - 1}")
        if batches_per_epoch is not None and int(batches_per_epoch) < 1:
            raise ParamsError(f"batches_per_epoch {batches_per_epoch!r} must be a positive integer or null")
        self.grades = np.asarray([int(g) for g in grades], dtype=np.int64)
        self.per_grade = int(per_grade)
        self.mode = mode
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.classes = sorted(int(g) for g in np.unique(self.grades))
        if not self.classes:
            raise ParamsError("class-balanced sampling needs at least one vertebra; the training list is empty")
        self.members = {g: np.flatnonzero(self.grades == g) for g in self.classes}
        counts = {g: len(m) for g, m in self.members.items()}
        smallest = min(counts.values())
        if smallest < self.per_grade:
            g = min(counts, key=counts.get)
            raise ParamsError(
                f"batch_per_grade is {self.per_grade} but grade {g} has only {smallest} training vertebrae "
                f"(counts per grade: {counts}); lower batch_per_grade"
            )
        group = self.per_grade * self.world_size
        balanced_steps = smallest // group
        if mode == "balanced":
            if batches_per_epoch is not None:
                raise ParamsError("batches_per_epoch applies to epoch_mode 'replacement' only; "
                                  "a balanced epoch is (smallest grade) / batch_per_grade batches")
            if balanced_steps < 1:
                raise ParamsError(
                    f"grade {min(counts, key=counts.get)} has {smallest} training vertebrae, fewer than "
                    f"batch_per_grade x processes = {group}; use epoch_mode 'replacement' or fewer processes"
                )
            self.steps = balanced_steps
        else:
            self.steps = int(batches_per_epoch) if batches_per_epoch is not None else max(1, balanced_steps)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches :meth:`__iter__` yields (all ranks must agree)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def _global_steps(self) -> list[dict[int, np.ndarray]]:
        """Per global step, per grade: ``k * world_size`` indices (the same on every rank)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        group = self.per_grade * self.world_size
        steps: list[dict[int, np.ndarray]] = [dict() for _ in range(self.steps)]
        for g in self.classes:
            members = self.members[g]
            if self.mode == "balanced":
                dealt = rng.permutation(members)[: self.steps * group].reshape(self.steps, group)
                for s in range(self.steps):
                    steps[s][g] = dealt[s]
            else:
                distinct = len(members) >= group  # else a few repeats inside the step are unavoidable
                for s in range(self.steps):
                    steps[s][g] = rng.choice(members, size=group, replace=not distinct)
        return steps

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.per_grade, (self.rank + 1) * self.per_grade
        for step in self._global_steps():
            yield [int(i) for g in self.classes for i in step[g][lo:hi]]


# ------------------------------------------------------------------ samples for figures and tables
def pick_per_grade(records: Sequence[Mapping[str, Any]], per_grade: int, seed: int = 0) -> list:
    """Up to ``per_grade`` records of each Genant grade, grade 0 first, drawn without replacement.

    One generator seeded with ``seed`` draws the grades in ascending order (a grade
    with no record draws nothing); within a grade the chosen records keep their order
    in ``records``. The notebooks use it for every per-grade sample they show (example
    patches, height measurements, intensity samples), so one seed gives one sample.
    """
    rng = np.random.default_rng(seed)
    by_grade: dict[int, list] = {}
    for record in records:
        by_grade.setdefault(int(record["grade"]), []).append(record)
    chosen = []
    for grade in sorted(by_grade):
        members = by_grade[grade]
        picked = rng.choice(len(members), size=min(int(per_grade), len(members)), replace=False)
        chosen += [members[i] for i in sorted(picked)]
    return chosen


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` items, sorted (all of them when ``n <= max_points``)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))
