"""Sweep points as SLURM jobs (``vfnb sweep --executor slurm``), submitted and watched through submitit.

Each unfinished grid point becomes one job that runs :func:`vfnb.sweep.runner.run_point`,
the very function the local executor calls for a point, so a job leaves the same run
folder a local run would. What a job gets is pickled by reference only (module-level
functions, paths, plain values): it must import on the worker, which runs the same
Python and package from the same (shared) folder. submitit's files (the sbatch script,
the pickled call, the job's stdout/stderr logs and its result) go into ``<out>/slurm/``,
and ``<out>/slurm/jobs.json`` records every point's job: id, state, log paths.

Options (``--slurm-partition``, ``--slurm-time``, ``--slurm-cpus``, ``--slurm-mem``, or
a ``slurm:`` block of the sweep file with keys ``partition``, ``time``, ``cpus``, ``mem``;
an option given on the command line wins) are checked before anything is submitted.

Waiting: one ``squeue`` call per poll for all jobs (``sacct`` needs the accounting
database, which small clusters lack), a line whenever the counts of pending, running
and ended jobs change. Ctrl-C cancels this sweep's unfinished jobs (``scancel``);
finished points are kept and the same command resumes. A sweep whose submitting
process was killed leaves its jobs running: the next run of the command waits for
those (read back from ``jobs.json``) instead of submitting them again.
"""

from __future__ import annotations

import datetime as _dt
import math
import pickle
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..io import atomic_write_json
from ..study import read_json
from .plan import SweepError

SLURM_KEYS = ("partition", "time", "cpus", "mem")
DEFAULT_TIME_MIN = 240  # generous for one default study; set --slurm-time to what one study takes on the nodes
DEFAULT_CPUS = 2
POLL_S = 10.0
RESULT_GRACE_S = 30.0  # a job's result file may show up on a shared file system after squeue says it ended

