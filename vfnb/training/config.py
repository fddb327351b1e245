"""The training configuration: every parameter of :func:`vfnb.training.engine.train` in one place.

:class:`TrainConfig` is a dataclass. Each field holds its default and, in its
metadata, a :class:`Check` (type, range or choices) and a help text; validation,
the ``vfnb train --help`` listing and the error messages are all generated from
these fields, so a parameter is declared once.

Defaults are the paper's recipe (STUDY §1.5) for everything that shapes the
optimisation (balanced epochs, SGD at 0.005 with the step schedule at epochs 800
and 900, temperature 0.07, three vertebrae per grade, two views, the paper's
augmentation), with a light network that trains on a CPU (``resnet10`` on 48^3
cubes; the paper's is ``seresnet50`` on 128^3) and a short run (30 epochs).

Values come from YAML files and ``-p KEY=VALUE`` options, read as YAML. An empty
value (``-p init_checkpoint=``) means ``null``, i.e. ``None``, for every
parameter: the same as writing ``null``.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ParamsError
from ..io import load_yaml, parse_yaml
from ..models.choices import BACKBONES, HEADS

MODES = ("supcon", "linear", "finetune", "joint", "ce")
# What vfnb.data.transforms defines (tests/test_config.py keeps them in step); listed here so that
# validating parameters and `vfnb train --help` need not import torch or MONAI.
AUGMENTATIONS = ("paper", "weak")
MAX_BACKBONE_INT = 4096  # widths, kernel sizes, layer counts: far beyond any sane 3D CNN


# ------------------------------------------------------------------ checks
class Invalid(ValueError):
    """A value a :class:`Check` refuses."""


class Check:
    """Converts an accepted value to its canonical form or raises :class:`Invalid`; ``expected`` says what is accepted."""

    expected = "a value"

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError


def _as_int(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():  # 3.0 from YAML or a JSON round trip
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid
    return value


@dataclass(frozen=True)
class Choice(Check):
    options: tuple

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.options)

    def __call__(self, value):
        if not isinstance(value, str) or value not in self.options:
            raise Invalid
        return value


@dataclass(frozen=True)
class Integer(Check):
    low: int | None = None
    high: int | None = None
    nullable: bool = False

    @property
    def expected(self) -> str:
        if self.high is not None:
            text = f"an integer {self.low}-{self.high}"
        elif self.low is not None:
            text = f"an integer >= {self.low}"
        else:
            text = "an integer"
        return text + (" or null" if self.nullable else "")

    def __call__(self, value):
        if value is None and self.nullable:
            return None
        value = _as_int(value)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise Invalid
        return value


@dataclass(frozen=True)
class Real(Check):
    low: float | None = None
    high: float | None = None  # always exclusive
    low_open: bool = False

    @property
    def expected(self) -> str:
        parts = [f"{'>' if self.low_open else '>='} {self.low:g}"] if self.low is not None else []
        parts += [f"< {self.high:g}"] if self.high is not None else []
        return "a number " + " and ".join(parts)

    def __call__(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise Invalid
        value = float(value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise Invalid
        if self.high is not None and value >= self.high:
            raise Invalid
        return value


@dataclass(frozen=True)
class Flag(Check):
    auto: bool = False  # also accept "auto"

    @property
    def expected(self) -> str:
        return "auto, true or false" if self.auto else "true or false"

    def __call__(self, value):
        if isinstance(value, bool) or (self.auto and value == "auto"):
            return value
        raise Invalid


@dataclass(frozen=True)
class Threads(Check):
    expected = "auto or an integer >= 1"

    def __call__(self, value):
        if value == "auto":
            return value
        value = _as_int(value)
        if value < 1:
            raise Invalid
        return value


@dataclass(frozen=True)
class PathValue(Check):
    nullable: bool = True

    @property
    def expected(self) -> str:
        return "a path" + (" or null" if self.nullable else "")

    def __call__(self, value):
        if value is None and self.nullable:
            return None
        if not isinstance(value, (str, os.PathLike)) or not str(value):
            raise Invalid
        return str(value)


@dataclass(frozen=True)
class Name(Check):
    expected = "a non-empty text"

    def __call__(self, value):
        if not isinstance(value, str) or not value:
            raise Invalid
        return value


@dataclass(frozen=True)
class Device(Check):
    expected = "auto, cpu, cuda or cuda:N"

    def __call__(self, value):
        if isinstance(value, str) and (value in ("auto", "cpu", "cuda")
                                       or (value.startswith("cuda:") and value[5:].isdigit())):
            return value
        raise Invalid


@dataclass(frozen=True)
class Epochs(Check):
    expected = "a list of integers >= 0"

    def __call__(self, value):
        if not isinstance(value, (list, tuple)):
            raise Invalid
        epochs = [_as_int(v) for v in value]
        if any(e < 0 for e in epochs):
            raise Invalid
        return sorted(epochs)


@dataclass(frozen=True)
class Arguments(Check):
    expected = "a mapping of argument name: value"

    def __call__(self, value):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Invalid
        return dict(value)


def param(default: Any, check: Check, help: str):  # noqa: A002 - the word argparse uses
    """A :class:`TrainConfig` field: ``default``, the ``check`` its values pass and the ``help`` shown to users."""
    metadata = {"check": check, "help": help}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ------------------------------------------------------------------ the configuration
@dataclass
class TrainConfig:
    """Every training parameter; build it with :meth:`from_params` (validated), read it as attributes."""

    mode: str = param("joint", Choice(MODES),
                      "supcon (SupCon only), linear (classifier on a frozen encoder), finetune (whole network "
                      "with CE), joint (the paper's: SupCon + CE on detached features) or ce (the baseline)")
    dataset: str | None = param(None, PathValue(), "processed dataset folder (required)")
    tag: str = param("default", Name(), "split tag: the lists <split>_file_list.<tag>.yaml")
    backbone: str = param("resnet10", Choice(BACKBONES),
                          "encoder: resnet10 (light, CPU), resnet18 or seresnet50 (the paper's)")
    backbone_kwargs: dict = param({}, Arguments(),
                                  "extra arguments of the MONAI encoder, e.g. {block_inplanes: [8, 16, 32, 64]}")
    head: str = param("linear", Choice(HEADS), "projection head: linear (the paper's) or mlp")
    feature_dim: int = param(128, Integer(1, 65536), "projection size")
    cube_size: int = param(48, Integer(8, 512), "network input cube edge in voxels (the paper's: 128)")
    batch_per_grade: int = param(3, Integer(1, 256), "vertebrae of each grade per batch (the paper's: 3)")
    epoch_mode: str = param("balanced", Choice(("balanced", "replacement")),
                            "balanced (an epoch = smallest grade / batch_per_grade batches, the paper's) or "
                            "replacement (batches_per_epoch balanced batches drawn with replacement)")
    batches_per_epoch: int | None = param(None, Integer(1, 100_000, nullable=True),
                                          "replacement mode: batches per epoch (null: as many as balanced)")
    epochs: int = param(30, Integer(1), "training epochs (the paper's: up to 5000)")
    lr: float = param(0.005, Real(0.0, low_open=True), "SGD learning rate (the paper's: 0.005)")
    momentum: float = param(0.9, Real(0.0, 1.0), "SGD momentum")
    weight_decay: float = param(1e-4, Real(0.0), "SGD weight decay")
    lr_schedule: str = param("step", Choice(("step", "cosine")),
                             "step (x lr_gamma at lr_milestones, the paper's) or cosine (annealed to 0 over epochs)")
    lr_milestones: list = param([800, 900], Epochs(), "step schedule: epochs at which lr is multiplied by lr_gamma")
    lr_gamma: float = param(0.1, Real(0.0, low_open=True), "step schedule factor")
    temperature: float = param(0.07, Real(0.0, low_open=True), "SupCon temperature")
    base_temperature: float = param(0.07, Real(0.0, low_open=True), "SupCon base temperature")
    ce_views: int = param(2, Integer(1, 2), "ce mode: views per vertebra fed to CE (1 or 2)")
    views: int = param(2, Integer(2), "augmented views drawn per vertebra (the paper's: 2)")
    augmentation: str = param("paper", Choice(AUGMENTATIONS),
                              "augmentation strength: paper, or weak (vfnb.data.transforms.AUGMENTATIONS)")
    augment_on: str = param("auto", Choice(("auto", "cpu", "device")),
                            "where views are augmented: cpu (MONAI per view in the loader workers), device or auto "
                            "(batched with torch: on a GPU in the main process, on the CPU in the loader workers)")
    warmup_epochs: int = param(0, Integer(0), "linear learning-rate warm-up, step by step, over this many epochs "
                                              "(fewer than epochs; the paper has none)")
    probe: str = param("logreg", Choice(("logreg", "knn", "none")),
                       "supcon and ce: the validation probe on pooled features, logreg, knn or none (supcon then "
                       "keeps the lowest training loss)")
    classifier_init: str = param("probe", Choice(("probe", "random")),
                                 "linear and finetune: the classifier starts from a logistic-regression fit on the "
                                 "frozen features (probe) or fresh (random)")
    encoder_lr_scale: float = param(1.0, Real(0.0, low_open=True), "finetune: the encoder's learning rate as a share of lr "
                                    "(the classifier trains at lr; 1 = one rate for the whole network)")
    bn_statistics: str = param("auto", Choice(("auto", "frozen", "train")),
                               "batch-norm statistics of the encoder: frozen (kept from init_checkpoint: the "
                               "class-balanced batches of training are not the data's mix) or train; auto = frozen "
                               "for linear and finetune, train otherwise")
    select_by: str = param("auto", Choice(("auto", "val_macro_f1", "val_loss")),
                           "the epoch best.pt keeps: validation macro-F1, or the validation cross-entropy "
                           "averaged per grade (val_loss; supcon grades by its probe and uses macro-F1); auto = "
                           "val_loss for linear and finetune, val_macro_f1 otherwise")
    init_checkpoint: str | None = param(None, PathValue(),
                                        "checkpoint to start from (required for linear and finetune) or null")
    seed: int = param(0, Integer(0), "seed of initialisation, batches and augmentation")
    device: str = param("auto", Device(), "auto (CUDA when present), cpu, cuda or cuda:N")
    amp: Any = param("auto", Flag(auto=True), "bf16 autocast: auto = on CUDA only")
    channels_last: Any = param("auto", Flag(auto=True), "channels-last-3d memory format: auto = on CUDA, and on the CPU for resnet10 / resnet18")
    sync_bn: bool = param(False, Flag(), "SyncBatchNorm under DDP (CUDA only)")
    workers: int = param(2, Integer(0, 64), "DataLoader worker processes for training batches")
    threads: Any = param("auto", Threads(), "CPU torch threads per process: auto = cores / processes - workers")
    eval_batch_size: int = param(16, Integer(1), "validation batch size")
    log_names: bool = param(False, Flag(), "debug: each rank writes names.rank<r>.jsonl (vertebrae per step)")
    progress: bool = param(True, Flag(), "a progress bar per epoch (the one-line epoch summary is logged "
                                         "either way, see vfnb.training.engine)")

    @classmethod
    def from_params(cls, params: Mapping | None = None, where: str = "") -> "TrainConfig":
        """Defaults updated with ``params``, every value checked; :class:`ParamsError` names the key.

        Unknown keys and values of the wrong type or outside their range are refused;
        integers given as floats (``3.0``) are read as integers.
        """
        prefix = f"{where}: " if where else ""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ParamsError(f"{prefix}parameters must be a mapping of key: value, got {type(params).__name__}")
        _refuse_unknown(params, prefix)
        values = {}
        for f in fields(cls):
            value = params[f.name] if f.name in params else _default(f)
            try:
                values[f.name] = f.metadata["check"](value)
            except Invalid:
                raise _invalid(f.name, value, prefix) from None
        config = cls(**values)
        config._check_together(prefix)
        return config

    def _check_together(self, prefix: str) -> None:
        if self.warmup_epochs > 0 and self.warmup_epochs >= self.epochs:
            raise ParamsError(f"{prefix}parameter 'warmup_epochs' = {self.warmup_epochs} is invalid; expected fewer "
                              f"than epochs ({self.epochs})")
        if self.epoch_mode == "balanced" and self.batches_per_epoch is not None:
            raise ParamsError(f"{prefix}parameter 'batches_per_epoch' applies to epoch_mode 'replacement' only; "
                              "set it to null or set epoch_mode: replacement")
        if self.mode in ("linear", "finetune") and self.init_checkpoint is None:
            raise ParamsError(f"{prefix}parameter 'init_checkpoint' is required for mode {self.mode!r} "
                              "(the checkpoint of a supcon or joint run)")
        check_backbone_kwargs(self.backbone, self.backbone_kwargs, prefix)

    def as_dict(self) -> dict:
        """Plain data (what ``params.yaml`` and a checkpoint's ``params`` hold)."""
        return asdict(self)


def _default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'temperature'?)`` for the closest known name, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(key), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _refuse_unknown(params: Mapping, prefix: str) -> None:
    unknown = [k for k in params if k not in PARAM_NAMES]
    if unknown:
        more = f" (and {unknown[1:]})" if unknown[1:] else ""
        raise ParamsError(f"{prefix}unknown parameter {unknown[0]!r}{did_you_mean(unknown[0], PARAM_NAMES)}{more}; "
                          f"known: {', '.join(PARAM_NAMES)}")


