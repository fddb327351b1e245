"""Sweeps: the study run over a grid of seeds and/or folds, then one report across the runs.

``run_sweep(params_files, overrides, out)`` (``vfnb sweep --params params/sweep.yaml --out DIR``)
reads a sweep file (``params/sweep.yaml`` documents its keys: ``study_params``,
``overrides``, ``grid`` and, for SLURM, ``slurm``), runs :func:`vfnb.study.run_study` once
per grid point, in sequence here or as one SLURM job each (``executor="slurm"``), into ``DIR/runs/<key>-<value>[_<key>-<value>]``, and after every run writes
``DIR/sweep.json``, ``DIR/summary.md``, ``DIR/index.html`` and ``DIR/figures/``: every
headline metric per model as the mean and 95 % t-interval across runs, the paired
difference SupCon minus CE per run, and the budget curves (validation probe /
classifier against optimizer steps). Intervals are across training runs (seeds,
folds), not the per-run bootstrap over patients.

Resuming: a run folder holding ``metrics.json`` is finished (``run_study`` moves a
run into place only when complete) and is never run again, so the same command
continues an interrupted sweep. A failing run is reported and the sweep goes on; the
report uses the finished runs and says how many there are.

On SLURM, ``vfnb sweep ... --executor slurm`` submits the jobs itself (:mod:`.slurm`, through
submitit), waits for them and writes the report. By hand, one run per cluster job: every
job runs one grid point, then one job writes the report::

    vfnb sweep --params params/sweep.yaml --out results/sweep-x --only seed=3      # job k: seed=k
    vfnb sweep --params params/sweep.yaml --out results/sweep-x --aggregate-only   # after all jobs

``--only`` runs the points matching every ``KEY=VALUE`` given and writes no report.
Locks (a JSON file with pid and host): a sweep or ``--aggregate-only`` holds
``DIR/sweep.lock``; every run holds ``DIR/runs/<name>.lock`` while it runs, so jobs
on several nodes can share ``DIR`` on a shared file system, each on its own point.
A lock left by a dead process on the same host is taken over; one from another host
is not (its pid cannot be checked there): remove it by hand once that job is gone.

Modules: :mod:`.plan` (sweep files into a plan), :mod:`.locks`, :mod:`.runner`
(``run_sweep``, ``run_point``), :mod:`.slurm` (the SLURM executor) and :mod:`.report`
(statistics across runs and the pages). This file only re-exports.
"""

from ..evaluate import mean_interval
from .locks import pid_lock
from .plan import SWEEP_KEYS, SweepError, SweepPlan, load_sweep, run_name, select_points
from .report import ANSWER_METRICS, CONFIDENCE, PAIRS, aggregate, answer, collect_runs, write_sweep_report
from .runner import EXECUTORS, SweepResult, is_finished, run_point, run_sweep
from .slurm import SlurmOptions, slurm_options

__all__ = ["ANSWER_METRICS", "CONFIDENCE", "EXECUTORS", "PAIRS", "SWEEP_KEYS", "SlurmOptions", "SweepError",
           "SweepPlan", "SweepResult", "aggregate", "answer", "collect_runs", "is_finished", "load_sweep",
           "mean_interval", "pid_lock", "run_name", "run_point", "run_sweep", "select_points", "slurm_options",
           "write_sweep_report"]
