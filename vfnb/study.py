"""The study runner: four papermill notebooks, then a report a person can read.

``run_study(params_files, overrides, out)`` (``vfnb study --params ... --out ...``):

1. merges the parameter files (``params/default.yaml`` first, then each file in
   order, then ``-p key=value`` overrides parsed as YAML scalars); an unknown key is
   a :class:`~vfnb.errors.ParamsError` naming the key and the file;
2. runs ``notebooks/00_*`` .. ``03_*`` in order with papermill, in a kernel that is
   the interpreter running this code (a throw-away kernelspec, nothing installed),
   passing each notebook only the parameters its ``parameters`` cell declares plus
   ``run_dir``, the run folder through which notebooks hand results to each other;
3. renders each executed notebook to HTML, and writes ``index.html``, ``summary.md``,
   ``provenance.json`` and ``params.yaml`` (``metrics.json`` is written by
   ``03_evaluation``).

The run folder is built in a staging folder beside ``out`` and moved into place only
when complete, so a failed run never touches a previous one; a failing cell stops
the study with a :class:`StudyError` naming the notebook and the cell, and the
partial run (executed notebooks included) is kept in ``<out>.failed/``.

The second half of this module holds the small helpers the notebooks share
(:class:`StudyRun`, :func:`prepare_dataset`, :func:`training_params`, ...): anything
a notebook would otherwise write twice.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import difflib
import hashlib
import html
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

from .errors import DatasetError, ParamsError, VfnbError
from .io import atomic_write_json, atomic_write_text, atomic_write_yaml, load_yaml, output_folder

NOTEBOOKS = ("00_data_exploration", "01_supcon_pretraining", "02_finetuning", "03_evaluation")
NOTEBOOK_TITLES = {
    "00_data_exploration": "Data exploration",
    "01_supcon_pretraining": "SupCon pretraining",
    "02_finetuning": "Linear probe, fine-tuning and the cross-entropy baseline",
    "03_evaluation": "Test-set evaluation",
}
# Parameters holding file-system paths: relative ones are resolved against the
# directory ``vfnb study`` runs in (notebooks run with their own folder as cwd).
PATH_PARAMS = ("data_dir", "dataset", "operating_points_from")
SYNTHSPINE = "synthspine"  # the ``dataset`` value meaning "generate / reuse SynthSpine"

# The study's models, in the order tables list them.
MODEL_TITLES = {
    "supcon_linear": "SupCon encoder + linear probe",
    "supcon_finetune": "SupCon encoder, fine-tuned",
    "ce": "Cross-entropy baseline",
}
# The headline numbers: (metrics.json key, table heading).
HEADLINE_METRICS = (
    ("sensitivity", "Sensitivity (grade ≥ 1)"),
    ("specificity", "Specificity (grade ≥ 1)"),
    ("roc_auc", "ROC AUC"),
    ("macro_f1", "Macro-F1 (4 grades)"),
    ("recall_grade1", "Grade-1 recall"),
)
VERSION_PACKAGES = ("torch", "monai", "numpy", "scikit-learn", "umap-learn", "papermill", "nibabel",
                    "scipy", "pandas", "matplotlib", "nbconvert")


class StudyError(VfnbError):
    """A study notebook failed; the message names the notebook and the cell."""


# ===================================================================== locations
def project_root() -> Path:
    """The folder holding ``notebooks/`` and ``params/`` (the repository root).

    The package's parent when installed in development mode (the normal case),
    else the current directory or one of its parents.
    """
    here = Path(__file__).resolve().parents[1]
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


# ===================================================================== parameters
def read_params_file(path: str | os.PathLike) -> dict:
    """One YAML parameter file as a dict (an empty file is ``{}``)."""
    path = Path(path)
    try:
        data = load_yaml(path)
    except DatasetError as exc:  # load_yaml speaks of datasets; this is a params file
        raise ParamsError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter names to values, got {type(data).__name__}")
    for key in data:
        if not isinstance(key, str):
            raise ParamsError(f"{path}: parameter name {key!r} is not a string")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"epochs=3"`` -> ``("epochs", 3)``; :func:`vfnb.config.parse_override` (YAML; an empty value is null)."""
    from .config import parse_override as parse

    return parse(text)


def _unknown_key(key: str, known: Iterable[str], where: str, reference: Path) -> ParamsError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ParamsError(f"{where}: unknown parameter {key!r}{hint}; every parameter is listed and documented in {reference}")


def merge_params(params_files: Sequence[str | os.PathLike] = (), overrides: Sequence[str] = (),
                 defaults_file: str | os.PathLike | None = None) -> dict:
    """Merge parameters: ``defaults_file`` (``params/default.yaml``), then each file, then overrides.

    Later values win. Every key must be one ``defaults_file`` declares, otherwise a
    :class:`ParamsError` names the key and the file (or the ``-p`` option).
    """
    defaults_file = Path(defaults_file) if defaults_file is not None else default_params_file()
    merged = read_params_file(defaults_file)
    for f in params_files:
        data = read_params_file(f)
        for key, value in data.items():
            if key not in merged:
                raise _unknown_key(key, merged, str(f), defaults_file)
            merged[key] = value
    for text in overrides:
        key, value = parse_override(text)
        if key not in merged:
            raise _unknown_key(key, merged, f"-p {text}", defaults_file)
        merged[key] = value
    return merged


# the training settings notebook 01 passes to every model (its `shared` dict)
SHARED_TRAINING_KEYS = ("backbone", "head", "feature_dim", "cube_size", "batch_per_grade", "epoch_mode",
                        "batches_per_epoch", "momentum", "weight_decay", "lr_schedule", "lr_milestones", "lr_gamma",
                        "temperature", "base_temperature", "probe", "seed", "device", "amp", "workers")
# model -> (training mode, its epochs and learning-rate parameters), as notebooks 01 and 02 train them
MODEL_PLANS = {"supcon": ("supcon", "supcon_epochs", "supcon_lr"),
               "supcon_linear": ("linear", "linear_epochs", "linear_lr"),
               "supcon_finetune": ("finetune", "finetune_epochs", "finetune_lr"),
               "ce": ("ce", "ce_epochs", "ce_lr")}
# study-only integers: (key, smallest value)
STUDY_INTS = (("synth_cases", 1), ("synth_seed", 0), ("synth_folds", 2), ("patch_size", 8), ("n_boot", 1),
              ("umap_neighbors", 2), ("umap_max_points", 2), ("n_errors_shown", 0), ("scans_shown", 0),
              ("patches_per_grade", 0), ("height_patches_per_grade", 0))


