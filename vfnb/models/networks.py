"""Networks and checkpoints (STUDY §1.5, 1.7).

A :class:`GradingModel` is an encoder (3D CNN from MONAI, global average pooled to a
``F``-d feature), a projection head (``F -> 128``, L2-normalised; the SupCon loss
acts on it) and a linear classifier (``F -> 4`` Genant grades) on the pooled feature.

Parameter names: ``encoder.*`` (the MONAI network's own names), ``head.*``,
``classifier.*``. The study's released checkpoints (MONAI ``SEResNet50`` subclass
with an added ``head`` and MONAI's own ``last_linear`` as the classifier, wrapped in
DistributedDataParallel, so every key starts with ``module.``) are mapped onto these
names when loading: ``module.last_linear.* -> classifier.*``, ``module.head.* ->
head.*``, every other ``module.X -> encoder.X``.

Backbones (``build_model(backbone=...)``):

- ``seresnet50``: the paper's encoder, MONAI ``SEResNet50(spatial_dims=3)``;
  its ``features()`` then adaptive average pooling give a 2048-d feature.
- ``resnet10``: a light MONAI ``ResNet`` (basic blocks, layers 1-1-1-1, first
  convolution 3^3 with stride 2 and **no max-pooling**, widths 8-16-32-64) giving a
  64-d feature, light enough for a CPU. The 3^3 first kernel (MONAI's default is
  7^3) is for speed: on a CPU the backward pass of a 7^3 stem dominates the step.
  Max-pooling is left out because the grade lives in fine detail: a mild fracture
  is a 20-25 % height loss, 3-4 voxels of a body about 15 voxels tall at 48^3, and
  a stem that downsamples 4x (stride 2 + max-pool) leaves less than a cell of it;
  halving the widths pays for the finer grid. ``block_inplanes``,
  ``conv1_t_stride``, ``conv1_t_size``, ``layers`` and ``no_max_pool`` can be
  overridden through ``build_model(**kw)``.
- ``resnet18``: MONAI ``ResNet`` basic blocks 2-2-2-2, widths 64-128-256-512 (512-d).

What a model takes as input is part of it: :class:`ModelInput` (the cube edge, the
in-plane size the patches were pre-processed at, and the input channels) rides on
``model.input_spec`` and in every checkpoint, so a checkpoint is always used at
the size it was trained at, whoever loads it.

Checkpoint files are :mod:`vfnb.models.checkpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .choices import BACKBONES, HEADS
from ..data.channels import INPUT_CHANNELS
from ..errors import CheckpointError, ParamsError
from ..levels import NUM_GRADES

MAX_INPUT_SIZE = 512  # voxels: 512^3 float32 is already 0.5 GB per input channel


@dataclass(frozen=True)
class ModelInput:
    """What a model takes: ``channels`` in ``cube_size^3`` cubes cut from patches pre-processed at ``patch_size``.

    ``cube_size``: the network's input cube edge (voxels); ``patch_size``: the in-plane
    size (voxels) scans are pre-processed to before the patch is resized to the cube
    (:func:`vfnb.data.preprocess.extract_patches`); ``channels``: the input channels in
    words (:data:`vfnb.data.channels.INPUT_CHANNELS`).
    """

    cube_size: int
    patch_size: int
    channels: tuple = INPUT_CHANNELS

    def as_dict(self) -> dict:
        return {"cube_size": int(self.cube_size), "patch_size": int(self.patch_size), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, block: Any, where: str) -> "ModelInput":
        """Read a checkpoint's ``input`` block; :class:`CheckpointError` names the field and what was expected."""
        if not isinstance(block, dict):
            raise CheckpointError(f"{where}: field 'input' missing or not a dict; expected cube_size, patch_size, "
                                  "channels")
        sizes = {key: _input_size(block.get(key), f"{where}: field 'input.{key}'", low)
                 for key, low in (("cube_size", 8), ("patch_size", 2))}
        channels = tuple(block.get("channels") or ())
        if channels != INPUT_CHANNELS:
            raise CheckpointError(f"{where}: field 'input.channels' = {list(channels)}; this vfnb makes the input "
                                  f"channels {list(INPUT_CHANNELS)}, so it cannot feed this model")
        return cls(sizes["cube_size"], sizes["patch_size"], channels)


