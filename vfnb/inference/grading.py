"""Grade vertebra patches, or every vertebra of a user's scan.

- :func:`predict_patches`: patch records -> a table of predicted grades, grade
  probabilities and pooled features (the evaluation notebook uses it).
- :func:`predict_scan`: one CT + its VerSe label map + a checkpoint -> one row per
  vertebra. The scan is pre-processed exactly as the training data were
  (:func:`vfnb.data.preprocess.extract_patches_from_arrays`, any orientation, at the
  checkpoint's patch size) and the patches, kept in memory, go through the same
  evaluation transform as validation patches (:func:`vfnb.data.transforms.eval_transform`:
  resize to the cube, input channels, centred crop/pad).
- ``vfnb predict`` itself (pairs of files, the CSV, the outputs beside it) is
  :mod:`vfnb.inference.command`.

A model is always run at its own input size (``model.input_spec``, from its
checkpoint: :class:`vfnb.models.networks.ModelInput`); no caller chooses it.
The fracture probability is ``1 - P(grade 0)`` (STUDY §1.6).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..data.preprocess import as_label_map, extract_patches_from_arrays, vertebra_name
from ..data.resample import onto_ct_grid
from ..data.scan_input import read_ct
from ..data.transforms import eval_transform
from ..errors import DatasetError, VfnbError
from ..models.features import extract
from ..io import AFFINE_TOLERANCE_MM, strip_nifti_suffix
from ..levels import GRADABLE_LABELS, level_name, spine_order
from ..models.networks import GradingModel, resolve_device, unwrap_model
from ..models.checkpoints import load_checkpoint
from .heights_grading import morphometry_grades, scan_heights, with_heights
from .safety import annotate

LOG = logging.getLogger("vfnb.inference.grading")


def _prob_columns(num_grades: int) -> list[str]:
    return [f"p{g}" for g in range(num_grades)]


def input_cube_size(net: GradingModel, cube_size: int | None) -> int:
    """The cube edge ``net`` is run at: its own (``input_spec``) when it has one, else ``cube_size``."""
    spec = net.input_spec
    if spec is not None:
        if cube_size is not None and int(cube_size) != spec.cube_size:
            LOG.warning(f"the model takes {spec.cube_size}^3 cubes (its checkpoint says so); the cube_size "
                        f"{cube_size} asked for is not used")
        return spec.cube_size
    if cube_size is None:
        raise VfnbError("the model carries no input size (model.input_spec is None: it was built, not loaded "
                        "from a checkpoint); pass cube_size")
    return int(cube_size)


def _batches(records: list, transform, batch_size: int) -> Iterator[dict]:
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        yield {"image": torch.stack([torch.as_tensor(transform(r)["image"]) for r in chunk])}


def _check_records(records: list) -> None:
    for index, record in enumerate(records):
        wanted = ("hu", "mask", "label") if "hu" in record else ("image", "seg", "label")
        missing = [k for k in wanted if k not in record]
        if missing:
            raise DatasetError(f"record {index} ({record.get('name', '?')}): fields {missing} missing; "
                               "expected image, seg, label (as ProcessedDataset.records gives them)")


def predict_patches(model: torch.nn.Module, records: Sequence[Mapping[str, Any]], cube_size: int | None = None,
                    batch_size: int = 16, device: str | torch.device = "auto"):
    """Grade vertebra patches with ``model`` at its own input size.

    ``records``: dicts as ``ProcessedDataset.records`` gives them (``image``, ``seg``
    NIfTI paths, ``label``; ``grade``, ``name``, ``image_id`` when known), or patches in
    memory (``hu`` int16 and ``mask`` arrays instead of the paths). Each patch goes
    through :func:`vfnb.data.transforms.eval_transform` at the model's cube size
    (``model.input_spec``); ``cube_size`` is only for a model that carries none (one
    fresh from :func:`vfnb.models.networks.build_model`). The model runs in eval mode without
    gradients (its train/eval mode is restored afterwards) on ``device``.

    Returns ``(table, embeddings)``: a pandas DataFrame, one row per record, columns
    ``name, image_id, label, level, grade, pred, p0, p1, p2, p3, fracture_prob``
    (``grade`` is missing (NA) for records without one), and the pooled encoder
    features ``[N, F]`` float32 (for UMAP and the like).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    net = unwrap_model(model)
    if not isinstance(net, GradingModel):
        raise TypeError(f"predict_patches expects a GradingModel, got {type(net).__name__}")
    transform = eval_transform(input_cube_size(net, cube_size))
    records = [dict(r) for r in records]
    _check_records(records)
    dev = resolve_device(device)
    was_training = net.training
    net.eval().to(dev)
    try:
        seen = extract(net, _batches(records, transform, batch_size), dev)
    finally:
        net.train(was_training)
    prob = torch.softmax(torch.as_tensor(seen.logits), dim=1).numpy()
    table = _table(records, prob)
    broken = ~np.isfinite(prob).all(axis=1)
    if broken.any():
        raise VfnbError(f"the model gave NaN or infinite grade probabilities for {int(broken.sum())} of "
                        f"{len(prob)} vertebrae (first: {table['name'][int(np.argmax(broken))]}); no prediction "
                        "is written (is the checkpoint diverged, or the input extreme?)")
    return table, seen.features


