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

Checkpoints are plain dicts, loadable with ``torch.load(weights_only=True)``:
``{"format": "vfnb", "version": 2, "model_args": ..., "input": {"cube_size",
"patch_size", "channels"}, "model": state_dict, **extra}``. Version 1 (without
``input``) still loads: its sizes come from its training ``params`` (``cube_size``;
the patch size was not recorded, so the cube size stands for it). The study's
released checkpoints carry no sizes: they get the study's, 128 and 128 (STUDY §1.2,
§1.3).
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import BACKBONES, HEADS
from .data.channels import INPUT_CHANNELS
from .errors import CheckpointError
from .io import atomic_torch_save
from .levels import NUM_GRADES

CHECKPOINT_FORMAT = "vfnb"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: written before checkpoints carried their input block
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


class GradingModel(nn.Module):
    """Encoder + projection head + grade classifier.

    ``model(x)`` with ``x`` ``[B, C, X, Y, Z]`` (C = 3 input channels, voxels in
    [0, 1]) returns ``(logits [B, num_grades], projected [B, feature_dim])`` where
    ``projected`` is L2-normalised. With ``detach_classifier=True`` the classifier
    sees ``feature.detach()``: cross-entropy then trains only the classifier and the
    encoder learns from the contrastive loss alone (the paper's joint recipe).

    ``input_spec``: the :class:`ModelInput` the model was trained for; set by training
    and by the checkpoint loaders, None for a network fresh from :func:`build_model`.
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
        self.classifier = nn.Linear(num_features, num_grades)
        self.model_args = dict(model_args)
        self.input_spec: ModelInput | None = None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder feature ``[B, F]`` (F = :attr:`num_features`)."""
        return self.encoder(x)

    def project(self, feature: torch.Tensor) -> torch.Tensor:
        """Pooled feature ``[B, F]`` -> L2-normalised projection ``[B, feature_dim]``."""
        return F.normalize(self.head(feature), dim=1)

    def forward(self, x: torch.Tensor, detach_classifier: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.embed(x)
        logits = self.classifier(feature.detach() if detach_classifier else feature)
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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else as ``torch.device``.

    Raises :class:`vfnb.errors.VfnbError` for a malformed name or a CUDA device this
    machine does not have.
    """
    from .errors import VfnbError

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


# ------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Torch (CPU and CUDA), NumPy global and Python ``random`` states as plain data.

    Everything is a tensor, int, float, str, list or dict, so it survives
    ``torch.load(weights_only=True)``; :func:`set_rng_state` restores it.
    """
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": [int(v) for v in py_internal],
                   "gauss_next": None if py_gauss is None else float(py_gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore states captured by :func:`rng_state` (CUDA only if both sides have it)."""
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
    n = state["numpy"]
    keys = np.asarray(torch.as_tensor(n["keys"]).numpy(), dtype=np.uint32)
    np.random.set_state((n["bit_generator"], keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.as_tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra) -> Path:
    """Write ``{"format", "version", "model_args", "input", "model": state_dict, **extra}`` atomically.

    ``model`` may be wrapped (DistributedDataParallel, ``torch.compile``); the
    unwrapped module's state dict is stored, and its ``input_spec`` (a
    :class:`ModelInput`, required: a checkpoint says what it takes) as ``input``.
    ``extra`` (optimizer/scheduler state, epoch, params, history, :func:`rng_state`)
    must be tensors, numbers, strings, ``None``, lists/tuples and dicts, so the file
    loads with ``weights_only=True``.
    """
    inner = unwrap_model(model)
    if not isinstance(inner, GradingModel):
        raise TypeError(f"save_checkpoint expects a GradingModel, got {type(inner).__name__}")
    if not isinstance(inner.input_spec, ModelInput):
        raise TypeError("save_checkpoint needs model.input_spec, a ModelInput (cube size, patch size, channels): "
                        "a checkpoint must say what input it takes")
    reserved = {"format", "version", "model_args", "input", "model"} & set(extra)
    if reserved:
        raise ValueError(f"extra keys {sorted(reserved)} are reserved")
    for key, value in extra.items():
        _check_plain(value, f"extra[{key!r}]")
    obj = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_args": dict(inner.model_args),
           "input": inner.input_spec.as_dict(),
           "model": {k: v.detach().cpu() for k, v in inner.state_dict().items()}, **extra}
    return atomic_torch_save(obj, path)


_PLAIN_LEAVES = (torch.Tensor, bool, int, float, str, type(None), torch.dtype, torch.device, torch.Size)
_PLAIN_MAPPINGS = (dict, OrderedDict, Counter)  # Counter: MultiStepLR's milestones


def _check_plain(obj: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at load time."""
    # numpy scalars subclass float/int but pickle as numpy objects: refuse them here
    if isinstance(obj, _PLAIN_LEAVES) and not isinstance(obj, np.generic):
        return
    if type(obj) in _PLAIN_MAPPINGS:
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; expected str or int keys")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if type(obj) in (list, tuple):
        for index, value in enumerate(obj):
            _check_plain(value, f"{where}[{index}]")
        return
    hint = " (convert with .item() / .tolist())" if isinstance(obj, (np.generic, np.ndarray)) else ""
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}{hint}; a checkpoint holds only "
                    "tensors, numbers, strings, None, lists and dicts so that it loads with weights_only=True")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model


