"""File I/O shared by every module: atomic writes, safe YAML, safe names, NIfTI.

Nothing here ever overwrites a file in place: a file is written under a temporary
name in the same folder and renamed over its final name (atomic on POSIX), and an
output folder is built as a hidden sibling and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from .errors import DatasetError, VfnbError

NIFTI_SUFFIX = ".nii.gz"


# ---------------------------------------------------------------- atomic writes
def _tmp_sibling(path: Path) -> Path:
    # keep the full suffix (.nii.gz, .pt) so libraries that look at it behave
    return path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder atomically.

    Refuses an existing ``path`` unless ``overwrite``. Yields a hidden staging
    folder beside it; on success the staging folder replaces ``path`` (the old
    one is removed only after the new one is complete). On error the staging
    folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise VfnbError(f"{path}: output folder already exists (choose another folder, or pass --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield staging
        if path.exists():
            old = path.with_name(f".old-{uuid.uuid4().hex[:8]}-{path.name}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- safe reading
def load_yaml(path: str | os.PathLike) -> Any:
    """``yaml.safe_load`` with errors that name the file (Python tags are refused)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text (expected a YAML file)") from None
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise DatasetError(
            f"{path}: YAML carries a tag that safe loading refuses ({exc.problem}); expected plain YAML"
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise DatasetError(f"{path}: not valid YAML{at}") from None


def safe_member(root: str | os.PathLike, name: Any, what: str = "file name") -> Path:
    """Return ``root / name`` for a bare file name; refuse anything that could leave ``root``.

    ``name`` must be a plain string with no path component: no ``/`` or ``\\``, not
    ``.``/``..``, not absolute, no NUL. Raises :class:`DatasetError` naming ``what``.
    """
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{root}: {what} {name!r} is not a file name (expected a non-empty string)")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", "..") or os.path.isabs(name):
        raise DatasetError(
            f"{root}: {what} {name!r} has a path component; expected a bare file name inside the dataset folder"
        )
    return Path(root) / name


def load_nifti(path: str | os.PathLike, *, dtype: Any = None):
    """Load a NIfTI file fully; returns ``(data, affine, header)``.

    Reads the whole voxel array so a truncated or corrupt file fails here, with
    a message naming the file, rather than later inside a worker.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
    except Exception as exc:  # nibabel raises many types for broken files
        raise DatasetError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); the file is corrupt or truncated") from None
    return data, np.asarray(img.affine, dtype=np.float64), img.header


def load_nifti_header(path: str | os.PathLike):
    """Shape and affine without reading voxels: ``(shape, affine)``."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        return tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:
        raise DatasetError(f"{path}: cannot read NIfTI header ({type(exc).__name__}: {exc})") from None


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` with ``affine`` to ``path`` atomically (dtype kept as given)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(np.asarray(data).dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def strip_nifti_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
