"""Sweeps: the study run over a grid of seeds and/or folds, then one report across the runs.

``run_sweep(params_files, overrides, out)`` (``vfnb sweep --params params/sweep.yaml --out DIR``)
reads a sweep file (``params/sweep.yaml`` documents its three keys: ``study_params``,
``overrides``, ``grid``), runs :func:`vfnb.study.run_study` once per grid point, in
sequence, into ``DIR/runs/<key>-<value>[_<key>-<value>]``, and after every run writes
``DIR/sweep.json``, ``DIR/summary.md``, ``DIR/index.html`` and ``DIR/figures/``: every
headline metric per model as the mean and 95 % t-interval across runs, the paired
difference SupCon minus CE per run, and the budget curves (validation probe /
classifier against optimizer steps). Intervals are across training runs (seeds,
folds), not the per-run bootstrap over patients.

Resuming: a run folder holding ``metrics.json`` is finished (``run_study`` moves a
run into place only when complete) and is never run again, so the same command
continues an interrupted sweep. A failing run is reported and the sweep goes on; the
report uses the finished runs and says how many there are.

One run per cluster job: every job runs one grid point, then one job writes the report::

    vfnb sweep --params params/sweep.yaml --out results/sweep-x --only seed=3      # job k: seed=k
    vfnb sweep --params params/sweep.yaml --out results/sweep-x --aggregate-only   # after all jobs

``--only`` runs the points matching every ``KEY=VALUE`` given and writes no report.
Locks (a JSON file with pid and host): a sweep or ``--aggregate-only`` holds
``DIR/sweep.lock``; every run holds ``DIR/runs/<name>.lock`` while it runs, so jobs
on several nodes can share ``DIR`` on a shared file system, each on its own point.
A lock left by a dead process on the same host is taken over; one from another host
is not (its pid cannot be checked there): remove it by hand once that job is gone.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import html
import itertools
import json
import os
import re
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .budget import budget_curves, plot_budget_curves
from .errors import VfnbError
from .evaluate import HEADLINE_METRICS, METRIC_LABELS, MISSING, finite_values, mean_interval
from .io import atomic_write_json, atomic_write_text, atomic_write_yaml, load_yaml
from .plots import save_figure
from .study import (MODEL_TITLES, REPORT_CSS, dataset_sentence, default_params_file, html_table, md_table,
                    merge_params, model_title, parse_override, read_json, recipe_deviations, run_study, strip_tags,
                    unknown_key)

SWEEP_KEYS = ("study_params", "overrides", "grid")
CONFIDENCE = 0.95
# (SupCon model, baseline): the paired differences the report shows
PAIRS = (("supcon_linear", "ce"), ("supcon_finetune", "ce"))
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")


class SweepError(VfnbError):
    """A sweep cannot start or continue (bad sweep file, locked folder); the message says where."""


# ===================================================================== the plan
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

    def describe(self) -> dict:
        return {"study_params": [str(p) for p in self.study_params], "overrides": self.overrides,
                "grid": self.grid, "runs": len(self.points)}


def run_name(point: dict) -> str:
    """``{"seed": 3, "tag": "synth-f1"}`` -> ``"seed-3_tag-synth-f1"`` (values must be safe in a file name)."""
    return "_".join(f"{key}-{value}" for key, value in point.items())


def _read_sweep_keys(params_files, overrides) -> tuple[dict, dict, dict]:
    """The sweep keys from the files then the ``-p`` options, where each came from, and ``-p`` study parameters."""
    raw: dict[str, Any] = {"study_params": [str(default_params_file())], "overrides": {}, "grid": None}
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
    return SweepPlan(study_params, fixed, grid, _grid_points(grid, sources["grid"]), sources)


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


# ===================================================================== locks
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextlib.contextmanager
def pid_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``path`` (created exclusively, holding pid, host and time) while the context is open.

    A lock whose pid is dead on this host is taken over; otherwise :class:`SweepError`
    names the lock file, ``what`` it guards, and its holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "since_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json(path) or {}
            pid = holder.get("pid")
            stale = holder.get("host") == me["host"] and isinstance(pid, int) and not _pid_alive(pid)
            locked = SweepError(f"{path}: {what} is locked by pid {pid} on {holder.get('host', '?')} "
                                f"(since {holder.get('since_utc', '?')}); wait for it to end, or delete the lock "
                                "file if that process is gone")
            if not stale:
                raise locked from None
            # take the stale lock over by moving it aside; if what was moved is not the stale
            # lock (another process took it over in between), put it back and refuse
            aside = path.with_name(f".stale-{uuid.uuid4().hex[:8]}-{path.name}")
            try:
                os.replace(path, aside)
            except FileNotFoundError:
                continue
            if (read_json(aside) or {}) != holder:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
                aside.unlink()
                raise locked from None
            aside.unlink()
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    else:
        raise SweepError(f"{path}: could not take the lock for {what} (another process keeps taking it)")
    try:
        yield path
    finally:
        if (read_json(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


# ===================================================================== running
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
    out = Path(out)
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

    A finished run is never redone, so resuming with other study files or overrides would
    mix runs made two ways in one report: refused, naming what changed.
    """
    now = json.loads(json.dumps({"study_params": [str(p) for p in plan.study_params], "overrides": plan.overrides}))
    recorded = read_json(out / "plan.json")
    finished = [n for n, _ in plan.points if is_finished(out / "runs" / n)]
    if isinstance(recorded, dict) and recorded != now and finished:
        changed = [k for k in now if recorded.get(k) != now[k]]
        raise SweepError(f"{out / 'plan.json'}: the finished runs ({', '.join(finished)}) were made with "
                         + "; ".join(f"{k} = {recorded.get(k)!r}" for k in changed) + ", but this sweep asks "
                         + "; ".join(f"{k} = {now[k]!r}" for k in changed)
                         + ". Use another --out for the new plan (a finished run is never redone)")
    atomic_write_json(out / "plan.json", now)


