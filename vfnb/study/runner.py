"""The study runner: four papermill notebooks, then a report a person can read.

``run_study(params_files, overrides, out)`` (``vfnb study --params ... --out ...``):

1. merges the parameter files (``params/default.yaml`` first, then each file in
   order, then ``-p key=value`` overrides) and validates the whole study, every
   model's training parameters included, before anything runs;
2. runs ``notebooks/00_*`` .. ``03_*`` in order with papermill, in a kernel that is
   the interpreter running this code (a throw-away kernelspec, nothing installed),
   passing each notebook two parameters: ``run_dir``, the run folder through which
   notebooks hand results to each other, and ``study_params``, the validated
   :class:`~vfnb.study.StudyParams` as JSON data (each notebook parses it back);
3. renders each executed notebook to HTML (with a link back to the index), and
   writes ``index.html``, ``summary.md``, ``provenance.json`` and ``params.yaml``
   (``metrics.json`` is written by ``03_evaluation``).

The run folder is built in a staging folder beside ``out``, named on the console at
the start, and moved into place only when complete, so a failed run never touches a
previous one; a failing cell stops the study with a :class:`StudyError` naming the
notebook and the cell, and the partial run is kept in ``<out>.failed/``. ``run.log``
in the run folder keeps the console lines of the study and the lines the notebooks
log (the per-epoch lines of training), which are also echoed to the console.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import pprint
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import nbformat
import papermill
from nbconvert import HTMLExporter
from papermill.exceptions import PapermillExecutionError
from tqdm import tqdm

from ..errors import VfnbError
from ..io import atomic_write_json, atomic_write_text, atomic_write_yaml, output_folder
from .params import (check_param_files, merge_params_with_sources, notebook_parameters, resolve_param_paths,
                     validate_study_params)
from .paths import notebooks_dir, project_root, shown_path
from .provenance import build_provenance, git_state
from .registry import NOTEBOOKS, NOTEBOOK_TITLES
from .report import SMOKE_WARNING, write_report
from .run import DATASET_FILE, RUN_LOG, StudyError, read_json
from .training import relocate_training_runs

KERNEL_ARGV = ("-m", "ipykernel_launcher", "-f", "{connection_file}",
               # the kernel's own log (that it talks to papermill over local TCP; its sockets closed under a
               # running cell when Ctrl-C stops the study) is not the study's: a cell's error reaches the
               # notebook and the StudyError naming it
               "--IPKernelApp.log_level=CRITICAL")


# ===================================================================== console and run.log
class RunLog:
    """The study's console lines, kept in ``run.log`` too; echoes what notebooks log there while they run."""

    def __init__(self, path: Path, console: bool = True):
        self.path = Path(path)
        self.console = console

    def say(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        self._echo(text)

    def _echo(self, text: str) -> None:
        if self.console:
            tqdm.write(text, file=sys.stderr)  # above papermill's progress bar, not through it

    @contextlib.contextmanager
    def follow(self) -> Iterator[None]:
        """While the context is open, echo lines other processes append to ``run.log`` (the notebook kernel)."""
        self.path.touch()
        stop = threading.Event()
        start = self.path.stat().st_size

        def tail():
            position, partial = start, ""
            while True:
                finished = stop.is_set()  # read once more after the kernel is done
                with open(self.path, encoding="utf-8", errors="replace") as fh:
                    fh.seek(position)
                    chunk = fh.read()
                    position = fh.tell()
                *lines, partial = (partial + chunk).split("\n")
                for line in lines:
                    self._echo(line)
                if finished:
                    return
                stop.wait(0.5)

        thread = threading.Thread(target=tail, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


# ===================================================================== kernel and rendering
@contextlib.contextmanager
def project_kernel() -> Iterator[str]:
    """A kernelspec for this very interpreter, valid while the context is open.

    Writes ``kernels/<name>/kernel.json`` under a temporary folder and puts it on
    ``JUPYTER_PATH``, so papermill runs the notebooks in the project's environment
    without any ``ipykernel install`` step. The inline backend is forced so figures
    land in the notebook even when ``MPLBACKEND`` is set in the shell.
    """
    name = f"vfnb-study-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="vfnb-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / name
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, *KERNEL_ARGV], "display_name": "vfnb (study runner)", "language": "python",
                "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        before = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = tmp + (os.pathsep + before if before else "")
        try:
            yield name
        finally:
            if before is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = before


def page_header(notebooks: Sequence[str] = NOTEBOOKS, smoke: bool = False) -> str:
    """The bar at the top of every rendered notebook: back to the index, the other notebooks, a smoke warning."""
    links = " · ".join(f"<a href='{n}.html'>{NOTEBOOK_TITLES.get(n, n)}</a>" for n in notebooks)
    bar = (f"<nav class='vfnb-study' style='font-family:sans-serif;padding:.5em 1em;background:#f3f3f3;"
           f"border-bottom:1px solid #ccc'><a href='index.html'>&larr; Study report (index)</a> · {links}</nav>")
    if smoke:
        bar += ("<p class='vfnb-smoke' style='font-family:sans-serif;background:#f8d7da;border:2px solid #c0392b;"
                f"padding:.6em 1em;margin:.5em 1em'><strong>{SMOKE_WARNING}</strong></p>")
    return bar


PAGE_TEMPLATES = Path(__file__).with_name("page_template")  # nbconvert template folder shipped with vfnb
PAGE_TEMPLATE = "vfnb_page"  # JupyterLab's page without scripts fetched from the internet


def render_html(ipynb: str | os.PathLike, html_path: str | os.PathLike, header: str = "") -> Path:
    """Render an executed notebook to a standalone HTML page (images embedded), ``header`` after ``<body>``.

    The page's title (the browser tab's) is the notebook's title in words
    (``NOTEBOOK_TITLES``), not nbconvert's default "Notebook". The page fetches nothing
    from the internet (template :data:`PAGE_TEMPLATE`).
    """
    nb = nbformat.read(str(ipynb), as_version=4)
    stem = Path(ipynb).stem
    title = f"{NOTEBOOK_TITLES[stem]} · vfnb study" if stem in NOTEBOOK_TITLES else f"{stem} · vfnb study"
    exporter = HTMLExporter(extra_template_basedirs=[str(PAGE_TEMPLATES)], template_name=PAGE_TEMPLATE)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    if header:
        at = body.find(">", body.find("<body")) + 1
        body = body[:at] + header + body[at:] if at > 0 else header + body
    return atomic_write_text(html_path, body)


def show_given_parameters(ipynb: Path, shown: Mapping, final_dir: str) -> None:
    """Rewrite the parameters papermill recorded in an executed notebook as the user gave them.

    The notebook ran with absolute paths inside a staging folder; its page and its
    metadata show the values a reader can use: paths as given to ``vfnb study``,
    ``run_dir`` where the run ends up (``final_dir``). ``shown``: notebook parameter ->
    value (``study_params`` is shown one parameter a line).
    """
    nb = nbformat.read(str(ipynb), as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            names = [line.split("=", 1)[0].strip() for line in cell.source.splitlines() if "=" in line]
            cell.source = "\n".join(["# Parameters, as given to `vfnb study` (paths relative to where it ran);",
                                     "# they replace the defaults of the cell above",
                                     *(_assignment(k, shown[k]) for k in names if k in shown)])
    record = nb.metadata.get("papermill")
    if isinstance(record, dict):
        record["parameters"] = {k: shown[k] for k in record.get("parameters") or {} if k in shown}
        record["input_path"] = shown_path(record.get("input_path", ""))
        record["output_path"] = f"{final_dir}/{ipynb.name}"
    nbformat.write(nb, str(ipynb))


def _assignment(name: str, value) -> str:
    if isinstance(value, dict) and value:
        return f"{name} = " + pprint.pformat(value, width=110, sort_dicts=False)
    return f"{name} = {value!r}"


def notebook_inputs(run_dir: str | os.PathLike, params: Mapping) -> dict:
    """What every notebook receives: ``run_dir`` and ``study_params`` (the study's parameters, ``run_dir`` included)."""
    return {"run_dir": str(run_dir), "study_params": {**params, "run_dir": str(run_dir)}}


# ===================================================================== running
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FAILING_LINE = re.compile(r"^-*> ?(\d+)\s(.*)$")


def _cell_summary(source: str, traceback: Sequence[str] = ()) -> str:
    """The step that failed: the cell's line the traceback points at, else its first line of code.

    A setup cell starts with ``%matplotlib inline``; naming that would send the reader
    to the wrong line when the data loading three lines below it failed.
    """
    cell = source.splitlines()
    for line in _ANSI.sub("", "\n".join(traceback or ())).splitlines():
        match = _FAILING_LINE.match(line.strip())
        if match and 0 < int(match.group(1)) <= len(cell):
            return f"line {match.group(1)}: {cell[int(match.group(1)) - 1].strip()[:100]}"
    for line in cell:
        if line.strip() and not line.strip().startswith(("#", "%")):
            return line.strip()[:100]
    return source.strip()[:100]


def execute_notebook(name: str, run_dir: Path, params: dict, kernel_name: str, progress: bool = True,
                     notebook_dir: Path | None = None) -> float:
    """Run ``<notebook_dir>/<name>.ipynb`` into ``run_dir/<name>.ipynb``; return seconds taken.

    Passes ``run_dir`` and ``params`` (the study's parameters as plain data) as
    ``study_params``, each when the notebook's ``parameters`` cell declares it.
    Raises :class:`StudyError` naming the notebook and the failing cell.
    """
    notebook_dir = Path(notebook_dir) if notebook_dir is not None else notebooks_dir()
    source = notebook_dir / f"{name}.ipynb"
    if not source.is_file():
        raise StudyError(f"{source}: notebook not found")
    declared = notebook_parameters(source)
    passed = {k: v for k, v in notebook_inputs(run_dir, params).items() if k in declared}
    start = time.monotonic()
    try:
        papermill.execute_notebook(str(source), str(run_dir / f"{name}.ipynb"), parameters=passed,
                                   kernel_name=kernel_name, progress_bar=progress, cwd=str(notebook_dir),
                                   log_output=False)
    except PapermillExecutionError as exc:
        # cell_index counts papermill's injected-parameters cell; the executed
        # notebook on disk has the same cells, so the index points into it.
        raise StudyError(f"notebook {name}.ipynb failed in cell {exc.cell_index} "
                         f"(`{_cell_summary(exc.source, exc.traceback)}`): {exc.ename}: {exc.evalue}") from None
    except Exception as exc:  # kernel died, timeout, ...: still name the notebook
        raise StudyError(f"notebook {name}.ipynb did not complete: {type(exc).__name__}: {exc}") from None
    return time.monotonic() - start


def _run_notebooks(staging: Path, params: dict, shown: dict, notebooks: Sequence[str], notebook_dir: Path,
                   log: RunLog, progress: bool) -> dict[str, float]:
    durations: dict[str, float] = {}
    header = page_header(notebooks, bool(params.get("smoke")))
    with project_kernel() as kernel:
        for i, name in enumerate(notebooks):
            log.say(f"[{i + 1}/{len(notebooks)}] {name} ...")
            with log.follow():
                durations[name] = execute_notebook(name, staging, params, kernel, progress, notebook_dir)
            show_given_parameters(staging / f"{name}.ipynb", notebook_inputs(shown["run_dir"], shown),
                                  shown["run_dir"])
            render_html(staging / f"{name}.ipynb", staging / f"{name}.html", header)
            log.say(f"[{i + 1}/{len(notebooks)}] {name} done in {durations[name]:.0f} s")
    return durations


def _keep_failed(staging: Path, failed: Path, exc: StudyError, log: RunLog) -> StudyError:
    """Move the partial run (rendered where possible) to ``failed``; the error to raise."""
    for nb in staging.glob("*.ipynb"):
        with contextlib.suppress(Exception):
            render_html(nb, nb.with_suffix(".html"))
    message = f"{exc} -- the partial run, executed notebook included, is kept in {failed}"
    log.say(f"FAILED: {message}")
    if failed.exists():
        shutil.rmtree(failed)
    os.replace(staging, failed)
    return StudyError(message)


def run_study(params_files: Sequence[str | os.PathLike], overrides: Sequence[str] = (),
              out: str | os.PathLike = "results/study", overwrite: bool = False, progress: bool = True,
              notebooks: Sequence[str] = NOTEBOOKS, notebook_dir: str | os.PathLike | None = None) -> Path:
    """Run the study and write its report into ``out``; return ``out``.

    ``params_files`` are merged over ``params/default.yaml`` (later wins), then
    ``overrides`` (``"key=value"``). ``out`` must not exist unless ``overwrite``;
    it is replaced only by a complete run. On a failing cell: :class:`StudyError`,
    with the partial run kept in ``<out>.failed/``. ``notebooks`` / ``notebook_dir``
    exist for tests.
    """
    shown_out, out = Path(out), Path(out).absolute()  # absolute: the kernels and the log reader run elsewhere
    given, sources = merge_params_with_sources(params_files, overrides)
    study = validate_study_params(given, sources=sources).as_dict()  # in seconds, not after notebook 00 has run
    params = resolve_param_paths(study, Path.cwd())
    check_param_files(params, sources, out=out)
    shown = {**study, "run_dir": str(shown_out)}
    if out.exists() and not overwrite:
        raise VfnbError(f"{out}: output folder already exists (choose another --out, or pass --overwrite)")
    notebook_dir = Path(notebook_dir) if notebook_dir is not None else notebooks_dir()
    git = git_state(project_root())  # before the staging folder exists, so it is not counted as a change
    started = _dt.datetime.now(_dt.timezone.utc)
    failed = out.with_name(out.name + ".failed")
    try:
        _build_run(out, overwrite, failed, params, shown, notebooks, notebook_dir, git, started, progress)
    except KeyboardInterrupt:  # Ctrl-C: the kernel is shut down and the staging folder removed by now
        raise KeyboardInterrupt(f"vfnb study stopped before it finished; {out} is as it was and the unfinished "
                                "run was removed (the same command starts it again)") from None
    if failed.exists():
        shutil.rmtree(failed, ignore_errors=True)  # a stale failure report would mislead
    return out


def _build_run(out: Path, overwrite: bool, failed: Path, params: dict, shown: dict, notebooks: Sequence[str],
               notebook_dir: Path, git: dict, started: _dt.datetime, progress: bool) -> None:
    """The run built in a staging folder and moved to ``out`` when complete (``failed`` if a notebook fails)."""
    with output_folder(out, overwrite=overwrite) as staging:
        try:
            _fill_staging(staging, out, failed, params, shown, notebooks, notebook_dir, git, started, progress)
        except OSError as exc:  # a full disk, ``ulimit -f``: the staging folder goes, so name the file in ``out``
            raise _named_in_out(exc, staging, out) from None


def _fill_staging(staging: Path, out: Path, failed: Path, params: dict, shown: dict, notebooks: Sequence[str],
                  notebook_dir: Path, git: dict, started: _dt.datetime, progress: bool) -> None:
    log = RunLog(staging / RUN_LOG, console=progress)
    log.say(f"building the run in {staging} (moved to {out} when complete; to {failed} if a notebook fails)")
    atomic_write_yaml(staging / "params.yaml", params)
    try:
        durations = _run_notebooks(staging, params, shown, notebooks, notebook_dir, log, progress)
    except StudyError as exc:
        raise _keep_failed(staging, failed, exc, log) from None
    relocate_training_runs(staging, out)  # the fine-tuned runs name their encoder where it will be
    provenance = build_provenance(read_json(staging / DATASET_FILE) or {}, params, durations, git, started)
    atomic_write_json(staging / "provenance.json", provenance)
    write_report(staging, shown, provenance, notebooks=notebooks, name=out.name)
    log.say(f"study complete: {out / 'index.html'}")


def _named_in_out(exc: OSError, staging: Path, out: Path) -> OSError:
    """``exc`` naming the file it could not write where the run puts it (``out/...``), not in the staging folder."""
    name = Path(exc.filename) if exc.filename else None
    if name is None or not name.is_relative_to(staging):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(out / name.relative_to(staging)))
