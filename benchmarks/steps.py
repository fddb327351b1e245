"""One training step of the paper's joint recipe, as the benchmarks time it.

``x`` holds ``views`` augmented views of ``n`` vertebrae laid out view-major
(``[view 0 of every vertebra, view 1 of every vertebra, ...]``, ``[views * n, 3, S, S, S]``).
The step is: forward, cross-entropy on the classifier over the *detached* pooled
feature plus SupCon on the projections (STUDY §1.5), backward, SGD (lr 0.005,
momentum 0.9, weight decay 1e-4).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from vfnb.models.losses import SupConLoss
from vfnb.models.networks import build_model

VIEWS = 2


def balanced_grades(n: int) -> torch.Tensor:
    """Genant grades 0, 1, 2, 3, 0, 1, ... for ``n`` vertebrae (a class-balanced batch)."""
    return torch.arange(n) % 4


def make_joint_step(model: torch.nn.Module, x: torch.Tensor, grades: torch.Tensor, views: int = VIEWS,
                    autocast_dtype: torch.dtype | None = None
                    ) -> tuple[Callable[[], torch.Tensor], torch.optim.Optimizer]:
    """Return ``(step, optimizer)``; ``step()`` runs one SGD step on ``x`` and returns the loss.

    ``step(inputs)`` steps on ``inputs`` instead (same shape as ``x``: fresh views from a pipeline).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    supcon = SupConLoss(temperature=0.07, base_temperature=0.07)
    n = grades.shape[0]
    if x.shape[0] != views * n:
        raise ValueError(f"x has {x.shape[0]} inputs; expected views * vertebrae = {views} * {n}")
    target = grades.repeat(views).to(x.device)
    grades = grades.to(x.device)
    device_type = x.device.type

    def step(inputs: torch.Tensor | None = None) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with ctx:
            logits, projected = model(x if inputs is None else inputs, detach_classifier=True)
        # losses in fp32: [views * n, D] -> [n, views, D]
        features = projected.float().view(views, n, -1).transpose(0, 1)
        loss = F.cross_entropy(logits.float(), target) + supcon(features, grades)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, optimizer


def build_step(backbone: str, cube_size: int, vertebrae: int, device: str = "cpu",
               autocast_dtype: torch.dtype | None = None, channels_last: bool = False, seed: int = 0,
               views: int = VIEWS):
    """Model + random input on ``device`` -> ``(step, model, x)`` for ``vertebrae * views`` inputs."""
    torch.manual_seed(seed)
    model = build_model(backbone).to(device)
    model.train()
    x = torch.rand(views * vertebrae, 3, cube_size, cube_size, cube_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    step, _ = make_joint_step(model, x, balanced_grades(vertebrae), views, autocast_dtype)
    return step, model, x
