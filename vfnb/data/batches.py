"""Training batches: class-balanced, augmented with a seed per draw, each epoch's started early.

Every batch holds ``batch_per_grade`` vertebrae of each grade
(:class:`~vfnb.data.sampling.ClassBalancedBatchSampler`, drawn from ``(seed, epoch)``)
and ``views`` augmented views of each. The views never depend on a worker's random
stream, so a resumed run and a run with another number of workers see the same ones:

- on the CPU path (MONAI in the DataLoader workers) each vertebra's views are drawn
  with a seed from ``(seed, epoch, rank, step, position in the batch)``
  (:class:`SeededBatches`);
- on the device path (:mod:`vfnb.data.device_augment`) the loader only reads the
  cached patches and the whole batch is augmented on the training device with a
  generator seeded by ``(seed, epoch, rank, step)`` and a stream tag.

:class:`TrainingBatches` starts an epoch's iterator on request, so DataLoader workers
prepare the next epoch's first batches while the main process validates; batches
depend on ``(seed, epoch)`` only, so starting early changes nothing but the waiting.
"""

from __future__ import annotations

import numpy as np
import torch

from .device_augment import CachedPatches, augment_batch
from .sampling import ClassBalancedBatchSampler

DEVICE_AUGMENT_STREAM = 1  # the last entry of the device path's seed key, keeping its stream apart


class SeededBatches:
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


def augments_on_device(augment_on: str, device: torch.device) -> bool:
    """Whether training views are augmented on ``device`` (``augment_on``: auto = on CUDA only)."""
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


class TrainingBatches:
    """The training DataLoader of one process, one iterator per epoch.

    ``train_set``: a training :class:`~vfnb.data.transforms.PatchDataset`; ``config``: a
    :class:`vfnb.config.TrainConfig` (``batch_per_grade``, ``epoch_mode``,
    ``batches_per_epoch``, ``seed``, ``workers``, ``augment_on``, ``views``,
    ``augmentation``, ``cube_size``). ``len()`` is the number of steps per epoch.
    """

    def __init__(self, train_set, config, device: torch.device, rank: int = 0, world_size: int = 1):
        self.config, self.device, self.rank = config, device, rank
        self.sampler = ClassBalancedBatchSampler(train_set.grades, per_grade=config.batch_per_grade,
                                                 mode=config.epoch_mode, batches_per_epoch=config.batches_per_epoch,
                                                 seed=config.seed, rank=rank, world_size=world_size)
        self.on_device = augments_on_device(config.augment_on, device)
        workers = config.workers
        self.loader = torch.utils.data.DataLoader(
            CachedPatches(train_set) if self.on_device else train_set,
            batch_sampler=SeededBatches(self.sampler, config.seed, rank), num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers > 0 else None)
        self._started: tuple[int, object] | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def start(self, epoch: int) -> None:
        """Begin ``epoch``'s iterator now (with workers, they start reading and augmenting at once)."""
        self.sampler.set_epoch(epoch)
        self._started = (epoch, iter(self.loader))

    def epoch(self, epoch: int):
        """The iterator over ``epoch``'s batches: the one :meth:`start` began, or a new one."""
        if self._started is not None and self._started[0] == epoch:
            batches = self._started[1]
        else:
            self.sampler.set_epoch(epoch)
            batches = iter(self.loader)
        self._started = None
        return batches

    def views(self, batch, epoch: int, step: int) -> torch.Tensor:
        """A loader batch -> its views ``[B, V, 3, S, S, S]`` (on the CPU path, as the workers made them)."""
        if not self.on_device:
            return batch["image"]
        c = self.config
        key = [c.seed, epoch, self.rank, step, DEVICE_AUGMENT_STREAM]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        return augment_batch(batch, c.views, c.augmentation, c.cube_size, torch.Generator().manual_seed(seed),
                             self.device)
