"""SynthSpine datasets: many cases in the original layout, and the study's default dataset (generated, pre-processed, split).

A dataset holds ``cases`` cases of the study cohort (``synth-s<seed>-<k>``) and,
optionally, ``test_cases`` cases of a fracture-enriched test cohort
(``synth-s<seed>-t<k>``): the same generator with the config's
``test_fracture_rate`` and ``test_grade_mix``, each case a function of
``(seed, k)`` alone, drawn from a stream of its own. The split puts the whole test
cohort into every test list and never into training or validation
(:func:`vfnb.data.split.split_dataset`'s ``test_only``), so the test set holds
enough mild fractures for a grade-1 recall with a usable interval while training
costs what it did. Its prevalence is not the population's: PPV and NPV on it are
not population values.

``val_cases`` cases of a fracture-enriched validation cohort (``synth-s<seed>-v<k>``,
drawn like the test cohort from a third stream) likewise join every validation list
and no other (``val_only``): model selection and the fine-tuning epochs are chosen on
a validation macro-F1 that rests on a handful of grade-3 vertebrae otherwise. The
thresholds for the screening operating point are set on validation normals, whose
count the cohort raises too; no case of the study or test cohort changes.
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ...errors import DatasetError, ParamsError
from ...io import atomic_write_json, atomic_write_text, clean_stale_staging, output_folder, save_nifti
from ..origin import GENERATOR_RECORD
from ..original import write_annotation
from ..preprocess import preprocess_dataset
from ..split import split_dataset
from .config import GENERATOR_VERSION, SynthConfig, _check_config
from .scan import case_id, generate_case

TRUTH_FILE = "synth_truth.csv"
EXACT_SEG_DIR = "seg_exact"  # the exact label maps the grades were drawn on (seg/ holds the segmenter-style ones)
META_FILE = GENERATOR_RECORD  # synth.json: "synthetic": true travels into preprocess.json (vfnb.data.origin)
TRUTH_COLUMNS = ["case", "label", "level", "grade", "morphology", "endplate",
                 "height_anterior_before_mm", "height_middle_before_mm", "height_posterior_before_mm",
                 "height_anterior_after_mm", "height_middle_after_mm", "height_posterior_after_mm",
                 "deformity_pct", "trabecular_hu", "sex", "density_class", "orientation", "axcodes",
                 "spacing_mm", "noise_sigma_hu", "cohort", "normal_variant"]


def _write_case(args) -> tuple[str, dict, list]:
    folder, index, seed, config_dict, cohort = args
    case = generate_case(index, seed, cohort_config(SynthConfig.from_dict(config_dict), cohort), cohort)
    save_nifti(Path(folder) / "img" / case.filename, case.image, case.affine)
    save_nifti(Path(folder) / "seg" / case.filename, case.seg, case.affine)
    save_nifti(Path(folder) / EXACT_SEG_DIR / case.filename, case.exact_seg, case.affine)
    return case.filename, case.grades, case.truth


def cohort_config(config: SynthConfig, cohort: str) -> SynthConfig:
    """The config a cohort's cases are drawn with: the test cohort's own fracture rate and grade mix."""
    if cohort in ("test", "val"):
        return dataclasses.replace(config, fracture_rate=config.test_fracture_rate, grade_mix=config.test_grade_mix)
    return config


def enriched_case_ids(seed: int, test_cases: int, cohort: str = "test") -> list[str]:
    """The image ids of a dataset's fracture-enriched test (or ``cohort="val"``: validation) cohort."""
    return [case_id(seed, k, cohort) for k in range(int(test_cases))]


def enriched_val_note(enriched_cases: int) -> str:
    """The sentence a page shows when the validation list holds a fracture-enriched cohort (empty otherwise)."""
    if not enriched_cases:
        return ""
    return (f"The validation list is fracture-enriched too: it holds {enriched_cases} further CTs generated with the "
            "test cohort's fracture rate (validation only), so that checkpoints and fine-tuning epochs are selected on "
            "more than a handful of fractured vertebrae.")


def enriched_test_note(enriched_cases: int) -> str:
    """The sentence a page shows when the test set holds a fracture-enriched cohort (empty otherwise)."""
    if not enriched_cases:
        return ""
    return (f"The test set is fracture-enriched: besides its share of the study's CTs it holds {enriched_cases} "
            "CTs generated with a higher fracture rate (test only, never trained on), so that mild fractures are "
            "numerous enough to measure. Its prevalence is not a population's: PPV and NPV on it are not "
            "population values (sensitivity, specificity and AUC do not depend on prevalence).")


