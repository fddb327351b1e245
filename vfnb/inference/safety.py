"""What ``vfnb predict`` checks and says before a user reads a network's grades.

A network's grades are only as good as what it learnt from, and a user holding a
CT cannot see that in a table of probabilities. This module decides, from what the
checkpoint records (:class:`vfnb.models.origin.CheckpointOrigin`, written by
:mod:`vfnb.training.data_record`):

- :func:`check_gradable`: refuse a SupCon pretraining checkpoint (its encoder
  learnt, its grade classifier never did: every grade it gives is noise) and name
  the checkpoints of the same run that grade;
- :func:`model_notes`: what every output says at its top: trained on synthetic
  data, training data unknown, grades absent from training;
- :func:`scan_notes`: per vertebra, a scan outside what training saw (voxel size,
  HU);
- :func:`checked_operating_point`: a threshold is used only with the checkpoint it
  was chosen for (matched on the run identity), unless the user accepts a foreign
  one explicitly, which every output then states;
- :func:`reading_sentence`: one sentence where the most likely grade and the
  screening decision disagree, so a reader sees why both are printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..errors import CheckpointError, ParamsError
from ..levels import NUM_GRADES
from ..models.checkpoints import checkpoint_identity, load_checkpoint_dict
from ..training.data_record import patch_hu_stats

PRETRAINING_MODE = "supcon"  # vfnb.training.engine.OBJECTIVES: encoder + projection head only
GRADING_MODES = ("linear", "finetune")  # the modes that train a classifier on a SupCon encoder
SPACING_TOLERANCE = 0.10  # relative: a voxel edge more than 10 % outside the training range is noted
FOREIGN_FLAG = "--accept-foreign-operating-points"


# ------------------------------------------------------------------ the checkpoint
def check_gradable(model, checkpoint: str | Path) -> None:
    """Refuse a checkpoint whose grade classifier was never trained (SupCon pretraining, ``params.mode`` supcon)."""
    origin = getattr(model, "origin", None)
    if origin is None or origin.mode != PRETRAINING_MODE:
        return
    raise CheckpointError(
        f"{checkpoint}: field 'params.mode' is '{PRETRAINING_MODE}': a SupCon pretraining checkpoint. Its encoder was "
        "trained with the contrastive loss, but its grade classifier never was, so the grades and fracture "
        f"probabilities it would give mean nothing. Grade with a checkpoint trained from it: {_graders_of(checkpoint)}")


def _graders_of(checkpoint: str | Path) -> str:
    """The linear probe's / fine-tuned model's ``best.pt`` beside this run folder, or where a study puts them."""
    checkpoint = Path(checkpoint)
    runs = checkpoint.resolve().parent.parent
    found = []
    for candidate in sorted(runs.glob("*/best.pt")):
        try:
            params = load_checkpoint_dict(candidate).get("params") or {}
        except CheckpointError:
            continue
        if isinstance(params, dict) and params.get("mode") in GRADING_MODES:
            found.append(f"{candidate} ({params['mode']})")
    if found:
        return ", ".join(found)
    return ("the linear probe's or the fine-tuned model's best.pt of the same study run, "
            f"{runs / 'supcon_linear' / 'best.pt'} or {runs / 'supcon_finetune' / 'best.pt'} "
            "(a study trains them in notebook 02)")


def model_notes(model) -> list[str]:
    """What every output of this model says first (empty for a model without any recorded concern)."""
    origin = getattr(model, "origin", None)
    if origin is None:
        return []
    if origin.training_data is None:
        what = "a released checkpoint of the study" if origin.released else "the checkpoint does not record it"
        return [f"training data unknown ({what}): nothing says what scans, grades or voxel sizes this model has seen"]
    data = origin.training_data
    notes = []
    if data.get("synthetic") is True:
        made_by = f", made by {data['generator']}" if data.get("generator") else ""
        notes.append(f"SYNTHETIC TRAINING DATA: this model was trained on generated scans ({data.get('dataset')}"
                     f"{made_by}) and has never seen a real CT; its grades of a real scan are not evidence of a "
                     "fracture")
    elif data.get("synthetic") is None:
        notes.append(f"not recorded whether the training scans ({data.get('dataset')}) were real or generated")
    counts = data.get("grade_counts") or {}
    absent = [g for g in range(NUM_GRADES) if counts and int(counts.get(str(g), counts.get(g, 0)) or 0) == 0]
    if absent:
        names = ", ".join(map(str, absent))
        notes.append(f"grade{'s' if len(absent) > 1 else ''} {names} absent from the training list: "
                     f"{', '.join(f'p{g}' for g in absent)} {'were' if len(absent) > 1 else 'was'} never learnt "
                     "and the model cannot give such a grade")
    return notes


# ------------------------------------------------------------------ the scan against the training data
def scan_notes(model, patch) -> list[str]:
    """Where one graded vertebra's patch (:class:`vfnb.data.preprocess.Patch`) lies outside the training data."""
    origin = getattr(model, "origin", None)
    data = None if origin is None else origin.training_data
    if not data:
        return []
    notes = _spacing_notes(data, patch)
    stats = patch_hu_stats(patch.image, patch.mask)
    median = data.get("vertebra_median_hu")
    if median and stats["median"] is not None and not median[0] <= stats["median"] <= median[1]:
        notes.append(f"median HU inside the vertebra {stats['median']:.0f} outside the training vertebrae's "
                     f"{median[0]:.0f} to {median[1]:.0f}")
    spread = data.get("hu_percentiles")
    if spread and (stats["p1"] < spread[0] or stats["p99"] > spread[1]):
        notes.append(f"HU of the patch (1st-99th percentile {stats['p1']:.0f} to {stats['p99']:.0f}) outside "
                     f"training's {spread[0]:.0f} to {spread[1]:.0f}")
    return notes