# ===================================================================== statistics
def _metric_value(metrics_doc: dict, model: str, metric: str):
    entry = ((metrics_doc.get("models") or {}).get(model) or {}).get("metrics", {}).get(metric)
    value = entry.get("value") if isinstance(entry, dict) else entry
    return value if finite_values([value]) else None


def aggregate(runs: Sequence[dict], confidence: float = CONFIDENCE) -> tuple[dict, dict]:
    """Across-run statistics from ``runs`` (each ``{"metrics": {model: {metric: value}}}``).

    Returns ``(models, paired)``: ``models[model][metric]`` = :func:`mean_interval`;
    ``paired["<a> - <b>"][metric]`` = :func:`mean_interval` of the per-run difference
    a - b over the runs holding both, plus ``wins`` (runs where a > b) and ``ties``.
    """
    present = [m for m in MODEL_TITLES if any(m in r["metrics"] for r in runs)]
    present += sorted({m for r in runs for m in r["metrics"]} - set(present))
    models = {m: {k: mean_interval([r["metrics"].get(m, {}).get(k) for r in runs], confidence, bounds=(0.0, 1.0))
                  for k in HEADLINE_METRICS} for m in present}
    paired = {}
    for a, b in PAIRS:
        if a not in present or b not in present:
            continue
        table = {}
        for k in HEADLINE_METRICS:
            diffs = [r["metrics"][a][k] - r["metrics"][b][k] for r in runs
                     if finite_values([r["metrics"].get(a, {}).get(k)]) and finite_values([r["metrics"].get(b, {}).get(k)])]
            table[k] = {**mean_interval(diffs, confidence, bounds=(-1.0, 1.0)), "wins": sum(d > 0 for d in diffs),
                        "ties": sum(d == 0 for d in diffs)}
        paired[f"{a} - {b}"] = {"model": a, "baseline": b, "metrics": table}
    return models, paired


