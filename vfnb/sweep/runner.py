"""Running a sweep: every unfinished grid point, here in sequence or as SLURM jobs; resumable, a failing run
reported and skipped."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..io import atomic_write_json, atomic_write_yaml
from ..study import merge_params, read_json, run_study
from .locks import pid_lock
from .plan import SweepError, SweepPlan, load_sweep, select_points
from .report import write_sweep_report
from .slurm import PointJob, check_cluster, run_on_slurm, slurm_executor, slurm_options


@dataclass
class SweepResult:
    """What one ``run_sweep`` call did: run names ``ran``, ``skipped`` (finished before), ``failed`` (name -> message),
    ``jobs`` (name -> SLURM job id, with ``--executor slurm``)."""

    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    jobs: dict[str, str] = field(default_factory=dict)  # point -> SLURM job id submitted (or waited for) by this call

    @property
    def ok(self) -> bool:
        return not self.failed


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "metrics.json").is_file()


EXECUTORS = ("local", "slurm")


def run_point(out: str | os.PathLike, name: str, study_params: Sequence[str], values: dict,
              run_one: Callable[..., Any] = run_study, progress: bool = True) -> dict:
    """Run grid point ``name`` into ``out/runs/<name>`` under its run lock: what every executor runs for a point.

    Writes ``out/params/<name>.yaml`` (``values``: the sweep's overrides and the point's grid
    values) and calls ``run_one(study_params + [that file], (), run dir, progress=...)``. A
    point another job finished meanwhile is left alone (``ran`` False). Returns where it ran
    (``host``; ``slurm_job_id`` inside a SLURM job), plain values a SLURM job hands back.
    """
    out = Path(out)
    run_dir = out / "runs" / name
    where = {"ran": False, "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    with pid_lock(out / "runs" / f"{name}.lock", f"run {name}"):
        if is_finished(run_dir):  # finished by another job since the caller looked
            return where
        _refuse_unfinished_folder(run_dir)
        run_params = atomic_write_yaml(out / "params" / f"{name}.yaml", values)
        run_one([*study_params, run_params], (), run_dir, progress=progress)
    return {**where, "ran": True}


def _refuse_unfinished_folder(run_dir: Path) -> None:
    if run_dir.exists():
        raise SweepError(f"{run_dir}: exists without metrics.json (not a finished run); remove it to run it again")


def run_sweep(params_files: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
              out: str | os.PathLike = "results/sweep", only: Sequence[str] = (), aggregate_only: bool = False,
              progress: bool = True, run_one: Callable[..., Any] = run_study, executor: str = "local",
              slurm: Mapping[str, Any] | None = None, make_executor: Callable | None = None) -> SweepResult:
    """Run every grid point not yet finished and write the aggregated report.

    ``run_one(params_files, overrides, out, progress=...)`` runs one study (default
    :func:`vfnb.study.run_study`); it gets the sweep's ``study_params`` then
    ``<out>/params/<run>.yaml`` (that run's overrides and grid values). ``only``:
    ``KEY=VALUE`` filters; the matching points run and no report is written.
    ``aggregate_only``: run nothing, write the report. A run that raises is recorded
    in ``failed`` and the sweep goes on.

    ``executor``: ``"local"`` runs the points here, in sequence; ``"slurm"`` submits one
    SLURM job per point (:mod:`vfnb.sweep.slurm`; ``slurm``: ``partition``, ``time``,
    ``cpus``, ``mem``, over the sweep file's ``slurm:`` block), waits for them all, then
    reports as the local executor does; ``run_one`` must then be a module-level function.
    ``make_executor(folder, options, job_name)``: the submitit executor (default: SLURM's).
    """
    out = Path(out).absolute()  # the studies it runs change their working directory
    plan = load_sweep(params_files, overrides)
    if executor not in EXECUTORS:
        raise SweepError(f"executor {executor!r} is unknown; expected one of {', '.join(EXECUTORS)}")
    options = None
    if not aggregate_only:  # the slurm: block is checked whatever the executor: a typo there is not ignored
        options = slurm_options(plan.slurm, plan.sources.get("slurm", "the sweep file"), slurm)
        if executor != "slurm":
            options = None
        elif make_executor is None:
            check_cluster(options)
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
        todo = []
        for i, (name, point) in enumerate(points):
            if is_finished(out / "runs" / name):
                result.skipped.append(name)
                _say(f"[{i + 1}/{len(points)}] {name}: finished before, kept", progress)
            elif options is not None:
                todo.append((name, point))
            else:
                _run_here(out, plan, i, len(points), name, point, run_one, progress, result, write_report=not only)
        if todo:
            _run_on_slurm(out, plan, todo, options, run_one, make_executor, progress, result, write_report=not only)
        if not only:
            result.report = write_sweep_report(out, plan, result.failed)
    return result


def _run_here(out: Path, plan: SweepPlan, i: int, n: int, name: str, point: dict, run_one: Callable,
              progress: bool, result: SweepResult, write_report: bool) -> None:
    """The local executor: one point in this process; a failure is recorded, not raised."""
    _say(f"[{i + 1}/{n}] {name} ...", progress)
    try:
        ran = run_point(out, name, [str(p) for p in plan.study_params], {**plan.overrides, **point}, run_one,
                        progress)["ran"]
        (result.ran if ran else result.skipped).append(name)
    except KeyboardInterrupt:  # Ctrl-C stops the sweep, not just this run
        raise KeyboardInterrupt(f"vfnb sweep stopped while {name} ran; the finished runs are kept and "
                                f"{name} was removed (the same command resumes the sweep)") from None
    except Exception as exc:  # a failing run must not stop the others
        result.failed[name] = f"{type(exc).__name__}: {exc}"
        _say(f"[{i + 1}/{n}] {name} FAILED: {exc}", progress)
    if write_report:
        result.report = write_sweep_report(out, plan, result.failed)


def _run_on_slurm(out: Path, plan: SweepPlan, todo: list, options, run_one: Callable, make_executor,
                  progress: bool, result: SweepResult, write_report: bool) -> None:
    """The SLURM executor: every point of ``todo`` as one job, the report rewritten as each job ends."""
    jobs, names = [], [name for name, _ in todo]
    study_params = [str(Path(p).absolute()) for p in plan.study_params]  # the job may start elsewhere
    for name, point in todo:
        run_dir = out / "runs" / name
        try:
            _refuse_unfinished_folder(run_dir)
        except SweepError as exc:
            result.failed[name] = str(exc)
            _say(f"[{names.index(name) + 1}/{len(names)}] {name} FAILED: {exc}", progress)
            continue
        jobs.append(PointJob(name, run_dir, (str(out), name, study_params, {**plan.overrides, **point}, run_one, True)))

    def on_end(name: str, job_id: str | None, message: str | None, value: Any) -> None:
        k = f"[{names.index(name) + 1}/{len(names)}] {name}"
        if message is not None:
            result.failed[name] = message
            _say(f"{k} FAILED: {message}", progress)
        else:
            ran = not isinstance(value, dict) or value.get("ran", True)
            (result.ran if ran else result.skipped).append(name)
            _say(f"{k}: finished (SLURM job {job_id})", progress)
        if write_report:
            result.report = write_sweep_report(out, plan, result.failed)

    result.jobs.update(run_on_slurm(out, jobs, options, run_point, on_end, make_executor or slurm_executor, progress))


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
