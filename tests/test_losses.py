"""SupConLoss against the L_out equation of Khosla et al. 2020 written out by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from vfnb.models.losses import SupConLoss


def explicit_supcon(features, labels, temperature, base_temperature, mode):
    """Loop over anchors: -1/|P(i)| sum_p log(exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t))."""
    batch, views, _ = features.shape
    items = [(b, v) for v in range(views) for b in range(batch)]
    anchor_items = [(b, v) for (b, v) in items if mode == "all" or v == 0]
    per_anchor = []
    for (bi, vi) in anchor_items:
        zi = features[bi, vi].double()
        others = [(b, v) for (b, v) in items if (b, v) != (bi, vi)]
        if labels is None:
            positives = [(b, v) for (b, v) in others if b == bi]
        else:
            positives = [(b, v) for (b, v) in others if labels[b] == labels[bi]]
        if not positives:
            continue  # documented: anchors without positives are left out of the mean
        denom = sum(math.exp(float(zi @ features[b, v].double()) / temperature) for (b, v) in others)
        total = 0.0
        for (b, v) in positives:
            total += math.log(math.exp(float(zi @ features[b, v].double()) / temperature) / denom)
        per_anchor.append(-(temperature / base_temperature) * total / len(positives))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def random_features(batch, views, dim=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("temperature,base", [(0.07, 0.07), (0.5, 0.07), (0.2, 1.0)])
def test_supervised_matches_explicit_formula(views, mode, temperature, base):
    features = random_features(6, views, seed=views)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    loss = SupConLoss(temperature, base, mode)(features, labels)
    expected = explicit_supcon(features, labels.tolist(), temperature, base, mode)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("mode", ["all", "one"])
def test_unsupervised_simclr_matches_explicit_formula(views, mode):
    features = random_features(4, views, seed=10 + views)
    loss = SupConLoss(0.3, 0.07, mode)(features)
    assert loss.item() == pytest.approx(explicit_supcon(features, None, 0.3, 0.07, mode), rel=1e-9)


def test_labels_none_equals_unique_labels():
    features = random_features(5, 2, seed=3)
    loss = SupConLoss(0.1)
    assert loss(features).item() == pytest.approx(loss(features, torch.arange(5)).item(), rel=1e-12)


def test_anchors_without_positive_are_left_out_and_gradient_finite():
    # one view; labels 3 and 4 are unique, so those anchors have no positive
    features = random_features(5, 1, seed=4).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 3, 4])  # label 1 too is unique
    loss = SupConLoss(0.1, 0.07)(features, labels)
    expected = explicit_supcon(features.detach(), labels.tolist(), 0.1, 0.07, "all")
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    # a lone anchor still acts as a negative for the others (it enters their denominators)
    assert features.grad[3].abs().sum() > 0


@pytest.mark.parametrize("batch,labels", [(4, [0, 1, 2, 3]), (1, [2]), (1, None)])
def test_no_positive_anywhere_gives_zero_loss_zero_gradient(batch, labels):
    features = random_features(batch, 1, seed=5).requires_grad_(True)
    lab = None if labels is None else torch.tensor(labels)
    loss = SupConLoss()(features, lab)
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and torch.equal(features.grad, torch.zeros_like(features))


def test_stable_with_tiny_temperature_and_gradient_finite():
    features = random_features(8, 2, seed=6).float().requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = SupConLoss(temperature=1e-3, base_temperature=0.07)(features, labels)  # exp(1000) would overflow
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_identical_positive_views_lower_the_loss():
    base = random_features(4, 1, seed=7)
    aligned = torch.cat([base, base], dim=1)  # the two views agree
    shuffled = torch.cat([base, base[torch.tensor([1, 2, 3, 0])]], dim=1)  # views disagree
    loss = SupConLoss(0.1)
    assert loss(aligned) < loss(shuffled)


@pytest.mark.parametrize("temperature,base", [(0.07, 0.07), (0.2, 0.07)])
def test_uninformative_value_is_the_loss_of_identical_projections(temperature, base):
    loss = SupConLoss(temperature=temperature, base_temperature=base)
    same = F.normalize(torch.randn(1, 1, 16), dim=2).expand(12, 2, 16)  # 24 identical views
    labels = torch.tensor([0, 1, 2, 3] * 3)
    expected = loss.uninformative_value(24)
    assert expected == pytest.approx(temperature / base * math.log(23))
    assert float(loss(same, labels)) == pytest.approx(expected, rel=1e-5)
    # any grade structure in the projections brings the loss below it
    spread = F.normalize(same + 0.5 * F.one_hot(labels, 16).float()[:, None, :], dim=2)
    assert float(loss(spread, labels)) < expected
    with pytest.raises(ValueError):
        loss.uninformative_value(1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(contrast_mode="some")
    with pytest.raises(ValueError, match=r"\[batch, views, dim\]"):
        SupConLoss()(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="labels"):
        SupConLoss()(torch.zeros(4, 2, 8), torch.tensor([0, 1]))


def test_projection_similarity_means_by_pair_kind():
    from vfnb.models.losses import ProjectionSimilarity

    # vertebrae 0 and 1 share grade 0, vertebra 2 is grade 1; two views each, unit vectors in 2-D
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = torch.tensor([0.6, 0.8])
    features = torch.stack([torch.stack([e0, e0]), torch.stack([e0, diag]), torch.stack([e1, e1])])
    stats = ProjectionSimilarity()
    stats.add(features, torch.tensor([0, 0, 1]))
    means = stats.means()
    # own view: (1 + 1 + 0.6 + 0.6 + 1 + 1) / 6 ordered pairs
    assert means["proj_cos_own_view"] == pytest.approx((2 + 1.2 + 2) / 6)
    # same grade, other vertebra: views of 0 (e0, e0) against views of 1 (e0, diag), both orders
    assert means["proj_cos_same_grade"] == pytest.approx(2 * (1 + 0.6 + 1 + 0.6) / 8)
    # other grade: (e0, e0, e0, diag) against (e1, e1), both orders
    assert means["proj_cos_other_grade"] == pytest.approx(2 * 2 * (0 + 0 + 0 + 0.8) / 16)
    # a second batch is pooled with the first; a kind never seen stays None
    stats.add(features[:1], torch.tensor([3]))
    assert stats.means()["proj_cos_own_view"] == pytest.approx((2 + 1.2 + 2 + 2) / 8)
    assert ProjectionSimilarity().means()["proj_cos_other_grade"] is None