# The study's released checkpoints carry no sizes: patches of 128 in plane, 128^3 cubes (STUDY §1.2, §1.3)
RELEASED_INPUT = ModelInput(cube_size=128, patch_size=128)


def _input_size(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or value != int(value) or not low <= value <= MAX_INPUT_SIZE:
        raise CheckpointError(f"{what} = {value!r} is not valid; expected an integer {low}-{MAX_INPUT_SIZE} voxels")
    return int(value)

_RESNET_PRESETS: dict[str, dict[str, Any]] = {
    "resnet10": dict(layers=[1, 1, 1, 1], block_inplanes=[8, 16, 32, 64], conv1_t_size=3, conv1_t_stride=2,
                     no_max_pool=True),
    "resnet18": dict(layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512], conv1_t_size=7, conv1_t_stride=2,
                     no_max_pool=False),
}


def _build_encoder(backbone: str, in_channels: int, num_grades: int, backbone_kwargs: dict) -> tuple[nn.Module, int]:
    """Return ``(encoder, feature_dim)``; the encoder maps ``[B, C, X, Y, Z]`` to ``[B, F]``."""
    if backbone == "seresnet50":
        from monai.networks.nets import SEResNet50

        net = SEResNet50(spatial_dims=3, in_channels=in_channels, num_classes=num_grades, **backbone_kwargs)
        num_features = net.last_linear.in_features
        # MONAI's own forward is features() -> adaptive average pool -> (dropout) -> flatten
        # -> last_linear; with last_linear an identity it returns the pooled [B, 2048]
        # feature. The grade classifier lives in GradingModel.classifier instead.
        net.last_linear = nn.Identity()
        return net, num_features
    if backbone in _RESNET_PRESETS:
        from monai.networks.nets import ResNet

        cfg = {**_RESNET_PRESETS[backbone], **backbone_kwargs}
        # feed_forward=False: MONAI's ResNet then returns its pooled, flattened feature
        net = ResNet(block="basic", spatial_dims=3, n_input_channels=in_channels, feed_forward=False, **cfg)
        return net, int(net.in_planes)
    raise ValueError(f"backbone {backbone!r} unknown; expected one of {', '.join(BACKBONES)}")


