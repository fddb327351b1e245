"""The study's parameters: where they live, how files merge, and what a valid study is.

Every parameter is declared, with its default and a comment, in
``params/default.yaml``; other files (``smoke.yaml``, ``paper.yaml``, ...) and
``-p key=value`` options override some of them, later ones winning. Each
notebook's ``parameters`` cell declares the subset it uses, as literals.
:func:`validate_study_params` checks everything the notebooks will use, every
model's training parameters included, before notebook 00 starts, and names the
file (or option) that set a bad value.
"""

from __future__ import annotations

import ast
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import nbformat

from ..training.config import parse_override  # noqa: F401 - one meaning of -p KEY=VALUE for training and the study
from ..errors import DatasetError, ParamsError
from ..io import load_yaml
from .records import TrainingSettings
from .paths import default_params_file, paper_params_file, resolve_path
from .registry import GRADERS, MODELS, PRETRAINED
from .training import model_training_params

# Parameters holding file-system paths: relative ones are resolved against the
# directory ``vfnb study`` runs in (notebooks run with their own folder as cwd).
PATH_PARAMS = ("data_dir", "dataset", "operating_points_from")
SYNTHSPINE = "synthspine"  # the ``dataset`` value meaning "generate / reuse SynthSpine"
# study-only integers: (key, smallest value)
STUDY_INTS = (("synth_cases", 1), ("synth_seed", 0), ("synth_folds", 2), ("patch_size", 8), ("n_boot", 1),
              ("umap_neighbors", 2), ("umap_max_points", 2), ("n_errors_shown", 0), ("scans_shown", 0),
              ("patches_per_grade", 0), ("height_patches_per_grade", 0))
STUDY_FRACTIONS = ("val_fraction", "target_specificity")
#: Parameters the runner reads itself; no notebook declares them.
RUNNER_PARAMS = ("smoke",)

# The settings that define the method, as the paper ran it (their values live in
# params/paper.yaml): a run whose value differs departs from the paper's recipe, and
# its report says so. Data, hardware and evaluation settings are not listed.
RECIPE_KEYS = {
    "backbone": "encoder network",
    "head": "projection head",
    "feature_dim": "projection size",
    "cube_size": "network input cube (voxels)",
    "batch_per_grade": "vertebrae of each grade per batch",
    "epoch_mode": "what an epoch is",
    "lr_schedule": "learning-rate schedule",
    "temperature": "SupCon temperature",
    "base_temperature": "SupCon base temperature",
    "supcon_augmentation": "augmentation during SupCon pretraining",
    "supcon_warmup_epochs": "SupCon learning-rate warm-up (epochs)",
    "supcon_epochs": "SupCon pretraining epochs",
    "supcon_lr": "SupCon learning rate",
}


# ===================================================================== merging
def read_params_file(path: str | os.PathLike) -> dict:
    """One YAML parameter file as a dict (an empty file is ``{}``)."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except DatasetError as exc:  # load_yaml speaks of datasets; this is a params file
        raise ParamsError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ParamsError(f"{path}: parameter name {key!r} is not a string")
    return data


def unknown_key(key: str, known: Iterable[str], where: str, reference: Path) -> ParamsError:
    """The error for a parameter nobody declares, with the closest known name as a hint."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ParamsError(f"{where}: unknown parameter {key!r}{hint}; every parameter is listed and documented in {reference}")