# ===================================================================== report
def _fmt(value, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cell(stats: dict, digits: int = 2) -> str:
    """``mean [low, high]``; "n/a" for an interval that does not exist (n < 2) or a missing mean."""
    if stats.get("mean") is None:
        return MISSING
    interval = (MISSING if stats.get("ci_low") is None
                else f"{_fmt(stats['ci_low'], digits)}, {_fmt(stats['ci_high'], digits)}")
    return f"{_fmt(stats['mean'], digits)} [{interval}]"


def _paired_cell(stats: dict) -> str:
    """``mean [low, high], won W/N`` (``, T ties`` when some runs tie)."""
    ties = f", {stats['ties']} ties" if stats.get("ties") else ""
    return f"{_cell(stats)}, won {stats['wins']}/{stats['n']}{ties}"


def collect_runs(out: Path, plan: SweepPlan) -> list[dict]:
    """The finished runs of ``plan`` in grid order: name, folder, grid values, headline metrics, dataset."""
    runs = []
    for name, point in plan.points:
        doc = read_json(out / "runs" / name / "metrics.json")
        if not isinstance(doc, dict):
            continue
        metrics = {m: {k: _metric_value(doc, m, k) for k in HEADLINE_METRICS} for m in (doc.get("models") or {})}
        params = read_json(out / "runs" / name / "provenance.json") or {}
        runs.append({"name": name, "folder": f"runs/{name}", "grid": point, "metrics": metrics,
                     "dataset": doc.get("dataset") or {}, "params": params.get("params") or {}})
    return runs


# the question the study asks, in the numbers that answer it: (metrics.json key, words)
ANSWER_METRICS = (("roc_auc", "fracture AUC"), ("macro_f1", "macro-F1"), ("recall_grade1", "grade-1 recall"))


def _verdict(d: dict) -> str:
    low, high = d.get("ci_low"), d.get("ci_high")
    if low is not None and low > 0:
        return f"SupCon higher (won {d['wins']}/{d['n']})"
    if high is not None and high < 0:
        return f"cross-entropy higher (SupCon won {d['wins']}/{d['n']})"
    return f"no difference these runs can tell (SupCon won {d.get('wins', 0)}/{d.get('n', 0)})"


def answer(models: dict, paired: dict, n_runs: int, pair: tuple[str, str] = ("supcon_linear", "ce")) -> dict:
    """Does SupCon beat cross-entropy at this budget? ``{"table": [...], "text": "..."}`` (empty text: no pair).

    Per :data:`ANSWER_METRICS`: both models' mean [interval] across runs, and the paired
    difference with its interval. The verdict per metric follows the interval of the
    paired difference only: above 0 SupCon is higher, below 0 cross-entropy is, and an
    interval that holds 0 (or none, with one run) shows no difference these runs can tell.
    """
    a, b = pair
    diff = (paired.get(f"{a} - {b}") or {}).get("metrics") or {}
    if a not in models or b not in models or not diff:
        return {"table": [], "text": ""}
    table = [{"metric": words, a: models[a].get(key) or {}, b: models[b].get(key) or {},
              "difference": diff.get(key) or {}, "verdict": _verdict(diff.get(key) or {})}
             for key, words in ANSWER_METRICS]
    text = (f"Over {n_runs} training run{'s' if n_runs != 1 else ''}, {model_title(a)} against the "
            f"{model_title(b).lower()}, paired run by run: "
            + "; ".join(f"{row['metric']}: {row['verdict']}" for row in table) + ".")
    return {"table": table, "text": text}


INTERVALS = (f"{100 * CONFIDENCE:.0f} % t-interval of the mean across training runs (seeds/folds), n - 1 degrees "
             "of freedom, clipped to the values a metric can take; not the per-run bootstrap over patients")
BUDGET_CAPTION = ("Validation macro-F1 and fracture AUC against {x}: a logistic-regression probe on the pooled "
                  "features of the SupCon encoder and of the cross-entropy baseline's encoder, refitted after every "
                  "epoch; line: mean across runs, band: lowest to highest run.")


@dataclass
class _SweepTables:
    """Everything the sweep's pages show, computed once for the HTML page and the Markdown summary."""

    title: str
    count: str
    grid_text: str
    dataset_text: str
    synthetic: bool
    verdict: dict
    answer_rows: list
    deviation_rows: list
    metric_rows: list
    paired_rows: list
    runs: list
    failed: dict
    figure: Path | None
    caption: str

    heads = property(lambda self: [METRIC_LABELS[k] for k in HEADLINE_METRICS])
    answer_head = ["Test metric", MODEL_TITLES["supcon_linear"], MODEL_TITLES["ce"], "Paired difference", "Verdict"]
    deviation_head = ["Parameter", "What it sets", "These runs", "Paper"]

    def run_rows(self, link) -> list:
        return [(link(r), [", ".join(f"{k}={v}" for k, v in r["grid"].items()), model_title(m),
                           *[_fmt(r["metrics"][m].get(k)) for k in HEADLINE_METRICS]])
                for r in self.runs for m in r["metrics"]]


def _sweep_document(out: Path, plan: SweepPlan, runs: list, models: dict, paired: dict, verdict: dict,
                    deviations: list, budget: dict, figure: Path | None, failed: dict) -> dict:
    return {
        "schema": 1,
        "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sweep": plan.describe(),
        "synthetic": any(r["dataset"].get("synthetic") for r in runs),
        "intervals": INTERVALS,
        "runs_planned": len(plan.points),
        "runs_finished": len(runs),
        "runs_missing": [n for n, _ in plan.points if n not in {r["name"] for r in runs}],
        "runs_failed": failed,
        "runs": [{k: r[k] for k in ("name", "folder", "grid", "metrics")} for r in runs],
        "models": {m: {"title": model_title(m), "metrics": v} for m, v in models.items()},
        "paired": paired,
        "answer": verdict,
        "recipe_deviations": deviations,
        "budget_curves": {**budget, "figure": "figures/budget_curves.png" if figure else None},
    }


def _sweep_html(t: _SweepTables) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(t.title)}</title>",
             f"<style>{REPORT_CSS}</style></head><body><h1>{e(t.title)}</h1>",
             f"<p>The study run once per grid point ({e(t.grid_text)}); {e(t.count)}.</p>"]
    if t.dataset_text:
        parts.append(f"<p class='{'synthetic' if t.synthetic else 'note'}'>{t.dataset_text}</p>")
    parts.append(f"<p class='note'>Brackets: {e(INTERVALS)}. “{MISSING}”: fewer than 2 runs.</p>")
    if t.verdict["text"]:
        parts += ["<h2>The study's question: does SupCon pretraining beat cross-entropy?</h2>",
                  f"<p>{e(t.verdict['text'])}</p>", html_table(t.answer_head, t.answer_rows)]
    if t.deviation_rows:
        parts += ["<h3>The recipe: where these runs depart from the paper</h3>",
                  html_table(t.deviation_head, t.deviation_rows)]
    parts += ["<h2>Test-set metrics across runs</h2>", html_table(["Model", *t.heads], t.metric_rows),
              "<h2>Paired difference, SupCon minus cross-entropy</h2>",
              "<p class='note'>Per run, the SupCon model's value minus the cross-entropy baseline's on the same "
              "seed/fold; mean [interval] of those differences, and in how many runs SupCon was higher.</p>",
              html_table(["Difference", *t.heads], t.paired_rows) if t.paired_rows else "<p>No run holds both models.</p>",
              "<h2>Budget curves</h2>"]
    if t.figure:
        data = base64.b64encode(t.figure.read_bytes()).decode("ascii")
        parts.append(f"<figure style='max-width:100%'><img src='data:image/png;base64,{data}' alt='{e(t.caption)}'>"
                     f"<figcaption>{e(t.caption)} (<a href='figures/budget_curves.png'>PNG</a>)</figcaption></figure>")
    else:
        parts.append("<p>No training history found in the finished runs.</p>")
    rows = t.run_rows(lambda r: r)
    parts.append("<h2>Runs</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in
                                                       ["Run", "Grid values", "Model", *t.heads]) + "</tr>")
    parts += [f"<tr><td><a href='{e(r['folder'])}/index.html'>{e(r['name'])}</a></td>"
              + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for r, cells in rows]
    parts.append("</table>")
    if t.failed:
        parts.append("<h2>Failed runs</h2><ul>" + "".join(f"<li>{e(n)}: {e(m)}</li>" for n, m in t.failed.items())
                     + "</ul>")
    parts.append("<p>Files: <a href='sweep.json'>sweep.json</a> (every number above, per run and aggregated).</p>"
                 "</body></html>\n")
    return "\n".join(parts)