def _spacing_notes(data: Mapping, patch) -> list[str]:
    source = data.get("source_spacing_mm")
    if source:
        edges = (("smallest", min(patch.spacing)), ("largest", max(patch.spacing)))
        out = [f"{name} voxel edge {value:.2f} mm outside the training scans' {lo:.2f}-{hi:.2f} mm"
               for name, value in edges for lo, hi in [source[name]] if _outside(value, lo, hi)]
        if out:
            shown = " x ".join(f"{s:.2f}" for s in patch.spacing)
            return [f"scan voxel size {shown} mm: " + "; ".join(out)]
        return []
    spacing = data.get("patch_spacing_mm")
    if spacing and _outside(patch.patch_spacing_mm, *spacing):
        return [f"patch voxel {patch.patch_spacing_mm:.2f} mm outside the training patches' "
                f"{spacing[0]:.2f}-{spacing[1]:.2f} mm (the training scans' voxel sizes are not recorded)"]
    return []


def _outside(value: float, lo: float, hi: float) -> bool:
    return value < lo * (1.0 - SPACING_TOLERANCE) or value > hi * (1.0 + SPACING_TOLERANCE)


def annotate(table, model, patches: Sequence):
    """The scan table with ``model_notes`` first (the same on every row) and the scan notes added to ``warnings``."""
    table = table.copy()
    per_vertebra = [scan_notes(model, p) for p in patches]
    table["warnings"] = ["; ".join([w for w in [str(old or "")] if w] + notes)
                         for old, notes in zip(table["warnings"], per_vertebra)]
    table.insert(0, "model_notes", "; ".join(model_notes(model)))
    return table


# ------------------------------------------------------------------ operating points
def checked_operating_point(point: dict, name: str, path: str | Path, checkpoint: str | Path,
                            accept_foreign: bool) -> dict:
    """``point`` when it was chosen for ``checkpoint`` (same run identity); else refused, or marked ``foreign``.

    ``point``: as :func:`vfnb.inference.outputs.read_operating_point` returns it, from model ``name`` of ``path``.
    A point accepted with ``accept_foreign`` gains ``foreign``: the sentence every output states.
    """
    identity = checkpoint_identity(checkpoint)
    recorded = point.get("run_id")
    if recorded == identity:
        return {**point, "foreign": None}
    why = (f"field 'run_id' is {recorded!r}, but {checkpoint} comes from run {identity}" if recorded is not None
           else f"field 'run_id' is missing (it does not say which checkpoint it was chosen for; {checkpoint} "
                f"comes from run {identity})")
    if not accept_foreign:
        raise ParamsError(f"{path}: model {name!r}: {why}. A threshold chosen on another model's validation "
                          "predictions does not give that model's specificity and sensitivity; use the "
                          "operating_points.json of the study run that trained this checkpoint, or pass "
                          f"{FOREIGN_FLAG} to use it anyway (every output then says so)")
    foreign = (f"screening threshold {float(point['threshold']):.3f} from {path} (model {name!r}) was not chosen "
               f"for this checkpoint ({why}); used because of {FOREIGN_FLAG}: its validated specificity and "
               "sensitivity do not describe this model")
    return {**point, "foreign": foreign}


def reading_sentence(row: Mapping, point: Mapping | None) -> str | None:
    """One sentence when the most likely grade and the screening decision disagree; None when they agree."""
    if point is None:
        return None
    grade, fracture = int(row["pred"]), float(row["fracture_prob"])
    threshold = float(point["threshold"])
    screened = fracture >= threshold
    if (grade >= 1) == screened:
        return None
    target = point.get("target_specificity")
    target = point.get("val_specificity") if target is None else target
    chosen = f"chosen on validation for {100 * float(target):.0f} % specificity" if target is not None else \
        "chosen on validation"
    if grade >= 1:
        return (f"The most likely single grade is {grade} (p = {float(row[f'p{grade}']):.3f}), but the fracture "
                f"probability (grades >= 1 together) {fracture:.3f} is below the screening threshold "
                f"{threshold:.3f} {chosen}, so the screening reading is: no fracture.")
    return (f"The most likely single grade is 0 (p = {float(row['p0']):.3f}), but the fracture probability "
            f"(grades >= 1 together) {fracture:.3f} reaches the screening threshold {threshold:.3f} {chosen}, "
            "so the screening reading is: fracture.")