def validate_study_params(params: dict, where: str = "vfnb study") -> None:
    """Check every parameter the notebooks will use, before notebook 00 starts; :class:`ParamsError` names the key.

    Each model's training parameters go through :func:`vfnb.train.validate_params`
    exactly as :func:`training_params` will pass them.
    """
    from .config import validate_params

    for key, low in STUDY_INTS:
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ParamsError(f"{where}: parameter {key!r} = {value!r} is invalid; expected an integer >= {low}")
    for key in ("val_fraction", "target_specificity"):
        value = params.get(key)
        if key in params and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 < float(value) < 1.0):
            raise ParamsError(f"{where}: parameter {key!r} = {value!r} is invalid; expected a number between 0 and 1")
    models = params.get("models")
    if not isinstance(models, list) or not models or any(m not in MODEL_PLANS or m == "supcon" for m in models):
        raise ParamsError(f"{where}: parameter 'models' = {models!r} is invalid; expected a non-empty list of "
                          f"{', '.join(m for m in MODEL_PLANS if m != 'supcon')}")
    if not isinstance(params.get("checkpoints", {}), dict):
        raise ParamsError(f"{where}: parameter 'checkpoints' = {params.get('checkpoints')!r} is invalid; "
                          "expected a mapping model -> checkpoint file")
    shared = {k: params[k] for k in SHARED_TRAINING_KEYS if k in params}
    for model in ["supcon", *models]:
        mode, epochs_key, lr_key = MODEL_PLANS[model]
        trial = {"mode": mode, "dataset": "-", "tag": params.get("tag"), "epochs": params.get(epochs_key),
                 "lr": params.get(lr_key), "init_checkpoint": "-" if mode in ("linear", "finetune") else None,
                 **shared}
        try:
            validate_params(trial)
        except ParamsError as exc:
            message = str(exc).replace("parameter 'epochs'", f"parameter {epochs_key!r}")
            message = message.replace("parameter 'lr'", f"parameter {lr_key!r}")
            raise ParamsError(f"{where}: {message} (model {model})") from None


def resolve_param_paths(params: dict, base: str | os.PathLike) -> dict:
    """Copy of ``params`` with relative path parameters made absolute against ``base``."""
    out = dict(params)
    for key in PATH_PARAMS:
        value = out.get(key)
        if not isinstance(value, str) or not value or (key == "dataset" and value.lower() == SYNTHSPINE):
            continue
        out[key] = str(resolve_path(value, base))
    if isinstance(out.get("checkpoints"), dict):
        out["checkpoints"] = {m: (str(resolve_path(p, base)) if isinstance(p, str) and p else p)
                              for m, p in out["checkpoints"].items()}
    return out


def notebook_parameters(path: str | os.PathLike) -> dict:
    """The ``parameters`` cell of a notebook as ``{name: default value}``.

    Raises :class:`ParamsError` unless there is exactly one cell tagged
    ``parameters`` and it holds only ``name = <literal>`` assignments.
    """
    import nbformat

    path = Path(path)
    nb = nbformat.read(str(path), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    source = cells[0].source
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ParamsError(f"{path}: parameters cell is not valid Python ({exc.msg}, line {exc.lineno})") from None
    params = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParamsError(f"{path}: parameters cell line {node.lineno}: expected 'name = <literal>'")
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ParamsError(
                f"{path}: parameter {node.targets[0].id!r} (line {node.lineno}) is not a literal; "
                "the parameters cell holds literals only"
            ) from None
    return params


# ===================================================================== kernel
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
        spec = {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "vfnb (study runner)",
            "language": "python",
            "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline"},
        }
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


def render_html(ipynb: str | os.PathLike, html_path: str | os.PathLike) -> Path:
    """Render an executed notebook to a standalone HTML page (images embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return atomic_write_text(html_path, body)


# ===================================================================== running
def _cell_summary(source: str) -> str:
    for line in source.splitlines():
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()[:100]
    return source.strip()[:100]


def execute_notebook(name: str, run_dir: Path, params: dict, kernel_name: str, progress: bool = True,
                     notebook_dir: Path | None = None) -> float:
    """Run ``<notebook_dir>/<name>.ipynb`` into ``run_dir/<name>.ipynb``; return seconds taken.

    Passes the parameters the notebook declares (those present in ``params``) and
    ``run_dir``. Raises :class:`StudyError` naming the notebook and the failing cell.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebook_dir = Path(notebook_dir) if notebook_dir is not None else notebooks_dir()
    source = notebook_dir / f"{name}.ipynb"
    if not source.is_file():
        raise StudyError(f"{source}: notebook not found")
    declared = notebook_parameters(source)
    passed = {k: params[k] for k in declared if k in params}
    if "run_dir" in declared:
        passed["run_dir"] = str(run_dir)
    target = run_dir / f"{name}.ipynb"
    start = time.monotonic()
    try:
        papermill.execute_notebook(
            str(source), str(target), parameters=passed, kernel_name=kernel_name,
            progress_bar=progress, cwd=str(notebook_dir), log_output=False,
        )
    except PapermillExecutionError as exc:
        # cell_index counts papermill's injected-parameters cell; the executed
        # notebook on disk has the same cells, so the index points into it.
        raise StudyError(
            f"notebook {name}.ipynb failed in cell {exc.cell_index} "
            f"(`{_cell_summary(exc.source)}`): {exc.ename}: {exc.evalue}"
        ) from None
    except Exception as exc:  # kernel died, timeout, ...: still name the notebook
        raise StudyError(f"notebook {name}.ipynb did not complete: {type(exc).__name__}: {exc}") from None
    return time.monotonic() - start


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
    out = Path(out)
    params = merge_params(params_files, overrides)
    validate_study_params(params)  # in seconds, not after notebook 00 has run
    params = resolve_param_paths(params, Path.cwd())
    if out.exists() and not overwrite:
        raise VfnbError(f"{out}: output folder already exists (choose another --out, or pass --overwrite)")
    notebook_dir = Path(notebook_dir) if notebook_dir is not None else notebooks_dir()
    git = git_state(project_root())  # before the staging folder exists, so it is not counted as a change
    started = _dt.datetime.now(_dt.timezone.utc)
    durations: dict[str, float] = {}
    failed = out.with_name(out.name + ".failed")
    with output_folder(out, overwrite=overwrite) as staging:
        atomic_write_yaml(staging / "params.yaml", params)
        try:
            with project_kernel() as kernel:
                for i, name in enumerate(notebooks):
                    _say(f"[{i + 1}/{len(notebooks)}] {name} ...", progress)
                    durations[name] = execute_notebook(name, staging, params, kernel, progress, notebook_dir)
                    render_html(staging / f"{name}.ipynb", staging / f"{name}.html")
                    _say(f"[{i + 1}/{len(notebooks)}] {name} done in {durations[name]:.0f} s", progress)
        except BaseException as exc:
            if isinstance(exc, StudyError):
                # keep the partial run for debugging, rendered where possible
                for nb in staging.glob("*.ipynb"):
                    with contextlib.suppress(Exception):
                        render_html(nb, nb.with_suffix(".html"))
                if failed.exists():
                    shutil.rmtree(failed)
                os.replace(staging, failed)
                raise StudyError(f"{exc} -- the partial run, executed notebook included, is kept in {failed}") from None
            raise
        provenance = build_provenance(staging, params, durations, git, started)
        atomic_write_json(staging / "provenance.json", provenance)
        write_report(staging, params, provenance, notebooks=notebooks, name=out.name)
    if failed.exists():
        shutil.rmtree(failed, ignore_errors=True)  # a stale failure report would mislead
    _say(f"study complete: {out / 'index.html'}", progress)
    return out


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


