"""Inference: ``vfnb predict`` on one realistic-size scan.

A checkpoint of the default backbone (random weights: the cost does not depend on
them) with the default ``cube_size`` is graded on a 512 x 512 x 300 scan with 12
vertebrae (:mod:`benchmarks.scans`). ``seconds_per_scan`` times
:func:`vfnb.inference.grading.predict_scan` (read both NIfTI files, pre-process every
vertebra, forward, table) in a warm process, after one warm-up call;
``cli_seconds_cold`` is one run of the ``vfnb predict`` command itself, interpreter
start and imports included. Peak memory is the warm process's.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .harness import figure, run_child


def child(ct: str, seg: str, checkpoint: str, reps: int, warmup: int) -> dict:
    import torch

    from vfnb.inference.grading import predict_scan

    from .harness import time_reps

    rows = []

    def once():
        rows.append(len(predict_scan(ct, seg, checkpoint, device="cpu")))

    times = time_reps(once, reps, warmup)
    return {"times": times, "vertebrae": rows[-1], "threads": torch.get_num_threads()}


def make_checkpoint(path: Path, cube_size: int, backbone: str) -> Path:
    import torch

    from vfnb.models.networks import ModelInput, build_model
    from vfnb.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    model = build_model(backbone)
    # patches pre-processed at the cube size: the scan is graded without a resize, as before checkpoints carried sizes
    model.input_spec = ModelInput(cube_size=int(cube_size), patch_size=int(cube_size))
    return save_checkpoint(path, model, params={"backbone": backbone, "cube_size": int(cube_size)})


def run(cfg) -> dict:
    from .scans import realistic_scan, small_scan
    from .settings import default_settings

    d = default_settings()
    if cfg.quick:
        ct, seg, n = small_scan(cfg.workdir / "scan-small")
        cube = 16
    else:
        ct, seg, n = realistic_scan(cfg.workdir / "scan-realistic")
        cube = d["cube_size"]
    ckpt = make_checkpoint(cfg.workdir / "bench-checkpoint.pt", cube, d["backbone"])
    res = run_child("benchmarks.inference:child", dict(ct=str(ct), seg=str(seg), checkpoint=str(ckpt),
                                                       reps=cfg.reps, warmup=cfg.warmup), timeout=cfg.timeout)
    graded = res["vertebrae"]
    what = f"{d['backbone']} at {cube}^3, {graded} vertebrae, scan {'48x48x60' if cfg.quick else '512x512x300'}, " \
           f"{res['threads']} threads"
    extra = dict(vertebrae=graded, cube_size=cube, backbone=d["backbone"])
    figures = {
        "inference.seconds_per_scan": figure(res["times"], "s", "predict_scan, warm process: " + what, **extra),
        "inference.vertebrae_per_s": figure([graded / t for t in res["times"]], "vertebrae/s", what, **extra),
        "inference.peak_mb": figure([res["peak_rss_mb"]], "MB", "peak resident memory of that process", **extra),
    }
    if cfg.quick:  # the cold command is one more interpreter start: left out of the smoke run
        return figures
    out = cfg.workdir / "predict-cli.csv"
    if out.exists():
        out.unlink()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vfnb", "predict", "--ct", str(ct), "--seg", str(seg),
                           "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=cfg.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"vfnb predict failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    figures["inference.cli_seconds_cold"] = figure(
        [wall], "s", "`vfnb predict --ct --seg --checkpoint --out` once, interpreter start and imports included",
        **extra)
    return figures