class FeatureStandardization(nn.Module):
    """A fixed ``(feature - mean) / scale`` in front of the grade classifier (buffers, never trained).

    The pooled features of a trained encoder have means of about twice their spread, so SGD
    on a classifier that reads them raw steps in a badly conditioned space: the logistic
    regression it starts from is undone within an epoch at any learning rate. Standardised
    with the training features' statistics (set when the classifier starts from the probe),
    the classifier trains where the probe was fitted. The identity by default, so a model
    without a fitted probe (and every checkpoint written before this layer existed) computes
    exactly what it did.
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return (feature - self.mean) / self.scale


class GradingModel(nn.Module):
    """Encoder + projection head + grade classifier.

    ``model(x)`` with ``x`` ``[B, C, X, Y, Z]`` (C = 3 input channels, voxels in
    [0, 1]) returns ``(logits [B, num_grades], projected [B, feature_dim])`` where
    ``projected`` is L2-normalised. With ``detach_classifier=True`` the classifier
    sees ``feature.detach()``: cross-entropy then trains only the classifier and the
    encoder learns from the contrastive loss alone (the paper's joint recipe).

    ``input_spec``: the :class:`ModelInput` the model was trained for; set by training
    and by the checkpoint loaders, None for a network fresh from :func:`build_model`.
    ``origin``: the :class:`vfnb.models.origin.CheckpointOrigin` of a loaded model
    (training mode, run identity, training data), None otherwise.
    """

    def __init__(self, encoder: nn.Module, num_features: int, num_grades: int, head: str, feature_dim: int,
                 model_args: dict):
        super().__init__()
        self.encoder = encoder
        self.num_features = int(num_features)
        if head == "linear":
            self.head = nn.Linear(num_features, feature_dim)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(num_features, num_features), nn.ReLU(inplace=True),
                                      nn.Linear(num_features, feature_dim))
        else:
            raise ValueError(f"head {head!r} unknown; expected one of {', '.join(HEADS)}")
        self.feature_norm = FeatureStandardization(num_features)
        self.classifier = nn.Linear(num_features, num_grades)
        self.model_args = dict(model_args)
        self.input_spec: ModelInput | None = None
        self.origin = None  # a CheckpointOrigin once loaded from a checkpoint

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder feature ``[B, F]`` (F = :attr:`num_features`)."""
        return self.encoder(x)

    def grade_logits(self, feature: torch.Tensor) -> torch.Tensor:
        """Pooled feature ``[B, F]`` -> grade logits ``[B, num_grades]`` (standardised, then the classifier)."""
        return self.classifier(self.feature_norm(feature))

    def project(self, feature: torch.Tensor) -> torch.Tensor:
        """Pooled feature ``[B, F]`` -> L2-normalised projection ``[B, feature_dim]``."""
        return F.normalize(self.head(feature), dim=1)

    def forward(self, x: torch.Tensor, detach_classifier: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.embed(x)
        logits = self.grade_logits(feature.detach() if detach_classifier else feature)
        return logits, self.project(feature)


def build_model(backbone: str = "resnet10", in_channels: int = 3, num_grades: int = NUM_GRADES,
                head: str = "linear", feature_dim: int = 128, **backbone_kwargs) -> GradingModel:
    """Build a :class:`GradingModel`; ``backbone_kwargs`` go to the MONAI network.

    ``model.model_args`` records every argument, so ``build_model(**model.model_args)``
    rebuilds the same architecture.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone {backbone!r} unknown; expected one of {', '.join(BACKBONES)}")
    if head not in HEADS:
        raise ValueError(f"head {head!r} unknown; expected one of {', '.join(HEADS)}")
    backbone_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in backbone_kwargs.items()}
    # record the preset's values too, so a checkpoint rebuilds the same network even if a preset changes
    backbone_kwargs = {**_RESNET_PRESETS.get(backbone, {}), **backbone_kwargs}
    encoder, num_features = _build_encoder(backbone, int(in_channels), int(num_grades), backbone_kwargs)
    model_args = dict(backbone=backbone, in_channels=int(in_channels), num_grades=int(num_grades), head=head,
                      feature_dim=int(feature_dim), **backbone_kwargs)
    return GradingModel(encoder, num_features, int(num_grades), head, int(feature_dim), model_args)


def network_for(config: Any) -> GradingModel:
    """The one factory of a fresh network from settings: seeded, then :func:`build_model`.

    ``config``: anything holding the network's settings (``backbone``, ``head``,
    ``feature_dim``, ``backbone_kwargs``, ``seed``) as keys or attributes: a
    :class:`~vfnb.training.config.TrainConfig`, the study's ``TrainingSettings`` or a
    mapping; a missing one takes :func:`build_model`'s default (no seeding without a
    ``seed``). Training (:func:`vfnb.training.engine.build_network`) and the study's
    untrained reference (:func:`vfnb.study.training.initial_model`) both build through
    here, so the network a run starts from and the one the study shows as "before
    training" are the same. Raises :class:`ParamsError` naming ``backbone_kwargs``
    when MONAI refuses them.
    """
    def get(key, default=None):
        return config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)

    if get("seed") is not None:
        torch.manual_seed(int(get("seed")))
    backbone, kwargs = get("backbone", "resnet10"), dict(get("backbone_kwargs") or {})
    try:
        return build_model(backbone, in_channels=len(INPUT_CHANNELS), head=get("head", "linear"),
                           feature_dim=get("feature_dim", 128), **kwargs)
    except (TypeError, ValueError, RuntimeError, IndexError, AssertionError) as exc:
        raise ParamsError(f"parameter 'backbone_kwargs' {kwargs!r} cannot build the "
                          f"{backbone} encoder ({type(exc).__name__}: {exc})") from None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else as ``torch.device``.

    Raises :class:`vfnb.errors.VfnbError` for a malformed name or a CUDA device this
    machine does not have.
    """
    from ..errors import VfnbError

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise VfnbError(f"device {device!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            have = f"devices cuda:0 .. cuda:{count - 1}" if count else "no CUDA device"
            raise VfnbError(f"device {device!r} is not available: this machine has {have}; "
                            "expected auto, cpu or one of those")
    elif dev.type not in ("cpu", "mps"):
        raise VfnbError(f"device {device!r} is not supported; expected auto, cpu, cuda or cuda:N")
    return dev

def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model