# ===================================================================== provenance
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
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


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
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 over every file's relative path and size, plus the bytes of the lists and manifests.

    Cheap (no voxel data read) yet changes when a patch is added, removed or
    re-written with another size, or when a split list changes.
    """
    root = Path(root)
    digest = hashlib.sha256()
    # hidden files (the .vfnb-output marker, temporaries of atomic writes) are not data
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\t{path.stat().st_size}\n".encode())
        if path.suffix in (".yaml", ".csv"):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_provenance(run_dir: Path, params: dict, durations: dict, git: dict, started) -> dict:
    data = _read_json(run_dir / "dataset.json") or {}
    return {
        "study": "vfnb reproduction of Wei et al., BIBM 2022 (arXiv 2208.10698)",
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


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ===================================================================== report
def format_ci(entry: Any, digits: int = 2) -> str:
    """``{"value": v, "ci_low": lo, "ci_high": hi}`` -> ``"0.85 [0.80, 0.90]"`` (``"–"`` when missing)."""
    if isinstance(entry, dict):
        value, ci = entry.get("value"), (entry.get("ci_low"), entry.get("ci_high"))
    else:
        value, ci = entry, (None, None)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    text = f"{value:.{digits}f}"
    if all(isinstance(c, (int, float)) and math.isfinite(c) for c in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def headline_rows(metrics: dict) -> list[tuple[str, list[str]]]:
    """Rows ``(label, [cell per HEADLINE_METRICS])``: each model of this study, then the paper's."""
    rows = []
    for model, entry in (metrics.get("models") or {}).items():
        values = entry.get("metrics", {})
        label = entry.get("title") or MODEL_TITLES.get(model, model)
        rows.append((label, [format_ci(values.get(k)) for k, _ in HEADLINE_METRICS]))
    paper = metrics.get("paper")
    if paper:
        values = paper.get("metrics", {})
        rows.append((paper.get("label", "Paper (as reported, on its own data)"),
                     [format_ci(values.get(k)) for k, _ in HEADLINE_METRICS]))
    return rows


# The settings that define the method, as the paper ran it (their values live in
# params/paper.yaml): a run whose value differs departs from the paper's recipe, and
# its report says so. Data, hardware and evaluation settings are not listed.
RECIPE_KEYS = {
    "backbone": "encoder network",
    "head": "projection head",
    "feature_dim": "projection size",
    "cube_size": "network input cube (voxels)",
    "batch_per_grade": "vertebrae of each grade per batch",
    "epoch_mode": "what an epoch is",
    "lr_schedule": "learning-rate schedule",
    "temperature": "SupCon temperature",
    "base_temperature": "SupCon base temperature",
    "supcon_augmentation": "augmentation during SupCon pretraining",
    "supcon_warmup_epochs": "SupCon learning-rate warm-up (epochs)",
    "supcon_epochs": "SupCon pretraining epochs",
    "supcon_lr": "SupCon learning rate",
}


def paper_params_file() -> Path:
    return project_root() / "params" / "paper.yaml"


def recipe_deviations(params: Mapping[str, Any], paper: Mapping[str, Any] | None = None) -> list[dict]:
    """Where ``params`` (a study's merged parameters) depart from the paper's recipe.

    ``[{"key", "meaning", "value", "paper"}]`` for every :data:`RECIPE_KEYS` entry whose
    value differs from ``paper`` (default: ``params/paper.yaml``), in that order. An
    empty list: the run follows the paper's recipe (budget included).
    """
    if paper is None:
        paper = read_params_file(paper_params_file())
    out = []
    for key, meaning in RECIPE_KEYS.items():
        if key in params and key in paper and params[key] != paper[key]:
            out.append({"key": key, "meaning": meaning, "value": params[key], "paper": paper[key]})
    return out


def figure_index(run_dir: Path) -> list[dict]:
    """``figures/index.json`` as written by :meth:`StudyRun.figure` (``[]`` when absent)."""
    return _read_json(Path(run_dir) / "figures" / "index.json") or []


