"""Data: pre-processing time and peak memory per realistic-size scan; SynthSpine rate.

- Pre-processing: :func:`vfnb.data.preprocess.preprocess_dataset` on an original-layout
  dataset holding one 512 x 512 x 300 scan with 12 vertebrae
  (:func:`benchmarks.preprocess_one_scan.build_scan`), one worker, at the paper's
  patch size 128 and the default study's 64. Each repetition runs in a fresh child
  process: its wall time and peak resident memory are that scan's alone.
- SynthSpine: :func:`vfnb.data.synth.generate_dataset` with one worker (cases
  generated and written as NIfTI), cases per minute; the default study uses 2
  workers (one per core).
"""

from __future__ import annotations

import shutil
import time

from .harness import figure, run_child


def preprocess_child(original: str, processed: str, size: int) -> dict:
    from vfnb.data.preprocess import preprocess_dataset

    t0 = time.perf_counter()
    preprocess_dataset(original, processed, size=size, workers=1)
    return {"seconds": time.perf_counter() - t0}


def synth_child(out: str, cases: int, reps: int, warmup: int) -> dict:
    from vfnb.data.synth import generate_dataset

    times = []
    for rep in range(warmup + reps):
        target = f"{out}-{rep}"
        t0 = time.perf_counter()
        generate_dataset(target, cases=cases, seed=rep, workers=1, progress=False)
        if rep >= warmup:
            times.append(time.perf_counter() - t0)
        shutil.rmtree(target, ignore_errors=True)
    return {"times": times}


def run(cfg) -> dict:
    from .scans import realistic_scan, small_scan

    figures: dict = {}
    if cfg.quick:
        ct, _, n = small_scan(cfg.workdir / "scan-small")
        sizes, reps, cases = (16,), 1, 1
    else:
        ct, _, n = realistic_scan(cfg.workdir / "scan-realistic")
        sizes, reps, cases = (128, 64), min(cfg.reps, 3), 4
    original = ct.parent.parent
    shape = "48x48x60" if cfg.quick else "512x512x300"
    for size in sizes:
        seconds, peaks = [], []
        for rep in range(reps):
            target = cfg.workdir / f"preprocessed-{size}-{rep}"
            res = run_child("benchmarks.data:preprocess_child", dict(original=str(original), processed=str(target),
                                                                      size=size), timeout=cfg.timeout)
            shutil.rmtree(target, ignore_errors=True)
            seconds.append(res["seconds"])
            peaks.append(res["peak_rss_mb"])
        what = f"one {shape} scan, {n} vertebrae, patches {size}x{size}xN, 1 worker, fresh process per run"
        figures[f"data.preprocess_seconds_{size}"] = figure(seconds, "s/scan", what, patch_size=size)
        figures[f"data.preprocess_peak_mb_{size}"] = figure(peaks, "MB", "peak resident memory: " + what,
                                                            patch_size=size)
    res = run_child("benchmarks.data:synth_child", dict(out=str(cfg.workdir / "synth"), cases=cases, reps=reps,
                                                        warmup=0 if cfg.quick else 1), timeout=cfg.timeout)
    figures["data.synth_cases_per_minute"] = figure(
        [60.0 * cases / t for t in res["times"]], "cases/min",
        f"SynthSpine generate_dataset, {cases} case(s) per run written as NIfTI, 1 worker", cases_per_run=cases)
    figures["data.synth_peak_mb"] = figure([res["peak_rss_mb"]], "MB", "peak resident memory of the generator",
                                           cases_per_run=cases)
    return figures