def _sweep_markdown(t: _SweepTables) -> str:
    md = [f"# {t.title}", "", f"The study run once per grid point ({t.grid_text}); {t.count}.", ""]
    if t.dataset_text:
        md += [strip_tags(t.dataset_text), ""]
    md += [f"Brackets: {INTERVALS}. {MISSING}: fewer than 2 runs.", ""]
    if t.verdict["text"]:
        md += ["## The study's question: does SupCon pretraining beat cross-entropy?", "", t.verdict["text"], ""]
        md += md_table(t.answer_head, t.answer_rows) + [""]
    if t.deviation_rows:
        md += ["### The recipe: where these runs depart from the paper", ""]
        md += md_table(t.deviation_head, t.deviation_rows) + [""]
    md += ["## Test-set metrics across runs", ""] + md_table(["Model", *t.heads], t.metric_rows)
    md += ["", "## Paired difference, SupCon minus cross-entropy", ""] + md_table(["Difference", *t.heads],
                                                                                   t.paired_rows)
    md += ["", "## Budget curves", "", f"![{t.caption}](figures/budget_curves.png)" if t.figure
           else "No training history.", ""]
    md += ["## Runs", ""] + md_table(["Run", "Grid values", "Model", *t.heads],
                                     t.run_rows(lambda r: f"[{r['name']}]({r['folder']}/index.html)"))
    if t.failed:
        md += ["", "## Failed runs", ""] + [f"- {n}: {m}" for n, m in t.failed.items()]
    return "\n".join(md) + "\n"


