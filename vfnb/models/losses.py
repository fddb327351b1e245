"""Supervised contrastive loss (STUDY §1.5; Khosla et al., NeurIPS 2020).

The "L_out" form of the paper (its equation 2), scaled by tau / tau_base as the
authors' reference code does::

    L = (tau / tau_base) * mean_{i in I'} [ -1/|P(i)| * sum_{p in P(i)}
            log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) ) ]

- ``I`` are the anchors: every view of every sample (``contrast_mode="all"``)
  or only view 0 of every sample (``contrast_mode="one"``);
- ``A(i)`` is every view of every sample except the anchor itself;
- ``P(i)`` are the positives: the members of ``A(i)`` with the anchor's label
  (with ``labels=None``, only the other views of the same sample: SimCLR);
- ``I'`` are the anchors with at least one positive. An anchor without any
  positive (possible only with one view and a label no other sample carries) has
  an undefined inner mean; it is left out of the mean over anchors rather than
  counted as zero, so it neither changes the loss nor its gradient. If no anchor
  has a positive, the loss is 0 with a zero gradient (never NaN).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SupConLoss(nn.Module):
    """SupCon / SimCLR loss on L2-normalised features.

    Args:
        temperature: tau in the equation above (default 0.07, as the study).
        base_temperature: tau_base; the loss is multiplied by ``temperature / base_temperature``.
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (view 0 only).

    Call: ``loss(features, labels=None)`` with ``features`` ``[batch, views, dim]``
    (each vector L2-normalised by the caller, e.g. the model's projection head) and
    ``labels`` ``[batch]`` integer classes (Genant grades) or ``None``. Returns a scalar.
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07, contrast_mode: str = "all"):
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode {contrast_mode!r}: expected 'all' or 'one'")
        if not temperature > 0 or not base_temperature > 0:
            raise ValueError(f"temperatures must be > 0 (got {temperature}, {base_temperature})")
        self.temperature = float(temperature)
        self.base_temperature = float(base_temperature)
        self.contrast_mode = contrast_mode

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, base_temperature={self.base_temperature}, contrast_mode={self.contrast_mode!r}"

    def uninformative_value(self, n_views_total: int) -> float:
        """The loss when every projected view is one and the same vector.

        It is ``(tau / tau_base) * ln(N - 1)``.

        ``N`` is the number of views in the batch (vertebrae x views). Every log-probability
        is then ``-ln(N - 1)``, whatever the labels. A training loss that stays near this
        value means the encoder has not separated the grades on the training batches: the
        projections are (close to) one point, or their differences carry no grade.
        """
        n = int(n_views_total)
        if n < 2:
            raise ValueError(f"n_views_total must be >= 2 (got {n_views_total})")
        return float(self.temperature / self.base_temperature * math.log(n - 1))

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if features.dim() != 3:
            raise ValueError(f"features must be [batch, views, dim], got shape {tuple(features.shape)}")
        batch, views, _ = features.shape
        device = features.device
        if labels is None:
            same = torch.eye(batch, dtype=torch.bool, device=device)
        else:
            labels = torch.as_tensor(labels, device=device).reshape(-1)
            if labels.numel() != batch:
                raise ValueError(f"labels has {labels.numel()} entries for a batch of {batch}")
            same = labels[:, None] == labels[None, :]

        # view-major stacking: row v*batch + b is view v of sample b
        contrast = features.transpose(0, 1).reshape(views * batch, -1)
        anchor_views = views if self.contrast_mode == "all" else 1
        anchors = contrast[: anchor_views * batch]
        n_anchor, n_contrast = anchors.shape[0], contrast.shape[0]
        if n_contrast < 2:  # nothing to contrast with: no anchor can have a positive
            return features.sum() * 0.0

        logits = anchors @ contrast.T / self.temperature
        # subtract the row max for stability (a constant per row: log-probabilities unchanged)
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        # A(i): everything but the anchor itself (anchor row r is contrast column r)
        not_self = torch.ones(n_anchor, n_contrast, dtype=torch.bool, device=device)
        not_self[torch.arange(n_anchor, device=device), torch.arange(n_anchor, device=device)] = False
        positives = same.repeat(anchor_views, views) & not_self

        log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
        log_prob = logits - log_denominator  # finite everywhere: every row has >= 1 candidate
        n_pos = positives.sum(dim=1)
        sum_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return features.sum() * 0.0
        mean_log_prob_pos = sum_pos[has_pos] / n_pos[has_pos].to(log_prob.dtype)
        return -(self.temperature / self.base_temperature) * mean_log_prob_pos.mean()


class ProjectionSimilarity:
    """Running means of the cosine between projected views, by pair kind: is SupCon collapsing?

    ``add(features [batch, views, dim], labels [batch])`` with L2-normalised features
    accumulates, over every ordered pair of distinct views in the batch, the mean
    cosine of pairs that are two views of one vertebra (``own_view``), views of two
    vertebrae of the same grade (``same_grade``), and of different grades
    (``other_grade``). Collapse shows as all three near 1 (every projection the same
    vector, the loss at :meth:`SupConLoss.uninformative_value`); grade structure as
    ``other_grade`` clearly below ``same_grade``. ``means()`` -> dict with keys
    ``proj_cos_own_view``, ``proj_cos_same_grade``, ``proj_cos_other_grade`` (None
    for a kind never seen).
    """

    KINDS = ("own_view", "same_grade", "other_grade")

    def __init__(self):
        self.sums = dict.fromkeys(self.KINDS, 0.0)
        self.counts = dict.fromkeys(self.KINDS, 0)

    @torch.no_grad()
    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        n, v = features.shape[:2]
        flat = features.reshape(n * v, -1).float()
        cosine = flat @ flat.T
        sample = torch.arange(n, device=flat.device).repeat_interleave(v)
        label = labels.to(flat.device).repeat_interleave(v)
        distinct = ~torch.eye(n * v, dtype=torch.bool, device=flat.device)
        same_sample = sample[:, None] == sample[None, :]
        same_label = label[:, None] == label[None, :]
        masks = {"own_view": distinct & same_sample, "same_grade": same_label & ~same_sample,
                 "other_grade": ~same_label}
        for kind, mask in masks.items():
            self.sums[kind] += float(cosine[mask].sum())
            self.counts[kind] += int(mask.sum())

    def means(self) -> dict:
        return {f"proj_cos_{kind}": (self.sums[kind] / self.counts[kind] if self.counts[kind] else None)
                for kind in self.KINDS}
