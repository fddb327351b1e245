"""What a sweep runs: sweep files and ``-p`` options read and checked into a :class:`SweepPlan`."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import ParamsError, VfnbError
from ..io import load_yaml
from ..study import default_params_file, merge_params, parse_override, unknown_key
from ..study.parameters import StudyParams

SWEEP_KEYS = ("study_params", "overrides", "grid", "slurm")  # slurm: the jobs' resources (vfnb.sweep.slurm)
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")


class SweepError(VfnbError):
    """A sweep cannot start or continue (bad sweep file, locked folder); the message says where."""


@dataclass
class SweepPlan:
    """What a sweep runs: the study parameter files, overrides for every run, the grid points.

    ``points``: ``[(run name, {grid key: value})]`` in grid order (the product of the
    grid's lists, the first key varying slowest).
    """

    study_params: list[Path]
    overrides: dict
    grid: dict
    points: list[tuple[str, dict]]
    sources: dict = field(default_factory=dict)  # sweep key -> the file or -p option that set it
    slurm: Any = None  # the sweep file's `slurm:` block, as read; checked by vfnb.sweep.slurm.slurm_options

    def describe(self) -> dict:
        return {"study_params": [str(p) for p in self.study_params], "overrides": self.overrides,
                "grid": self.grid, "runs": len(self.points)}


def run_name(point: dict) -> str:
    """``{"seed": 3, "tag": "synth-f1"}`` -> ``"seed-3_tag-synth-f1"`` (values must be safe in a file name)."""
    return "_".join(f"{key}-{value}" for key, value in point.items())


def _read_sweep_keys(params_files, overrides) -> tuple[dict, dict, dict]:
    """The sweep keys from the files then the ``-p`` options, where each came from, and ``-p`` study parameters."""
    raw: dict[str, Any] = {"study_params": [str(default_params_file())], "overrides": {}, "grid": None, "slurm": None}
    sources = {key: "the default" for key in raw}
    for path in params_files:
        data = load_yaml(path)
        if not isinstance(data, dict):
            raise SweepError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
        for key, value in data.items():
            if key not in SWEEP_KEYS:
                raise SweepError(f"{path}: unknown sweep key {key!r}; expected {', '.join(SWEEP_KEYS)}")
            raw[key], sources[key] = value, str(path)
    extra = {}
    for text in overrides:
        key, value = parse_override(text)
        if key in SWEEP_KEYS:
            raw[key], sources[key] = value, f"-p {text}"
        else:
            extra[key] = (value, f"-p {text}")
    return raw, sources, extra


def _study_files(value, where: str) -> list[Path]:
    files = value or []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(p, str) for p in files):
        raise SweepError(f"{where}: 'study_params' must be a list of parameter file paths")
    return [Path(p) for p in files]


def _fixed_params(value, where: str, extra: dict, known: dict) -> tuple[dict, dict]:
    """The study parameters fixed for every run, and where each was set; unknown ones refused."""
    fixed = value if value is not None else {}
    if not isinstance(fixed, dict):
        raise SweepError(f"{where}: 'overrides' must be a mapping of study parameters to values")
    fixed_from = {key: f"{where}: overrides" for key in fixed}
    fixed = dict(fixed)
    for key, (v, source) in extra.items():
        fixed[key], fixed_from[key] = v, source
    for key, source in fixed_from.items():
        if key not in known:
            raise unknown_key(str(key), known, source, default_params_file())
    return fixed, fixed_from


def _check_grid(grid, where: str, known: dict, fixed_from: dict) -> dict:
    if grid is None:
        raise SweepError(f"{where}: no 'grid' (expected e.g. grid: {{seed: [0, 1, 2, 3, 4]}})")
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{where}: 'grid' is empty; expected a mapping of study parameters to lists of values")
    for key, values in grid.items():
        if key not in known:
            raise unknown_key(str(key), known, f"{where}: grid", default_params_file())
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid key {key!r} has no values; expected a non-empty list")
        if key in fixed_from:
            raise SweepError(f"{where}: grid key {key!r} is also in overrides ({fixed_from[key]}); "
                             "a key is either swept or fixed")
        for value in values:
            if isinstance(value, (dict, list)) or not _SAFE_VALUE.fullmatch(str(value)):
                raise SweepError(f"{where}: grid key {key!r}: value {value!r} does not make a safe folder name "
                                 "(letters, digits, '.', '_', '+', '-', not starting with '.')")
    return grid


def _grid_points(grid: dict, where: str) -> list[tuple[str, dict]]:
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    named = [(run_name(p), p) for p in points]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SweepError(f"{where}: two grid points make the same run folder {dup!r}; make the values distinct")
    return named


def load_sweep(params_files: Sequence[str | os.PathLike], overrides: Sequence[str] = ()) -> SweepPlan:
    """Read and check sweep files (later files replace earlier files' keys), then ``-p`` options.

    ``-p study_params=[...]`` / ``-p grid={...}`` / ``-p overrides={...}`` replace that
    sweep key; ``-p KEY=VALUE`` with any other key is a study parameter added to
    ``overrides``. Raises :class:`SweepError` naming the file (or option) and the key
    for unknown sweep keys, unknown study parameters in ``grid`` or ``overrides``,
    an empty grid or grid list, a grid key also in ``overrides``, and grid values that
    would not make a safe folder name.
    """
    if not params_files:
        raise SweepError("no sweep file given (expected --params params/sweep.yaml)")
    raw, sources, extra = _read_sweep_keys(params_files, overrides)
    study_params = _study_files(raw["study_params"], sources["study_params"])
    known = merge_params(study_params)  # checks the files themselves, naming file and key
    fixed, fixed_from = _fixed_params(raw["overrides"], sources["overrides"], extra, known)
    grid = _check_grid(raw["grid"], sources["grid"], known, fixed_from)
    points = _grid_points(grid, sources["grid"])
    _check_points(points, {**known, **fixed}, sources["grid"], {k: sources["overrides"] for k in fixed})
    return SweepPlan(study_params, fixed, grid, points, sources, raw["slurm"])


def _check_points(points: list[tuple[str, dict]], base: dict, where: str, fixed_from: dict) -> None:
    """Validate every run's study parameters now, not when its notebook starts; refuse runs that are the same study.

    ``[1, 1.0]`` makes two folders but one study once each value is checked (the
    integer 1), so it is refused like two equal values.
    """
    seen: dict[tuple, str] = {}
    for name, point in points:
        sources = {**fixed_from, **{k: f"grid value {k}={v!r} (run {name})" for k, v in point.items()}}
        try:
            checked = StudyParams.from_dict({**base, **point}, where, sources)
        except ParamsError as exc:
            raise SweepError(str(exc)) from None
        key = tuple(repr(getattr(checked, k)) for k in point)
        if key in seen:
            raise SweepError(f"{where}: runs {seen[key]!r} and {name!r} are the same study (their grid values "
                             f"{', '.join(f'{k}={getattr(checked, k)!r}' for k in point)} are equal once checked); "
                             "make the values distinct")
        seen[key] = name


def select_points(plan: SweepPlan, only: Sequence[str]) -> list[tuple[str, dict]]:
    """The grid points matching every ``KEY=VALUE`` in ``only`` (values read as YAML, like ``-p``)."""
    wanted = {}
    for text in only:
        key, value = parse_override(text)
        if key not in plan.grid:
            raise SweepError(f"--only {text}: {key!r} is not a grid key (grid keys: {', '.join(plan.grid)})")
        if not any(str(v) == str(value) for v in plan.grid[key]):
            raise SweepError(f"--only {text}: {value!r} is not among the grid's values of {key!r} "
                             f"({', '.join(map(str, plan.grid[key]))})")
        wanted[key] = str(value)
    return [(n, p) for n, p in plan.points if all(str(p[k]) == v for k, v in wanted.items())]
