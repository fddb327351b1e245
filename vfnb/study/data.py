"""The data a study runs on: :class:`StudyData`, how it is prepared, and what notebooks show of it.

``dataset: synthspine`` generates SynthSpine (or reuses it) through
:func:`vfnb.data.synth.ensure_default_dataset`; any other value is the path of a
processed dataset, validated before use. Notebook 00 records the choice in the run
folder and notebooks 01-03 read it back, so the four notebooks use the same data.
"""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..data.check import require_valid
from ..data.original import read_original
from ..data.processed import ProcessedDataset
from ..data.synth import META_FILE, TRUTH_FILE, default_dataset_paths, ensure_default_dataset
from ..data.synth.dataset import enriched_case_ids, enriched_test_note, enriched_val_note
from ..data.transforms import TwoViews, eval_transform, train_transform
from ..errors import DatasetError, ParamsError
from ..io import load_nifti
from ..levels import level_name
from .params import SYNTHSPINE
from .paths import resolve_path, shown_path
from .provenance import dataset_fingerprint
from .report import dataset_sentence
from .run import read_json, say

SPLITS = ("train", "val", "test")


class StudyData:
    """A processed dataset, its split tag, and what is known about it (synthetic or not, its original scans)."""

    def __init__(self, processed: Path, tag: str, synthetic: bool, original: Path | None = None,
                 name: str | None = None):
        self.processed = Path(processed)
        self.original = Path(original) if original is not None else None
        self.tag = tag
        self.synthetic = bool(synthetic)
        self.name = name or ("SynthSpine" if synthetic else self.processed.name)
        self.dataset = ProcessedDataset(self.processed)
        tags = self.dataset.tags()
        if tag not in tags:
            raise ParamsError(f"parameter 'tag' = {tag!r}: {self.processed} has no lists of that tag "
                              f"(available: {', '.join(tags) or 'none'})")

    @classmethod
    def from_description(cls, info: dict) -> "StudyData":
        """The dataset :meth:`describe` described (``dataset.json`` in a run folder)."""
        return cls(Path(info["processed"]), info["tag"], info["synthetic"],
                   Path(info["original"]) if info.get("original") else None, info.get("name"))

    @classmethod
    def from_run(cls, run) -> "StudyData":
        """The dataset 00_data_exploration chose for ``run`` (a :class:`~vfnb.study.StudyRun`)."""
        return cls.from_description(run.dataset_description())

    def records(self, split: str) -> list[dict]:
        return self.dataset.records(split, self.tag)

    def all_records(self) -> list[dict]:
        """Records of the train, val and test lists together."""
        return [r for split in SPLITS for r in self.records(split)]

    @property
    def truth_file(self) -> Path | None:
        if self.original is None:
            return None
        path = self.original / TRUTH_FILE
        return path if path.is_file() else None

    def truth(self) -> pd.DataFrame | None:
        """SynthSpine's per-vertebra truth table (``case``, ``label``, ``morphology``, heights, ...) or None."""
        return pd.read_csv(self.truth_file) if self.truth_file else None

    def vertebrae(self) -> pd.DataFrame:
        """One row per patch: ``image_id``, ``label``, ``level``, ``grade``, ``split`` (or "unlisted"), ``name``."""
        split_of = {}
        for split in SPLITS:
            with contextlib.suppress(DatasetError):
                for r in self.records(split):
                    split_of[r["name"]] = split
        rows = [{"image_id": p.image_id, "label": p.label, "level": level_name(p.label), "grade": p.grade,
                 "split": split_of.get(p.filename, "unlisted"), "name": p.filename} for p in self.dataset.patches]
        return pd.DataFrame(rows)

    def enriched_test_cases(self, split: str = "test") -> int:
        """How many CTs of the ``split`` list come from SynthSpine's fracture-enriched cohort of that list (0: none)."""
        if self.original is None:
            return 0
        meta = read_json(self.original / META_FILE) or {}
        count = meta.get("val_cases" if split == "val" else "test_cases")
        if not count:
            return 0
        enriched = set(enriched_case_ids(meta.get("seed", 0), count, "val" if split == "val" else "test"))
        with contextlib.suppress(DatasetError):
            return len({r["image_id"] for r in self.records(split)} & enriched)
        return 0

    def describe(self) -> dict:
        table = self.vertebrae()
        enriched, enriched_val = self.enriched_test_cases(), self.enriched_test_cases("val")
        return {"name": self.name, "synthetic": self.synthetic, "processed": str(self.processed),
                "original": str(self.original) if self.original else None, "tag": self.tag,
                "cases": int(table["image_id"].nunique()), "vertebrae": int(len(table)),
                "fingerprint": dataset_fingerprint(self.processed), "enriched_test_cases": enriched,
                "test_note": enriched_test_note(enriched),
                **({"enriched_val_cases": enriched_val, "val_note": enriched_val_note(enriched_val)}
                   if enriched_val else {})}


