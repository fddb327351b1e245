"""What a model was trained on, recorded in every checkpoint (``training_data``) with the run's identity.

A checkpoint is used far from the data that made it: ``vfnb predict`` grades a
user's CT with it. So training writes into ``best.pt`` / ``last.pt`` what the
network has seen, as plain data (loadable with ``torch.load(weights_only=True)``):

- ``dataset``: the processed dataset's name; ``synthetic``: whether its scans are
  generated (SynthSpine), read from the data (``preprocess.json``'s ``dataset``
  block, else the default dataset's ``synth_processed.json``; None when neither
  says); ``generator``: which generator made them;
- ``tag`` and ``vertebrae``: the split lists' tag and the number of training vertebrae;
- ``grade_counts``: ``{"0": n0, "1": n1, "2": n2, "3": n3}`` over the training list
  (a grade counted 0 was never learned: its probability means nothing);
- ``source_spacing_mm``: ``{"smallest": [lo, hi], "largest": [lo, hi]}``, the range
  over training scans of each scan's smallest and largest voxel edge (mm), from
  ``patches.csv``; None when the dataset does not record it;
- ``patch_spacing_mm``: ``[lo, hi]`` of the patches' isotropic voxel edge;
- ``hu_percentiles``: ``[lo, hi]``: the lowest 1st and the highest 99th percentile
  of HU over the training patches; ``vertebra_median_hu``: ``[lo, hi]`` of each
  vertebra's median HU inside its mask.

``run_id`` (:func:`new_run_id`) names the training run; a study writes it beside each
model's operating point (:mod:`vfnb.evaluate.operating_points`), so a threshold is
only used with the checkpoint it was chosen for.
"""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from ..data.origin import dataset_name
from ..io import load_nifti
from ..levels import NUM_GRADES

PREPROCESS_RECORD = "preprocess.json"
SYNTH_PROCESSED_RECORD = "synth_processed.json"  # vfnb.data.synth.dataset.PROCESSED_MARKER
PATCH_TABLE = "patches.csv"


def new_run_id() -> str:
    """A fresh identity for a training run (random, 32 hex digits)."""
    return uuid.uuid4().hex


def run_provenance(config, ckpt: dict | None = None) -> dict:
    """``{"run_id", "training_data"}`` for the checkpoints of a run of ``config`` (a ``TrainConfig``).

    A resumed run keeps what its ``last.pt`` recorded (a checkpoint written before
    these fields existed gets them now, its identity new).
    """
    from ..data.processed import ProcessedDataset

    ckpt = ckpt or {}
    run_id = ckpt.get("run_id") if isinstance(ckpt.get("run_id"), str) else new_run_id()
    if isinstance(ckpt.get("training_data"), dict):
        return {"run_id": run_id, "training_data": ckpt["training_data"]}
    dataset = ProcessedDataset(config.dataset)
    return {"run_id": run_id,
            "training_data": training_data_record(dataset.root, config.tag, dataset.records("train", config.tag))}


def training_data_record(dataset_root: str | Path, tag: str, records: Sequence[dict]) -> dict:
    """The ``training_data`` block of a run trained on ``records`` (the train list) of ``dataset_root``."""
    root = Path(dataset_root)
    origin = _origin(root)
    grades = [int(r["grade"]) for r in records if r.get("grade") is not None]
    stats = [_patch_stats(r) for r in records]
    return {
        "dataset": origin.get("name") or dataset_name(root),
        "synthetic": origin.get("synthetic"),
        "generator": origin.get("generator"),
        "tag": str(tag),
        "vertebrae": len(records),
        "grade_counts": {str(g): grades.count(g) for g in range(NUM_GRADES)},
        "source_spacing_mm": _source_spacing(root, records),
        "patch_spacing_mm": _span(s["spacing"] for s in stats),
        "hu_percentiles": [min(s["p1"] for s in stats), max(s["p99"] for s in stats)] if stats else None,
        "vertebra_median_hu": _span(s["median"] for s in stats if s["median"] is not None),
    }


def patch_hu_stats(image: np.ndarray, mask: np.ndarray) -> dict:
    """``{"p1", "p99", "median"}``: HU percentiles of a patch and its vertebra's median HU (None without a mask)."""
    image = np.asarray(image, dtype=np.float64)
    inside = image[np.asarray(mask) > 0]
    p1, p99 = np.percentile(image, [1.0, 99.0])
    return {"p1": float(p1), "p99": float(p99), "median": float(np.median(inside)) if inside.size else None}


def _patch_stats(record: dict) -> dict:
    image, affine, _ = load_nifti(record["image"])
    mask, _, _ = load_nifti(record["seg"])
    return {**patch_hu_stats(image, mask), "spacing": float(np.linalg.norm(np.asarray(affine)[:3, 0]))}


def _origin(root: Path) -> dict:
    """Name, synthetic and generator as the processed dataset records them ({} when it does not)."""
    manifest = _read_json(root / PREPROCESS_RECORD)
    block = manifest.get("dataset") if isinstance(manifest, dict) else None
    if isinstance(block, dict) and isinstance(block.get("synthetic"), bool):
        return block
    recipe = _read_json(root / SYNTH_PROCESSED_RECORD)  # the study's SynthSpine, pre-processed by an older vfnb
    source = recipe.get("source") if isinstance(recipe, dict) else None
    if isinstance(source, dict) and source.get("synthetic") is True:
        return {"name": dataset_name(root), "synthetic": True,
                "generator": f"{source.get('generator', '?')} {source.get('version', '')}".strip()}
    return {"name": dataset_name(root), "synthetic": None, "generator": None}


def _source_spacing(root: Path, records: Sequence[dict]) -> dict | None:
    """Ranges of the training scans' smallest and largest voxel edge, from ``patches.csv`` (None without it)."""
    try:
        with open(root / PATCH_TABLE, newline="", encoding="utf-8") as fh:
            spacing = {row["patch"]: row.get("source_spacing") for row in csv.DictReader(fh)}
    except (OSError, KeyError, csv.Error):
        return None
    edges = []
    for record in records:
        try:
            values = [float(v) for v in json.loads(spacing.get(Path(str(record["image"])).name) or "")]
        except (ValueError, TypeError):
            return None  # a patch without its source spacing: the range would be a guess
        if len(values) != 3:
            return None
        edges.append((min(values), max(values)))
    if not edges:
        return None
    return {"smallest": _span(e[0] for e in edges), "largest": _span(e[1] for e in edges)}


def _span(values) -> list[float] | None:
    values = [float(v) for v in values]
    return [round(min(values), 6), round(max(values), 6)] if values else None


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
