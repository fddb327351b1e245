"""The linear probe's start: standardised features, regularisation chosen on validation, a calibrated loss."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from vfnb.errors import CheckpointError
from vfnb.models.checkpoints import load_checkpoint, save_checkpoint
from vfnb.models.features import (ABSENT_GRADE_BIAS, Features, balanced_cross_entropy, calibrated_probe, fit_probe,
                                  probe_as_linear)
from vfnb.models.networks import ModelInput, build_model
from vfnb.training.config import TrainConfig
from vfnb.training.engine import frozen_bn_statistics, parameter_groups, selection_for


def _features(n, seed, shift=3.0):
    """Grades 0-3 separated along one direction, on features whose means are far from zero (as pooled ReLUs are)."""
    rng = np.random.default_rng(seed)
    grades = np.arange(n) % 4
    x = rng.normal(size=(n, 6)) * 0.3 + shift
    x[:, 0] += 0.5 * grades
    return Features(np.zeros((n, 4), np.float32), x.astype(np.float32), grades)


def test_balanced_cross_entropy_weights_every_grade_alike():
    logits = np.log(np.array([[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))
    grades = np.array([0, 0, 0, 3])
    per_grade = (-np.log(0.7) + -np.log(0.7)) / 2  # grade 0's three rows count once, as grade 3's one row does
    assert balanced_cross_entropy(logits, grades) == pytest.approx(per_grade)
    # with one vertebra per grade it is the ordinary cross-entropy
    one_each = np.random.default_rng(0).normal(size=(4, 4))
    assert balanced_cross_entropy(one_each, np.arange(4)) == pytest.approx(
        log_loss(np.arange(4), torch.softmax(torch.as_tensor(one_each), 1).numpy(), labels=range(4)))
    assert balanced_cross_entropy(np.zeros((8, 4)), np.arange(8) % 4) == pytest.approx(np.log(4))  # a uniform guess


def test_probe_as_linear_reproduces_the_probe_on_standardised_features():
    train = _features(80, 0)
    probe = fit_probe("logreg", train.features, train.grades)
    linear = probe_as_linear(probe, 4)
    assert np.allclose(linear.mean, train.features.mean(0), atol=1e-5)
    assert np.allclose(linear.scale, train.features.std(0), rtol=1e-4)
    assert np.allclose(linear.logits(train.features), probe.decision_function(train.features), atol=1e-6)
    # a grade the probe never saw is never predicted
    three = probe_as_linear(fit_probe("logreg", train.features[train.grades < 3], train.grades[train.grades < 3]), 4)
    assert three.bias[3] == ABSENT_GRADE_BIAS and not (three.logits(train.features).argmax(1) == 3).any()


def test_calibrated_probe_picks_the_regularisation_with_the_lowest_validation_loss():
    train, val = _features(80, 1), _features(40, 2)
    chosen = calibrated_probe(train, val, 4, grid=(0.001, 0.1, 10.0))
    losses = {C: balanced_cross_entropy(probe_as_linear(fit_probe("logreg", train.features, train.grades, C=C), 4)
                                        .logits(val.features), val.grades) for C in (0.001, 0.1, 10.0)}
    assert chosen.C == min(losses, key=losses.get)
    assert balanced_cross_entropy(chosen.logits(val.features), val.grades) == pytest.approx(min(losses.values()))
    # without validation grades, the unregularised default
    assert calibrated_probe(train, Features(val.logits, val.features, None), 4).C == 1.0


def test_the_model_applies_the_probe_through_its_fixed_standardisation(tmp_path):
    train = _features(40, 3)
    linear = probe_as_linear(fit_probe("logreg", train.features, train.grades), 4)
    model = build_model("resnet10", block_inplanes=[4, 8, 8, 6]).eval()  # 6 pooled features, as the fixture has
    with torch.no_grad():
        model.feature_norm.mean.copy_(torch.as_tensor(linear.mean))
        model.feature_norm.scale.copy_(torch.as_tensor(linear.scale))
        model.classifier.weight.copy_(torch.as_tensor(linear.weight))
        model.classifier.bias.copy_(torch.as_tensor(linear.bias))
    logits = model.grade_logits(torch.as_tensor(train.features)).detach().numpy()
    assert np.allclose(logits, linear.logits(train.features), atol=1e-4)
    assert not any(p.requires_grad for p in model.feature_norm.buffers())  # buffers: SGD never moves them
    model.input_spec = ModelInput(16, 16)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model))
    assert torch.equal(loaded.feature_norm.scale, model.feature_norm.scale)


def test_a_checkpoint_written_before_the_standardisation_loads_as_the_identity(tmp_path):
    model = build_model("resnet10", block_inplanes=[4, 8, 8, 8]).eval()
    model.input_spec = ModelInput(16, 16)
    path = save_checkpoint(tmp_path / "old.pt", model)
    ckpt = torch.load(path, weights_only=True)
    for key in ("feature_norm.mean", "feature_norm.scale"):
        del ckpt["model"][key]
    torch.save(ckpt, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.feature_norm.mean, torch.zeros(8)) and torch.equal(loaded.feature_norm.scale, torch.ones(8))
    x = torch.rand(2, 3, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model(x)[0])
    ckpt["model"]["feature_norm.mean"], ckpt["model"]["feature_norm.scale"] = torch.zeros(8), -torch.ones(8)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="feature_norm.scale"):
        load_checkpoint(path)


def test_stage_defaults_select_by_loss_freeze_statistics_and_split_the_rates():
    start = {"init_checkpoint": "supcon/best.pt"}  # only named: the config does not open it
    linear = TrainConfig.from_params({"mode": "linear", **start})
    finetune = TrainConfig.from_params({"mode": "finetune", "encoder_lr_scale": 0.1, "lr": 0.02, **start})
    ce = TrainConfig.from_params({"mode": "ce"})
    assert selection_for(linear).key == selection_for(finetune).key == "val_loss"
    assert selection_for(linear).lower_is_better and selection_for(ce).key == "val_macro_f1"
    assert selection_for(TrainConfig.from_params({"mode": "ce", "select_by": "val_loss"})).key == "val_loss"
    assert frozen_bn_statistics(finetune) and frozen_bn_statistics(linear) and not frozen_bn_statistics(ce)
    assert not frozen_bn_statistics(TrainConfig.from_params({"mode": "finetune", "bn_statistics": "train", **start}))
    model = build_model("resnet10", block_inplanes=[4, 8, 8, 8])
    groups = parameter_groups(model, finetune)
    encoder = {id(p) for p in model.encoder.parameters()}
    assert [g.get("lr") for g in groups] == [None, pytest.approx(0.002)]
    assert all(id(p) not in encoder for p in groups[0]["params"]) and all(id(p) in encoder for p in groups[1]["params"])
    assert len(parameter_groups(model, ce)) == 1  # one rate: one group, as before the option existed
