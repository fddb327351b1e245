"""Budget curves: validation metrics against optimizer steps, SupCon and cross-entropy side by side.

Read from the per-epoch ``history.json`` of a study run's training runs
(``<study run>/runs/supcon`` and ``<study run>/runs/ce``): the validation probe's
macro-F1 and fracture AUC (a class-balanced logistic regression on the pooled encoder
features, fitted on the training vertebrae after every epoch; recorded for both, so
the two encoders are read the same way) against the optimizer steps taken so far.
:func:`budget_curves` takes one study run (the study's report) or many (a sweep:
mean and min-max across runs at each step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from ..errors import VfnbError
from ..evaluate import finite_values, mean_interval
from ..io import load_yaml
from .run import read_json

# training runs drawn, and the validation numbers read from their histories
BUDGET_RUNS = {"supcon": "SupCon pretraining", "ce": "Cross-entropy baseline"}
BUDGET_METRICS = (("macro_f1", "validation probe macro-F1 (4 grades)"),
                  ("fracture_auc", "validation probe fracture AUC (grade ≥ 1)"))


def _history_points(run_dir: Path, model: str) -> list[dict]:
    """``[{"epoch", "steps", "macro_f1", "fracture_auc"}]`` from one training run's history.json.

    ``steps``: the row's ``steps`` when recorded, else epoch x ``batches_per_epoch`` of
    the run's params.yaml (``None`` when neither is known). The validation probe's
    numbers (``val_probe_*``) are preferred to ``val_*`` when present.
    """
    history = read_json(run_dir / "runs" / model / "history.json")
    if not isinstance(history, list):
        return []
    try:
        params = load_yaml(run_dir / "runs" / model / "params.yaml")
    except VfnbError:
        params = None
    batches = params.get("batches_per_epoch") if isinstance(params, dict) else None
    rows = []
    for row in history:
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            continue
        steps = row.get("steps")
        if not isinstance(steps, int):
            steps = row["epoch"] * batches if isinstance(batches, int) else None
        values = {name: next((row[k] for k in (f"val_probe_{name}", f"val_{name}") if finite_values([row.get(k)])), None)
                  for name, _ in BUDGET_METRICS}
        rows.append({"epoch": row["epoch"], "steps": steps, **values})
    return rows


def budget_curves(run_dirs: Sequence[Path]) -> dict:
    """Per training run (``supcon``, ``ce``) and metric: mean, min, max, n across runs at each x.

    x is optimizer steps when every run records them (or its batches per epoch), else epochs.
    """
    histories = {m: [_history_points(Path(d), m) for d in run_dirs] for m in BUDGET_RUNS}
    rows = [r for per_run in histories.values() for h in per_run for r in h]
    x_key = "steps" if rows and all(r["steps"] is not None for r in rows) else "epoch"
    curves = {}
    for model, per_run in histories.items():
        by_x: dict[int, dict[str, list]] = {}
        for h in per_run:
            for r in h:
                slot = by_x.setdefault(r[x_key], {name: [] for name, _ in BUDGET_METRICS})
                for name, _ in BUDGET_METRICS:
                    if r[name] is not None:
                        slot[name].append(r[name])
        if by_x:
            curves[model] = {name: [{"x": x, **{k: v for k, v in mean_interval(by_x[x][name]).items()
                                               if k in ("n", "mean", "min", "max")}}
                                    for x in sorted(by_x) if by_x[x][name]]
                             for name, _ in BUDGET_METRICS}
    return {"x": "optimizer steps" if x_key == "steps" else "epochs", "curves": curves}


def plot_budget_curves(budget: dict, title: str):
    """Two panels (macro-F1, fracture AUC) against steps, one line per training run kind.

    Across several runs: the mean, with a band from the lowest to the highest run.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (name, label) in zip(axes, BUDGET_METRICS):
        for model, caption in BUDGET_RUNS.items():
            points = budget["curves"].get(model, {}).get(name) or []
            if not points:
                continue
            x = [p["x"] for p in points]
            several = max(p["n"] for p in points) > 1
            (line,) = ax.plot(x, [p["mean"] for p in points], marker="o", ms=3,
                              label=f"{caption}, mean" if several else caption)
            if several:
                ax.fill_between(x, [p["min"] for p in points], [p["max"] for p in points], color=line.get_color(),
                                alpha=0.2, label=f"{caption}, lowest to highest run")
        ax.set_xlabel(f"training budget ({budget['x']})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig
