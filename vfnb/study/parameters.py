"""The study's parameters as one typed value: :class:`StudyParams`.

Each field of :class:`StudyParams` is one parameter of the study with its type,
its default, the :class:`~vfnb.training.config.Check` its values pass and a one-line help
(in the field's metadata). The dataclass owns the defaults; ``params/default.yaml``
is the commented file users read and edit, and a test keeps its values equal to
these. Training parameters use the check of the :class:`~vfnb.training.config.TrainConfig`
field they feed, and every model's training parameters are built through
``TrainConfig`` when a :class:`StudyParams` is made, so a study that exists is a
study whose every model can start training.

The runner builds one :class:`StudyParams` before notebook 00 starts and passes it
to every notebook as JSON data (the ``study_params`` parameter); each notebook
parses it back with :meth:`StudyParams.from_json`. The paper's recipe (the report's
table of deviations) is the fields whose metadata carries a ``recipe`` label.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..training.config import FIELDS as TRAIN_FIELDS
from ..training.config import Check, Choice, Flag, Integer, Invalid, Name, PathValue, Real, did_you_mean
from ..errors import ParamsError
from ..plots import PROJECTIONS
from .paths import default_params_file
from .records import TrainingSettings
from .registry import GRADERS, MODELS, MORPHOMETRY_TITLES, PRETRAINED
from .training import model_training_params


# ------------------------------------------------------------------ checks the training configuration has no use for
@dataclass(frozen=True)
class Names(Check):
    """A list of names, each one of ``options`` (``non_empty``: at least one)."""

    options: tuple
    non_empty: bool = False

    @property
    def expected(self) -> str:
        return ("a non-empty" if self.non_empty else "a") + " list of distinct names among " + ", ".join(self.options)

    def __call__(self, value):
        if not isinstance(value, (list, tuple)) or (self.non_empty and not value) \
                or any(not isinstance(v, str) or v not in self.options for v in value) or len(set(value)) < len(value):
            raise Invalid
        return list(value)


@dataclass(frozen=True)
class Files(Check):
    """A mapping of names (each one of ``options``) to file paths (an empty or null path: none)."""

    options: tuple

    @property
    def expected(self) -> str:
        return f"a mapping model ({', '.join(self.options)}) -> checkpoint file"

    def __call__(self, value):
        if not isinstance(value, dict) or any(k not in self.options for k in value) \
                or any(v is not None and not isinstance(v, str) for v in value.values()):
            raise Invalid
        return dict(value)


@dataclass(frozen=True)
class Text(Check):
    """Any text, the empty one included."""

    expected = "a text (\"\" for none)"

    def __call__(self, value):
        if not isinstance(value, str):
            raise Invalid
        return value


FRACTION = Real(0.0, 1.0, low_open=True)


def param(default: Any, check: Check, help: str, recipe: str | None = None):  # noqa: A002 - argparse's word
    """A study parameter: its ``default``, the ``check`` its values pass, a one-line ``help``.

    ``recipe``: the parameter defines the method; the label the report gives it when a
    run's value departs from the paper's.
    """
    metadata = {"check": check, "help": help, **({"recipe": recipe} if recipe else {})}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def train_param(default: Any, key: str, help: str | None = None, recipe: str | None = None):  # noqa: A002
    """A study parameter that sets the training parameter ``key``: checked as :class:`TrainConfig` checks it."""
    spec = TRAIN_FIELDS[key].metadata
    return param(default, spec["check"], help or spec["help"], recipe)


# ------------------------------------------------------------------ the parameters
@dataclass(frozen=True)
class StudyParams:
    """Every parameter of the study; build it with :meth:`from_dict` or :meth:`from_json` (validated)."""

    # run folder
    run_dir: str = param("results/lab", Name(), "run folder (vfnb study sets it to --out)")
    smoke: bool = param(False, Flag(), "a smoke run: every page of its report says its numbers mean nothing")
    # data
    dataset: str = param("synthspine", Name(), "synthspine (generate / reuse SynthSpine) or a processed dataset")
    data_dir: str = param("data", PathValue(nullable=False), "where SynthSpine lives")
    synth_cases: int = param(64, Integer(1, 10_000), "SynthSpine: number of CT scans")
    synth_seed: int = param(0, Integer(0), "SynthSpine: generator seed")
    synth_folds: int = param(5, Integer(2, 20), "SynthSpine: patient-grouped folds (tags synth-f0 ..)")
    synth_test_cases: int = param(24, Integer(0, 10_000), "SynthSpine: extra fracture-enriched CTs in every test list")
    synth_val_cases: int = param(0, Integer(0, 10_000),
                                 "SynthSpine: extra fracture-enriched CTs in every validation list")
    patch_size: int = param(64, Integer(8, 512), "SynthSpine: in-plane patch size (voxels) when pre-processing")
    val_fraction: float = param(0.2, FRACTION, "SynthSpine: share of the training CTs kept for validation")
    tag: str = train_param("synth-f0", "tag", "the split lists read: <split>_file_list.<tag>.yaml")
    workers: int = train_param(2, "workers", "processes for generation / pre-processing, DataLoader workers")
    # models to produce
    models: list = param(["supcon_linear", "supcon_finetune", "ce"], Names(GRADERS, non_empty=True),
                         "the networks trained and graded")
    morphometry: list = param(["morphometry_rule", "morphometry_logistic"], Names(tuple(MORPHOMETRY_TITLES)),
                              "the height-measurement graders beside the networks, in notebook 03")
    checkpoints: dict = param({}, Files(tuple(MODELS)), "model -> checkpoint used as is, without training")
    reuse_checkpoints: bool = param(False, Flag(), "keep <run_dir>/runs/<model>/best.pt when present")
    # network and training, shared by every model (TrainingSettings)
    backbone: str = train_param("resnet10", "backbone", recipe="encoder network")
    head: str = train_param("linear", "head", recipe="projection head")
    feature_dim: int = train_param(128, "feature_dim", recipe="projection size")
    cube_size: int = train_param(32, "cube_size", recipe="network input cube (voxels)")
    batch_per_grade: int = train_param(3, "batch_per_grade",
                                       recipe="vertebrae of each grade per batch (probe, fine-tuning, CE)")
    epoch_mode: str = train_param("replacement", "epoch_mode", recipe="what an epoch is")
    batches_per_epoch: int | None = train_param(48, "batches_per_epoch")
    momentum: float = train_param(0.9, "momentum")
    weight_decay: float = train_param(0.0001, "weight_decay")
    lr_schedule: str = train_param("cosine", "lr_schedule", recipe="learning-rate schedule")
    lr_milestones: list = train_param([800, 900], "lr_milestones")
    lr_gamma: float = train_param(0.1, "lr_gamma")
    temperature: float = train_param(0.1, "temperature", recipe="SupCon temperature")
    base_temperature: float = train_param(0.1, "base_temperature", recipe="SupCon base temperature")
    probe: str = train_param("logreg", "probe", "SupCon checkpoint selection: logreg or knn probe, or none")
    seed: int = train_param(0, "seed", "seed of initialisation, batches, augmentation, UMAP and the bootstrap")
    device: str = train_param("auto", "device")
    amp: Any = train_param("auto", "amp")
    # per model: budget and learning rate (registry.MODELS says which model reads which)
    supcon_epochs: int = train_param(24, "epochs", "SupCon pretraining epochs", recipe="SupCon pretraining epochs")
    supcon_lr: float = train_param(0.05, "lr", "SupCon learning rate", recipe="SupCon learning rate")
    supcon_augmentation: str = train_param("weak", "augmentation", "augmentation while pretraining with SupCon",
                                           recipe="augmentation during SupCon pretraining")
    supcon_warmup_epochs: int = train_param(2, "warmup_epochs", "SupCon learning-rate warm-up (epochs)",
                                            recipe="SupCon learning-rate warm-up (epochs)")
    supcon_batch_per_grade: int = train_param(6, "batch_per_grade", "vertebrae of each grade per SupCon batch",
                                              recipe="vertebrae of each grade per SupCon batch")
    supcon_batches_per_epoch: int | None = train_param(24, "batches_per_epoch",
                                                       "SupCon batches per epoch (replacement mode; null: balanced)")
    linear_epochs: int = train_param(3, "epochs", "linear probe epochs")
    linear_lr: float = train_param(0.001, "lr", "linear probe learning rate")
    finetune_epochs: int = train_param(2, "epochs", "fine-tuning epochs")
    finetune_lr: float = train_param(0.001, "lr", "fine-tuning learning rate")
    ce_epochs: int = train_param(26, "epochs", "cross-entropy baseline epochs")
    ce_lr: float = train_param(0.05, "lr", "cross-entropy baseline learning rate")
    # evaluation
    target_specificity: float = param(0.99, FRACTION, "screening operating point: specificity on validation")
    operating_points_from: str = param("", Text(), "another run's operating_points.json, or \"\" (choose here)")
    n_boot: int = param(1000, Integer(1, 100_000), "bootstrap resamples for the 95 % confidence intervals")
    saliency_per_grade: int = param(4, Integer(1, 100), "test vertebrae per grade explained by Grad-CAM")
    occlusion_checked: int = param(2, Integer(0, 100), "of those, how many also by occlusion sensitivity")
    projection: str = param("umap", Choice(PROJECTIONS), "2-D view of the feature space")
    umap_neighbors: int = param(15, Integer(2, 500), "UMAP n_neighbors")
    umap_max_points: int = param(1500, Integer(2, 200_000), "at most this many vertebrae per 2-D view")
    n_errors_shown: int = param(12, Integer(0, 500), "vertebrae in the gallery of the most confident errors")
    # exploration (00)
    scans_shown: int = param(2, Integer(0, 50), "whole scans shown in sagittal and coronal views")
    patches_per_grade: int = param(4, Integer(0, 100), "patches per grade in the gallery of input channels")
    height_patches_per_grade: int = param(60, Integer(0, 100_000), "patches per grade measured for the height ratios")

    # -------------------------------------------------------------- building and reading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, where: str = "study parameters",
                  sources: Mapping[str, str] | None = None) -> "StudyParams":
        """Defaults updated with ``data``, every value checked, every model's training built once.

        A :class:`ParamsError` names the key and, given ``sources`` (key -> the file or
        ``-p`` option that set it), where its value came from; an unknown key gets the
        closest known name as a hint.
        """
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ParamsError(f"{where}: expected a mapping of parameter names to values, got {type(data).__name__}")

        def located(key: str) -> str:
            return f"{where}: {sources[key]}" if sources and key in sources else where

        for key in data:
            if key not in FIELDS:
                raise unknown_key(str(key), FIELDS, located(key), default_params_file())
        params = cls(**{name: _checked(f, data[name] if name in data else _default(f), located)
                        for name, f in FIELDS.items()})
        for model in [PRETRAINED, *params.models]:
            params._check_training(model, located)
        return params

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any] | None = None, where: str = "study_params") -> "StudyParams":
        """A notebook's ``study_params``: JSON text or its data (``{}``: every default, for a notebook run by hand)."""
        if isinstance(data, str):
            try:
                data = json.loads(data) if data.strip() else {}
            except ValueError as exc:
                raise ParamsError(f"{where}: not valid JSON ({exc})") from None
        return cls.from_dict(data, where)

    def as_dict(self) -> dict:
        """Plain data: what ``params.yaml`` holds and what the runner passes to the notebooks."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def training_settings(self) -> TrainingSettings:
        """The network and training settings every model of the study shares."""
        return TrainingSettings(**{k: getattr(self, k) for k in TrainingSettings.keys()})

    def _check_training(self, model: str, located) -> None:
        """Build ``model``'s training parameters as :func:`vfnb.study.train_model` will (through ``TrainConfig``)."""
        spec = MODELS[model]
        init = "-" if spec.starts_from else None
        try:
            model_training_params(model, self.training_settings().as_dict(), spec.budget_of(self), "-", self.tag,
                                  init)
        except ParamsError as exc:
            message, named = str(exc), None
            for train_key, study_key in spec.budget.items():  # speak of the study's key, not the training one
                if f"parameter {train_key!r}" in message:
                    message, named = message.replace(f"parameter {train_key!r}", f"parameter {study_key!r}"), study_key
            named = named or next((k for k in TrainingSettings.keys() if f"parameter {k!r}" in message), "tag")
            raise ParamsError(f"{located(named)}: {message} (model {model})") from None


