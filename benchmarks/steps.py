"""One training step of the paper's joint recipe, as the benchmarks time it.

``x`` holds ``views`` augmented views of ``n`` vertebrae laid out view-major
(``[view 0 of every vertebra, view 1 of every vertebra, ...]``, ``[views * n, 3, S, S, S]``).
The step is: forward, cross-entropy on the classifier over the *detached* pooled
feature plus SupCon on the projections (STUDY §1.5), backward, SGD (lr 0.005,
momentum 0.9, weight decay 1e-4).

:func:`run` is the ``steps`` section of ``python -m benchmarks``: training steps per
second of the engine's loop for the default recipe, data path included, and of the
step alone for resnet10 and the paper's SEResNet50, today's settings against the new
ones, with FLOPs per step and the share of the fp32 peak (BENCHMARKS.md). SupCon
pretraining has its own batch in the default study; ``supcon_study_batch`` times it
against today's settings on the shared batch at the same vertebrae an epoch, so its
ratio is work (vertebrae) per second, not steps.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F

from vfnb.models.losses import SupConLoss
from vfnb.models.networks import build_model

VIEWS = 2


def balanced_grades(n: int) -> torch.Tensor:
    """Genant grades 0, 1, 2, 3, 0, 1, ... for ``n`` vertebrae (a class-balanced batch)."""
    return torch.arange(n) % 4


def make_joint_step(model: torch.nn.Module, x: torch.Tensor, grades: torch.Tensor, views: int = VIEWS,
                    autocast_dtype: torch.dtype | None = None
                    ) -> tuple[Callable[[], torch.Tensor], torch.optim.Optimizer]:
    """Return ``(step, optimizer)``; ``step()`` runs one SGD step on ``x`` and returns the loss.

    ``step(inputs)`` steps on ``inputs`` instead (same shape as ``x``: fresh views from a pipeline).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=1e-4)
    supcon = SupConLoss(temperature=0.07, base_temperature=0.07)
    n = grades.shape[0]
    if x.shape[0] != views * n:
        raise ValueError(f"x has {x.shape[0]} inputs; expected views * vertebrae = {views} * {n}")
    target = grades.repeat(views).to(x.device)
    grades = grades.to(x.device)
    device_type = x.device.type

    def step(inputs: torch.Tensor | None = None) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with ctx:
            logits, projected = model(x if inputs is None else inputs, detach_classifier=True)
        # losses in fp32: [views * n, D] -> [n, views, D]
        features = projected.float().view(views, n, -1).transpose(0, 1)
        loss = F.cross_entropy(logits.float(), target) + supcon(features, grades)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, optimizer