def _mp_context():
    # fork where available: scripts without a __main__ guard and notebooks work; the
    # workers only use numpy / scipy / nibabel, so a parent that imported torch is harmless
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _meta(cases: int, seed: int, config: SynthConfig, test_cases: int = 0, val_cases: int = 0) -> dict:
    # ``val_cases`` only when there are some: a dataset made without that cohort keeps its record
    return {"generator": "vfnb.data.synth", "version": GENERATOR_VERSION, "seed": int(seed),
            "cases": int(cases), "test_cases": int(test_cases), **({"val_cases": int(val_cases)} if val_cases else {}),
            "config": config.to_dict(), "synthetic": True}


def _generate_cases(staging: Path, cases: int, seed: int, workers: int, config: SynthConfig,
                    progress: bool, test_cases: int = 0, val_cases: int = 0) -> list[tuple[str, dict, list]]:
    """Write every case's CT and label map into ``staging``; ``[(file name, grades, truth rows)]`` in case order
    (the study cohort, then the test cohort, then the validation cohort)."""
    jobs = [(str(staging), k, int(seed), config.to_dict(), cohort)
            for cohort, n in (("study", cases), ("test", test_cases), ("val", val_cases)) for k in range(int(n))]
    bar = tqdm(total=len(jobs), desc="SynthSpine", unit="case", disable=not progress)
    results = []
    if int(workers) == 1:
        for job in jobs:
            results.append(_write_case(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=_mp_context()) as pool:
            for res in pool.map(_write_case, jobs):
                results.append(res)
                bar.update()
    bar.close()
    return results


def _truth_csv(results: list[tuple[str, dict, list]]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for _, _, rows in results:
        writer.writerows(rows)
    return buf.getvalue()


def generate_dataset(out, cases: int = 64, seed: int = 0, workers: int = 1, overwrite: bool = False,
                     config: SynthConfig | None = None, progress: bool = True, test_cases: int = 0,
                     val_cases: int = 0) -> Path:
    """Write SynthSpine (original layout) to ``out``: ``img/``, ``seg/`` (segmenter-style label maps, the
    ones the study uses), ``seg_exact/`` (the exact label maps the grades were drawn on, same file names),
    ``annotation.yaml``, ``synth_truth.csv`` (one row per vertebra) and ``synth.json`` (generator version
    and config).

    ``test_cases`` adds that many cases of the fracture-enriched test cohort
    (``synth-s<seed>-t<k>``; column ``cohort`` of the truth table says which is which), ``val_cases``
    that many of the fracture-enriched validation cohort (``synth-s<seed>-v<k>``).

    Built in a staging folder and renamed into place; refuses an existing ``out``
    unless ``overwrite``. ``workers`` processes generate cases in parallel.
    """
    config = config or SynthConfig()
    _check_config(config)
    if int(cases) < 1:
        raise ParamsError(f"synth: --cases {cases}; expected at least 1")
    if int(workers) < 1:
        raise ParamsError(f"synth: --workers {workers}; expected at least 1")
    if int(test_cases) < 0:
        raise ParamsError(f"synth: --test-cases {test_cases}; expected 0 or more")
    if int(val_cases) < 0:
        raise ParamsError(f"synth: --val-cases {val_cases}; expected 0 or more")
    out = Path(out)
    with output_folder(out, overwrite=overwrite) as staging:
        (staging / "img").mkdir()
        (staging / "seg").mkdir()
        (staging / EXACT_SEG_DIR).mkdir()
        results = _generate_cases(staging, cases, seed, workers, config, progress, test_cases, val_cases)
        write_annotation(staging / "annotation.yaml", {name: grades for name, grades, _ in results})
        atomic_write_text(staging / TRUTH_FILE, _truth_csv(results))
        atomic_write_json(staging / META_FILE, _meta(cases, seed, config, test_cases, val_cases))
    return out


# ============================================================== default dataset for the study
PROCESSED_MARKER = "synth_processed.json"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_dataset_paths(data_dir, cases: int = 64, seed: int = 0, size: int = 64, test_cases: int = 0,
                          val_cases: int = 0) -> dict:
    """Where the study keeps SynthSpine: ``{"original": ..., "processed": ...}`` under ``data_dir``
    (``synthspine-s<seed>-n<cases>``, with ``-t<test_cases>`` when there is a test cohort and
    ``-v<val_cases>`` when there is a validation cohort)."""
    root = Path(data_dir) / (f"synthspine-s{int(seed)}-n{int(cases)}" + (f"-t{int(test_cases)}" if test_cases else "")
                             + (f"-v{int(val_cases)}" if val_cases else ""))
    return {"original": root / "original", "processed": root / f"processed-{int(size)}"}


def ensure_generated(original: Path, cases: int, seed: int, workers: int, config: SynthConfig,
                     test_cases: int = 0, val_cases: int = 0) -> Path:
    """Step 1: the original layout at ``original``, generated when missing, reused when its ``synth.json`` matches.

    A folder made with another generator version, seed, case count or config is
    refused (:class:`DatasetError`), never overwritten.
    """
    if not original.exists():
        return generate_dataset(original, cases=cases, seed=seed, workers=workers, config=config,
                                test_cases=test_cases, val_cases=val_cases)
    if _read_json(original / META_FILE) != json.loads(json.dumps(_meta(cases, seed, config, test_cases, val_cases))):
        raise DatasetError(
            f"{original}: exists but its {META_FILE} does not match SynthSpine {GENERATOR_VERSION} with "
            f"seed={seed}, cases={cases}, test_cases={test_cases}, val_cases={val_cases} and this config (missing, older generator or other parameters); "
            "delete the folder or choose another data directory")
    return original


def _preprocess_and_split(original: Path, processed: Path, recipe: dict, workers: int) -> Path:
    """Steps 2 and 3 into a staging folder beside ``processed``, renamed into place when both are done.

    A staging folder left by a killed run (its process gone) is removed first: it is never
    taken for the processed folder, and a killed run's patches do not pile up in ``data_dir``.
    """
    for stale in clean_stale_staging(processed):
        print(f"note: removed {stale}, the pre-processing of an earlier run that did not finish", file=sys.stderr)
    # everything of this run (pre-processing's own staging folder and lock too) lies inside ``staging``
    staging = processed.with_name(f".tmp-{processed.name}-{os.getpid()}-{int(time.time())}")
    staging.mkdir()
    made = staging / processed.name
    try:
        preprocess_dataset(original, made, size=recipe["size"], workers=workers)
        source = recipe["source"]
        split_dataset(made, recipe["tag"], folds=recipe["folds"], val_fraction=recipe["val_fraction"],
                      seed=recipe["split_seed"],
                      test_only=enriched_case_ids(source["seed"], source.get("test_cases", 0)),
                      val_only=enriched_case_ids(source["seed"], source.get("val_cases", 0), "val"))
        atomic_write_json(made / PROCESSED_MARKER, recipe)
        os.replace(made, processed)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return processed


def ensure_processed(original: Path, processed: Path, recipe: dict, workers: int) -> Path:
    """Steps 2-3: patches pre-processed at ``recipe["size"]`` and split into ``recipe["folds"]`` tags.

    Reused when its ``synth_processed.json`` records the same recipe, refused when it
    records another one, made (pre-processed, then split) when missing.
    """
    if not processed.exists():
        return _preprocess_and_split(original, processed, recipe, workers)
    if _read_json(processed / PROCESSED_MARKER) != json.loads(json.dumps(recipe)):
        raise DatasetError(
            f"{processed}: exists but {PROCESSED_MARKER} is missing or records other parameters "
            f"(expected size={recipe['size']}, tag={recipe['tag']}, folds={recipe['folds']}, "
            f"val_fraction={recipe['val_fraction']} from SynthSpine {GENERATOR_VERSION}); delete the folder or "
            "choose another data directory")
    return processed


def ensure_default_dataset(data_dir, cases: int = 64, seed: int = 0, size: int = 64, workers: int = 2,
                           tag: str = "synth", folds: int = 5, val_fraction: float = 0.2,
                           config: SynthConfig | None = None, test_cases: int = 0, val_cases: int = 0) -> dict:
    """The study's SynthSpine: generated, pre-processed and split when missing, reused when present.

    Layout: ``data_dir/synthspine-s{seed}-n{cases}/original`` (original layout) and
    ``.../processed-{size}`` (patches + split lists ``{tag}-f0`` ...), each reused only
    when its recorded parameters match (otherwise a :class:`DatasetError`; nothing is
    overwritten). ``test_cases`` cases of the fracture-enriched test cohort join every
    fold's test list (never training or validation), ``val_cases`` of the validation cohort every
    fold's validation list (never training or test). Returns ``{"original": Path, "processed": Path}``.
    """
    config = config or SynthConfig()
    paths = default_dataset_paths(data_dir, cases, seed, size, test_cases, val_cases)
    ensure_generated(paths["original"], cases, seed, workers, config, test_cases, val_cases)
    recipe = {"source": _meta(cases, seed, config, test_cases, val_cases), "size": int(size), "tag": tag, "folds": int(folds),
              "val_fraction": float(val_fraction), "split_seed": int(seed)}
    ensure_processed(paths["original"], paths["processed"], recipe, workers)
    return paths
