"""Training data: class-balanced batches augmented with a seed per draw, and the validation loader.

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

from dataclasses import dataclass

import numpy as np
import torch

from .device_augment import CachedPatches, augment_batch
from .preprocess import recorded_patch_size
from .processed import ProcessedDataset
from .sampling import ClassBalancedBatchSampler
from .transforms import build_dataset

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
    :class:`vfnb.training.config.TrainConfig` (``batch_per_grade``, ``epoch_mode``,
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


@dataclass
class TrainingData:
    """The training set and its batches, the validation loader, and the training vertebrae's centred views.

    ``val_loader`` and ``probe_loader`` exist in the main process only (it validates);
    ``probe_loader`` only when a probe is fitted each epoch. ``patch_size``: the in-plane
    size the training patches were pre-processed at (recorded in checkpoints).
    """

    train_set: object
    batches: TrainingBatches
    val_loader: object = None
    probe_loader: object = None
    patch_size: int | None = None


def training_data(config, processes, start_first_epoch: bool, with_probe: bool) -> TrainingData:
    """Read the train and val lists of ``config.dataset`` (never the test list), cache the patches, make the loaders.

    ``processes``: a :class:`vfnb.training.distributed.Processes`; with ``start_first_epoch`` and
    DataLoader workers, epoch 0's batches start at once (while the model is built).
    """
    dataset = ProcessedDataset(config.dataset)
    train_records = dataset.records("train", config.tag)
    train_set = build_dataset(train_records, config.cube_size, train=True, cache=True, seed=config.seed,
                              augmentation=config.augmentation, views=config.views)
    batches = TrainingBatches(train_set, config, processes.device, processes.rank, processes.world_size)
    if config.workers > 0 and start_first_epoch:
        batches.start(0)  # workers start (and augment) while the model and validation data are built
    data = TrainingData(train_set, batches, patch_size=recorded_patch_size(dataset.root, train_records))
    if processes.main:
        val_set = build_dataset(dataset.records("val", config.tag), config.cube_size, train=False, cache=True)
        data.val_loader = eval_loader(val_set, config.eval_batch_size)
        if with_probe:
            data.probe_loader = eval_loader(train_set.as_eval(), config.eval_batch_size)
    return data


def eval_loader(dataset, batch_size: int):
    """Centred views in list order, ``batch_size`` at a time."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