_PARTITION = re.compile(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*")
_MEM = re.compile(r"([0-9]+)\s*([KMGT]?)B?", re.IGNORECASE)
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
_QUEUED = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STAGE_OUT"}


@dataclass(frozen=True)
class SlurmOptions:
    """The sbatch resources of every job of a sweep: partition (cluster default when None), time limit in
    minutes, CPUs per task, memory (``--mem``, e.g. ``16G``; cluster default when None)."""

    partition: str | None = None
    time_min: int = DEFAULT_TIME_MIN
    cpus: int = DEFAULT_CPUS
    mem: str | None = None

    @property
    def signal_delay_s(self) -> int:
        """Seconds before the time limit at which SLURM warns the job: submitit's 90 s, but at most a quarter
        of the limit, so a short limit (a minute or two) does not warn a job that has just started."""
        return min(90, self.time_min * 60 // 4)

    def sbatch_parameters(self) -> dict:
        """submitit's ``SlurmExecutor.update_parameters`` keywords for these options."""
        params: dict[str, Any] = {"time": self.time_min, "cpus_per_task": self.cpus, "nodes": 1, "ntasks_per_node": 1,
                                  "signal_delay_s": self.signal_delay_s}
        if self.partition:
            params["partition"] = self.partition
        if self.mem:
            params["mem"] = self.mem
        return params


def parse_time(value: Any, where: str) -> int:
    """A SLURM time limit in whole minutes: minutes (``90``) or ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS`` as sbatch reads them; seconds round up. Refuses zero, negative and other text."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SweepError(f"{where} = {value!r}: expected a time limit, minutes (e.g. 90) or D-HH:MM:SS")
    text = str(value).strip()
    match = _TIME.fullmatch(text)
    if not match:
        raise SweepError(f"{where} = {value!r}: expected a time limit, minutes (e.g. 90) or HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # MM
        seconds = a * 60
    if seconds <= 0:
        raise SweepError(f"{where} = {value!r}: expected a time limit above zero")
    return math.ceil(seconds / 60)


def parse_mem(value: Any, where: str) -> str:
    """Memory per job as sbatch's ``--mem`` takes it (``16G``, ``800M``; a bare number is megabytes)."""
    plain = isinstance(value, (int, str)) and not isinstance(value, bool)
    match = _MEM.fullmatch(str(value).strip()) if plain else None
    if not match or int(match.group(1)) <= 0:
        raise SweepError(f"{where} = {value!r}: expected memory above zero, e.g. 16G or 8000M (a bare number is MB)")
    return f"{int(match.group(1))}{(match.group(2) or 'M').upper()}"


def parse_cpus(value: Any, where: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())):
        raise SweepError(f"{where} = {value!r}: expected a whole number of CPUs per job, 1 or more")
    if int(value) < 1:
        raise SweepError(f"{where} = {value!r}: expected a whole number of CPUs per job, 1 or more")
    return int(value)


def parse_partition(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _PARTITION.fullmatch(value.strip()):
        raise SweepError(f"{where} = {value!r}: expected a partition name (letters, digits, '_', '.', '-'; "
                         "several separated by commas)")
    return value.strip()


_PARSERS: dict[str, Callable[[Any, str], Any]] = {"partition": parse_partition, "time": parse_time,
                                                  "cpus": parse_cpus, "mem": parse_mem}
_FIELDS = {"partition": "partition", "time": "time_min", "cpus": "cpus", "mem": "mem"}


def slurm_options(block: Any = None, block_source: str = "the sweep file",
                  options: Mapping[str, Any] | None = None) -> SlurmOptions:
    """The checked options of a sweep's jobs: the sweep file's ``slurm:`` block, then ``options`` (the
    ``--slurm-*`` flags or the API's ``slurm=`` mapping; ``None`` values are not given) winning.

    Every refusal is a :class:`SweepError` naming where the value came from (the file and key, or the
    flag) and what was expected; nothing is submitted before this returns.
    """
    if block is None:
        block = {}
    if not isinstance(block, Mapping):
        raise SweepError(f"{block_source}: 'slurm' must be a mapping with keys {', '.join(SLURM_KEYS)}")
    values: dict[str, tuple[Any, str]] = {}
    for key, value in block.items():
        if key not in SLURM_KEYS:
            raise SweepError(f"{block_source}: slurm: unknown key {key!r}; expected {', '.join(SLURM_KEYS)}")
        if value is not None:
            values[key] = (value, f"{block_source}: slurm: {key}")
    for key, value in (options or {}).items():
        if key not in SLURM_KEYS:
            raise SweepError(f"slurm option {key!r} is unknown; expected {', '.join(SLURM_KEYS)}")
        if value is not None:
            values[key] = (value, f"--slurm-{key}")
    return SlurmOptions(**{_FIELDS[key]: _PARSERS[key](value, where) for key, (value, where) in values.items()})


def check_cluster(options: SlurmOptions) -> None:
    """Refuse before submitting when this machine cannot submit (no ``sbatch``, no controller answering)
    or the partition asked for is not one the cluster has."""
    for command in ("sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(command) is None:
            raise SweepError(f"--executor slurm: {command!r} is not on PATH; run vfnb sweep where SLURM's commands "
                             "are (a cluster's login node), or use --executor local")
    try:
        listed = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SweepError("--executor slurm: sinfo did not answer within 60 s (is slurmctld running?)") from None
    if listed.returncode != 0:
        raise SweepError(f"--executor slurm: sinfo failed: {(listed.stderr or listed.stdout).strip()} "
                         "(is slurmctld running, SLURM_CONF set?)")
    partitions = sorted(set(listed.stdout.split()))
    for name in (options.partition or "").split(","):
        if name and name not in partitions:
            raise SweepError(f"--slurm-partition {options.partition}: no partition {name!r} on this cluster "
                             f"(sinfo lists {', '.join(partitions) or 'none'})")


def slurm_executor(folder: Path, options: SlurmOptions, job_name: str):
    """A submitit ``SlurmExecutor`` writing into ``folder``, with ``options`` as sbatch resources."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=0, python=sys.executable)
    executor.update_parameters(job_name=job_name, **options.sbatch_parameters())
    return executor


def check_picklable(function: Callable, args: tuple, what: str) -> None:
    """Refuse a call that would not import on the worker: plain pickle (by reference) must take it, and no
    part may live in ``__main__`` (a script's functions do not exist in the job's Python)."""
    module = getattr(function, "__module__", None)
    if module in (None, "__main__"):
        raise SweepError(f"{what}: {function!r} is defined in a script ({module}); a SLURM job can only run a "
                         "function it can import: define it in a module")
    try:
        pickle.dumps((function, args))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise SweepError(f"{what}: cannot be sent to a SLURM job ({exc}); the function that runs one study must "
                         "be a module-level function and its arguments plain values") from None


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """Each job's state as ``squeue`` reports it (ended jobs too, while the controller still lists them);
    a job it no longer lists is absent. ``None`` when squeue fails (then nothing is concluded)."""
    if not job_ids:
        return {}
    try:
        done = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T", "-j", ",".join(job_ids)],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        return None
    states = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in job_ids:
            states[parts[0]] = parts[1]
    return states


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobRecord:
    """One point's job as ``jobs.json`` keeps it; ``outcome``: ``submitted``, ``finished``, ``failed``,
    ``cancelled``; ``worker``: what the job itself reported (host, SLURM job id) when it finished."""

    job_id: str
    submitted: str
    stdout: str
    stderr: str
    state: str = "PENDING"
    outcome: str = "submitted"
    ended: str | None = None
    message: str | None = None
    worker: dict | None = None
    earlier_job_ids: list | None = None


class JobBook:
    """``<out>/slurm/jobs.json``: the job of every point of a sweep, rewritten atomically on every change."""

    def __init__(self, folder: Path):
        self.path = folder / "jobs.json"
        data = read_json(self.path)
        raw = data.get("jobs", {}) if isinstance(data, dict) else {}
        self.jobs: dict[str, JobRecord] = {}
        for name, entry in raw.items():
            try:
                self.jobs[name] = JobRecord(**entry)
            except TypeError:  # a record this version cannot read: forgotten, never trusted
                continue

    def add(self, name: str, job) -> JobRecord:
        old = self.jobs.get(name)
        earlier = [*(old.earlier_job_ids or []), old.job_id] if old else None
        record = JobRecord(str(job.job_id), _now(), str(job.paths.stdout), str(job.paths.stderr),
                           earlier_job_ids=earlier)
        self.jobs[name] = record
        return record

    def save(self, options: SlurmOptions) -> None:
        atomic_write_json(self.path, {"executor": "slurm", "options": asdict(options),
                                      "jobs": {name: asdict(record) for name, record in self.jobs.items()}})


def failure_message(job, record: JobRecord, run_dir: Path) -> str:
    """The job's error in one line, with its SLURM job id, its log and the point's run folder.

    With a result file the job's function raised: the last exception line of its traceback.
    Without one, SLURM ended the job before the function returned (time limit, memory, scancel).
    """
    detail = f"the job ended {record.state} without a result (time limit, memory or scancel: see its log)"
    if job.paths.result_pickle.exists() or not _is_slurm(job):
        lines = [line.strip() for line in str(job.exception() or "").splitlines()]
        errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
        if errors:
            detail = errors[-1]
    return f"{detail} (SLURM job {record.job_id}; log {record.stderr}; run folder {run_dir})"


@dataclass
class PointJob:
    """A grid point handed to SLURM: its name, run folder and the arguments of the function the job runs."""

    name: str
    run_dir: Path
    args: tuple


def run_on_slurm(out: Path, points: list[PointJob], options: SlurmOptions, function: Callable,
                 on_end: Callable[[str, str | None, str | None, Any], None], make_executor: Callable = slurm_executor,
                 progress: bool = True, poll_s: float = POLL_S) -> dict[str, str]:
    """Submit one job per point running ``function(*point.args)``, wait for all, return ``{point: job id}``.

    ``on_end(name, job id or None, failure message or None, the function's return value)`` is called as
    each job ends. A point whose job (recorded in ``jobs.json``) is still queued or running is waited for, not
    submitted again. The first submission failing raises :class:`SweepError` (nothing was submitted);
    a later one is reported through ``on_end``. Ctrl-C cancels the unfinished jobs, then re-raises.
    """
    book = JobBook(out / "slurm")
    watched: dict[str, tuple[Any, PointJob]] = {}
    reattach = make_executor is slurm_executor
    queued = queue_states([book.jobs[p.name].job_id for p in points if p.name in book.jobs]) if reattach else {}
    if queued is None:
        raise SweepError("--executor slurm: squeue failed, so the jobs of an earlier run of this sweep cannot be "
                         f"checked ({book.path}); is slurmctld answering?")
    try:
        _submit_all(out, points, options, function, on_end, make_executor, progress, book, queued, watched)
        ids = {name: book.jobs[name].job_id for name in watched}
        _wait(watched, book, options, on_end, progress, poll_s)
    except KeyboardInterrupt:
        _cancel(watched, book, options)
        raise
    return ids


def _submit_all(out: Path, points: list[PointJob], options: SlurmOptions, function: Callable, on_end: Callable,
                make_executor: Callable, progress: bool, book: JobBook, queued: dict, watched: dict) -> None:
    """Submit a job per point into ``watched``, or watch the still-queued job an earlier run submitted."""
    import submitit

    folder = out / "slurm"
    for point in points:
        record = book.jobs.get(point.name)
        if record is not None and queued.get(record.job_id) in _QUEUED:
            watched[point.name] = (submitit.SlurmJob(folder=folder, job_id=record.job_id), point)
            _say(f"{point.name}: SLURM job {record.job_id} of an earlier run of this sweep is still "
                 f"{queued[record.job_id]}: waiting for it", progress)
            continue
        check_picklable(function, point.args, f"point {point.name}")
        try:
            job = make_executor(folder, options, f"vfnb-{out.name}-{point.name}").submit(function, *point.args)
        except Exception as exc:  # sbatch refused: resources the cluster has not, a full queue, ...
            message = f"submission failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
            if not watched:
                raise SweepError(f"--executor slurm: {message}") from None
            on_end(point.name, None, message, None)
            continue
        record = book.add(point.name, job)
        book.save(options)
        watched[point.name] = (job, point)
        _say(f"{point.name}: submitted as SLURM job {record.job_id} (log {record.stderr})", progress)


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(f"slurm: {text}", file=sys.stderr, flush=True)


def _wait(watched: dict, book: JobBook, options: SlurmOptions, on_end: Callable, progress: bool,
          poll_s: float) -> None:
    """Poll until every watched job has ended; one progress line whenever the counts change (or every 5 min)."""
    total, failed = len(watched), 0
    gone_since: dict[str, float] = {}
    start, shown, shown_at = time.monotonic(), None, 0.0
    while watched:
        slurm_ids = [book.jobs[n].job_id for n, (job, _) in watched.items() if _is_slurm(job)]
        states = queue_states(slurm_ids)
        if states is None:  # squeue did not answer this time: conclude nothing, ask again
            states = {book.jobs[n].job_id: book.jobs[n].state for n in watched}
        for name, (job, point) in list(watched.items()):
            record = book.jobs[name]
            if _is_slurm(job):
                record.state = states.get(record.job_id, record.state if record.state not in _QUEUED else "ENDED")
                ended = job.paths.result_pickle.exists()
                if not ended and record.state not in _QUEUED:  # ended without a result yet: a slow file system?
                    ended = time.monotonic() - gone_since.setdefault(name, time.monotonic()) > RESULT_GRACE_S
            else:  # another submitit executor (tests): its own state
                ended = job.done()
                record.state = str(job.state)
            if ended:
                failed += _end(name, job, point, book, options, on_end)
                del watched[name]
        counts = (sum(book.jobs[n].state == "PENDING" for n in watched),
                  sum(book.jobs[n].state == "RUNNING" for n in watched))
        now = time.monotonic()
        if progress and (counts != shown or now - shown_at > 300):
            elapsed = _dt.timedelta(seconds=round(now - start))
            _say(f"{total} jobs: {counts[0]} pending, {counts[1]} running, {total - len(watched)} ended "
                 f"({failed} failed) [{elapsed}]", True)
            shown, shown_at = counts, now
        if watched:
            time.sleep(poll_s)


def _is_slurm(job) -> bool:
    import submitit

    return isinstance(job, submitit.SlurmJob)


def _end(name: str, job, point: PointJob, book: JobBook, options: SlurmOptions, on_end: Callable) -> int:
    """Record how the job of ``name`` ended, tell ``on_end``; 1 when it failed."""
    record = book.jobs[name]
    record.ended = _now()
    value, message = None, None
    try:
        if _is_slurm(job) and not job.paths.result_pickle.exists():
            raise RuntimeError("no result")
        value = job.result()
    except Exception:
        message = failure_message(job, record, point.run_dir)
    record.outcome, record.message = ("failed", message) if message else ("finished", None)
    if isinstance(value, dict):
        record.worker = value
    book.save(options)
    on_end(name, record.job_id, message, value)
    return 1 if message else 0


def _cancel(watched: dict, book: JobBook, options: SlurmOptions) -> None:
    """Ctrl-C: cancel the jobs not ended (scancel), record them as cancelled."""
    for name, (job, _) in watched.items():
        job.cancel(check=False)
        record = book.jobs[name]
        record.outcome, record.state, record.ended = "cancelled", "CANCELLED", _now()
    book.save(options)
    ids = ", ".join(book.jobs[name].job_id for name in watched)
    print(f"interrupted: cancelled SLURM job(s) {ids or 'none'} (scancel); finished points are kept; "
          "run the same command again to resume", file=sys.stderr, flush=True)
