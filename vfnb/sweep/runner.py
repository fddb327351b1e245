"""Running a sweep: every unfinished grid point in sequence, resumable, a failing run reported and skipped."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..io import atomic_write_json, atomic_write_yaml
from ..study import merge_params, read_json, run_study
from .locks import pid_lock
from .plan import SweepError, SweepPlan, load_sweep, select_points
from .report import write_sweep_report


@dataclass
class SweepResult:
    """What one ``run_sweep`` call did: run names ``ran``, ``skipped`` (finished before), ``failed`` (name -> message)."""

    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    report: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


def run_sweep(params_files: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
              out: str | os.PathLike = "results/sweep", only: Sequence[str] = (), aggregate_only: bool = False,
              progress: bool = True, run_one: Callable[..., Any] = run_study) -> SweepResult:
    """Run every grid point not yet finished, in sequence, and write the aggregated report.

    ``run_one(params_files, overrides, out, progress=...)`` runs one study (default
    :func:`vfnb.study.run_study`); it gets the sweep's ``study_params`` then
    ``<out>/params/<run>.yaml`` (that run's overrides and grid values). ``only``:
    ``KEY=VALUE`` filters; the matching points run and no report is written.
    ``aggregate_only``: run nothing, write the report. A run that raises is recorded
    in ``failed`` and the sweep goes on.
    """
    out = Path(out).absolute()  # the studies it runs change their working directory
    plan = load_sweep(params_files, overrides)
    result = SweepResult(out)
    if aggregate_only:
        if only:
            raise SweepError("--only and --aggregate-only exclude each other")
        with pid_lock(out / "sweep.lock", f"sweep {out}"):
            result.report = write_sweep_report(out, plan)
        return result
    points = select_points(plan, only) if only else plan.points
    with contextlib.ExitStack() as stack:
        if not only:  # --only jobs of one sweep run side by side; each locks just its run
            stack.enter_context(pid_lock(out / "sweep.lock", f"sweep {out}"))
        _claim_plan(out, plan)
        for i, (name, point) in enumerate(points):
            run_dir = out / "runs" / name
            if is_finished(run_dir):
                result.skipped.append(name)
                _say(f"[{i + 1}/{len(points)}] {name}: finished before, kept", progress)
                continue
            _say(f"[{i + 1}/{len(points)}] {name} ...", progress)
            try:
                with pid_lock(out / "runs" / f"{name}.lock", f"run {name}"):
                    if is_finished(run_dir):  # finished by another job since the check above
                        result.skipped.append(name)
                        continue
                    if run_dir.exists():
                        raise SweepError(f"{run_dir}: exists without metrics.json (not a finished run); "
                                         "remove it to run it again")
                    run_params = atomic_write_yaml(out / "params" / f"{name}.yaml", {**plan.overrides, **point})
                    run_one([*plan.study_params, run_params], (), run_dir, progress=progress)
                result.ran.append(name)
            except KeyboardInterrupt:  # Ctrl-C stops the sweep, not just this run
                raise KeyboardInterrupt(f"vfnb sweep stopped while {name} ran; the finished runs are kept and "
                                        f"{name} was removed (the same command resumes the sweep)") from None
            except Exception as exc:  # a failing run must not stop the others
                result.failed[name] = f"{type(exc).__name__}: {exc}"
                _say(f"[{i + 1}/{len(points)}] {name} FAILED: {exc}", progress)
            if not only:
                result.report = write_sweep_report(out, plan, result.failed)
        if not only:
            result.report = write_sweep_report(out, plan, result.failed)
    return result


def _claim_plan(out: Path, plan: SweepPlan) -> None:
    """Record what every run of ``out`` is made with (``plan.json``); refuse a changed plan over finished runs.

    A finished run is never redone, so resuming with other study files, overrides or
    study parameters (an edited ``params/default.yaml`` included) would mix runs made
    two ways in one report: refused, naming what changed. The recorded ``study``
    block is every study parameter the runs share (the merged files and overrides,
    grid keys aside).
    """
    now = json.loads(json.dumps({"study_params": [str(p) for p in plan.study_params], "overrides": plan.overrides,
                                 "study": _shared_study_params(plan)}, default=str))
    recorded = read_json(out / "plan.json")
    if isinstance(recorded, dict) and "study" not in recorded:
        # a plan written before study parameters were recorded: only its files and overrides can be compared
        recorded = {**recorded, "study": now["study"]}
    finished = [n for n, _ in plan.points if is_finished(out / "runs" / n)]
    if isinstance(recorded, dict) and recorded != now and finished:
        raise SweepError(f"{out / 'plan.json'}: the finished runs ({', '.join(finished)}) were made with "
                         + "; ".join(_plan_changes(recorded, now))
                         + ". Use another --out for the new plan (a finished run is never redone)")
    atomic_write_json(out / "plan.json", now)


def _shared_study_params(plan: SweepPlan) -> dict:
    """The study parameters every run of ``plan`` gets (grid keys removed: they differ by design)."""
    merged = {**merge_params(plan.study_params), **plan.overrides}
    return {k: v for k, v in sorted(merged.items()) if k not in plan.grid}


def _plan_changes(recorded: dict, now: dict) -> list[str]:
    """``"key = old, but this sweep asks new"`` for every changed entry of the plan (study parameters one by one)."""
    changes = []
    for key in ("study_params", "overrides"):
        if recorded.get(key) != now[key]:
            changes.append(f"{key} = {recorded.get(key)!r}, but this sweep asks {now[key]!r}")
    old, new = recorded.get("study") or {}, now["study"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f"study parameter {key} = {old.get(key, '(unset)')!r}, but this sweep asks "
                           f"{new.get(key, '(unset)')!r}")
    return changes
