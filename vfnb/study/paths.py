"""Where the study's files are: the project root, its notebooks and parameter files, and paths as reports show them."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ParamsError


def project_root() -> Path:
    """The folder holding ``notebooks/`` and ``params/`` (the repository root).

    The package's parent when installed in development mode (the normal case),
    else the current directory or one of its parents.
    """
    here = Path(__file__).resolve().parents[2]
    for cand in (here, *[Path.cwd(), *Path.cwd().parents]):
        if (cand / "notebooks").is_dir() and (cand / "params").is_dir():
            return cand
    raise ParamsError(
        f"cannot find the study's notebooks/ and params/ folders (looked beside {here} and above {Path.cwd()}); "
        "run from the repository root"
    )


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def default_params_file() -> Path:
    return project_root() / "params" / "default.yaml"


def paper_params_file() -> Path:
    return project_root() / "params" / "paper.yaml"


def resolve_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """``path`` made absolute: relative paths are taken from ``base`` (default: the project root).

    Notebooks call this so the same relative default (e.g. ``data``) means the same
    folder whether the notebook runs in JupyterLab (cwd ``notebooks/``) or under
    ``vfnb study`` (which passes absolute paths anyway).
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return (Path(base) if base is not None else project_root()) / path


def shown_path(path: str | os.PathLike, *bases: str | os.PathLike) -> str:
    """``path`` relative to the first of ``bases`` (default: the project root) that holds it, else as given.

    Reports show paths this way: no staging folder, no machine-specific prefix.
    """
    path = Path(path)
    for base in bases or (project_root(),):
        try:
            return path.resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return str(path)