def write_sweep_report(out: str | os.PathLike, plan: SweepPlan, failed: dict | None = None) -> Path:
    """Write ``sweep.json``, ``summary.md``, ``index.html`` and ``figures/budget_curves.png``; return index.html."""
    out = Path(out)
    failed = dict(failed or {})
    runs = collect_runs(out, plan)
    models, paired = aggregate(runs)
    datasets = [r["dataset"] for r in runs]
    synthetic = any(d.get("synthetic") for d in datasets)
    budget = budget_curves([out / "runs" / r["name"] for r in runs])
    figure = None
    if budget["curves"]:
        figure = save_figure(plot_budget_curves(budget, f"Budget curves across {len(runs)} runs"
                                                + (" (synthetic data)" if synthetic else "")),
                             out / "figures" / "budget_curves.png")
    verdict = answer(models, paired, len(runs))
    deviations = recipe_deviations(runs[0]["params"]) if runs and runs[0]["params"] else []
    document = _sweep_document(out, plan, runs, models, paired, verdict, deviations, budget, figure, failed)
    atomic_write_json(out / "sweep.json", document)
    missing = document["runs_missing"]
    tables = _SweepTables(
        title=f"vfnb sweep: {out.name}",
        count=(f"{len(runs)} of {len(plan.points)} planned runs finished"
               + (f"; missing: {', '.join(missing)}" if missing else "")
               + (f"; failed in this sweep: {', '.join(failed)}" if failed else "")),
        grid_text="; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in plan.grid.items()),
        dataset_text=(dataset_sentence(next((d for d in datasets if d.get("synthetic")), datasets[0]))
                      if datasets else ""),
        synthetic=synthetic, verdict=verdict,
        answer_rows=[(row["metric"], [_cell(row["supcon_linear"]), _cell(row["ce"]), _cell(row["difference"]),
                                      row["verdict"]]) for row in verdict["table"]],
        deviation_rows=[(d["key"], [d["meaning"], str(d["value"]), str(d["paper"])]) for d in deviations],
        metric_rows=[(model_title(m), [_cell(models[m][k]) for k in HEADLINE_METRICS]) for m in models],
        paired_rows=[(f"{model_title(p['model'])} − {model_title(p['baseline'])}",
                      [_paired_cell(p["metrics"][k]) for k in HEADLINE_METRICS]) for p in paired.values()],
        runs=runs, failed=failed, figure=figure, caption=BUDGET_CAPTION.format(x=budget["x"]))
    index = atomic_write_text(out / "index.html", _sweep_html(tables))
    atomic_write_text(out / "summary.md", _sweep_markdown(tables))
    return index
