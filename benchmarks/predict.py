"""``vfnb predict`` on a whole-spine CT, as a user runs it: the command, start to finish, on 2 cores.

The scan (:func:`benchmarks.scans.spine17_scan`): SynthSpine set to 512 x 512 x 400
int16 voxels (0.78 x 0.78 x 1.125 mm, LPS-like storage) with 17 vertebrae T1-L5 and
their VerSe label map. Two routes, each timed as one cold ``vfnb predict`` command
per repetition (interpreter start, imports, reading the NIfTI files, grading, the
CSV):

- ``network``: with a checkpoint of the study's default network
  (:class:`vfnb.study.StudyParams` defaults: backbone, head, feature size; its
  ``cube_size`` and ``patch_size`` as the checkpoint's input; random weights, which
  the cost does not depend on). Target: <= 120 s.
- ``heights``: without ``--checkpoint`` (the morphometry grader, Genant's bands on
  the heights measured on the scan's grid). Target: <= 60 s and <= 4 GB.

Each command runs in its own child process (:func:`benchmarks.harness.run_child`)
limited to 2 cores (CPU affinity and ``OMP_NUM_THREADS``); its peak memory is that
process's own resident high-water mark (``VmHWM``), so nothing of the benchmark's
own process is counted. The same scan as a DICOM series is the ``predict_dicom``
section (:mod:`benchmarks.predict_dicom`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .harness import figure, run_child

CORES = 2
TARGETS = {"network": (120.0, None), "heights": (60.0, 4096.0)}  # (seconds, peak MB)


def cli_child(argv: list[str], profile: str | None = None) -> dict:
    """Run ``vfnb <argv>`` in this (child) process on at most :data:`CORES` cores; its exit status and time."""
    import torch

    from vfnb.cli import main

    cores = sorted(os.sched_getaffinity(0))[:CORES]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    t0 = time.perf_counter()
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        status = profiler.runcall(main, list(argv))
        profiler.dump_stats(profile)
    else:
        status = main(list(argv))
    return {"exit": int(status or 0), "command_s": time.perf_counter() - t0, "threads": torch.get_num_threads(),
            "cores": cores}


def make_checkpoint(path: Path, quick: bool) -> tuple[Path, int]:
    """A checkpoint of the study's default network (``--quick``: at 16^3); returns it and its cube size."""
    import torch

    from vfnb.models.checkpoints import save_checkpoint
    from vfnb.models.networks import ModelInput, network_for
    from vfnb.study.parameters import StudyParams

    settings = StudyParams().training_settings()
    cube, patch = (16, 24) if quick else (settings.cube_size, StudyParams().patch_size)
    torch.manual_seed(0)
    model = network_for(settings)
    model.input_spec = ModelInput(cube_size=int(cube), patch_size=int(patch))
    params = {"backbone": settings.backbone, "cube_size": int(cube), "mode": "ce"}
    return save_checkpoint(path, model, params=params), int(cube)


def time_command(argv: list[str], reps: int, cfg, out_csv: Path, expected_rows: int) -> dict:
    """``reps`` cold runs of ``vfnb <argv> --out out_csv``: wall seconds (child start to exit) and peak MB each."""
    walls, peaks, inner = [], [], []
    env = {"OMP_NUM_THREADS": str(CORES), "MKL_NUM_THREADS": str(CORES)}
    for _ in range(reps):
        t0 = time.perf_counter()
        res = run_child("benchmarks.predict:cli_child", dict(argv=[*argv, "--out", str(out_csv), "--overwrite"]),
                        timeout=cfg.timeout, env=env)
        walls.append(time.perf_counter() - t0)
        if res["exit"] != 0:
            raise RuntimeError(f"vfnb {' '.join(argv)} exited {res['exit']}")
        rows = sum(1 for _ in out_csv.open()) - 1
        if rows != expected_rows:
            raise RuntimeError(f"vfnb {' '.join(argv)}: {rows} rows in {out_csv}, expected {expected_rows}")
        peaks.append(res["peak_rss_mb"])
        inner.append(res["command_s"])
    return {"walls": walls, "peaks": peaks, "inner": inner, "threads": res["threads"]}


def route_figures(section: str, route: str, measured: dict, what: str) -> dict:
    seconds, mb = TARGETS[route]
    target = f"target <= {seconds:g} s" + (f", <= {mb / 1024:g} GB" if mb else "")
    extra = dict(target_s=seconds, target_mb=mb, threads=measured["threads"])
    inner = ", ".join(f"{t:.1f}" for t in measured["inner"])
    return {
        f"{section}.{route}_seconds": figure(measured["walls"], "s", f"{what}; cold command, interpreter start "
                                             f"included (in vfnb.cli.main: {inner} s); {target}", **extra),
        f"{section}.{route}_peak_mb": figure(measured["peaks"], "MB", f"peak resident memory (VmHWM) of that "
                                             f"process; {target}", **extra),
    }


def scan_and_checkpoint(cfg) -> dict:
    """The scan (built once per work folder), its label map, its vertebra count, the checkpoint and its words."""
    from .scans import small_scan, spine17_scan

    if cfg.quick:
        ct, seg, n = small_scan(cfg.workdir / "scan-small")
        shape = "48x48x60"
    else:
        ct, seg, n = spine17_scan(cfg.workdir / "scan-spine17")
        shape = "512x512x400"
    ckpt, cube = make_checkpoint(cfg.workdir / "bench-predict-checkpoint.pt", cfg.quick)
    return {"ct": ct, "seg": seg, "vertebrae": n, "checkpoint": ckpt, "cube": cube,
            "scan": f"scan {shape} int16, {n} vertebrae, {CORES} cores"}


def predict_routes(section: str, ct: Path, setup: dict, cfg, what_input: str) -> dict:
    """Both routes (network, heights) of ``vfnb predict --ct ct``; the figures of ``section``."""
    reps = 1 if cfg.quick else min(cfg.reps, 3)
    base = ["predict", "--ct", str(ct), "--seg", str(setup["seg"]), "--device", "cpu"]
    figures = {}
    network = time_command([*base, "--checkpoint", str(setup["checkpoint"])], reps, cfg,
                           cfg.workdir / f"{section}-network.csv", setup["vertebrae"])
    figures.update(route_figures(section, "network", network, f"vfnb predict {what_input} --checkpoint (study "
                                 f"default network at {setup['cube']}^3), {setup['scan']}"))
    heights = time_command(base, reps, cfg, cfg.workdir / f"{section}-heights.csv", setup["vertebrae"])
    figures.update(route_figures(section, "heights", heights, f"vfnb predict {what_input} without --checkpoint "
                                 f"(morphometry grader), {setup['scan']}"))
    return figures


def run(cfg) -> dict:
    setup = scan_and_checkpoint(cfg)
    return predict_routes("predict", setup["ct"], setup, cfg, "--ct NIfTI")
