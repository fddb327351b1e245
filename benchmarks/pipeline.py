"""Input pipeline vs model: the share of each training step spent waiting for data.

Runs the real training engine (:func:`vfnb.training.engine.train`, with the default study's
training settings from ``params/default.yaml``: backbone, cube, ``batch_per_grade``,
DataLoader ``workers``, replacement epochs of ``batches_per_epoch`` batches) on
the default study's dataset (SynthSpine as ``params/default.yaml`` sets it: 64
scans, pre-processed at 64, tag ``synth-f0``) and reads the engine's own
per-epoch ``data_wait_fraction`` (time blocked in ``next(loader)`` / epoch
training time). The first epoch (worker
start-up, cache fill) is reported apart; the figure is the median over the
following epochs.

``default``: ``cube_size`` of :func:`vfnb.training.config.defaults`; ``paper``: the
paper's 128^3 cube with the same (default) backbone and batch (the patches are
resized to the cube once, when cached, so augmentation works at 128^3).

The validation list is cut to a few vertebrae (a benchmark-only view of the
dataset whose ``img/``/``seg/`` are links to the real ones) so validation, which
does not count in the wait fraction, does not dominate the wall time.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .harness import figure, run_child

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
BENCH_TAG = "bench"
DEFAULT_STUDY_PARAMS = Path(__file__).resolve().parent.parent / "params" / "default.yaml"


def default_dataset(data_dir: Path) -> tuple[Path, str]:
    """The default study's processed SynthSpine and its split tag, from ``params/default.yaml``.

    Generated into ``data_dir`` when missing, reused when present (the same call and
    values as ``vfnb study``, so the two share it).
    """
    from vfnb.data.synth import ensure_default_dataset
    from vfnb.io import load_yaml

    p = load_yaml(DEFAULT_STUDY_PARAMS)
    paths = ensure_default_dataset(data_dir, cases=p["synth_cases"], seed=p["synth_seed"], size=p["patch_size"],
                                   workers=max(1, int(p["workers"])), tag="synth", folds=p["synth_folds"],
                                   val_fraction=p["val_fraction"])
    return Path(paths["processed"]), str(p["tag"])


def tiny_dataset(root: Path, per_grade: int = 4, size: int = 16) -> Path:
    """A processed dataset of synthetic patches, ``per_grade`` per grade in train, 1 per grade in val."""
    import numpy as np

    from vfnb.data.processed import patch_filename, write_file_list
    from vfnb.io import save_nifti

    from .patches import synthetic_hu_patch

    names = {"train": [], "val": [], "test": []}
    k = 0
    for split, n in (("train", per_grade), ("val", 1), ("test", 1)):
        for grade in range(4):
            for _ in range(n):
                image, mask = synthetic_hu_patch(size, seed=k)
                name = patch_filename(f"tiny{k:03d}", 20, grade)
                save_nifti(root / "img" / name, image, np.eye(4))
                save_nifti(root / "seg" / name, mask, np.eye(4))
                names[split].append(name)
                k += 1
    for split, listed in names.items():
        write_file_list(root, split, BENCH_TAG, listed)
    return root


def bench_view(processed: Path, tag: str, root: Path, val_per_grade: int = 2) -> Path:
    """``root`` with links to ``processed``'s ``img/``, ``seg/``; its train list, a short val list."""
    from vfnb.data.processed import read_file_list, parse_patch_name, write_file_list

    root.mkdir(parents=True, exist_ok=True)
    for sub in ("img", "seg"):
        link = root / sub
        if not link.exists():
            os.symlink(Path(processed).resolve() / sub, link)
    write_file_list(root, "train", BENCH_TAG, read_file_list(processed, "train", tag))
    val, seen = [], {}
    for name in read_file_list(processed, "val", tag):
        grade = parse_patch_name(name).grade
        if seen.get(grade, 0) < val_per_grade:
            val.append(name)
            seen[grade] = seen.get(grade, 0) + 1
    write_file_list(root, "val", BENCH_TAG, val)
    return root


def study_training_settings() -> dict:
    """The default study's training settings that shape the input pipeline (``params/default.yaml``).

    The study trains with these (e.g. replacement epochs of ``batches_per_epoch``
    balanced batches), so the data-wait share is measured with them too.
    """
    from vfnb.io import load_yaml

    study = load_yaml(DEFAULT_STUDY_PARAMS)
    keys = ("backbone", "cube_size", "batch_per_grade", "epoch_mode", "batches_per_epoch", "workers")
    return {k: study[k] for k in keys if k in study}


