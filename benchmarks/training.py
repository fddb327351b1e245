"""Training step throughput and peak memory per backbone, on the CPU.

One step = the paper's joint recipe (:mod:`benchmarks.steps`): forward of
``views x vertebrae`` random inputs, CE on the detached feature + SupCon,
backward, SGD. Each (backbone, setting) runs in its own child process so its
peak resident memory (``VmHWM``) is its own (``--quick`` runs them all in
one child to save interpreter start-ups; its memory figures are then shared).
Inputs per second counts network inputs (augmented views), not vertebrae.
"""

from __future__ import annotations

from .harness import figure, run_child
from .settings import PAPER, default_settings


def child(items: list[dict]) -> dict:
    import torch

    from ._child import peak_rss_mb
    from .harness import time_reps
    from .steps import build_step

    results = []
    for item in items:
        step, model, x = build_step(item["backbone"], item["cube_size"], item["vertebrae"])
        times = time_reps(step, item["reps"], item["warmup"])
        results.append({"times": times, "inputs_per_step": int(x.shape[0]),
                        "parameters": int(sum(p.numel() for p in model.parameters())),
                        "peak_rss_mb_so_far": peak_rss_mb()})
        del step, model, x
    return {"items": results, "threads": torch.get_num_threads()}


def plan(cfg) -> list[dict]:
    """Which (backbone, setting, cube, vertebrae per step, reps) to measure."""
    d = default_settings()
    if cfg.quick:
        return [dict(backbone=b, setting=s, cube_size=16, vertebrae=1, reps=1, warmup=1)
                for b in ("resnet10", "seresnet50") for s in ("default", "paper")]
    full_batch = 4 * d["per_grade"]
    return [
        dict(backbone="resnet10", setting="default", cube_size=d["cube_size"], vertebrae=full_batch,
             reps=cfg.reps, warmup=cfg.warmup),
        dict(backbone="seresnet50", setting="default", cube_size=d["cube_size"], vertebrae=2, reps=3, warmup=1),
        dict(backbone="resnet10", setting="paper", cube_size=PAPER["cube_size"], vertebrae=4, reps=3, warmup=1),
        dict(backbone="seresnet50", setting="paper", cube_size=PAPER["cube_size"], vertebrae=1, reps=3, warmup=1),
    ]


def run(cfg) -> dict:
    items = plan(cfg)
    keys = ("backbone", "cube_size", "vertebrae", "reps", "warmup")
    groups = [items] if cfg.quick else [[item] for item in items]
    measured = []
    for group in groups:
        res = run_child("benchmarks.training:child", dict(items=[{k: i[k] for k in keys} for i in group]),
                        timeout=cfg.timeout)
        for item, got in zip(group, res["items"]):
            peak = res["peak_rss_mb"] if len(group) == 1 else got["peak_rss_mb_so_far"]
            measured.append((item, got, res["threads"], peak, res["baseline_rss_mb"]))
    figures: dict = {}
    for item, got, threads, peak, baseline in measured:
        n = got["inputs_per_step"]
        name = f"{item['backbone']}_{item['setting']}"
        what = (f"{item['backbone']} at {item['cube_size']}^3, {n} inputs/step "
                f"({item['vertebrae']} vertebrae x 2 views), CE+SupCon+SGD, {threads} threads")
        extra = dict(cube_size=item["cube_size"], inputs_per_step=n, threads=threads,
                     parameters=got["parameters"])
        figures[f"training.{name}_samples_per_s"] = figure([n / t for t in got["times"]], "inputs/s", what, **extra)
        figures[f"training.{name}_step_s"] = figure(got["times"], "s/step", what, **extra)
        figures[f"training.{name}_peak_mb"] = figure(
            [peak], "MB", f"peak resident memory of the process (after importing torch and monai: "
            f"{baseline:.0f} MB)", **extra)
    return figures