def _invalid(key: str, value: Any, prefix: str) -> ParamsError:
    spec = FIELDS[key].metadata
    return ParamsError(f"{prefix}parameter {key!r} = {value!r} is invalid; expected {spec['check'].expected} "
                       f"({spec['help']})")


FIELDS = {f.name: f for f in fields(TrainConfig)}
PARAM_NAMES = tuple(FIELDS)
# keys that may change when a run is resumed (they do not change what is computed)
RESUME_MUTABLE = ("epochs", "workers", "threads", "device", "eval_batch_size", "progress", "log_names", "dataset")


def defaults() -> dict:
    """Every parameter's default value, as plain data."""
    return {name: _default(f) for name, f in FIELDS.items()}


def validate_params(params: Mapping | None, where: str = "") -> dict:
    """:meth:`TrainConfig.from_params` as a plain dict (what the study passes around and writes)."""
    return TrainConfig.from_params(params, where).as_dict()


def check_backbone_kwargs(backbone: str, kwargs: dict, prefix: str = "") -> None:
    """Refuse ``backbone_kwargs`` the MONAI network does not take, or integers that would exhaust memory."""
    if kwargs:
        accepted = _encoder_arguments(backbone)
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ParamsError(f"{prefix}parameter 'backbone_kwargs': {unknown} not accepted by the {backbone} "
                              f"encoder; expected some of {sorted(accepted)}")
    for key, value in kwargs.items():
        if any(not math.isfinite(x) or abs(x) > MAX_BACKBONE_INT for x in _numbers_in(value)):
            raise ParamsError(f"{prefix}parameter 'backbone_kwargs': {key} = {value!r} is out of range; "
                              f"expected numbers up to {MAX_BACKBONE_INT}")