def merge_params_with_sources(params_files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                              defaults_file: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """:func:`merge_params`, and for each key where its value came from (a file, or ``-p key=value``)."""
    defaults_file = Path(defaults_file) if defaults_file is not None else default_params_file()
    merged = read_params_file(defaults_file)
    sources = {key: str(defaults_file) for key in merged}
    for f in params_files:
        for key, value in read_params_file(f).items():
            if key not in merged:
                raise unknown_key(key, merged, str(f), defaults_file)
            merged[key], sources[key] = value, str(f)
    for text in overrides:
        key, value = parse_override(text)
        if key not in merged:
            raise unknown_key(key, merged, f"-p {text}", defaults_file)
        merged[key], sources[key] = value, f"-p {text}"
    return merged, sources


def merge_params(params_files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                 defaults_file: str | os.PathLike | None = None) -> dict:
    """Merge parameters: ``defaults_file`` (``params/default.yaml``), then each file, then overrides.

    Later values win. Every key must be one ``defaults_file`` declares, otherwise a
    :class:`ParamsError` names the key and the file (or the ``-p`` option).
    """
    return merge_params_with_sources(params_files, overrides, defaults_file)[0]


def resolve_param_paths(params: dict, base: str | os.PathLike) -> dict:
    """Copy of ``params`` with relative path parameters made absolute against ``base``."""
    out = dict(params)
    for key in PATH_PARAMS:
        value = out.get(key)
        if not isinstance(value, str) or not value or (key == "dataset" and value.lower() == SYNTHSPINE):
            continue
        out[key] = str(resolve_path(value, base))
    if isinstance(out.get("checkpoints"), dict):
        out["checkpoints"] = {m: (str(resolve_path(p, base)) if isinstance(p, str) and p else p)
                              for m, p in out["checkpoints"].items()}
    return out


# ===================================================================== validation
def _check_study_values(params: Mapping, where) -> None:
    for key, low in STUDY_INTS:
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ParamsError(f"{where(key)}: parameter {key!r} = {value!r} is invalid; expected an integer >= {low}")
    for key in STUDY_FRACTIONS:
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 < float(value) < 1.0):
            raise ParamsError(f"{where(key)}: parameter {key!r} = {value!r} is invalid; "
                              "expected a number between 0 and 1")
    if not isinstance(params.get("smoke", False), bool):
        raise ParamsError(f"{where('smoke')}: parameter 'smoke' = {params['smoke']!r} is invalid; expected true or false")
    models = params.get("models")
    if not isinstance(models, list) or not models or any(m not in GRADERS for m in models):
        raise ParamsError(f"{where('models')}: parameter 'models' = {models!r} is invalid; expected a non-empty "
                          f"list of {', '.join(GRADERS)}")
    checkpoints = params.get("checkpoints", {})
    if not isinstance(checkpoints, dict) or any(m not in MODELS for m in checkpoints):
        raise ParamsError(f"{where('checkpoints')}: parameter 'checkpoints' = {checkpoints!r} is invalid; "
                          f"expected a mapping model ({', '.join(MODELS)}) -> checkpoint file")


def _check_training(params: Mapping, model: str, where) -> None:
    """Validate ``model``'s training parameters exactly as :func:`vfnb.study.train_model` will build them."""
    spec = MODELS[model]
    settings = {k: params[k] for k in TrainingSettings.keys() if k in params}
    init = "-" if spec.starts_from else None
    try:
        model_training_params(model, settings, spec.budget_of(params), "-", params.get("tag"), init)
    except ParamsError as exc:
        message, named = str(exc), None
        for train_key, study_key in spec.budget.items():  # speak of the study's key, not the training one
            if f"parameter {train_key!r}" in message:
                message, named = message.replace(f"parameter {train_key!r}", f"parameter {study_key!r}"), study_key
        named = named or next((k for k in settings if f"parameter {k!r}" in message), "tag")
        raise ParamsError(f"{where(named)}: {message} (model {model})") from None


def validate_study_params(params: dict, where: str = "vfnb study", sources: Mapping[str, str] | None = None) -> None:
    """Check every parameter the notebooks will use, before notebook 00 starts.

    Each model's training parameters go through the training code's own validation
    (:func:`vfnb.training.engine.validate_params`) exactly as :func:`vfnb.study.train_model` will
    pass them. A :class:`ParamsError` names the key and, given ``sources`` (from
    :func:`merge_params_with_sources`), the file or ``-p`` option that set it.
    """
    def located(key: str) -> str:
        return f"{where}: {sources[key]}" if sources and key in sources else where

    _check_study_values(params, located)
    for model in [PRETRAINED, *params["models"]]:
        _check_training(params, model, located)


# ===================================================================== notebooks and the paper
def notebook_parameters(path: str | os.PathLike) -> dict:
    """The ``parameters`` cell of a notebook as ``{name: default value}``.

    Raises :class:`ParamsError` unless there is exactly one cell tagged
    ``parameters`` and it holds only ``name = <literal>`` assignments.
    """
    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ParamsError(f"{path}: parameters cell is not valid Python ({exc.msg}, line {exc.lineno})") from None
    params = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParamsError(f"{path}: parameters cell line {node.lineno}: expected 'name = <literal>'")
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ParamsError(
                f"{path}: parameter {node.targets[0].id!r} (line {node.lineno}) is not a literal; "
                "the parameters cell holds literals only"
            ) from None
    return params


def recipe_deviations(params: Mapping[str, Any], paper: Mapping[str, Any] | None = None) -> list[dict]:
    """Where ``params`` (a study's merged parameters) depart from the paper's recipe.

    ``[{"key", "meaning", "value", "paper"}]`` for every :data:`RECIPE_KEYS` entry whose
    value differs from ``paper`` (default: ``params/paper.yaml``), in that order. An
    empty list: the run follows the paper's recipe (budget included).
    """
    if paper is None:
        paper = read_params_file(paper_params_file())
    return [{"key": key, "meaning": meaning, "value": params[key], "paper": paper[key]}
            for key, meaning in RECIPE_KEYS.items()
            if key in params and key in paper and params[key] != paper[key]]
