"""Provenance of a study run: code version, packages, machine, data fingerprint and timings.

Written to ``provenance.json`` beside the report, so a number in it can be traced
to the code, data and machine that produced it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterable

VERSION_PACKAGES = ("torch", "monai", "numpy", "scikit-learn", "umap-learn", "papermill", "nibabel",
                    "scipy", "pandas", "matplotlib", "nbconvert")
STUDY_NAME = "vfnb reproduction of Wei et al., BIBM 2022 (arXiv 2208.10698)"


def git_state(root: Path) -> dict:
    """Commit, and whether the code differs from it: changed or untracked files outside results/ and data/."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "note": "git not available"}
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "note": "not a git checkout"}
    status = git("status", "--porcelain", "--untracked-files=all")
    changed, untracked = [], []
    for line in status.stdout.splitlines():
        path = line[3:]
        if path.startswith(("results/", "data/")):
            continue  # outputs and data, not code (a study re-run replaces its own committed report)
        (untracked if line.startswith("??") else changed).append(path)
    return {"commit": head.stdout.strip(), "dirty": bool(changed or untracked),
            "changed_files": changed, "untracked_files": untracked}


def package_versions(names: Iterable[str] = VERSION_PACKAGES) -> dict:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _gpu_name() -> str | None:
    import torch  # heavy; already loaded by the time a study finishes

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_info() -> dict:
    cpu = platform.processor() or None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu,
            "cores": os.cpu_count(), "ram_gb": ram_gb, "gpu": None}
    with contextlib.suppress(Exception):
        info["gpu"] = _gpu_name()
    return info


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 of what the data are: every patch file's relative path and size, the bytes of the lists and tables.

    Cheap (no voxel data read) yet changes when a patch is added, removed or
    re-written with another size, or when a split list or ``patches.csv`` changes.
    It depends on the data only: the JSON manifests (where and when the data were
    made, by which vfnb version) and hidden files are left out, so the same data
    generated again, in another folder or on another machine, has the same fingerprint.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix == ".json":
            continue
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\t{path.stat().st_size}\n".encode())
        if path.suffix in (".yaml", ".csv"):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_provenance(data: dict, params: dict, durations: dict, git: dict, started: _dt.datetime) -> dict:
    """``provenance.json``: ``data`` is the run's dataset description (``dataset.json``)."""
    return {
        "study": STUDY_NAME,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git,
        "params": params,
        "seeds": {k: v for k, v in params.items() if "seed" in k},
        "packages": package_versions(),
        "data": data,
        "machine": machine_info(),
        "notebook_seconds": {k: round(v, 1) for k, v in durations.items()},
        "total_seconds": round(sum(durations.values()), 1),
    }
