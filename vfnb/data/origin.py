"""Where a dataset's scans come from: generated (SynthSpine) or acquired, read from the data themselves.

A generated dataset says so in what its generator writes: SynthSpine's
``synth.json`` (:data:`GENERATOR_RECORD`, in the original layout) holds
``"synthetic": true``. Pre-processing carries that into the processed dataset's
``preprocess.json`` (its ``"dataset"`` block, :func:`source_origin`), and training
into every checkpoint (:mod:`vfnb.training.data_record`), so whoever grades a real
CT with the model learns that it was trained on generated scans, whatever the
folders are called. The decision never looks at a path's name.
"""

from __future__ import annotations

import json
from pathlib import Path

GENERATOR_RECORD = "synth.json"  # written by vfnb.data.synth beside img/ and seg/


def dataset_name(root: Path) -> str:
    """A readable name of a dataset folder: its name, with its parent's when the folder is a generic one."""
    root = Path(root).resolve()
    generic = root.name.lower() in ("original", "data", "dataset") or root.name.lower().startswith("processed")
    if generic and root.parent.name:
        return f"{root.parent.name}/{root.name}"
    return root.name


def source_origin(original: Path) -> dict:
    """``{"name", "synthetic", "generator"}`` of an original-layout dataset.

    ``synthetic`` is true when the folder holds a generator record that says so
    (SynthSpine's ``synth.json``), false otherwise: scans without one were not made
    by vfnb's generator. ``generator``: the record's generator and version, or None.
    """
    original = Path(original)
    record = _read_json(original / GENERATOR_RECORD)
    synthetic = bool(record.get("synthetic")) if isinstance(record, dict) else False
    generator = None
    if synthetic:
        generator = f"{record.get('generator', 'unknown generator')} {record.get('version', '')}".strip()
        if "seed" in record and "cases" in record:
            generator += f" (seed {record['seed']}, {record['cases']} cases)"
    return {"name": dataset_name(original), "synthetic": synthetic, "generator": generator}


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