def child(runs: list[dict]) -> dict:
    """Each of ``runs`` (keyword arguments of :func:`train_once`) in turn."""
    return {"runs": [train_once(**r) for r in runs]}


def train_once(dataset: str, run_dir: str, cube_size: int, epochs: int, extra: dict | None = None) -> dict:
    import resource

    from vfnb.training.config import defaults
    from vfnb.training.engine import train

    from ._child import peak_rss_mb

    params = {"dataset": dataset, "tag": BENCH_TAG, "cube_size": int(cube_size), "epochs": int(epochs),
              "progress": False, "device": "cpu", **(extra or {})}
    result = train(params, run_dir)
    used = {k: ({**defaults(), **params})[k] for k in ("mode", "backbone", "batch_per_grade", "workers",
                                                           "epoch_mode", "batches_per_epoch", "cube_size")}
    return {"history": result.history, "params": used,
            "peak_rss_mb": peak_rss_mb(),
            "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}


def run(cfg) -> dict:
    from .settings import PAPER, default_settings

    if cfg.quick:
        dataset = tiny_dataset(cfg.workdir / "pipeline-tiny")
        settings = [("default", 16, 2, {"batch_per_grade": 2, "workers": 1}),
                    ("paper", 24, 2, {"batch_per_grade": 2, "workers": 1})]
    else:
        processed, tag = default_dataset(cfg.data_dir or REPO_DATA_DIR)
        dataset = bench_view(processed, tag, cfg.workdir / "pipeline-view")
        d = default_settings()
        study = study_training_settings()
        settings = [("default", study.get("cube_size", d["cube_size"]), 1 + cfg.reps, study),
                    # 128^3 steps take seconds on a CPU: fewer batches per epoch keep the run short
                    ("paper", PAPER["cube_size"], 3, {**{k: v for k, v in study.items() if k != "cube_size"},
                                                      "batches_per_epoch": 6})]
    # a new run folder each time: the engine refuses to write over an existing run
    runs = [dict(dataset=str(dataset), run_dir=str(Path(tempfile.mkdtemp(prefix=f"pipeline-run-{setting}-",
                                                                         dir=cfg.workdir)) / "run"), cube_size=cube,
                 epochs=epochs, extra=extra) for setting, cube, epochs, extra in settings]
    # a fresh process per setting (memory of its own); --quick shares one
    groups = [runs] if cfg.quick else [[r] for r in runs]
    results = []
    for group in groups:
        results += run_child("benchmarks.pipeline:child", dict(runs=group), timeout=cfg.timeout)["runs"]
    shared = " (process shared by both settings in --quick)" if cfg.quick else ""
    figures: dict = {}
    for (setting, *_), res in zip(settings, results):
        hist, used = res["history"], res["params"]
        later = [row["data_wait_fraction"] for row in hist[1:]] or [hist[0]["data_wait_fraction"]]
        what = (f"training engine ({used['mode']}, {used['backbone']}, {used['cube_size']}^3, "
                f"{used['batch_per_grade']}x4 vertebrae x 2 views/step, {used['workers']} DataLoader workers): "
                f"time blocked on the next batch / epoch time, epochs 2-{len(hist)}")
        extra_info = dict(cube_size=used["cube_size"], params=used,
                          epoch_seconds=[row["epoch_seconds"] for row in hist])
        figures[f"pipeline.wait_fraction_{setting}"] = figure(
            [100 * w for w in later], "%", what + (" (target < 15 %)" if setting == "default" else ""), **extra_info)
        figures[f"pipeline.wait_fraction_first_epoch_{setting}"] = figure(
            [100 * hist[0]["data_wait_fraction"]], "%", "the first epoch (DataLoader workers start, cache filled)",
            **extra_info)
        figures[f"pipeline.epoch_seconds_{setting}"] = figure(
            [row["epoch_seconds"] for row in hist[1:]] or [hist[0]["epoch_seconds"]], "s/epoch",
            "training time per epoch (validation excluded)", **extra_info)
        figures[f"pipeline.peak_mb_{setting}"] = figure(
            [res["peak_rss_mb"]], "MB", f"peak resident memory of the training process{shared} (largest "
            f"DataLoader worker {res['workers_peak_rss_mb']:.0f} MB, pages shared with the parent included)",
            **extra_info)
    return figures
