"""The fast CPU step settings keep the numerics of the plain ones.

- channels-last-3d (``channels_last: auto`` now on the CPU too, for resnet10 / resnet18): one SGD step of the
  paper's joint objective (CE on the detached feature + SupCon) from the same seed and
  input gives the same loss, gradients and updated weights as contiguous tensors, up to
  float rounding (oneDNN sums the convolutions in another order);
- the batched augmentation in the loader (``augment_on: auto`` on the CPU): the views
  are those of :func:`vfnb.data.device_augment.augment_batch` with the batch's
  ``(seed, epoch, rank, step)`` generator, whatever the number of workers.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vfnb.data.batches import TrainingBatches, batch_generator
from vfnb.data.device_augment import CachedPatches, augment_batch
from vfnb.data.processed import ProcessedDataset
from vfnb.data.transforms import build_dataset
from vfnb.models.losses import SupConLoss
from vfnb.models.networks import build_model
from vfnb.training.config import TrainConfig
from vfnb.training.engine import uses_channels_last

SMALL = {"block_inplanes": [4, 8, 8, 16]}


def _one_step(channels_last: bool, x: torch.Tensor, grades: torch.Tensor):
    torch.manual_seed(0)
    model = build_model("resnet10", **SMALL).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    logits, projected = model(x, detach_classifier=True)
    n = grades.shape[0]
    loss = (F.cross_entropy(logits, grades.repeat_interleave(2))
            + SupConLoss(0.1, 0.1)(projected.reshape(n, 2, -1), grades))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    optimizer.step()
    return float(loss.detach()), grads, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_channels_last_step_matches_the_contiguous_step():
    torch.manual_seed(1)
    grades = torch.tensor([0, 1, 2, 3])
    x = torch.rand(8, 3, 16, 16, 16)
    loss_a, grads_a, after_a = _one_step(False, x, grades)
    loss_b, grads_b, after_b = _one_step(True, x, grades)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    # tolerance on the scale of the whole gradient: some are zero up to rounding (a convolution bias
    # followed by batch norm), where a relative tolerance means nothing
    scale = max(float(g.abs().max()) for g in grads_a.values())
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5 * scale), name
    for name in after_a:  # weights and batch-norm running statistics after the step
        assert torch.allclose(after_a[name].float(), after_b[name].float(), rtol=1e-4, atol=1e-6), name
    # the step did something: a wrong comparison of untouched weights would pass trivially
    torch.manual_seed(0)
    fresh = build_model("resnet10", **SMALL).state_dict()
    assert any(not torch.allclose(fresh[k].float(), after_a[k].float()) for k in fresh)


def test_auto_picks_channels_last_by_device_and_backbone():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert uses_channels_last("auto", cpu, "resnet10") and uses_channels_last("auto", cpu, "resnet18")
    assert not uses_channels_last("auto", cpu, "seresnet50")  # slower in channels-last on the CPU
    assert uses_channels_last("auto", cuda, "seresnet50")
    assert uses_channels_last(True, cpu, "seresnet50") and not uses_channels_last(False, cuda, "resnet10")


def _batches(train_set, workers: int):
    config = TrainConfig.from_params({"cube_size": 16, "batch_per_grade": 1, "epoch_mode": "replacement",
                                      "batches_per_epoch": 3, "workers": workers, "augment_on": "auto",
                                      "augmentation": "paper", "seed": 5})
    return config, TrainingBatches(train_set, config, torch.device("cpu"))


def test_loader_augmentation_is_the_batched_one_whatever_the_workers(tiny_processed):
    records = ProcessedDataset(tiny_processed).records("train", "t0")
    train_set = build_dataset(records, 16, train=True, cache=True, augmentation="paper", views=2)
    config, in_process = _batches(train_set, workers=0)
    _, in_worker = _batches(train_set, workers=1)
    epoch = 1
    first = [in_process.views(b, epoch, s) for s, b in enumerate(in_process.epoch(epoch))]
    second = [in_worker.views(b, epoch, s) for s, b in enumerate(in_worker.epoch(epoch))]
    assert len(first) == 3 and all(v.shape == (4, 2, 3, 16, 16, 16) for v in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # the reference: the batch's cached patches through augment_batch with the step's generator
    in_process.sampler.set_epoch(epoch)
    cached = CachedPatches(train_set)
    for step, indices in enumerate(in_process.sampler):
        batch = torch.utils.data.default_collate([cached[i] for i in indices])
        expected = augment_batch(batch, 2, "paper", 16, batch_generator(config.seed, epoch, 0, step), "cpu")
        assert torch.equal(first[step], expected)
    assert not torch.equal(first[0], first[1])