def build_step(backbone: str, cube_size: int, vertebrae: int, device: str = "cpu",
               autocast_dtype: torch.dtype | None = None, channels_last: bool = False, seed: int = 0,
               views: int = VIEWS):
    """Model + random input on ``device`` -> ``(step, model, x)`` for ``vertebrae * views`` inputs."""
    torch.manual_seed(seed)
    model = build_model(backbone).to(device)
    model.train()
    x = torch.rand(views * vertebrae, 3, cube_size, cube_size, cube_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    step, _ = make_joint_step(model, x, balanced_grades(vertebrae), views, autocast_dtype)
    return step, model, x


# ------------------------------------------------------------------ the `steps` section
# Training steps per second of the engine's own loop (vfnb.training.engine.train_one_epoch):
# "today" = the settings before the fast CPU path (MONAI augmentation per view in the
# DataLoader workers, contiguous tensors); "new" = the current defaults (batched torch
# augmentation in the workers, channels-last-3d for the default resnet10). Both in one
# process, epochs alternating, so the ratio of each pair is measured under the same load.
FMA_FP32_FLOPS_PER_CYCLE = 32  # AVX2: 2 FMA units x 8 fp32 lanes x 2 FLOPs per core and cycle
TODAY = {"augment_on": "cpu", "channels_last": False}
NEW = {"augment_on": "auto", "channels_last": "auto"}


def cpu_clock_ghz() -> tuple[float, str]:
    """The CPU clock in GHz and where it was read: the kernel's ``cpu MHz`` (``/proc/cpuinfo``), else lscpu's max."""
    from pathlib import Path

    try:
        mhz = [float(line.split(":", 1)[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.lower().startswith("cpu mhz")]
        if mhz:
            return max(mhz) / 1000.0, "/proc/cpuinfo 'cpu MHz'"
    except (OSError, ValueError):
        pass
    return float("nan"), "unknown"


def fp32_peak_gflops(cores: int, clock_ghz: float) -> float:
    """``cores x clock x 32`` FLOP/cycle: the fp32 AVX2-FMA peak in GFLOP/s."""
    return float(cores) * float(clock_ghz) * FMA_FP32_FLOPS_PER_CYCLE


def flops_per_step(backbone: str, cube_size: int, vertebrae: int, views: int = VIEWS, **kwargs) -> float:
    """FLOPs of one forward + backward + SGD step (``FlopCounterMode``: convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    step, _, _ = build_step(backbone, cube_size, vertebrae, views=views, **kwargs)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _engine_state(dataset: str, run_dir: str, recipe: dict, setting: dict):
    from vfnb.data.batches import training_data
    from vfnb.training.config import TrainConfig
    from vfnb.training.distributed import Processes
    from vfnb.training.engine import build_training_state

    config = TrainConfig.from_params({"dataset": dataset, "tag": "bench", "device": "cpu", "progress": False,
                                      "probe": "none", **recipe, **setting})
    processes = Processes("cpu")
    data = training_data(config, processes, start_first_epoch=True, with_probe=False)
    return build_training_state(config, data, processes, None), data


def engine_child(dataset: str, run_dir: str, recipes: dict, reps: int, warmup: int) -> dict:
    """Per recipe: seconds per epoch of today's and the new settings, epochs alternating (``reps`` pairs)."""
    import torch

    from vfnb.training.distributed import cpu_threads
    from vfnb.training.engine import train_one_epoch

    out = {}
    for name, recipe in recipes.items():
        torch.set_num_threads(cpu_threads("auto", recipe["workers"], 1))  # as training_processes sets it
        per_label = recipe.get("per_label", {})
        recipe = {k: v for k, v in recipe.items() if k != "per_label"}
        runs = {label: _engine_state(dataset, run_dir, recipe, {**setting, **per_label.get(label, {})})
                for label, setting in (("today", TODAY), ("new", NEW))}
        times = {label: [] for label in runs}
        for epoch in range(warmup + reps):
            for label, (state, data) in runs.items():
                seconds = train_one_epoch(state, data.batches, epoch, run_dir)["seconds"]
                if epoch >= warmup:
                    times[label].append(seconds)
        out[name] = {"epoch_seconds": times, "steps": len(runs["new"][1].batches),
                     "steps_by_label": {k: len(d.batches) for k, (_, d) in runs.items()},
                     "vertebrae_by_label": {k: len(d.batches) * 4 * {**recipe, **per_label.get(k, {})}["batch_per_grade"]
                                            for k, (_, d) in runs.items()},
                     "threads": torch.get_num_threads(),
                     "channels_last": {k: s.channels_last for k, (s, _) in runs.items()}}
        del runs
    return {"recipes": out}


def compute_child(items: list[dict], reps: int, warmup: int, threads: int) -> dict:
    """Compute-only steps (random inputs, no data path): seconds per step, contiguous and channels-last, paired."""
    import torch

    from .harness import time_reps

    torch.set_num_threads(threads)
    out = []
    for item in items:
        steps = {cl: build_step(item["backbone"], item["cube_size"], item["vertebrae"], channels_last=cl)[0]
                 for cl in (False, True)}
        for step in steps.values():
            time_reps(step, 0, warmup)
        times = {False: [], True: []}
        for _ in range(reps):
            for cl, step in steps.items():
                times[cl] += time_reps(step, 1, 0)
        out.append({"today": times[False], "new": times[True],
                    "flops": flops_per_step(item["backbone"], item["cube_size"], item["vertebrae"])})
    return {"items": out, "threads": torch.get_num_threads()}


def recipes(quick: bool) -> dict:
    """The default study's SupCon and CE training (``params/default.yaml``) as engine parameters."""
    from vfnb.io import load_yaml

    from .pipeline import DEFAULT_STUDY_PARAMS

    p = load_yaml(DEFAULT_STUDY_PARAMS)
    shared = {k: p[k] for k in ("backbone", "cube_size", "batch_per_grade", "workers", "momentum", "weight_decay")}
    shared.update(epoch_mode="replacement", batches_per_epoch=2 if quick else 8)
    if quick:
        shared.update(cube_size=16, batch_per_grade=1, workers=1)
    supcon = {**shared, "mode": "supcon", "augmentation": p["supcon_augmentation"], "lr": p["supcon_lr"],
              "temperature": p["temperature"], "base_temperature": p["base_temperature"]}
    # SupCon's own batch (new) against the shared one (today), the same vertebrae an epoch
    # (epochs of 24 shared batches: an epoch's fixed costs, the loader's start among them, weigh on both alike)
    own = 2 if quick else int(p.get("supcon_batch_per_grade", shared["batch_per_grade"]))
    long_epoch = shared["batches_per_epoch"] if quick else 3 * shared["batches_per_epoch"]
    vertebrae = shared["batch_per_grade"] * long_epoch
    per_label = {"today": {"batches_per_epoch": long_epoch},
                 "new": {"batch_per_grade": own, "batches_per_epoch": max(1, vertebrae // own)}}
    return {"supcon": supcon, "ce": {**shared, "mode": "ce", "augmentation": "paper", "lr": p["ce_lr"]},
            "supcon_study_batch": {**supcon, "per_label": per_label}}


def _study_batch_figures(recipe: dict, res: dict, size: int, peak: float) -> dict:
    """Vertebrae per second: SupCon on its own batch with the new settings, against the shared batch today."""
    from .harness import figure, ratio_figure

    per_label = recipe["per_label"]
    batch = {k: {**recipe, **per_label[k]}["batch_per_grade"] for k in ("today", "new")}
    rates = {k: [res["vertebrae_by_label"][k] / s for s in v] for k, v in res["epoch_seconds"].items()}
    what = (f"engine supcon epoch ({recipe['backbone']}, {recipe['cube_size']}^3, {res['vertebrae_by_label']['new']} "
            f"vertebrae x 2 views an epoch; today: {4 * batch['today']} vertebrae a step, today's settings; new: "
            f"{4 * batch['new']} a step, the study's SupCon batch and the new settings; {recipe['workers']} DataLoader "
            f"workers, {res['threads']} torch thread(s)) on synthetic {size}^3-in-plane HU patches, data path included")
    figures = {}
    for label in ("today", "new"):
        flops = flops_per_step(recipe["backbone"], recipe["cube_size"], 4 * batch[label])
        extra = dict(flops_per_step=flops, threads=res["threads"], peak_gflops=peak)
        figures[f"steps.supcon_study_batch_{label}_vertebrae_per_s"] = figure(rates[label], "vertebrae/s", what,
                                                                              **extra)
        gflops = [flops * res["steps_by_label"][label] / s / 1e9 for s in res["epoch_seconds"][label]]
        figures[f"steps.supcon_study_batch_{label}_gflops"] = figure(gflops, "GFLOP/s", what, **extra)
    figures["steps.supcon_study_batch_speedup"] = ratio_figure(
        rates["new"], rates["today"], "x", f"new / today vertebrae per second, paired epochs; {what}")
    return figures


def run(cfg) -> dict:
    from .harness import figure, ratio_figure, run_child, usable_cores
    from .pipeline import tiny_dataset
    from .settings import PAPER

    cores = usable_cores()
    clock, clock_source = cpu_clock_ghz()
    peak = fp32_peak_gflops(cores, clock)
    peak_note = (f"fp32 peak {peak:.0f} GFLOP/s = {cores} cores x {clock:.2f} GHz ({clock_source}) x "
                 f"{FMA_FP32_FLOPS_PER_CYCLE} FLOP/cycle (AVX2 FMA)")
    size = 16 if cfg.quick else 64
    dataset = tiny_dataset(cfg.workdir / "steps-data", per_grade=2 if cfg.quick else 6, size=size)
    run_dir = cfg.workdir / "steps-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    the_recipes = recipes(cfg.quick)
    reps = max(1, cfg.reps)
    got = run_child("benchmarks.steps:engine_child", dict(dataset=str(dataset), run_dir=str(run_dir),
                                                           recipes=the_recipes, reps=reps, warmup=1),
                    timeout=cfg.timeout)["recipes"]
    figures: dict = {}
    for name, res in got.items():
        if name == "supcon_study_batch":
            figures.update(_study_batch_figures(the_recipes[name], res, size, peak))
            continue
        r = the_recipes[name]
        flops = flops_per_step(r["backbone"], r["cube_size"], 4 * r["batch_per_grade"])
        rates = {k: [res["steps"] / s for s in v] for k, v in res["epoch_seconds"].items()}
        what = (f"engine {name} step ({r['backbone']}, {r['cube_size']}^3, {4 * r['batch_per_grade']} vertebrae x 2 "
                f"views, {r['augmentation']} augmentation, {r['workers']} DataLoader workers, {res['threads']} torch "
                f"thread(s)) on synthetic {size}^3-in-plane HU patches (benchmarks/patches.py), data path included")
        extra = dict(flops_per_step=flops, threads=res["threads"], peak_gflops=peak)
        for label, setting in (("today", TODAY), ("new", NEW)):
            where = f"{what}; {label}: {setting}"
            figures[f"steps.default_{name}_{label}_steps_per_s"] = figure(rates[label], "steps/s", where, **extra)
            gflops = [flops * x / 1e9 for x in rates[label]]
            figures[f"steps.default_{name}_{label}_gflops"] = figure(gflops, "GFLOP/s", where, **extra)
            figures[f"steps.default_{name}_{label}_peak_percent"] = figure(
                [100 * g / peak for g in gflops], "%", f"{where}; {peak_note}", **extra)
        figures[f"steps.default_{name}_speedup"] = ratio_figure(
            rates["new"], rates["today"], "x", f"new / today steps per second, paired epochs; {what}", **extra)
    figures["steps.default_flops_per_step"] = figure(
        [flops_per_step(the_recipes["ce"]["backbone"], the_recipes["ce"]["cube_size"],
                        4 * the_recipes["ce"]["batch_per_grade"]) / 1e9], "GFLOP",
        "one forward + backward step of the default network and batch (FlopCounterMode)")

    threads = got["ce"]["threads"]
    cube = 16 if cfg.quick else the_recipes["ce"]["cube_size"]
    items = [dict(backbone=the_recipes["ce"]["backbone"], setting="default", cube_size=cube,
                  vertebrae=4 * the_recipes["ce"]["batch_per_grade"]),
             dict(backbone=PAPER["backbone"], setting="default", cube_size=cube, vertebrae=1 if cfg.quick else 2)]
    if not cfg.quick:
        items.append(dict(backbone=PAPER["backbone"], setting="64", cube_size=64, vertebrae=1))
    compute = run_child("benchmarks.steps:compute_child", dict(items=items, reps=reps if not cfg.quick else 1,
                                                                warmup=1, threads=threads), timeout=cfg.timeout)
    for item, res in zip(items, compute["items"]):
        name = f"{item['backbone']}_{item['cube_size']}"
        what = (f"compute only ({item['backbone']} at {item['cube_size']}^3, {2 * item['vertebrae']} random inputs, "
                f"joint CE + SupCon step, {compute['threads']} torch thread(s)); today: contiguous, new: channels-last-3d")
        extra = dict(flops_per_step=res["flops"], threads=compute["threads"], peak_gflops=peak)
        for label in ("today", "new"):
            gflops = [res["flops"] / t / 1e9 for t in res[label]]
            figures[f"steps.compute_{name}_{label}_steps_per_s"] = figure([1 / t for t in res[label]], "steps/s",
                                                                          what, **extra)
            figures[f"steps.compute_{name}_{label}_gflops"] = figure(gflops, "GFLOP/s", what, **extra)
            figures[f"steps.compute_{name}_{label}_peak_percent"] = figure(
                [100 * g / peak for g in gflops], "%", f"{what}; {peak_note}", **extra)
        figures[f"steps.compute_{name}_speedup"] = ratio_figure(res["today"], res["new"], "x",
                                                                f"new / today steps per second, paired; {what}",
                                                                **extra)
    return figures