def _encoder_arguments(backbone: str) -> set:
    import inspect

    if backbone == "seresnet50":
        from monai.networks.nets import SEResNet50 as net
    else:
        from monai.networks.nets import ResNet as net
    fixed = {"self", "spatial_dims", "in_channels", "n_input_channels", "num_classes", "block", "feed_forward",
             "args", "kwargs"}  # set by vfnb.models.networks itself
    return set(inspect.signature(net.__init__).parameters) - fixed


def _numbers_in(value: Any) -> list:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for item in value for x in _numbers_in(item)]
    return []


# ------------------------------------------------------------------ reading parameters
def parse_override(text: str) -> tuple[str, Any]:
    """``"epochs=3"`` -> ``("epochs", 3)``; the value is read as YAML, and an empty value is ``None``."""
    if not isinstance(text, str) or "=" not in text:
        raise ParamsError(f"-p {text!r}: expected KEY=VALUE")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ParamsError(f"-p {text!r}: empty parameter name")
    return key, (parse_yaml(value, f"-p {key}", ParamsError) if value.strip() else None)


def parse_overrides(kv_overrides: Iterable[str]) -> dict:
    """``["lr=0.01", "lr_milestones=[10, 20]"]`` -> dict of training parameters (unknown keys refused)."""
    out = {}
    for item in kv_overrides or []:
        key, value = parse_override(item)
        if key not in FIELDS:
            raise ParamsError(f"-p {item!r}: unknown parameter {key!r}{did_you_mean(key, PARAM_NAMES)}; "
                              f"known: {', '.join(PARAM_NAMES)}")
        out[key] = value
    return out


def load_params_files(params_files: Sequence[str | os.PathLike]) -> dict:
    """Merge YAML parameter files in order (later files win); each file's keys and values are checked."""
    merged: dict = {}
    for path in params_files or []:
        data = load_yaml(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ParamsError(f"{path}: expected a mapping of parameter: value, got {type(data).__name__}")
        validate_params({**merged, **data}, where=str(path))
        merged.update(data)
    return merged


def help_text() -> str:
    """The parameter list for ``vfnb train --help``: name, default, accepted values, meaning."""
    import textwrap

    lines = ["training parameters (-p KEY=VALUE or a --params YAML file; an empty value means null):"]
    for name, f in FIELDS.items():
        default = _default(f)
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        lines.append(f"  {name} (default {shown}; {f.metadata['check'].expected})")
        lines.append(textwrap.fill(f.metadata["help"], width=100, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)
