"""The study's parameter files: reading, merging (later wins), and the checks before notebook 00.

Every parameter is a field of :class:`~vfnb.study.parameters.StudyParams` (type,
default, check, help); ``params/default.yaml`` lists each with a comment (a test
keeps its values equal to the dataclass's). Other files (``smoke.yaml``,
``paper.yaml``, ...) and ``-p key=value`` options override some of them, later ones
winning. :func:`validate_study_params` turns the merged values into a
:class:`StudyParams`, checking everything the notebooks will use, every model's
training parameters included, before notebook 00 starts, and names the file (or
option) that set a bad value.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import nbformat

from ..training.config import parse_override  # noqa: F401 - one meaning of -p KEY=VALUE for training and the study
from ..errors import DatasetError, ParamsError
from ..io import load_yaml, refuse_outputs_over_inputs
from .parameters import FIELDS, RECIPE_KEYS, StudyParams, unknown_key  # noqa: F401 - re-exported
from .paths import default_params_file, paper_params_file, resolve_path

# Parameters holding file-system paths: relative ones are resolved against the
# directory ``vfnb study`` runs in (notebooks run with their own folder as cwd).
PATH_PARAMS = ("data_dir", "dataset", "operating_points_from")
SYNTHSPINE = "synthspine"  # the ``dataset`` value meaning "generate / reuse SynthSpine"
#: Parameters the runner reads itself; no notebook uses them.
RUNNER_PARAMS = ("smoke",)


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


def merge_params_with_sources(params_files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                              defaults_file: str | os.PathLike | None = None) -> tuple[dict, dict]:
    """:func:`merge_params`, and for each key where its value came from (a file, or ``-p key=value``)."""
    defaults_file = Path(defaults_file) if defaults_file is not None else default_params_file()
    merged = read_params_file(defaults_file)
    sources = {key: str(defaults_file) for key in merged}
    for f in params_files:
        for key, value in read_params_file(f).items():
            if key not in FIELDS:
                raise unknown_key(key, FIELDS, str(f), defaults_file)
            merged[key], sources[key] = value, str(f)
    for text in overrides:
        key, value = parse_override(text)
        if key not in FIELDS:
            raise unknown_key(key, FIELDS, f"-p {text}", defaults_file)
        merged[key], sources[key] = value, f"-p {text}"
    return merged, sources


def merge_params(params_files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                 defaults_file: str | os.PathLike | None = None) -> dict:
    """Merge parameters: ``defaults_file`` (``params/default.yaml``), then each file, then overrides.

    Later values win. Every key must be a field of :class:`StudyParams`, otherwise a
    :class:`ParamsError` names the key and the file (or the ``-p`` option). Values are
    checked by :func:`validate_study_params`.
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


# ===================================================================== files the parameters name
def check_param_files(params: Mapping, sources: Mapping[str, str] | None = None, where: str = "vfnb study",
                      out: str | os.PathLike | None = None) -> None:
    """Refuse, before notebook 00, files the parameters name that are missing, and a run folder over them.

    ``params``: resolved (absolute paths, :func:`resolve_param_paths`). Checked: a
    processed ``dataset`` exists with the ``tag``'s train, val and test lists; the
    ``operating_points_from`` file; every ``checkpoints`` file. Their contents are
    checked by the code that reads them; this only moves "not found" to the start.
    ``out`` (the run folder) must not be, contain or lie inside any of them, nor the
    SynthSpine folder ``data_dir``.
    """
    if out is not None:
        synthetic = str(params.get("dataset") or "").lower() == SYNTHSPINE
        inputs = {"dataset": None if synthetic else params.get("dataset"),
                  "data_dir": params.get("data_dir") if synthetic else None,
                  "operating_points_from": params.get("operating_points_from") or None,
                  **{f"checkpoints[{m}]": p for m, p in (params.get("checkpoints") or {}).items() if p}}
        refuse_outputs_over_inputs({"--out": out}, inputs, ParamsError)
    from ..data.processed import list_path

    def located(key: str) -> str:
        return f"{where}: {sources[key]}" if sources and key in sources else where

    dataset = str(params.get("dataset") or "")
    if dataset and dataset.lower() != SYNTHSPINE:
        root = Path(dataset)
        if not root.is_dir():
            raise ParamsError(f"{located('dataset')}: parameter 'dataset' = {dataset!r}: no such folder; expected "
                              f"{SYNTHSPINE!r} or a processed dataset folder (vfnb preprocess writes one)")
        lists = [list_path(root, split, str(params.get("tag"))) for split in ("train", "val", "test")]
        missing = [p.name for p in lists if not p.is_file()]
        if missing:
            raise ParamsError(f"{located('tag')}: parameter 'tag' = {params.get('tag')!r}: {root} has no "
                              f"{', '.join(missing)}; expected the split lists `vfnb split --tag` writes")
    points = str(params.get("operating_points_from") or "")
    if points and not Path(points).is_file():
        raise ParamsError(f"{located('operating_points_from')}: parameter 'operating_points_from' = {points!r}: "
                          "file not found; expected another run's operating_points.json")
    for model, path in (params.get("checkpoints") or {}).items():
        if path and not Path(path).is_file():
            raise ParamsError(f"{located('checkpoints')}: parameter 'checkpoints' names {path!r} for model "
                              f"{model!r}: file not found; expected a checkpoint file (best.pt)")


# ===================================================================== validation
def validate_study_params(params: Mapping, where: str = "vfnb study",
                          sources: Mapping[str, str] | None = None) -> StudyParams:
    """Check every parameter the notebooks will use, before notebook 00 starts; the study's :class:`StudyParams`.

    Each model's training parameters go through the training code's own validation
    (:class:`vfnb.training.config.TrainConfig`) exactly as :func:`vfnb.study.train_model` will
    pass them. A :class:`ParamsError` names the key and, given ``sources`` (from
    :func:`merge_params_with_sources`), the file or ``-p`` option that set it.
    """
    return StudyParams.from_dict(params, where, sources)


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

    ``[{"key", "meaning", "value", "paper"}]`` for every recipe field of :class:`StudyParams`
    (:data:`~vfnb.study.parameters.RECIPE_KEYS`, in field order) whose
    value differs from ``paper`` (default: ``params/paper.yaml``), in that order. An
    empty list: the run follows the paper's recipe (budget included).
    """
    if paper is None:
        paper = read_params_file(paper_params_file())
    return [{"key": key, "meaning": meaning, "value": params[key], "paper": paper[key]}
            for key, meaning in RECIPE_KEYS.items()
            if key in params and key in paper and params[key] != paper[key]]