def _table(records: list, prob: np.ndarray):
    import pandas as pd

    table = pd.DataFrame({
        "name": [str(r.get("name", Path(str(r.get("image", ""))).name)) for r in records],
        "image_id": [str(r.get("image_id", "")) for r in records],
        "label": pd.array([int(r["label"]) for r in records], dtype="int64"),
        "level": [level_name(int(r["label"])) for r in records],
        "grade": pd.array([None if r.get("grade") is None else int(r["grade"]) for r in records], dtype="Int64"),
        "pred": pd.array(prob.argmax(axis=1) if len(prob) else [], dtype="int64"),
    })
    for g, column in enumerate(_prob_columns(prob.shape[1])):
        table[column] = prob[:, g].astype(np.float64)
    table["fracture_prob"] = 1.0 - prob[:, 0].astype(np.float64)
    return table


def _read_scan(ct: Path, seg: Path, series: str | None = None, label_scheme: str = "auto"):
    """``(image, affine, label map, its affine, DICOM series or None)`` of one scan, checked: a 3D CT, its label
    map on the same grid.

    ``ct``: a NIfTI file or a DICOM series folder (``series``: its UID when the
    folder holds several). ``label_scheme``: the label map's numbering (``auto``,
    ``verse``, ``totalsegmentator``); the map comes back in VerSe labels
    (:func:`vfnb.data.label_schemes.read_vertebra_labels`). A label map storing the
    CT's voxels in another array order (flipped or permuted axes of the same
    lattice) is re-ordered onto the CT's, without interpolation.
    """
    scan = read_ct(ct, series)
    image, affine = scan.image, scan.affine
    label_map, seg_affine = _read_labels(seg, label_scheme)
    if image.ndim != 3 or image.dtype.kind not in "iuf":
        raise DatasetError(f"{ct}: CT has shape {image.shape} and type {image.dtype}; expected a 3D volume of HU values")
    label_map, seg_affine = onto_ct_grid(label_map, seg_affine, image.shape, affine)
    if label_map.shape != image.shape:
        raise DatasetError(f"{seg}: label map shape {label_map.shape} does not match the CT {ct} shape {image.shape}; "
                           "expected the label map of this CT, on the same voxel grid")
    if not np.allclose(seg_affine, affine, rtol=0.0, atol=AFFINE_TOLERANCE_MM):
        raise DatasetError(f"{seg}: label map affine does not match the CT {ct} affine (they differ by up to "
                           f"{np.abs(seg_affine - affine).max():.4g} mm); expected the label map of this CT, "
                           "on the same voxel grid and orientation")
    label_map = as_label_map(label_map, str(seg))
    _check_plausible(ct, image, seg, label_map, affine)
    return image, affine, label_map, seg_affine, scan.dicom