def _prepare_synthspine(data_dir: str, synth_cases: int, synth_seed: int, patch_size: int, synth_folds: int,
                        val_fraction: float, workers: int, synth_test_cases: int = 0,
                        synth_val_cases: int = 0) -> dict:
    """SynthSpine generated / reused, with its progress bars and per-vertebra notes kept off the notebook."""
    captured = io.StringIO()  # the notes are kept in patches.csv; the notebook shows a count
    start = time.monotonic()
    paths = default_dataset_paths(resolve_path(data_dir), synth_cases, synth_seed, patch_size, synth_test_cases,
                                  synth_val_cases)
    if not paths["processed"].is_dir():
        where = shown_path(paths["processed"].parent.parent)
        say(f"SynthSpine (synthetic data) is not in {where} yet: generating {synth_cases + synth_test_cases + synth_val_cases} CTs and "
            "their patches (a few minutes on 2 cores, once; later runs reuse them). To use your own data instead, set the "
            "parameters dataset (a processed folder) and tag.")
    with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
        paths = ensure_default_dataset(resolve_path(data_dir), cases=synth_cases, seed=synth_seed, size=patch_size,
                                       workers=max(1, int(workers)), tag="synth", folds=synth_folds,
                                       val_fraction=val_fraction, test_cases=synth_test_cases,
                                       val_cases=synth_val_cases)
    say(f"SynthSpine ready in {time.monotonic() - start:.0f} s: {paths['processed'].name}"
        + _warning_sentence(Path(paths["processed"]) / "preprocess.json"))
    return paths


def _warning_sentence(preprocess_json: Path) -> str:
    """The pre-processing notes as ``preprocess.json`` counts them (the same counts as ``patches.csv``)."""
    record = read_json(preprocess_json) or {}
    counts = record.get("warning_counts") or {}
    if not counts and record.get("warnings"):  # made by an older vfnb: no counts recorded
        return f" ({len(record['warnings'])} pre-processing notes, in preprocess.json)"
    if not counts.get("notes"):
        return ""
    return (f" ({counts['notes']} pre-processing notes on {counts.get('vertebrae', '?')} vertebrae: "
            f"{counts.get('on_patches', '?')} on patches, listed in patches.csv; "
            f"{counts.get('without_patch', 0)} on vertebrae left without a patch, in preprocess.json)")


def prepare_dataset(dataset: str, data_dir: str, tag: str, synth_cases: int = 64, synth_seed: int = 0,
                    patch_size: int = 64, synth_folds: int = 5, val_fraction: float = 0.2,
                    workers: int = 1, synth_test_cases: int = 0, synth_val_cases: int = 0) -> StudyData:
    """The study's dataset: SynthSpine (generated into ``data_dir`` when missing, else reused) or a processed folder.

    ``dataset == "synthspine"``: lists of tags ``synth-f0`` .. ``synth-f{synth_folds-1}``;
    ``synth_test_cases`` CTs of SynthSpine's fracture-enriched test cohort join every
    test list and ``synth_val_cases`` of its fracture-enriched validation cohort every
    validation list (:mod:`vfnb.data.synth.dataset`); otherwise ``dataset`` is the path of a processed dataset, validated with
    :func:`vfnb.data.check.require_valid`.
    """
    if str(dataset).lower() == SYNTHSPINE:
        paths = _prepare_synthspine(data_dir, synth_cases, synth_seed, patch_size, synth_folds, val_fraction, workers,
                                    synth_test_cases, synth_val_cases)
        return StudyData(Path(paths["processed"]), tag, synthetic=True, original=Path(paths["original"]))
    processed = resolve_path(dataset)
    require_valid(processed)
    return StudyData(processed, tag, synthetic=False)


def example_scans(data: StudyData, n: int) -> Iterator[tuple]:
    """Up to ``n`` whole scans of the original layout, those with the most fractures first.

    Yields ``(case_id, ct_hu, seg, affine, grades)``; nothing when the study has no
    original layout (a processed dataset given directly).
    """
    if data.original is None or n <= 0:
        return
    cases = sorted(read_original(data.original), key=lambda c: (-sum(g > 0 for g in c.grades.values()), c.case_id))
    for case in cases[:n]:
        ct, affine, _ = load_nifti(case.image_path)
        seg = load_nifti(case.seg_path)[0]
        yield case.case_id, ct, seg, affine, case.grades


def load_patch_input(record: dict, cube_size: int) -> np.ndarray:
    """The evaluation network input ``[3, S, S, S]`` (float32) of one record."""
    return np.asarray(eval_transform(int(cube_size))(dict(record))["image"])


def augmented_views(record: dict, cube_size: int, seed: int = 0) -> np.ndarray:
    """Two independently augmented training views ``[2, 3, S, S, S]`` of one record."""
    views = TwoViews(train_transform(int(cube_size), seed=None))
    views.set_random_state(seed=int(seed))
    return np.asarray(views(dict(record))["image"])


def data_statement(data: StudyData):
    """A paragraph saying what the data are (and loudly that they are synthetic when they are).

    Shown as the report's own HTML sentence, whose user strings (the dataset's
    folder) are escaped there once, so a folder name cannot become page markup.
    """
    from IPython.display import HTML  # only inside a notebook kernel

    description = data.describe()
    sentence = dataset_sentence(description).replace("<strong>synthetic</strong>", "<strong>SYNTHETIC</strong>")
    return HTML(f"<p>{sentence}</p>")  # the sentence already ends with the test-cohort note, when there is one