def load_checkpoint_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Read a checkpoint file safely (``weights_only=True``) and return the whole dict.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated or
    corrupt, holds anything but tensors and plain containers, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported operand" in str(exc):  # bytes that are not a pickle program at all
            raise CheckpointError(f"{path}: cannot read checkpoint (not a valid pickle stream); "
                                  "the file is truncated, corrupt or not a PyTorch checkpoint") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: the checkpoint holds objects other than tensors and plain "
            f"containers (numbers, strings, lists, dicts){what}; unpickling those could run code. "
            "Re-save it as a plain dict of tensors"
        ) from None
    except Exception as exc:  # torch raises assorted types (RuntimeError, EOFError, KeyError, ...) for damaged files
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({_first_sentence(exc)}); "
            "the file is truncated, corrupt or not a PyTorch checkpoint"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}; expected a dict")
    return obj


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> GradingModel:
    """Load a vfnb checkpoint or one of the study's released checkpoints; eval mode.

    Released format (STUDY §1.7): ``{"g_step", "state_dict", "optimizer", "scheduler"}``
    whose ``state_dict`` keys are ``module.`` + MONAI SEResNet50 names, ``module.head.*``
    (Linear 2048 -> 128) and ``module.last_linear.*`` (2048 -> 4). A bare state dict of
    that form (with or without ``module.``) is accepted too.
    """
    ckpt = load_checkpoint_dict(path, map_location=map_location)
    return model_from_checkpoint(ckpt, path)


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike = "<checkpoint>") -> GradingModel:
    """Build the model a checkpoint dict describes and load its weights (eval mode, ``input_spec`` set)."""
    spec = checkpoint_input(ckpt, path)
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        for field in ("model_args", "model"):
            if not isinstance(ckpt.get(field), dict):
                raise CheckpointError(f"{path}: field {field!r} missing or not a dict")
        try:
            model = build_model(**ckpt["model_args"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: field 'model_args' cannot rebuild the model ({exc})") from None
        state = ckpt["model"]
    else:
        state = ckpt.get("state_dict", ckpt)
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"{path}: not a vfnb checkpoint (no 'format': 'vfnb') and no 'state_dict' of tensors "
                "as in the study's released checkpoints; expected one of the two"
            )
        model, state = _released_model(state, path)
    _load_state(model, state, path)
    model.input_spec = spec
    return model.eval()


def checkpoint_input(ckpt: dict | str | os.PathLike, path: str | os.PathLike = "<checkpoint>") -> ModelInput:
    """The :class:`ModelInput` of a checkpoint (a loaded dict, or a file path).

    Version 2: its ``input`` block. Version 1: ``params["cube_size"]`` for both sizes
    (the patch size was not recorded; 128 when the params lack it too). A released
    checkpoint: :data:`RELEASED_INPUT`. Raises :class:`CheckpointError` naming the
    field when a size is out of range or the channels are not the ones vfnb makes.
    """
    if not isinstance(ckpt, dict):
        path, ckpt = ckpt, load_checkpoint_dict(ckpt)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        return RELEASED_INPUT
    version = ckpt.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: field 'version' is {version!r}; this vfnb reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
    if version >= 2:
        return ModelInput.from_dict(ckpt.get("input"), str(path))
    params = ckpt.get("params") if isinstance(ckpt.get("params"), dict) else {}
    cube = params.get("cube_size", RELEASED_INPUT.cube_size)
    cube = _input_size(cube, f"{path}: field 'params.cube_size' (a version 1 checkpoint)", 8)
    return ModelInput(cube_size=cube, patch_size=cube)


def _released_model(state: dict, path) -> tuple[GradingModel, dict]:
    """Map a released (DDP-wrapped SEResNet50 + head + last_linear) state dict to vfnb names."""
    prefix = "module." if all(k.startswith("module.") for k in state) else ""
    mapped = {}
    for key, value in state.items():
        name = key[len(prefix):]
        if name.startswith("last_linear."):
            mapped["classifier." + name[len("last_linear."):]] = value
        elif name.startswith("head."):
            mapped[name] = value
        else:
            mapped["encoder." + name] = value
    for needed in ("encoder.layer0.conv1.weight", "head.weight", "classifier.weight"):
        if needed not in mapped:
            original = prefix + {"encoder.layer0.conv1.weight": "layer0.conv1.weight", "head.weight": "head.weight",
                                 "classifier.weight": "last_linear.weight"}[needed]
            raise CheckpointError(
                f"{path}: released-format state dict lacks {original!r}; expected MONAI SEResNet50 weights "
                "with 'head.*' and 'last_linear.*' (STUDY §1.7)"
            )
    if mapped["head.weight"].dim() != 2 or mapped["head.weight"].shape[1] != mapped["classifier.weight"].shape[1]:
        raise CheckpointError(f"{path}: 'head.weight' {tuple(mapped['head.weight'].shape)} is not a Linear on the "
                              f"pooled feature of size {mapped['classifier.weight'].shape[1]}")
    model = build_model(backbone="seresnet50", in_channels=int(mapped["encoder.layer0.conv1.weight"].shape[1]),
                        num_grades=int(mapped["classifier.weight"].shape[0]), head="linear",
                        feature_dim=int(mapped["head.weight"].shape[0]))
    return model, mapped


def _load_state(model: GradingModel, state: dict, path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(f"{path}: weights do not match the {model.model_args.get('backbone')} model: "
                              + "; ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise CheckpointError(f"{path}: weight shapes do not match the model: {_few(bad)}")
    # NaN/Inf weights give NaN probabilities and argmax 0 everywhere: a silent "all normal"
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{path}: weights {_few(broken)} hold NaN or infinite values; expected finite "
                              "weights (the training that wrote it diverged, or the file was damaged)")
    model.load_state_dict(state, strict=True)


def _few(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
