"""End to end: the default study's wall time.

``--study-dir results/<run>``: read ``provenance.json`` of a finished study
(``started_utc`` -> ``finished_utc``, and the seconds of each notebook).
``--with-study``: run ``vfnb study --params params/default.yaml`` into the scratch
folder with a fresh ``data_dir`` (so SynthSpine generation and pre-processing are
timed too) and time it; ~15 min on 2 cores. Neither: the section is not measured.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from .harness import REPO_ROOT, single


class NotRequested(RuntimeError):
    pass


def from_provenance(study_dir: Path) -> dict:
    path = Path(study_dir) / "provenance.json"
    try:
        prov = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuntimeError(f"{path}: cannot read the study's provenance ({exc})") from None
    start = dt.datetime.fromisoformat(prov["started_utc"])
    end = dt.datetime.fromisoformat(prov["finished_utc"])
    machine = prov.get("machine") or {}
    where = f"{study_dir} ({prov['started_utc']}); machine of that run: {machine}" if machine else str(study_dir)
    figures = {"study.wall_minutes": single((end - start).total_seconds() / 60.0, "min",
                                            f"default study, start to finish, from {path}",
                                            source=where)}
    for name, secs in (prov.get("notebook_seconds") or {}).items():
        figures[f"study.notebook_seconds_{name}"] = single(secs, "s", f"notebook {name} of that run")
    return figures


def run(cfg) -> dict:
    if cfg.study_dir is not None:
        return from_provenance(cfg.study_dir)
    if not cfg.with_study:
        raise NotRequested("pass --study-dir results/<run> (a finished default study) or --with-study")
    params = "params/smoke.yaml" if cfg.quick else "params/default.yaml"
    out = cfg.workdir / "study"
    cmd = [sys.executable, "-m", "vfnb", "study", "--params", str(REPO_ROOT / "params/default.yaml")]
    if cfg.quick:
        cmd += ["--params", str(REPO_ROOT / params)]
    cmd += ["-p", f"data_dir={cfg.workdir / 'study-data'}", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=max(cfg.timeout, 7200))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"vfnb study failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    figures = from_provenance(out)
    figures["study.wall_minutes_measured"] = single(wall / 60.0, "min", "`vfnb study` (" + " + ".join(
        ["default.yaml"] + (["smoke.yaml"] if cfg.quick else [])) + ") timed by the benchmark, fresh data_dir")
    return figures
