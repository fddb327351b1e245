"""Checkpoint files: writing, safe reading, the released format, RNG states (STUDY §1.7).

Checkpoints are plain dicts, loadable with ``torch.load(weights_only=True)``:
``{"format": "vfnb", "version": 2, "model_args": ..., "input": {"cube_size",
"patch_size", "channels"}, "model": state_dict, **extra}``. Version 1 (without
``input``) still loads: its sizes come from its training ``params`` (``cube_size``;
the patch size was not recorded, so the cube size stands for it). The study's
released checkpoints carry no sizes: they get the study's, 128 and 128 (STUDY §1.2,
§1.3).

The study's released checkpoints (MONAI ``SEResNet50`` subclass with an added ``head`` and
MONAI's own ``last_linear`` as the classifier, wrapped in DistributedDataParallel, so every
key starts with ``module.``) are mapped onto vfnb's names when loading:
``module.last_linear.* -> classifier.*``, ``module.head.* -> head.*``, every other
``module.X -> encoder.X``.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..io import atomic_torch_save
from ..levels import NUM_GRADES
from .networks import RELEASED_INPUT, GradingModel, ModelInput, _input_size, build_model, unwrap_model
from .origin import CheckpointOrigin

CHECKPOINT_FORMAT = "vfnb"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: written before checkpoints carried their input block


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
    """Build the model a checkpoint dict describes and load its weights (eval mode, ``input_spec`` and
    ``origin`` set: :class:`vfnb.models.origin.CheckpointOrigin`).

    A classifier with other than the four Genant grades is refused: every table,
    threshold and report of vfnb reads grades 0-3.
    """
    spec = checkpoint_input(ckpt, path)
    origin = CheckpointOrigin.from_checkpoint(ckpt, path)
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        for field in ("model_args", "model"):
            if not isinstance(ckpt.get(field), dict):
                raise CheckpointError(f"{path}: field {field!r} missing or not a dict")
        state = ckpt["model"]
        _check_size(ckpt["model_args"], state, path)
        try:
            model = build_model(**ckpt["model_args"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: field 'model_args' cannot rebuild the model ({exc})") from None
    else:
        state = ckpt.get("state_dict", ckpt)
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"{path}: not a vfnb checkpoint (no 'format': 'vfnb') and no 'state_dict' of tensors "
                "as in the study's released checkpoints; expected one of the two"
            )
        model, state = _released_model(state, path)
    _check_grades(model, path)
    _load_state(model, state, path)
    model.input_spec = spec
    model.origin = origin
    return model.eval()


#: Most residual blocks a checkpoint's ``model_args.layers`` may ask for (ResNet-200 has 66).
MAX_BLOCKS = 256
#: Parameters a rebuilt network may have beyond twice its weights before it is refused unbuilt.
SIZE_SLACK = 1_000_000


def _check_size(model_args: dict, state: dict, path) -> None:
    """Refuse ``model_args`` describing a far bigger network than the weights hold, before any memory is given to it.

    The network is first built on PyTorch's ``meta`` device (shapes only, no
    storage), so an edited ``layers`` or width cannot allocate gigabytes before
    the weights are compared.
    """
    layers = model_args.get("layers")
    if isinstance(layers, (list, tuple)) and sum(v for v in layers if isinstance(v, int)) > MAX_BLOCKS:
        raise CheckpointError(f"{path}: field 'model_args.layers' is {list(layers)[:8]}: more than {MAX_BLOCKS} "
                              "residual blocks (the deepest ResNet has 66); expected the network the weights hold")
    try:
        with torch.device("meta"):
            needed = sum(p.numel() for p in build_model(**model_args).parameters())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: field 'model_args' cannot rebuild the model ({exc})") from None
    held = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    if needed > 2 * held + SIZE_SLACK:  # near misses get the precise message of the weight check
        raise CheckpointError(f"{path}: field 'model_args' describes a network of {needed:,} parameters while its "
                              f"weights hold {held:,} values; expected the architecture the weights were saved from")


def checkpoint_identity(path: str | os.PathLike) -> str:
    """The identity operating points are matched on: the checkpoint's training ``run_id`` when it records one,
    else ``sha256:<hex>`` of the file (a released checkpoint, or one written before runs had identities)."""
    ckpt = load_checkpoint_dict(path)
    run_id = ckpt.get("run_id")
    if isinstance(run_id, str) and run_id:
        return run_id
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _check_grades(model: GradingModel, path) -> None:
    found = int(model.classifier.out_features)
    if found != NUM_GRADES:
        where = "field 'model_args.num_grades'" if "num_grades" in model.model_args else "its classifier"
        raise CheckpointError(f"{path}: {where} gives {found} grades; expected {NUM_GRADES} (Genant grades 0-3): "
                              "vfnb's tables, thresholds and reports read exactly those")


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
        spec = ModelInput.from_dict(ckpt.get("input"), str(path))
        params = ckpt.get("params") if isinstance(ckpt.get("params"), dict) else {}
        trained = params.get("cube_size")
        if isinstance(trained, int) and not isinstance(trained, bool) and trained != spec.cube_size:
            raise CheckpointError(f"{path}: field 'input.cube_size' is {spec.cube_size} but the model was trained "
                                  f"at params.cube_size {trained}; expected the two to agree (an edited checkpoint?)")
        return spec
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


# Checkpoints written before the classifier read standardised features (and the study's released
# ones) have no standardisation buffers: theirs is the identity, which the model starts with.
_FEATURE_NORM_KEYS = ("feature_norm.mean", "feature_norm.scale")


def _load_state(model: GradingModel, state: dict, path) -> None:
    expected = model.state_dict()
    if not any(k in state for k in _FEATURE_NORM_KEYS):
        state = {**state, **{k: expected[k].clone() for k in _FEATURE_NORM_KEYS}}
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
    scale = state["feature_norm.scale"]
    if not bool((scale > 0).all()):
        raise CheckpointError(f"{path}: 'feature_norm.scale' holds values <= 0; expected the positive spread of "
                              "each training feature (the file was edited or damaged)")
    model.load_state_dict(state, strict=True)


def _few(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