def _read_labels(seg: Path, label_scheme: str):
    """The label map in VerSe labels and its affine; what the reader noted goes to stderr."""
    from ..data.label_schemes import read_vertebra_labels

    read = read_vertebra_labels(seg, label_scheme)
    if read.scheme != "verse" or read.layout != "multilabel":
        print(f"note: {seg}: label map read as {read.describe()}", file=sys.stderr)
    for note in read.notes:
        print(f"warning: {seg}: {note}", file=sys.stderr)
    return read.array, read.affine


def _check_plausible(ct: Path, image: np.ndarray, seg: Path, label_map: np.ndarray, affine: np.ndarray) -> None:
    """Refuse a CT that is not one in HU, or a label map that is not a vertebra map; note what is odd but gradable."""
    from ..data.plausibility import ct_notes, ct_problems, label_map_problems
    from ..data.resample import voxel_spacing

    problems = ct_problems(image)
    if problems:
        raise DatasetError(f"{ct}: not a CT in Hounsfield units: {'; '.join(problems)}")
    names = {label: level_name(label) for label in range(1, int(label_map.max()) + 1)}
    problems = label_map_problems(label_map, voxel_spacing(affine), names)
    if problems:
        raise DatasetError(f"{seg}: not a vertebra label map: {'; '.join(problems)}")
    for note in ct_notes(image):
        print(f"warning: {ct}: {note}", file=sys.stderr)


def _gradable_labels(label_map: np.ndarray, seg: Path) -> list[int]:
    """The gradable VerSe labels of a (uint8) label map, in spine order; refused when there is none."""
    present = [int(v) for v in np.nonzero(np.bincount(label_map.ravel(), minlength=1))[0] if v]
    labels = sorted((v for v in present if v in GRADABLE_LABELS), key=spine_order)
    if not labels:
        raise DatasetError(f"{seg}: the label map holds no vertebra to grade (labels present: {present or 'none'}; "
                           "expected VerSe labels 1-25 or 28)")
    return labels


def _grade_by_heights(ct: Path, seg: Path, series: str | None, label_scheme: str = "auto") -> "ScanGrading":
    """Every gradable vertebra graded from its heights on the scan's grid, without a network."""
    image, affine, label_map, seg_affine, dicom = _read_scan(ct, seg, series, label_scheme)
    table = morphometry_grades(scan_heights(label_map, seg_affine, _gradable_labels(label_map, seg)))
    table.insert(0, "model_notes", "")  # no network: nothing learnt from any training data
    return ScanGrading(table, [], [], None, image, label_map, affine, dicom)


@dataclass
class ScanGrading:
    """One graded scan: the table and what was graded, for reports and saliency maps.

    ``table``: as :func:`predict_scan` returns it; ``patches``: the
    :class:`vfnb.data.preprocess.Patch` of each row, in the same order;
    ``records``: the in-memory patch records given to the model; ``image``,
    ``label_map``, ``affine``: the CT, its label map and their voxel -> world affine.
    Graded without a checkpoint (the morphometry grader), ``model`` is None and
    ``patches`` / ``records`` are empty. ``dicom``: the DICOM series the CT was read
    from (:class:`vfnb.data.dicom.DicomSeries`), None for a NIfTI CT.
    """

    table: Any
    patches: list
    records: list
    model: GradingModel | None
    image: np.ndarray
    label_map: np.ndarray
    affine: np.ndarray
    dicom: Any = None


