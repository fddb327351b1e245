"""What every benchmark shares: repeated timing, figures with their spread, the
machine description, child processes for peak memory, and the JSON / table /
Markdown writers.

A *figure* is a dict::

    {"value": median, "unit": "samples/s", "min": .., "max": .., "q1": .., "q3": ..,
     "n": repetitions, "note": "what was measured"}

Results files hold ``{"meta": {...}, "figures": {"<section>.<name>": figure}}``;
figure names are flat dotted keys such as ``augmentation.speedup_128``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------ figures
def figure(samples: Sequence[float], unit: str, note: str = "", **extra: Any) -> dict:
    """Median of ``samples`` with min/max and interquartile range."""
    arr = np.asarray([float(s) for s in samples], dtype=np.float64)
    if arr.size == 0:
        raise ValueError("a figure needs at least one sample")
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    out = {
        "value": float(med),
        "unit": unit,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "q1": float(q1),
        "q3": float(q3),
        "n": int(arr.size),
        "samples": [float(s) for s in arr],
    }
    if note:
        out["note"] = note
    out.update(extra)
    return out


def single(value: float, unit: str, note: str = "", **extra: Any) -> dict:
    """A figure measured once (e.g. a study's recorded wall time): no spread."""
    return figure([value], unit, note, **extra)


def ratio_figure(numer: Sequence[float], denom: Sequence[float], unit: str = "x", note: str = "", **extra) -> dict:
    """Ratio of two paired sample lists (rep i over rep i): median and spread of the ratios.

    Pairing reps measured back to back cancels most of the drift of a shared machine.
    """
    n = min(len(numer), len(denom))
    ratios = [float(numer[i]) / float(denom[i]) for i in range(n) if float(denom[i]) > 0]
    return figure(ratios, unit, note, **extra)


def time_reps(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` times; return seconds per rep."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# ------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "machine"


def default_machine_name() -> str:
    """``<cpu model>-<cores>core``, sanitised, e.g. ``amd-epyc-2core``."""
    model = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*$", "", cpu_model(), flags=re.I)
    model = re.sub(r"\b\d+-core\b", "", model, flags=re.I)
    return f"{slug(model)}-{usable_cores()}core"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "?"))
    except Exception:
        return None


def machine_info() -> dict:
    """CPU, cores, memory, load, the library versions and the GPU, if any."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("torch", "monai", "numpy", "scipy", "nibabel")},
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    try:
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        info["gpu"] = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            info["git_commit"] = rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except Exception:
        pass
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------ child processes
class ChildError(RuntimeError):
    """A benchmark child process failed; the message carries its stderr tail."""


def run_child(func: str, kwargs: dict | None = None, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run ``module:function(**kwargs)`` in a fresh Python and return its result dict.

    The child adds ``peak_rss_mb`` (its own peak resident memory), ``workers_peak_rss_mb``
    (the largest of its finished children, e.g. DataLoader workers) and
    ``baseline_rss_mb`` (resident memory after imports, before the work). A fresh
    interpreter per measurement keeps one measurement's memory out of the next.
    """
    with tempfile.TemporaryDirectory(prefix="vfnb-bench-child-") as tmp:
        out = Path(tmp) / "result.json"
        spec = {"func": func, "kwargs": kwargs or {}, "out": str(out)}
        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
        proc = subprocess.run([sys.executable, "-m", "benchmarks._child", json.dumps(spec)], cwd=REPO_ROOT,
                              env=child_env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-25:])
            raise ChildError(f"{func} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


# ------------------------------------------------------------------ output
def write_results(path: str | os.PathLike, meta: dict, figures: dict, errors: dict | None = None,
                  sections_run: Sequence[str] = (), merge: bool = False) -> Path:
    """Write ``{"meta", "figures", "errors"}`` to ``path`` atomically.

    ``errors`` maps a section to why it was not measured. With ``merge``, what
    ``path`` already holds for sections *not* in ``sections_run`` is kept, so an
    ``--only`` rerun replaces its own sections and leaves the others.
    """
    from vfnb.io import atomic_write_json

    path = Path(path)
    kept_figures: dict = {}
    kept_errors: dict = {}
    old: dict = {}
    ran = set(sections_run)
    if merge and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        kept_figures = {k: v for k, v in old.get("figures", {}).items() if k.split(".", 1)[0] not in ran}
        kept_errors = {k: v for k, v in old.get("errors", {}).items() if k not in ran}
    if merge and path.is_file() and isinstance(old.get("meta", {}).get("sections"), dict):
        # keep when and how the kept sections were measured
        sections = {k: v for k, v in old["meta"]["sections"].items() if k not in ran}
        meta = {**meta, "sections": {**sections, **meta.get("sections", {})}}
    payload = {
        "meta": meta,
        "figures": {**kept_figures, **figures},
        "errors": {**kept_errors, **(errors or {})},
    }
    return atomic_write_json(path, payload)


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _spread(fig: dict) -> str:
    if fig.get("n", 1) <= 1:
        return "(1 run)"
    return f"{_fmt(fig['min'])} - {_fmt(fig['max'])} (n={fig['n']})"


def table_rows(figures: dict) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for key, fig in figures.items():
        rows.append((key, _fmt(fig["value"]), fig.get("unit", ""), _spread(fig), fig.get("note", "")))
    return rows


def format_table(figures: dict) -> str:
    """Plain-text table: figure, median, unit, min - max, note."""
    header = ("figure", "median", "unit", "min - max", "what")
    rows = [header] + table_rows(figures)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(r[j].ljust(widths[j]) for j in range(4)) + "  " + r[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(lines)


def markdown_report(results: dict, source: str = "") -> str:
    """Markdown rendering of a results JSON: the machine, then one table per section."""
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    versions = machine.get("versions", {})
    lines = []
    title = meta.get("machine_name", "machine")
    lines.append(f"### `{title}`" + (f" (from `{source}`)" if source else ""))
    lines.append("")
    lines.append(f"- CPU: {machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores"
                 + (f", {machine['memory_gb']} GB RAM" if "memory_gb" in machine else "")
                 + (f"; GPU: {machine['gpu']}" if machine.get("gpu") else "; no GPU"))
    lines.append(f"- date: {meta.get('date', '?')}; load average at start: "
                 f"{machine.get('load_average_1_5_15', '?')}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
                 + f", python {machine.get('python', '?')}"
                 + (f"; vfnb at {machine['git_commit']}" if machine.get("git_commit") else ""))
    lines.append(f"- command: `{meta.get('command', '?')}`"
                 + (" (quick mode: tiny sizes, not representative)" if meta.get("quick") else ""))
    lines.append("")
    sections: dict[str, dict] = {}
    for key, fig in results.get("figures", {}).items():
        sections.setdefault(key.split(".", 1)[0], {})[key] = fig
    for section, figs in sections.items():
        lines.append(f"**{section}**")
        lines.append("")
        lines.append("| figure | median | unit | spread (min - max) | what |")
        lines.append("|---|---:|---|---|---|")
        for key, med, unit, spread, note in table_rows(figs):
            lines.append(f"| `{key}` | {med} | {unit} | {spread} | {note.replace('|', '/')} |")
        lines.append("")
    errors = results.get("errors", {})
    if errors:
        lines.append("**not measured**")
        lines.append("")
        for section, msg in errors.items():
            first = str(msg).strip().splitlines()[0] if str(msg).strip() else "?"
            lines.append(f"- `{section}`: {first}")
        lines.append("")
    return "\n".join(lines)


DOC_BEGIN = "<!-- results:begin (generated by `python -m benchmarks --update-doc`; do not edit) -->"
DOC_END = "<!-- results:end -->"


def update_doc(doc: Path, results_dir: Path) -> Path:
    """Replace the text between :data:`DOC_BEGIN` and :data:`DOC_END` in ``doc`` with the
    Markdown of every ``results_dir/*.json`` (CPU machines first, then GPU runs)."""
    from vfnb.io import atomic_write_text

    text = Path(doc).read_text(encoding="utf-8")
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(f"{doc}: markers {DOC_BEGIN!r} and {DOC_END!r} not found")
    files = sorted(Path(results_dir).glob("*.json"), key=lambda p: (p.name.startswith("gpu-"), p.name))
    parts = []
    for path in files:
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read results JSON ({exc})") from None
        rel = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
        parts.append(markdown_report(results, source=str(rel)))
    body = "\n".join(parts) if parts else "_No results committed yet: run `make bench`, then " \
        "`python -m benchmarks --update-doc`._\n"
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    return atomic_write_text(doc, head + DOC_BEGIN + "\n\n" + body.rstrip() + "\n\n" + DOC_END + tail)
