"""Training data: class-balanced batches augmented with a seed per draw, and the validation loader.

Every batch holds ``batch_per_grade`` vertebrae of each grade
(:class:`~vfnb.data.sampling.ClassBalancedBatchSampler`, drawn from ``(seed, epoch)``)
and ``views`` augmented views of each. The views never depend on a worker's random
stream, so a resumed run and a run with another number of workers see the same ones:

- on the CPU path (MONAI in the DataLoader workers) each vertebra's views are drawn
  with a seed from ``(seed, epoch, rank, step, position in the batch)``
  (:class:`SeededBatches`);
- on the batched path (:mod:`vfnb.data.device_augment`) the whole batch is augmented at
  once, with torch, by a generator seeded by ``(seed, epoch, rank, step)`` and a stream
  tag: on a GPU the loader only reads the cached patches and the main process augments
  on the device; on the CPU the loader workers augment (:class:`AugmentingCollate`), so
  the batch arrives ready while the main process trains. The same key gives the same
  views wherever they are made (workers or not).

``augment_on`` picks the path (:func:`batched_augmentation`): ``cpu`` MONAI per view,
``device`` batched, ``auto`` batched everywhere. The batched path takes a third to a
half less CPU time per batch than the per-view one (BENCHMARKS.md, ``steps``), time that
on a 2-core machine is otherwise taken from the training step itself.

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


def batched_augmentation(augment_on: str) -> bool:
    """Whether training views come from the batched augmentation (``augment_on`` auto or device), not MONAI per view."""
    return augment_on in ("auto", "device")


def augments_on_device(augment_on: str, device: torch.device) -> bool:
    """Whether the main process augments each batch on ``device`` (the batched path on a GPU).

    On the CPU the batched path runs in the loader (workers, or the main process with
    none), inside :class:`AugmentingCollate`, so the views are ready when the step starts.
    """
    return batched_augmentation(augment_on) and device.type != "cpu"


class KeyedBatches:
    """Batch sampler wrapper: each index becomes ``(index, epoch, step)``, the key of its batch's augmentation."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.sampler.epoch  # fixed when the epoch's iterator starts
        for step, batch in enumerate(self.sampler):
            yield [(int(i), epoch, step) for i in batch]


class KeyedPatches(torch.utils.data.Dataset):
    """:class:`~vfnb.data.device_augment.CachedPatches` read by ``(index, epoch, step)`` keys; the item keeps the key."""

    def __init__(self, patches: CachedPatches):
        self.patches = patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, key):
        index, epoch, step = (int(k) for k in key)
        return {**self.patches[index], "epoch": epoch, "step": step}


def batch_generator(seed: int, epoch: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one batch's augmentation, from ``(seed, epoch, rank, step)`` and the stream tag."""
    key = [int(seed), int(epoch), int(rank), int(step), DEVICE_AUGMENT_STREAM]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


class AugmentingCollate:
    """``collate_fn`` of the CPU batched path: the batch's cached patches -> ``image`` ``[B, V, 3, S, S, S]``.

    Runs in a loader worker (one torch thread there), so augmentation overlaps the
    training step; the views depend on the batch's ``(epoch, step)`` key, not on the worker.
    """

    def __init__(self, config, rank: int):
        self.seed, self.rank = int(config.seed), int(rank)
        self.views, self.augmentation, self.cube_size = config.views, config.augmentation, config.cube_size

    def __call__(self, items):
        batch = torch.utils.data.default_collate(items)
        epoch, step = int(batch.pop("epoch")[0]), int(batch.pop("step")[0])
        batch["image"] = augment_batch(batch, self.views, self.augmentation, self.cube_size,
                                       batch_generator(self.seed, epoch, self.rank, step), "cpu")
        for name in ("hu", "mask"):
            del batch[name]
        return batch


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
        if self.on_device:
            source, batch_sampler, collate = CachedPatches(train_set), SeededBatches(self.sampler, config.seed, rank), None
        elif batched_augmentation(config.augment_on):  # batched, in the loader, on the CPU
            source, batch_sampler = KeyedPatches(CachedPatches(train_set)), KeyedBatches(self.sampler)
            collate = AugmentingCollate(config, rank)
        else:
            source, batch_sampler, collate = train_set, SeededBatches(self.sampler, config.seed, rank), None
        self.loader = torch.utils.data.DataLoader(
            source, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
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
        """A loader batch -> its views ``[B, V, 3, S, S, S]`` (off the GPU, as the loader made them)."""
        if not self.on_device:
            return batch["image"]
        c = self.config
        return augment_batch(batch, c.views, c.augmentation, c.cube_size,
                             batch_generator(c.seed, epoch, self.rank, step), self.device)


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