def grade_scan(ct: str | os.PathLike, seg: str | os.PathLike,
               checkpoint: str | os.PathLike | GradingModel | None = None,
               device: str | torch.device = "auto", batch_size: int = 8, grader: str | None = None,
               series: str | None = None, label_scheme: str = "auto") -> ScanGrading:
    """Grade every vertebra of one scan and keep what was graded (see :func:`predict_scan`).

    ``grader``: the name in the table's ``grader`` column (default: the checkpoint's
    path, ``network`` for a model object); ``series``: the UID of the DICOM series
    to grade when ``ct`` is a folder holding several.
    """
    ct, seg = Path(ct), Path(seg)
    if checkpoint is None:
        return _grade_by_heights(ct, seg, series, label_scheme)
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_checkpoint(checkpoint)
    spec = unwrap_model(model).input_spec
    if spec is None:
        raise VfnbError("the model carries no input size (model.input_spec is None); load it with "
                        "vfnb.models.checkpoints.load_checkpoint or set its ModelInput")
    image, affine, label_map, seg_affine, dicom = _read_scan(ct, seg, series, label_scheme)
    labels = _gradable_labels(label_map, seg)
    skipped: list = []
    patches = extract_patches_from_arrays(image, label_map, affine, size=spec.patch_size, labels=labels,
                                          seg_affine=seg_affine, where=str(seg), skipped=skipped)
    for label, reason in skipped:
        print(f"warning: {seg}: {vertebra_name(label)}: {reason}", file=sys.stderr)
    if not patches:
        raise DatasetError(f"{seg}: no vertebra left to grade ({len(skipped)} label(s) too small or too thin "
                           "for a vertebra); expected VerSe vertebra labels of plausible size")
    image_id = strip_nifti_suffix(ct.name)
    records = [{"hu": p.image, "mask": p.mask, "label": p.label, "name": f"{image_id}_{p.label}",
                "image_id": image_id} for p in patches]
    table, _ = predict_patches(model, records, batch_size=batch_size, device=device)
    table = table.drop(columns=["name", "image_id", "grade"])
    table["warnings"] = ["; ".join(p.warnings) for p in patches]
    name = grader or ("network" if isinstance(checkpoint, torch.nn.Module) else str(checkpoint))
    table = with_heights(table, scan_heights(label_map, seg_affine, table["label"].tolist()), name)
    table = annotate(table, unwrap_model(model), patches)  # model_notes first; scan outside training in warnings
    return ScanGrading(table, patches, records, unwrap_model(model), image, label_map, affine, dicom)


def predict_scan(ct: str | os.PathLike, seg: str | os.PathLike,
                 checkpoint: str | os.PathLike | GradingModel | None = None,
                 device: str | torch.device = "auto", batch_size: int = 8, series: str | None = None,
                 label_scheme: str = "auto"):
    """Grade every vertebra of one scan.

    ``ct``: CT in HU, a NIfTI file or a DICOM series folder (``series``: the UID of
    the one to grade when the folder holds several; :func:`vfnb.data.scan_input.read_ct`);
    ``seg``: its vertebra label map on the same voxel grid (the same lattice of
    voxels: same shape and affine, or the same voxels in another array order): a
    NIfTI in VerSe labels or TotalSegmentator ``total`` IDs, or a folder of
    TotalSegmentator's per-structure masks; ``label_scheme`` says which (``auto``:
    found from the file, refused when it cannot be decided:
    :mod:`vfnb.data.label_schemes`). Every vertebra C1-L6 and T13 in the map is
    graded (the sacrum and the coccyx never are). ``checkpoint``: a vfnb or released
    checkpoint file, or a loaded :class:`GradingModel` with its ``input_spec``; the
    scan is pre-processed at its patch size and graded at its cube size. Without
    one (None), the morphometry grader grades each vertebra from its measured
    heights with Genant's bands (:mod:`vfnb.inference.heights_grading`).

    Returns a DataFrame in spine order, one row per vertebra: ``model_notes`` (what
    the checkpoint says about the model's training data, the same on every row, e.g.
    trained on synthetic data: :func:`vfnb.inference.safety.model_notes`; empty
    without a checkpoint), ``label, level, grader, pred, p0, p1, p2, p3,
    fracture_prob``, the heights on the scan's own grid (``anterior_height_mm``,
    ``middle_height_mm``, ``posterior_height_mm``, ``anterior_ratio``,
    ``middle_ratio``, ``posterior_ratio``, ``height_loss``, ``borderline``,
    ``assessable``) and ``warnings`` (pre-processing notes, e.g. a vertebra cut off
    by the scan border, why a vertebra is not assessable, where it lies outside the
    training data). A vertebra that is not assessable has no grade and no
    probabilities (empty); the morphometry grader gives no probabilities at all.
    Raises :class:`DatasetError` naming the files when they do not match or the map
    holds no gradable vertebra.
    """
    return grade_scan(ct, seg, checkpoint, device=device, batch_size=batch_size, series=series,
                      label_scheme=label_scheme).table
