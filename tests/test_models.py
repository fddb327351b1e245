"""Models: shapes, detach semantics, checkpoints (vfnb and the study's released format)."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SEResNet50
from torch import nn

from vfnb.data.channels import INPUT_CHANNELS
from vfnb.errors import CheckpointError
from vfnb.models.networks import RELEASED_INPUT, ModelInput, build_model
from vfnb.models.checkpoints import checkpoint_input, load_checkpoint, load_checkpoint_dict, rng_state, save_checkpoint, set_rng_state

FEATURES = {"resnet10": 64, "resnet18": 512, "seresnet50": 2048}


def sized(model, cube_size=16, patch_size=24):
    """``model`` with the input block a training run gives it (a checkpoint must carry one)."""
    model.input_spec = ModelInput(cube_size=cube_size, patch_size=patch_size)
    return model


@pytest.fixture(scope="module")
def seresnet():
    torch.manual_seed(0)
    return build_model("seresnet50")


@pytest.mark.parametrize("backbone", ["resnet10", "resnet18", "seresnet50"])
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_output_shapes(backbone, head):
    torch.manual_seed(0)
    model = build_model(backbone, head=head).eval()
    for size in (16, 24):
        x = torch.rand(2, 3, size, size, size)
        with torch.no_grad():
            logits, projected = model(x)
            feature = model.embed(x)
        assert logits.shape == (2, 4)
        assert projected.shape == (2, 128)
        assert feature.shape == (2, FEATURES[backbone]) == (2, model.num_features)
        assert torch.allclose(projected.norm(dim=1), torch.ones(2), atol=1e-5)


def test_names_and_model_args_rebuild():
    model = build_model("resnet10", head="mlp", feature_dim=64, num_grades=3, block_inplanes=(8, 16, 32, 32))
    names = list(model.state_dict())
    assert all(k.split(".")[0] in ("encoder", "head", "feature_norm", "classifier") for k in names)
    assert model.classifier.weight.shape == (3, 32) and model.num_features == 32
    rebuilt = build_model(**model.model_args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="backbone"):
        build_model("vgg")
    with pytest.raises(ValueError, match="head"):
        build_model(head="conv")


def test_seresnet50_has_no_stray_last_linear(seresnet):
    assert not any("last_linear" in k for k in seresnet.state_dict())
    assert seresnet.classifier.weight.shape == (4, 2048) and seresnet.head.weight.shape == (128, 2048)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_classifier_keeps_ce_out_of_the_encoder(detach):
    torch.manual_seed(1)
    model = build_model("resnet10").train()
    logits, projected = model(torch.rand(4, 3, 16, 16, 16), detach_classifier=detach)
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    encoder_grad = sum(p.grad.abs().sum().item() for p in model.encoder.parameters() if p.grad is not None)
    assert model.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.head.parameters())
    if detach:
        assert encoder_grad == 0.0
    else:
        assert encoder_grad > 0.0


def test_detached_forward_gives_the_same_values():
    torch.manual_seed(2)
    model = build_model("resnet10").eval()
    x = torch.rand(2, 3, 16, 16, 16)
    a, b = model(x), model(x, detach_classifier=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ------------------------------------------------------------------ vfnb checkpoints
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = sized(build_model("resnet10", head="mlp", block_inplanes=[8, 16, 32, 64]), cube_size=20, patch_size=40)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [800, 900], 0.1)
    model.train()
    logits, _ = model(torch.rand(4, 3, 16, 16, 16))
    logits.sum().backward()
    opt.step(); sched.step()  # noqa: E702
    path = save_checkpoint(tmp_path / "run" / "last.pt", model, optimizer=opt.state_dict(),
                           scheduler=sched.state_dict(), epoch=7, params={"mode": "supcon", "lr": 0.01},
                           history=[{"epoch": 0, "loss": 1.5}], rng=rng_state())
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left
    ckpt = torch.load(path, weights_only=True)  # the whole file is plain data
    assert ckpt["format"] == "vfnb" and ckpt["version"] == 2 and ckpt["epoch"] == 7
    assert ckpt["model_args"]["block_inplanes"] == [8, 16, 32, 64]
    assert ckpt["input"] == {"cube_size": 20, "patch_size": 40, "channels": list(INPUT_CHANNELS)}

    loaded = load_checkpoint(path)
    assert not loaded.training and loaded.input_spec == ModelInput(20, 40) == checkpoint_input(path)
    model.eval()
    x = torch.rand(3, 3, 20, 20, 20)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            assert torch.equal(a, b)
    full = load_checkpoint_dict(path)
    opt2 = torch.optim.SGD(loaded.parameters(), lr=0.01, momentum=0.9)
    opt2.load_state_dict(full["optimizer"])
    assert full["history"] == [{"epoch": 0, "loss": 1.5}] and full["params"]["mode"] == "supcon"


def test_save_unwraps_dataparallel(tmp_path):
    model = sized(build_model("resnet10"))
    path = save_checkpoint(tmp_path / "w.pt", nn.DataParallel(model))
    assert all(not k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])
    load_checkpoint(path)


def test_rng_state_round_trip_through_checkpoint(tmp_path):
    torch.manual_seed(11); np.random.seed(11); random.seed(11)  # noqa: E702
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)
    save_checkpoint(tmp_path / "r.pt", sized(build_model("resnet10", block_inplanes=[4, 4, 4, 4])), rng=rng_state())
    first = (torch.rand(5), np.random.rand(5), np.random.standard_normal(), [random.random() for _ in range(5)],
             random.gauss(0, 1))
    torch.manual_seed(99); np.random.seed(99); random.seed(99)  # noqa: E702
    set_rng_state(load_checkpoint_dict(tmp_path / "r.pt")["rng"])
    second = (torch.rand(5), np.random.rand(5), np.random.standard_normal(), [random.random() for _ in range(5)],
              random.gauss(0, 1))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]


# ------------------------------------------------------------------ the study's released format
class PaperModel(SEResNet50):
    """Built like the original study's network (STUDY §1.5/1.7): MONAI SEResNet50
    with 4 outputs (its own ``last_linear`` is the grade classifier) plus a ``head``."""

    def __init__(self):
        super().__init__(spatial_dims=3, in_channels=3, num_classes=4)
        self.head = nn.Linear(2048, 128)


def _randomise(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.01)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    torch.manual_seed(4)
    paper = PaperModel()
    _randomise(paper)
    opt = torch.optim.SGD(paper.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [800, 900], 0.1)
    # the DistributedDataParallel wrapper prefixes every key with "module."
    state = {"module." + k: v for k, v in paper.state_dict().items()}
    path = tmp_path_factory.mktemp("released") / "released.tar"
    torch.save({"g_step": 12345, "state_dict": state, "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict()}, path)
    return paper.eval(), path


def test_released_checkpoint_keys_are_as_documented(released):
    _, path = released
    keys = set(torch.load(path, weights_only=True)["state_dict"])
    assert {"module.head.weight", "module.head.bias", "module.last_linear.weight", "module.last_linear.bias",
            "module.layer0.conv1.weight"} <= keys
    assert all(k.startswith("module.") for k in keys)


def test_released_checkpoint_gives_monai_outputs(released):
    paper, path = released
    model = load_checkpoint(path)
    assert not model.training and model.model_args["backbone"] == "seresnet50"
    # released checkpoints carry no sizes: the study's (STUDY 1.2, 1.3)
    assert model.input_spec == RELEASED_INPUT == ModelInput(128, 128) == checkpoint_input(path)
    reference = SEResNet50(spatial_dims=3, in_channels=3, num_classes=4)
    reference.load_state_dict({k: v for k, v in paper.state_dict().items() if not k.startswith("head.")})
    reference.eval()
    x = torch.rand(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits, projected = model(x)
        expected_logits = reference(x)
        pooled = torch.flatten(reference.adaptive_avg_pool(reference.features(x)), 1)
        expected_projected = F.normalize(paper.head(pooled), dim=1)
    assert torch.allclose(logits, expected_logits, atol=1e-5, rtol=1e-5)
    assert torch.allclose(projected, expected_projected, atol=1e-5)
    assert logits.abs().max() > 1e-3  # not trivially zero


def test_released_state_dict_without_wrapper_also_loads(released, tmp_path):
    paper, _ = released
    path = tmp_path / "bare.pt"
    torch.save(paper.state_dict(), path)
    model = load_checkpoint(path)
    assert torch.equal(model.classifier.weight, paper.last_linear.weight)
    assert torch.equal(model.state_dict()["encoder.layer4.0.conv1.conv.weight"], paper.state_dict()["layer4.0.conv1.conv.weight"])


def test_released_checkpoint_missing_key_is_named(released, tmp_path):
    _, path = released
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["module.layer3.1.conv2.adn.N.weight"]
    ckpt["state_dict"]["module.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.tar"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"bad\.tar") as err:
        load_checkpoint(bad)
    assert "encoder.layer3.1.conv2.adn.N.weight" in str(err.value) and "encoder.extra.weight" in str(err.value)


# ------------------------------------------------------------------ refusals
class NotPlainData:
    def __init__(self):
        self.payload = [1, 2, 3]


def test_pickled_custom_class_is_refused(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"format": "vfnb", "version": 1, "model": {}, "model_args": {}, "thing": NotPlainData()}, path)
    with pytest.raises(CheckpointError, match=r"custom\.pt.*refused.*NotPlainData"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"custom\.pt"):
        load_checkpoint_dict(path)


@pytest.mark.parametrize("keep", [0, 10, 0.5])
def test_truncated_file_gives_clear_error(tmp_path, keep):
    good = save_checkpoint(tmp_path / "good.pt", sized(build_model("resnet10", block_inplanes=[4, 4, 4, 4])))
    data = good.read_bytes()
    path = tmp_path / "broken.pt"
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match=r"broken\.pt: cannot read checkpoint.*truncated"):
        load_checkpoint(path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match=r"absent\.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "absent.pt")
    listing = tmp_path / "list.pt"
    torch.save([1, 2], listing)
    with pytest.raises(CheckpointError, match=r"list\.pt.*expected a dict"):
        load_checkpoint(listing)
    other = tmp_path / "other.pt"
    torch.save({"epoch": 3}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a vfnb checkpoint"):
        load_checkpoint(other)


def test_vfnb_checkpoint_field_errors(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", sized(build_model("resnet10", block_inplanes=[4, 4, 4, 4])))
    ckpt = torch.load(path, weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match=r"v\.pt: field 'version'"):
        load_checkpoint(tmp_path / "v.pt")
    ckpt["version"] = 1
    ckpt["model_args"]["head"] = "mlp"  # weights no longer match the architecture
    torch.save(ckpt, tmp_path / "h.pt")
    with pytest.raises(CheckpointError, match=r"h\.pt.*missing keys head\.0\.weight"):
        load_checkpoint(tmp_path / "h.pt")
    ckpt["model_args"] = {"backbone": "resnet10", "feature_dim": 128, "block_inplanes": [4, 4, 4, 8]}
    torch.save(ckpt, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match=r"s\.pt: weight shapes"):
        load_checkpoint(tmp_path / "s.pt")


def test_save_refuses_what_weights_only_loading_would_refuse(tmp_path):
    from pathlib import Path

    model = sized(build_model("resnet10", block_inplanes=[4, 4, 4, 4]))
    with pytest.raises(TypeError, match=r"extra\['params'\]\['data'\] is a pathlib\.\w*Path"):
        save_checkpoint(tmp_path / "p.pt", model, params={"data": Path("/x")})
    with pytest.raises(TypeError, match=r"extra\['history'\]\[0\]\['f1'\] is a numpy.float64.*\.item\(\)"):
        save_checkpoint(tmp_path / "n.pt", model, history=[{"f1": np.float64(0.5)}])
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "n.pt").exists()
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "r.pt", model, model_args={})


def test_resnet10_keeps_resolution_and_checkpoint_records_preset(tmp_path, monkeypatch):
    # the light backbone downsamples 2x in its stem (no max-pool): a 48^3 input reaches layer1 at 24^3
    model = build_model("resnet10")
    seen = {}

    def record(module, inputs, output):
        seen["shape"] = tuple(output.shape)

    model.encoder.layer1.register_forward_hook(record)
    with torch.no_grad():
        model.embed(torch.zeros(1, 3, 48, 48, 48))
    assert seen["shape"] == (1, 8, 24, 24, 24)
    assert model.model_args["no_max_pool"] is True and model.model_args["block_inplanes"] == [8, 16, 32, 64]
    # the preset is written into the checkpoint: changing it later does not change a saved model
    path = save_checkpoint(tmp_path / "r10.pt", sized(model))
    import vfnb.models.networks as models
    monkeypatch.setitem(models._RESNET_PRESETS, "resnet10", dict(layers=[1, 1, 1, 1], block_inplanes=[16, 32, 64, 128],
                                                                  conv1_t_size=3, conv1_t_stride=2, no_max_pool=False))
    loaded = load_checkpoint(path)
    assert loaded.num_features == 64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# ------------------------------------------------------------------ the input block
def test_save_refuses_a_model_without_its_input_block(tmp_path):
    with pytest.raises(TypeError, match="input_spec"):
        save_checkpoint(tmp_path / "x.pt", build_model("resnet10", block_inplanes=[4, 4, 4, 4]))
    assert not (tmp_path / "x.pt").exists()


def test_version_1_checkpoint_takes_its_sizes_from_its_params(tmp_path):
    """A checkpoint as vfnb wrote it before the input block: version 1, the sizes only in the training params."""
    model = build_model("resnet10", block_inplanes=[4, 4, 4, 4])
    old = {"format": "vfnb", "version": 1, "model_args": dict(model.model_args), "model": model.state_dict(),
           "params": {"mode": "ce", "cube_size": 32}, "epoch": 3}
    torch.save(old, tmp_path / "v1.pt")
    loaded = load_checkpoint(tmp_path / "v1.pt")
    assert loaded.input_spec == ModelInput(cube_size=32, patch_size=32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    del old["params"]
    torch.save(old, tmp_path / "bare_v1.pt")
    assert checkpoint_input(tmp_path / "bare_v1.pt") == RELEASED_INPUT  # no params at all: the study's sizes
    old["params"] = {"cube_size": 20000}
    torch.save(old, tmp_path / "huge_v1.pt")
    with pytest.raises(CheckpointError, match=r"huge_v1\.pt: field 'params.cube_size'.* = 20000.*8-512"):
        load_checkpoint(tmp_path / "huge_v1.pt")


@pytest.mark.parametrize("field, value, message", [
    ("cube_size", 4096, r"field 'input.cube_size' = 4096 is not valid; expected an integer 8-512"),
    ("patch_size", "big", r"field 'input.patch_size' = 'big' is not valid"),
    ("channels", ["soft-tissue window 40/400 HU"], r"field 'input.channels'.*cannot feed this model"),
])
def test_input_block_errors_name_the_field(tmp_path, field, value, message):
    path = save_checkpoint(tmp_path / "c.pt", sized(build_model("resnet10", block_inplanes=[4, 4, 4, 4])))
    ckpt = torch.load(path, weights_only=True)
    ckpt["input"][field] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: " + message):
        load_checkpoint(tmp_path / "bad.pt")
    del ckpt["input"]
    torch.save(ckpt, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match=r"none\.pt: field 'input' missing"):
        load_checkpoint(tmp_path / "none.pt")