def _dataset_sentence(data: dict) -> str:
    if data.get("synthetic"):
        return ("The data are <strong>synthetic</strong>: SynthSpine, spine CTs generated from code "
                f"({data.get('cases', '?')} cases, {data.get('vertebrae', '?')} graded vertebrae). "
                "They model vertebral anatomy, bone density and Genant-graded fractures, but no metal, "
                "degenerative disease or scanner artefacts beyond noise and blur. Every number below is a "
                "number on synthetic data, not evidence about clinical performance.")
    return (f"The data are the processed dataset at <code>{html.escape(str(data.get('processed', '?')))}</code> "
            f"({data.get('cases', '?')} cases, {data.get('vertebrae', '?')} graded vertebrae).")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.5;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:1em 0;font-size:.95em} th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} tr.paper td{background:#fff8e6;font-style:italic}
.note{color:#555;font-size:.92em} .synthetic{background:#fff3cd;border:1px solid #e0c068;padding:.6em 1em;border-radius:4px}
figure{display:inline-block;margin:.5em;max-width:48%;vertical-align:top} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.88em;color:#444} code{background:#f5f5f5;padding:0 .2em}
details{margin:.5em 0} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
"""


def write_report(run_dir: Path, params: dict, provenance: dict, notebooks: Sequence[str] = NOTEBOOKS,
                 name: str | None = None) -> tuple[Path, Path]:
    """Write ``index.html`` and ``summary.md`` from ``metrics.json``, the figure index and provenance.

    ``name``: the run's name for the title (default: the folder's name).
    """
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json") or {}
    data = provenance.get("data") or {}
    figures = figure_index(run_dir)
    key_figures = [f for f in figures if f.get("key")]
    rows = headline_rows(metrics)
    git = provenance.get("git") or {}
    commit = git.get("commit") or "unknown"
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    op = metrics.get("operating_point") or {}
    ci = metrics.get("ci") or {}
    title = f"vfnb study: {name or run_dir.name}"

    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>",
             "<h1>Vertebral fracture grading with supervised contrastive learning</h1>",
             "<p>This report reproduces the study of Wei et al., <em>Faint Features Tell: Automatic Vertebrae "
             "Fracture Screening Assisted by Contrastive Learning</em> (BIBM 2022): a 3D CNN whose features are "
             "shaped by a supervised contrastive (SupCon) loss, then read by a linear classifier, grades each "
             "vertebra on the Genant scale (0 normal, 1 mild, 2 moderate, 3 severe), and is compared with a "
             "cross-entropy baseline trained with the same backbone, augmentation and budget.</p>",
             f"<p class='{'synthetic' if data.get('synthetic') else 'note'}'>{_dataset_sentence(data)}</p>"]

    parts.append("<h2>Headline: test set</h2>")
    if rows:
        parts.append(
            "<p class='note'>Binary screening is grade ≥ 1 versus grade 0, with the fracture score 1 − P(grade 0) "
            f"thresholded at the operating point chosen on the validation set for a target specificity of "
            f"{e(str(op.get('target_specificity', params.get('target_specificity', '?'))))}. "
            f"Brackets: {100 * float(ci.get('level') or 0.95):.0f} % confidence intervals by bootstrap over patients "
            f"({e(str(ci.get('n_boot', '?')))} resamples). Test set: {e(str(metrics.get('test', {}).get('vertebrae', '?')))} "
            f"vertebrae of {e(str(metrics.get('test', {}).get('patients', '?')))} patients.</p>")
        parts.append("<table><tr><th>Model</th>" + "".join(f"<th>{e(h)}</th>" for _, h in HEADLINE_METRICS) + "</tr>")
        n_models = len(metrics.get("models") or {})
        for i, (label, cells) in enumerate(rows):
            cls = " class='paper'" if i >= n_models else ""
            parts.append(f"<tr{cls}><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        if metrics.get("paper"):
            parts.append(f"<p class='note'>The last row is the paper's own report, on its own data "
                         f"({e(metrics['paper'].get('data', 'its clinical CTs'))}); it is not a result of this run "
                         "and is not directly comparable. “–”: not reported.</p>")
    else:
        parts.append("<p>No metrics.json was written: see the evaluation notebook.</p>")

    deviations = recipe_deviations(params)
    parts.append("<h2>Recipe: where this run departs from the paper</h2>")
    if deviations:
        parts.append("<table><tr><th>Parameter</th><th>What it sets</th><th>This run</th><th>Paper</th></tr>")
        parts += [f"<tr><td><code>{e(d['key'])}</code></td><td>{e(d['meaning'])}</td><td>{e(str(d['value']))}</td>"
                  f"<td>{e(str(d['paper']))}</td></tr>" for d in deviations]
        parts.append("</table>")
    else:
        parts.append("<p>None: every setting that defines the method has the paper's value.</p>")

    if key_figures:
        parts.append("<h2>Key figures</h2><div>")
        for f in key_figures:
            parts.append(f"<figure><a href='{e(f['path'])}'><img src='{e(f['path'])}' alt='{e(f.get('caption', ''))}'></a>"
                         f"<figcaption>{e(f.get('caption', ''))}</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Notebooks</h2><table><tr><th>Notebook</th><th>Report</th><th>Executed notebook</th><th>Time</th></tr>")
    secs = provenance.get("notebook_seconds") or {}
    for name in notebooks:
        parts.append(f"<tr><td>{e(NOTEBOOK_TITLES.get(name, name))}</td><td><a href='{e(name)}.html'>{e(name)}.html</a></td>"
                     f"<td><a href='{e(name)}.ipynb'>{e(name)}.ipynb</a></td><td>{secs.get(name, 0):.0f} s</td></tr>")
    parts.append("</table>")
    others = [f for f in figures if not f.get("key")]
    if others:
        parts.append("<details><summary>All other figures</summary><ul>")
        parts += [f"<li><a href='{e(f['path'])}'>{e(f.get('caption') or f['path'])}</a></li>" for f in others]
        parts.append("</ul></details>")

    machine = provenance.get("machine") or {}
    parts.append("<h2>Provenance</h2><table>")
    prov_rows = [
        ("Code", f"commit {commit}{dirty}"),
        ("Run", f"{provenance.get('started_utc', '?')} → {provenance.get('finished_utc', '?')} "
                f"({provenance.get('total_seconds', 0):.0f} s of notebooks)"),
        ("Data", f"{data.get('name', '?')} · fingerprint {str(data.get('fingerprint', '?'))[:16]}… · "
                 f"tag {data.get('tag', '?')}"),
        ("Seeds", ", ".join(f"{k}={v}" for k, v in (provenance.get("seeds") or {}).items())),
        ("Machine", f"{machine.get('cpu', '?')} · {machine.get('cores', '?')} cores · {machine.get('ram_gb', '?')} GB RAM"
                    + (f" · GPU {machine['gpu']}" if machine.get("gpu") else "") + f" · {machine.get('platform', '')}"),
        ("Packages", ", ".join(f"{k} {v}" for k, v in (provenance.get("packages") or {}).items() if v)),
    ]
    parts += [f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in prov_rows]
    parts.append("</table><p>Files: <a href='metrics.json'>metrics.json</a> (every reported number, per model, with its "
                 "confidence interval) · <a href='params.yaml'>params.yaml</a> (the merged parameters) · "
                 "<a href='provenance.json'>provenance.json</a>.</p>")
    parts.append("<details><summary>Merged parameters</summary><pre>"
                 + e(yaml.safe_dump(params, sort_keys=False)) + "</pre></details>")
    parts.append("</body></html>\n")
    index = atomic_write_text(run_dir / "index.html", "\n".join(parts))

    md = [f"# {title}", "",
          "Reproduction of Wei et al., *Faint Features Tell* (BIBM 2022): SupCon-shaped features versus a "
          "cross-entropy baseline for Genant grading of vertebrae on CT.", "",
          _strip_tags(_dataset_sentence(data)), "", "## Headline (test set)", ""]
    if rows:
        md.append("| Model | " + " | ".join(h for _, h in HEADLINE_METRICS) + " |")
        md.append("|---" * (len(HEADLINE_METRICS) + 1) + "|")
        md += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
        md += ["", f"95 % CIs by bootstrap over patients. Operating point chosen on validation for specificity "
                   f"{op.get('target_specificity', params.get('target_specificity', '?'))}."]
        if metrics.get("paper"):
            md.append("The paper's row is its own report on its own data, not a result of this run.")
    md += ["", "## Recipe: where this run departs from the paper", ""]
    if deviations:
        md += ["| Parameter | What it sets | This run | Paper |", "|---|---|---|---|"]
        md += [f"| `{d['key']}` | {d['meaning']} | {d['value']} | {d['paper']} |" for d in deviations]
    else:
        md.append("None: every setting that defines the method has the paper's value.")
    md += ["", "## Key figures", ""] + [f"![{f.get('caption', '')}]({f['path']})" for f in key_figures]
    md += ["", "## Notebooks", ""] + [f"- {NOTEBOOK_TITLES.get(n, n)}: [{n}.html]({n}.html), [{n}.ipynb]({n}.ipynb) "
                                      f"({secs.get(n, 0):.0f} s)" for n in notebooks]
    md += ["", "## Provenance", ""] + [f"- **{k}**: {v}" for k, v in prov_rows]
    md += ["", "Files: [metrics.json](metrics.json), [params.yaml](params.yaml), [provenance.json](provenance.json)", ""]
    summary = atomic_write_text(run_dir / "summary.md", "\n".join(md))
    return index, summary


def _strip_tags(text: str) -> str:
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", text))


# ===================================================================== notebook support
# Small helpers the notebooks share, so that every notebook stays a short narrative.
class StudyRun:
    """The run folder as the notebooks see it.

    ``figures/`` holds every figure as PNG (and ``figures/index.json``, the captions
    the report uses); ``runs/<model>/`` the training folders; JSON and CSV files at
    the top level pass results from one notebook to the next.
    """

    def __init__(self, run_dir: str | os.PathLike):
        import warnings

        # tqdm.auto looks for ipywidgets in a kernel and warns when they are missing;
        # the plain-text progress bars it falls back to are what we want
        warnings.filterwarnings("ignore", message="IProgress not found")
        self.root = resolve_path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.figures = self.root / "figures"
        self.figures.mkdir(exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def model_dir(self, model: str) -> Path:
        return self.root / "runs" / model

    def checkpoint(self, model: str) -> Path:
        return self.model_dir(model) / "best.pt"

    def figure(self, fig, name: str, caption: str, key: bool = False, show: bool = True) -> Path:
        """Save ``fig`` as ``figures/<name>.png``, record its caption, show it once in the notebook.

        ``key=True`` puts it among the report's key figures.
        """
        from .plots import save_figure

        path = self.figures / f"{name}.png"
        if show:
            with contextlib.suppress(ImportError):
                from IPython import get_ipython
                from IPython.display import display

                if get_ipython() is not None:
                    display(fig)
        save_figure(fig, path)
        index = [f for f in figure_index(self.root) if f.get("name") != name]
        index.append({"name": name, "path": f"figures/{name}.png", "caption": caption, "key": bool(key)})
        atomic_write_json(self.figures / "index.json", index)
        return path

    def record_checkpoint(self, model: str, path: str | os.PathLike) -> None:
        """Note in ``checkpoints.json`` which checkpoint ``model`` uses (relative when inside the run folder)."""
        path = Path(path).resolve()
        try:
            shown = path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            shown = str(path)
        table = _read_json(self.root / "checkpoints.json") or {}
        table[model] = shown
        atomic_write_json(self.root / "checkpoints.json", table)

    def checkpoint_of(self, model: str) -> Path:
        """The checkpoint ``model`` uses, as recorded by :func:`train_model`."""
        table = self.read_json("checkpoints.json", "01_supcon_pretraining / 02_finetuning")
        if model not in table:
            raise StudyError(f"{self.root / 'checkpoints.json'}: no checkpoint recorded for {model!r} "
                             f"(recorded: {', '.join(table) or 'none'}); run 02_finetuning with this model in 'models'")
        return resolve_path(table[model], self.root)

    def write_json(self, name: str, obj: Any) -> Path:
        from .evaluate import jsonable

        return atomic_write_json(self.root / name, jsonable(obj))

    def read_json(self, name: str, produced_by: str = "an earlier notebook") -> Any:
        path = self.root / name
        if not path.is_file():
            raise StudyError(f"{path}: not found; it is written by {produced_by} (run that notebook first "
                             "with the same run_dir)")
        return json.loads(path.read_text(encoding="utf-8"))

    def write_csv(self, name: str, table) -> Path:
        return atomic_write_text(self.root / name, table.to_csv(index=False))

    def read_csv(self, name: str, produced_by: str = "an earlier notebook"):
        import pandas as pd

        path = self.root / name
        if not path.is_file():
            raise StudyError(f"{path}: not found; it is written by {produced_by} (run that notebook first)")
        return pd.read_csv(path)


class StudyData:
    """The dataset a study runs on: a processed dataset, its split tag, and what is known about it."""

    def __init__(self, processed: Path, tag: str, synthetic: bool, original: Path | None = None,
                 name: str | None = None):
        from .data.processed import ProcessedDataset

        self.processed = Path(processed)
        self.original = Path(original) if original is not None else None
        self.tag = tag
        self.synthetic = bool(synthetic)
        self.name = name or ("SynthSpine" if synthetic else self.processed.name)
        self.dataset = ProcessedDataset(self.processed)
        tags = self.dataset.tags()
        if tag not in tags:
            raise ParamsError(f"parameter 'tag' = {tag!r}: {self.processed} has no lists of that tag "
                              f"(available: {', '.join(tags) or 'none'})")

    @classmethod
    def from_run(cls, run: StudyRun) -> "StudyData":
        """The dataset 00_data_exploration chose, from ``dataset.json`` in the run folder."""
        info = run.read_json("dataset.json", "00_data_exploration")
        return cls(Path(info["processed"]), info["tag"], info["synthetic"],
                   Path(info["original"]) if info.get("original") else None, info.get("name"))

    def records(self, split: str) -> list[dict]:
        return self.dataset.records(split, self.tag)

    def all_records(self) -> list[dict]:
        """Records of the train, val and test lists together."""
        return [r for split in ("train", "val", "test") for r in self.records(split)]

    @property
    def truth_file(self) -> Path | None:
        if self.original is None:
            return None
        from .data.synth import TRUTH_FILE

        path = self.original / TRUTH_FILE
        return path if path.is_file() else None

    def truth(self):
        """SynthSpine's per-vertebra truth table (``case``, ``label``, ``morphology``, heights, ...) or None."""
        import pandas as pd

        return pd.read_csv(self.truth_file) if self.truth_file else None

    def vertebrae(self):
        """One row per patch: ``image_id``, ``label``, ``level``, ``grade``, ``split`` (or "unlisted")."""
        import pandas as pd

        from .levels import level_name

        split_of = {}
        for split in ("train", "val", "test"):
            with contextlib.suppress(DatasetError):
                for r in self.records(split):
                    split_of[r["name"]] = split
        rows = [{"image_id": p.image_id, "label": p.label, "level": level_name(p.label), "grade": p.grade,
                 "split": split_of.get(p.filename, "unlisted"), "name": p.filename} for p in self.dataset.patches]
        return pd.DataFrame(rows)

    def describe(self) -> dict:
        table = self.vertebrae()
        return {"name": self.name, "synthetic": self.synthetic, "processed": str(self.processed),
                "original": str(self.original) if self.original else None, "tag": self.tag,
                "cases": int(table["image_id"].nunique()), "vertebrae": int(len(table)),
                "fingerprint": dataset_fingerprint(self.processed)}


def prepare_dataset(dataset: str, data_dir: str, tag: str, synth_cases: int = 64, synth_seed: int = 0,
                    patch_size: int = 64, synth_folds: int = 5, val_fraction: float = 0.2,
                    workers: int = 1) -> StudyData:
    """The study's dataset: SynthSpine (generated into ``data_dir`` when missing, else reused) or a processed folder.

    ``dataset == "synthspine"``: :func:`vfnb.data.synth.ensure_default_dataset`
    (lists of tags ``synth-f0`` .. ``synth-f{synth_folds-1}``); otherwise ``dataset``
    is the path of a processed dataset, validated with :func:`vfnb.data.check.require_valid`.
    """
    if str(dataset).lower() == SYNTHSPINE:
        from .data.synth import ensure_default_dataset

        import io

        # generation and pre-processing print progress bars and per-vertebra notes (kept in
        # patches.csv): capture them so the notebook shows a short summary instead
        captured = io.StringIO()
        start = time.monotonic()
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            paths = ensure_default_dataset(resolve_path(data_dir), cases=synth_cases, seed=synth_seed,
                                           size=patch_size, workers=max(1, int(workers)), tag="synth",
                                           folds=synth_folds, val_fraction=val_fraction)
        notes = sorted({line.strip() for line in captured.getvalue().replace("\r", "\n").splitlines()
                        if line.strip().startswith("warning:")})
        took = time.monotonic() - start
        print(f"SynthSpine ready in {took:.0f} s: {paths['processed']}"
              + (f" ({len(notes)} pre-processing notes, listed in patches.csv)" if notes else ""))
        return StudyData(Path(paths["processed"]), tag, synthetic=True, original=Path(paths["original"]))
    from .data.check import require_valid

    processed = resolve_path(dataset)
    require_valid(processed)
    return StudyData(processed, tag, synthetic=False)


def data_statement(data: StudyData):
    """A Markdown paragraph saying what the data are (and loudly that they are synthetic when they are)."""
    from IPython.display import Markdown

    return Markdown(_strip_tags(_dataset_sentence(data.describe())).replace("synthetic:", "**SYNTHETIC**:"))


def training_params(mode: str, data: StudyData, epochs: int, lr: float, init_checkpoint: str | None = None,
                    **shared: Any) -> dict:
    """Parameters for :func:`vfnb.train.train`, validated (an unknown key raises :class:`ParamsError`)."""
    from .config import validate_params

    params = {"mode": mode, "dataset": str(data.processed), "tag": data.tag, "epochs": int(epochs), "lr": float(lr),
              "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint), "progress": False,
              **shared}
    return validate_params(params, where=f"study training params ({mode})")


def train_model(run: StudyRun, model: str, mode: str, data: StudyData, epochs: int, lr: float, shared: dict,
                init_checkpoint: str | os.PathLike | None = None, checkpoints: dict | None = None,
                reuse: bool = False) -> Path:
    """Train ``model`` (training ``mode``) into ``runs/<model>/``; record and return its best checkpoint.

    A checkpoint named in ``checkpoints[model]`` is used as is (no training: the
    external-validation path); with ``reuse`` an existing ``runs/<model>/best.pt`` is
    kept. Otherwise a fresh training run is made with :func:`training_params`.
    The checkpoint is recorded in ``checkpoints.json`` for the later notebooks.
    """
    from .train import train

    given = (checkpoints or {}).get(model)
    if given:
        path = resolve_path(given)
        if not path.is_file():
            raise ParamsError(f"parameter 'checkpoints' names {path} for {model!r}, but that file does not exist")
        print(f"{model}: using the given checkpoint {path} (no training)")
    elif reuse and run.checkpoint(model).is_file():
        path = run.checkpoint(model)
        print(f"{model}: reusing {path}")
    else:
        if mode in ("linear", "finetune") and not init_checkpoint:
            raise ParamsError(f"model {model!r} starts from the SupCon encoder, but there is none: keep a supcon_* "
                              "model in 'models' so 01 trains it, or name one in 'checkpoints' under 'supcon'")
        params = training_params(mode, data, epochs, lr, init_checkpoint, **shared)
        if run.model_dir(model).exists():
            shutil.rmtree(run.model_dir(model))  # a stale or half-written run inside this study's own folder
        start = time.monotonic()
        result = train(params, run.model_dir(model))
        best = "n/a" if result.best_metric is None else f"{result.best_metric:.3f}"
        when = "" if result.best_epoch is None else f" at epoch {result.best_epoch}"
        if result.best_epoch == 0:
            when += " (the classifier's probe fit, before any training step: training did not improve on it)"
        print(f"{model}: {len(result.history)} epochs of {mode} in {time.monotonic() - start:.0f} s; "
              f"best {result.selected_by} {best}{when} (validation)")
        path = Path(result.best_checkpoint)
    run.record_checkpoint(model, path)
    return path


def history(run: StudyRun, model: str) -> list[dict]:
    """The per-epoch history of ``runs/<model>/`` (empty for a given, untrained checkpoint)."""
    return _read_json(run.model_dir(model) / "history.json") or []


def predict(checkpoint: str | os.PathLike, records: Sequence[dict], cube_size: int, data: StudyData | None = None,
            device: str = "auto"):
    """``(table, embeddings)`` of a checkpoint on records; adds SynthSpine's morphology when known.

    The checkpoint is run at its own input size; ``cube_size`` is not used (kept until the
    notebooks stop passing it).
    """
    from .models import load_checkpoint
    from .predict import predict_patches

    model = load_checkpoint(checkpoint)
    table, embeddings = predict_patches(model, records, device=device)
    table["grade"] = table["grade"].astype("int64")
    truth = data.truth() if data is not None else None
    if truth is not None and {"case", "label", "morphology"} <= set(truth.columns):
        morph = truth[["case", "label", "morphology"]].rename(columns={"case": "image_id"})
        morph["image_id"] = morph["image_id"].astype(str)
        table = table.merge(morph, on=["image_id", "label"], how="left")
        # a normal vertebra has no fracture morphology: keep it out of per-morphology recall
        table.loc[table["grade"] == 0, "morphology"] = None
        table["morphology"] = table["morphology"].replace({"none": None, "": None})
    return table, embeddings


def subsample(n: int, max_points: int, seed: int = 0):
    """Indices of at most ``max_points`` of ``n`` items (sorted; all when n <= max_points)."""
    import numpy as np

    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def initial_model(backbone: str, head: str, feature_dim: int, seed: int = 0, **kw):
    """The untrained network every training run starts from (seeded as training seeds it)."""
    import torch

    from .models import build_model

    torch.manual_seed(int(seed))
    return build_model(backbone=backbone, head=head, feature_dim=feature_dim, **kw).eval()


def probe_comparison(stages: Mapping[str, Any], train_records: Sequence[dict], val_records: Sequence[dict],
                     cube_size: int, device: str = "auto", seed: int = 0, n_permutations: int = 2000):
    """How well a linear probe grades validation vertebrae from each encoder's pooled features.

    ``stages``: name -> model (e.g. the random initialisation and the SupCon encoder).
    For each, a class-balanced logistic regression on standardised features of the
    training vertebrae (centred views) predicts the validation vertebrae. Returns a
    DataFrame indexed by stage (then two image-blind chance rows) with validation
    ``macro-F1``, ``fracture AUC`` (1 - P(grade 0), fractured = grade >= 1) and the
    permutation ``p (macro-F1 vs chance)`` (:func:`vfnb.evaluate.permutation_p_value`).
    """
    import numpy as np
    import pandas as pd
    from sklearn.metrics import f1_score

    from .evaluate import chance_macro_f1, fracture_auc, permutation_p_value
    from .features import probe_predict
    from .predict import predict_patches

    train_y = np.array([int(r["grade"]) for r in train_records])
    val_y = np.array([int(r["grade"]) for r in val_records])
    rows = {}
    for stage, model in stages.items():
        _, train_f = predict_patches(model, train_records, cube_size, device=device)
        _, val_f = predict_patches(model, val_records, cube_size, device=device)
        pred, score = probe_predict("logreg", train_f, train_y, val_f, seed)
        auc = fracture_auc(val_y, score)
        rows[stage] = {"macro-F1": float(f1_score(val_y, pred, average="macro", zero_division=0)),
                       "fracture AUC": float("nan") if auc is None else auc,
                       "p (macro-F1 vs chance)": permutation_p_value(val_y, pred, n_permutations, seed)}
    chance = chance_macro_f1(val_y, seed=seed)
    rows["chance: always grade 0"] = {"macro-F1": chance["always_normal"], "fracture AUC": 0.5}
    rows["chance: uniform guess"] = {"macro-F1": chance["uniform"], "fracture AUC": 0.5}
    return pd.DataFrame(rows).T


def body_heights(mask, spacing_mm: float = 1.0) -> dict:
    """Anterior / middle / posterior vertebral-body heights measured on a patch mask (mm).

    ``mask`` ``[X, Y, Z]`` in the patch convention (axis 1 posterior -> anterior,
    axis 2 inferior -> superior). On the mid-sagittal slice (axis 0 through the
    mask's centre), the body is the run of mask columns reaching the anterior edge
    (the spinal canal separates it from the posterior elements); heights are the
    mask's extent along axis 2 at 15 %, 50 % and 85 % of that run, from anterior.
    Returns ``{"anterior", "middle", "posterior"}`` in mm (NaN when the slice is empty).
    """
    import numpy as np

    mask = np.asarray(mask) > 0
    nan = {"anterior": float("nan"), "middle": float("nan"), "posterior": float("nan")}
    if not mask.any():
        return nan
    x0 = int(round(np.nonzero(mask)[0].mean()))
    sl = mask[x0]  # [Y, Z]
    columns = sl.any(axis=1)
    ys = np.nonzero(columns)[0]
    if ys.size == 0:
        return nan
    front = ys.max()
    back = front
    while back - 1 >= 0 and columns[back - 1]:
        back -= 1
    length = front - back + 1

    def height(frac):
        y = int(round(front - frac * (length - 1)))
        zs = np.nonzero(sl[y])[0]
        return float((zs.max() - zs.min() + 1) * spacing_mm) if zs.size else float("nan")

    return {"anterior": height(0.15), "middle": height(0.5), "posterior": height(0.85)}


def measure_heights(records: Sequence[dict], per_grade: int = 40, seed: int = 0):
    """Body heights and ratios for up to ``per_grade`` patches of each grade (reads the masks).

    Columns: ``name``, ``grade``, ``level``, ``anterior``/``middle``/``posterior`` (mm),
    ``anterior_ratio`` = Ha/Hp, ``middle_ratio`` = Hm/Hp (wedge and biconcave deformity),
    ``min_ratio`` = min(Ha, Hm)/Hp.
    """
    import numpy as np
    import pandas as pd

    from .io import load_nifti
    from .levels import level_name

    rng = np.random.default_rng(seed)
    rows = []
    by_grade: dict[int, list] = {}
    for r in records:
        by_grade.setdefault(int(r["grade"]), []).append(r)
    for grade, recs in sorted(by_grade.items()):
        chosen = [recs[i] for i in sorted(rng.choice(len(recs), size=min(per_grade, len(recs)), replace=False))]
        for r in chosen:
            mask, affine, _ = load_nifti(r["seg"])
            spacing = float(np.linalg.norm(affine[:3, 2]))
            h = body_heights(mask, spacing)
            rows.append({"name": r["name"], "grade": grade, "level": level_name(r["label"]), **h})
    table = pd.DataFrame(rows)
    with np.errstate(invalid="ignore", divide="ignore"):
        table["anterior_ratio"] = table["anterior"] / table["posterior"]
        table["middle_ratio"] = table["middle"] / table["posterior"]
        table["min_ratio"] = np.minimum(table["anterior"], table["middle"]) / table["posterior"]
    return table


def intensity_samples(records: Sequence[dict], per_grade: int = 10, voxels: int = 3000, seed: int = 0):
    """HU values per tissue and grade from up to ``per_grade`` patches of each grade.

    Tissues: ``cortical rim`` (the mask's outer 2 voxels), ``trabecular core`` (the
    mask eroded by 2 voxels) and ``surroundings`` (outside the mask: discs, muscle,
    fat, neighbouring bone). ``voxels`` values are drawn per patch and tissue.
    Columns: ``grade``, ``tissue``, ``hu``.
    """
    import numpy as np
    import pandas as pd
    from scipy import ndimage

    from .io import load_nifti

    rng = np.random.default_rng(seed)
    by_grade: dict[int, list] = {}
    for r in records:
        by_grade.setdefault(int(r["grade"]), []).append(r)
    parts = []
    for grade, recs in sorted(by_grade.items()):
        for i in rng.choice(len(recs), size=min(per_grade, len(recs)), replace=False):
            image, _, _ = load_nifti(recs[i]["image"])
            mask = load_nifti(recs[i]["seg"])[0] > 0
            core = ndimage.binary_erosion(mask, iterations=2)
            for tissue, sel in (("cortical rim", mask & ~core), ("trabecular core", core), ("surroundings", ~mask)):
                values = image[sel]
                if values.size:
                    values = rng.choice(values, size=min(voxels, values.size), replace=False)
                    parts.append(pd.DataFrame({"grade": grade, "tissue": tissue, "hu": values.astype(float)}))
    return pd.concat(parts, ignore_index=True)


def load_patch_input(record: dict, cube_size: int):
    """The evaluation network input ``[3, S, S, S]`` (numpy float32) of one record."""
    import numpy as np

    from .data.transforms import eval_transform

    return np.asarray(eval_transform(int(cube_size))(dict(record))["image"])


def augmented_views(record: dict, cube_size: int, seed: int = 0):
    """Two independently augmented training views ``[2, 3, S, S, S]`` (numpy) of one record."""
    import numpy as np

    from .data.transforms import TwoViews, train_transform

    views = TwoViews(train_transform(int(cube_size), seed=None))
    views.set_random_state(seed=int(seed))
    return np.asarray(views(dict(record))["image"])


def pick_examples(records: Sequence[dict], per_grade: int, seed: int = 0) -> list[dict]:
    """Up to ``per_grade`` records of each grade (0..3 in order), drawn with ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for grade in range(4):
        recs = [r for r in records if int(r["grade"]) == grade]
        if recs:
            out += [recs[i] for i in sorted(rng.choice(len(recs), size=min(per_grade, len(recs)), replace=False))]
    return out


def operating_point(val_table, target_specificity: float) -> dict:
    """The validation operating point: threshold for ``target_specificity`` and what it gives on validation."""
    from .evaluate import screening_metrics, threshold_for_specificity

    threshold = threshold_for_specificity(val_table["grade"], val_table["fracture_prob"], target_specificity)
    at = screening_metrics(val_table["grade"], val_table["fracture_prob"], threshold)
    return {"threshold": threshold, "target_specificity": float(target_specificity),
            "val_specificity": at["specificity"], "val_sensitivity": at["sensitivity"], "val_roc_auc": at["roc_auc"],
            "chosen_on": "validation"}


def paper_row() -> dict:
    """The paper's reported figures, labelled as the paper's, on its own data (for metrics.json)."""
    from .evaluate import PAPER_REPORTED

    return {"label": "Paper (Wei et al. 2022), as reported on its own data", "data": PAPER_REPORTED["source"],
            "metrics": {k: {"value": v} for k, v in PAPER_REPORTED.items() if isinstance(v, (int, float))}}


def example_scans(data: StudyData, n: int):
    """Up to ``n`` whole scans of the original layout, those with the most fractures first.

    Yields ``(case_id, ct_hu, seg, affine, grades)``; nothing when the study has no
    original layout (a processed dataset given directly).
    """
    if data.original is None or n <= 0:
        return
    from .data.original import read_original
    from .io import load_nifti

    cases = sorted(read_original(data.original), key=lambda c: (-sum(g > 0 for g in c.grades.values()), c.case_id))
    for case in cases[:n]:
        ct, affine, _ = load_nifti(case.image_path)
        seg = load_nifti(case.seg_path)[0]
        yield case.case_id, ct, seg, affine, case.grades


def plot_height_ratios(heights, title: str = "Measured vertebral-body height ratios"):
    """Box plots of Ha/Hp and Hm/Hp per Genant grade (from :func:`measure_heights`)."""
    import seaborn as sns
    from matplotlib.figure import Figure

    from .plots import GRADE_COLORS

    long = heights.melt(id_vars=["grade"], value_vars=["anterior_ratio", "middle_ratio"], var_name="ratio",
                        value_name="value").dropna()
    long["ratio"] = long["ratio"].map({"anterior_ratio": "anterior / posterior (Ha/Hp)",
                                       "middle_ratio": "middle / posterior (Hm/Hp)"})
    fig = Figure(figsize=(9, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (name, part) in zip(axes, long.groupby("ratio")):
        sns.boxplot(data=part, x="grade", y="value", hue="grade", palette=GRADE_COLORS, ax=ax, legend=False)
        ax.axhline(0.8, ls="--", c="0.5", lw=1)  # a 20 % height loss: Genant's grade-1 boundary
        ax.set_title(name)
        ax.set_xlabel("Genant grade")
        ax.set_ylabel("height ratio (mm / mm)")
    fig.suptitle(f"{title} (dashed: 0.8, i.e. 20 % height loss)")
    return fig


def plot_intensity_histograms(samples, title: str = "CT intensities per tissue and grade"):
    """One panel per tissue: HU density per Genant grade (from :func:`intensity_samples`)."""
    import numpy as np
    from matplotlib.figure import Figure

    from .plots import GRADE_COLORS

    tissues = list(dict.fromkeys(samples["tissue"]))
    fig = Figure(figsize=(4.2 * len(tissues), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tissues)))
    for ax, tissue in zip(axes, tissues):
        part = samples[samples["tissue"] == tissue]
        low, high = np.percentile(part["hu"], [0.5, 99.5])
        bins = np.linspace(low, high, 60)
        for grade, values in part.groupby("grade")["hu"]:
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.6, color=GRADE_COLORS[int(grade)],
                    label=f"grade {grade}")
        ax.set_title(tissue)
        ax.set_xlabel("CT intensity (HU)")
        ax.set_ylabel("density (1/HU)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def per_grade_table(results: dict) -> "Any":
    """Per-grade precision / recall / F1 with CIs, one row per (model, grade)."""
    import pandas as pd

    from .evaluate import format_ci

    rows = []
    for model, result in results.items():
        m = result["metrics"]
        for g in range(4):
            rows.append({"model": MODEL_TITLES.get(model, model), "grade": g,
                         "vertebrae": result["grade_counts"].get(str(g), result["grade_counts"].get(g)),
                         "precision": format_ci(m.get(f"precision_grade{g}")),
                         "recall": format_ci(m.get(f"recall_grade{g}")),
                         "F1": format_ci(m.get(f"f1_grade{g}"))})
    return pd.DataFrame(rows).set_index(["model", "grade"])


def metrics_document(results: dict, data: StudyData, operating_points: dict, n_boot: int) -> dict:
    """The content of ``metrics.json``: every number per model with its CI, and the paper's row."""
    any_result = next(iter(results.values()), {})
    boot = any_result.get("bootstrap", {})
    return {
        "schema": 1,
        "dataset": data.describe(),
        "split": "test",
        "test": {"vertebrae": any_result.get("n_vertebrae"), "patients": any_result.get("n_patients"),
                 "grade_counts": any_result.get("grade_counts")},
        "operating_point": {"target_specificity": next(iter(operating_points.values()), {}).get("target_specificity"),
                            "chosen_on": "validation", "per_model": operating_points},
        "ci": {"method": "percentile bootstrap over patients (image_id)", "level": boot.get("confidence", 0.95),
               "n_boot": n_boot},
        "models": {m: {"title": MODEL_TITLES.get(m, m), **r} for m, r in results.items()},
        "paper": paper_row(),
    }


def read_operating_points(path: str | os.PathLike, models: Sequence[str]) -> dict:
    """Thresholds chosen in another run (its ``operating_points.json``), for ``models``."""
    path = resolve_path(path)
    if not path.is_file():
        raise ParamsError(f"parameter 'operating_points_from': {path} not found (expected a run's operating_points.json)")
    table = _read_json(path)
    if not isinstance(table, dict):
        raise ParamsError(f"{path}: not a JSON object of model -> operating point")
    out = {}
    for model in models:
        entry = table.get(model)
        if not isinstance(entry, dict) or not isinstance(entry.get("threshold"), (int, float)):
            raise ParamsError(f"{path}: no threshold for model {model!r} (models there: {', '.join(table)})")
        out[model] = {**entry, "chosen_on": f"validation of another run ({path})"}
    return out


def embed_2d(embeddings, method: str = "umap", seed: int = 0, n_neighbors: int = 15):
    """``[N, F]`` features -> ``[N, 2]``: UMAP (``"umap"``) or, for quick runs, PCA (``"pca"``)."""
    import numpy as np

    from .plots import umap_embedding

    if method == "umap":
        return umap_embedding(embeddings, seed=seed, n_neighbors=n_neighbors)
    if method != "pca":
        raise ParamsError(f"parameter 'projection' = {method!r}: expected 'umap' or 'pca'")
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0)
    if x.shape[0] < 2 or not np.any(x):
        return np.zeros((x.shape[0], 2), dtype=np.float32)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    out = np.zeros((x.shape[0], 2))
    k = min(2, s.size)
    out[:, :k] = u[:, :k] * s[:k]
    return out.astype(np.float32)


def plot_embedding(xy, values, method: str = "umap", by: str = "grade", title: str = ""):
    """:func:`vfnb.plots.plot_umap` (by grade, grade 1 outlined) or ``plot_umap_by`` (any column), axes named after ``method``."""
    from .plots import plot_umap, plot_umap_by

    fig = plot_umap(xy, values, title=title) if by == "grade" else plot_umap_by(xy, values, by, title=title)
    if method == "pca":
        ax = fig.axes[0]
        ax.set_xlabel("principal component 1 (arbitrary units)")
        ax.set_ylabel("principal component 2 (arbitrary units)")
    return fig