FIELDS = {f.name: f for f in fields(StudyParams)}
#: The settings that define the method, as the paper ran it (values in params/paper.yaml): name -> label.
RECIPE_KEYS = {name: f.metadata["recipe"] for name, f in FIELDS.items() if "recipe" in f.metadata}
#: The model each per-model budget parameter belongs to (``supcon_lr`` -> ``supcon``), for error messages.
BUDGET_OWNER = {study_key: model for model, spec in MODELS.items() for study_key in spec.budget.values()}


def _default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _checked(f, value: Any, located) -> Any:
    check = f.metadata["check"]
    try:
        return check(value)
    except Invalid:
        owner = f" (model {BUDGET_OWNER[f.name]})" if f.name in BUDGET_OWNER else ""
        raise ParamsError(f"{located(f.name)}: parameter {f.name!r} = {value!r} is invalid; expected "
                          f"{check.expected} ({f.metadata['help']}){owner}") from None


def defaults() -> dict:
    """Every study parameter's default, as plain data."""
    return StudyParams().as_dict()


def unknown_key(key: str, known: Iterable[str], where: str, reference: Path) -> ParamsError:
    """The error for a parameter nobody declares, with the closest known name as a hint."""
    return ParamsError(f"{where}: unknown parameter {key!r}{did_you_mean(key, known)}; every parameter is listed and "
                       f"documented in {reference}")
