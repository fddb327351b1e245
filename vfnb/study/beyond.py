"""Beyond the paper in notebook 03: the morphometry baseline and where the networks look.

- The morphometry models (:mod:`vfnb.morphometry.graders`) are graded exactly like the
  networks: predictions on the validation and test lists, the screening threshold
  chosen on validation with the same rule, the same metrics and intervals.
  :func:`beyond_measurement` says, per grade, what each network adds to the best of
  them.
- Saliency (:mod:`vfnb.inference.saliency`): Grad-CAM of each network's predicted grade on a
  per-grade sample of test vertebrae, with occlusion sensitivity on a few as a
  check, summarised as the share of the map in each anatomical region.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ..data.sampling import pick_per_grade
from ..evaluate import evaluate_predictions
from ..levels import GRADES
from ..models.checkpoints import load_checkpoint
from ..morphometry.graders import MORPHOMETRY_MODELS, predict_morphometry
from ..inference.saliency import REGIONS, explain_records, share_summary, share_table
from .evaluation import operating_point
from .registry import model_title


def morphometry_models(requested: Sequence[str]) -> list[str]:
    """The morphometry models asked for, checked (a clear error names the unknown one)."""
    unknown = [m for m in requested if m not in MORPHOMETRY_MODELS]
    if unknown:
        raise ValueError(f"morphometry model(s) {', '.join(unknown)} unknown; expected {', '.join(MORPHOMETRY_MODELS)}")
    return list(requested)


def grade_by_morphometry(data, models: Sequence[str], target_specificity: float, n_boot: int, seed: int = 0):
    """``(test tables, results, operating points)`` of each morphometry model on the study's lists.

    The learned grader is fitted on the training list only; thresholds come from the
    validation list; the test list is graded once.
    """
    train, val, test = data.records("train"), data.records("val"), data.records("test")
    tables, results, points = {}, {}, {}
    for model in models:
        val_table = predict_morphometry(model, train, val, seed=seed)
        points[model] = operating_point(val_table, target_specificity)
        tables[model] = predict_morphometry(model, train, test, seed=seed)
        results[model] = evaluate_predictions(tables[model], points[model].threshold, n_boot=n_boot, seed=seed)
    return tables, results, points


def beyond_measurement(results: Mapping[str, dict], networks: Sequence[str], measurement: str) -> pd.DataFrame:
    """Per grade: each network's test recall minus the ``measurement`` model's (argmax grades).

    Positive: the network finds more of that grade than measuring heights does.
    """
    def recall(model: str, grade: int) -> float:
        value = results[model]["metrics"].get(f"recall_grade{grade}", {}).get("value")
        return float("nan") if value is None else float(value)

    rows = {model_title(m): {f"grade {g}": recall(m, g) - recall(measurement, g) for g in GRADES} for m in networks}
    return pd.DataFrame(rows).T.round(3)


def explain_networks(checkpoints: Mapping[str, str], records: Sequence[dict], per_grade: int, seed: int = 0,
                     occlusion_check: int = 2) -> dict[str, list[dict]]:
    """Grad-CAM (and occlusion on the first ``occlusion_check``) of each network on a per-grade sample."""
    sample = pick_per_grade(records, per_grade, seed)
    return {model: explain_records(load_checkpoint(path), sample, occlusion_check=occlusion_check)
            for model, path in checkpoints.items()}


def saliency_overview(explained: Mapping[str, list[dict]]) -> pd.DataFrame:
    """Mean share of each network's Grad-CAM per region, and the region's share of the cube."""
    columns = {model_title(m): share_summary(e)["share of the map"] for m, e in explained.items()}
    first = next(iter(explained.values()))
    columns["share of the cube (a uniform map)"] = share_summary(first)["share of the cube"]
    return pd.DataFrame(columns).loc[list(REGIONS)].round(3)


def occlusion_agreement(explained: Mapping[str, list[dict]]) -> pd.DataFrame:
    """Per network: mean share per region by Grad-CAM and by occlusion, on the vertebrae checked both ways."""
    rows = {}
    for model, items in explained.items():
        checked = [e for e in items if "occlusion_shares" in e]
        if not checked:
            continue
        cam = share_table(checked)[list(REGIONS)].mean()
        occ = share_table(checked, "occlusion_shares")[list(REGIONS)].mean()
        rows[(model_title(model), "Grad-CAM")] = cam
        rows[(model_title(model), "occlusion")] = occ
    return pd.DataFrame(rows).T.round(3)


def saliency_record(explained: Mapping[str, list[dict]]) -> dict:
    """What ``saliency.json`` keeps: per network, the per-vertebra shares (no maps)."""
    return {model: [{"name": e["name"], "grade": None if e["grade"] is None else int(e["grade"]), "pred": e["pred"],
                     "gradcam_shares": {r: e["shares"][r]["share"] for r in REGIONS},
                     "volume_shares": {r: e["shares"][r]["volume"] for r in REGIONS},
                     **({"occlusion_shares": {r: e["occlusion_shares"][r]["share"] for r in REGIONS}}
                        if "occlusion_shares" in e else {})}
                    for e in items] for model, items in explained.items()}

