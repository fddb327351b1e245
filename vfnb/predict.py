"""Inference: grade vertebra patches, or every vertebra of a user's scan.

- :func:`predict_patches`: processed-dataset records -> a table of predicted grades,
  grade probabilities and pooled features (the evaluation notebook uses it).
- :func:`predict_scan`: one CT + its VerSe label map + a checkpoint -> one row per
  vertebra. The scan is pre-processed on the fly exactly as the dataset was
  (:func:`vfnb.data.preprocess.extract_patches_from_arrays`: any orientation) and the
  patches go through the same evaluation transform as in training
  (:func:`vfnb.data.transforms.eval_transform`: resize to the cube, input channels,
  centred crop/pad), so a scan is graded the way validation patches were.
- :func:`predict_scan_cli`: ``vfnb predict`` (CSV written atomically, or printed).

The fracture probability is ``1 - P(grade 0)`` (STUDY §1.6).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import DatasetError, VfnbError
from .io import atomic_write_text, load_nifti, save_nifti, strip_nifti_suffix
from .levels import GRADABLE_LABELS, level_name, spine_order
from .models import GradingModel, load_checkpoint_dict, model_from_checkpoint, resolve_device, unwrap_model

DEFAULT_PATCH_SIZE = 128  # the study's in-plane patch size (STUDY §1.2, 1.3)
AFFINE_TOLERANCE_MM = 1e-3  # CT and label map affines must agree to this (voxel -> world mm)
MAX_PATCH_SIZE = 512  # the paper uses 128; 512^3 float32 is already 0.5 GB per input


def _prob_columns(num_grades: int) -> list[str]:
    return [f"p{g}" for g in range(num_grades)]


def predict_patches(model: torch.nn.Module, records: Sequence[Mapping[str, Any]], cube_size: int,
                    batch_size: int = 16, device: str | torch.device = "auto"):
    """Grade processed-dataset patches.

    ``records``: dicts as ``ProcessedDataset.records`` gives them (``image``, ``seg``
    NIfTI paths, ``label``; ``grade``, ``name``, ``image_id`` when known). Each patch
    goes through :func:`vfnb.data.transforms.eval_transform` (``cube_size``: the
    network's input cube edge in voxels). The model is run in eval mode without
    gradients (its train/eval mode is restored afterwards) on ``device``.

    Returns ``(table, embeddings)``: a pandas DataFrame, one row per record, columns
    ``name, image_id, label, level, grade, pred, p0, p1, p2, p3, fracture_prob``
    (``grade`` is missing (NA) for records without one), and the pooled encoder
    features ``[N, F]`` float32 (for UMAP and the like).
    """
    import pandas as pd

    from .data.transforms import eval_transform

    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be >= 1")
    net = unwrap_model(model)
    if not isinstance(net, GradingModel):
        raise TypeError(f"predict_patches expects a GradingModel, got {type(net).__name__}")
    dev = resolve_device(device)
    num_grades = net.classifier.out_features
    transform = eval_transform(int(cube_size))
    records = [dict(r) for r in records]
    for index, record in enumerate(records):
        missing = [k for k in ("image", "seg", "label") if k not in record]
        if missing:
            raise DatasetError(f"record {index} ({record.get('name', '?')}): fields {missing} missing; "
                               "expected image, seg, label (as ProcessedDataset.records gives them)")

    was_training = net.training
    net.eval().to(dev)
    probs, features = [], []
    try:
        with torch.inference_mode():
            for start in range(0, len(records), batch_size):
                chunk = records[start:start + batch_size]
                x = torch.stack([torch.as_tensor(transform(r)["image"]) for r in chunk]).to(dev)
                feature = net.embed(x)
                logits = net.classifier(feature)
                probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                features.append(feature.float().cpu().numpy())
    finally:
        net.train(was_training)

    prob = np.concatenate(probs) if probs else np.zeros((0, num_grades), np.float32)
    embeddings = np.concatenate(features) if features else np.zeros((0, net.num_features), np.float32)
    table = pd.DataFrame({
        "name": [str(r.get("name", Path(r["image"]).name)) for r in records],
        "image_id": [str(r.get("image_id", "")) for r in records],
        "label": pd.array([int(r["label"]) for r in records], dtype="int64"),
        "level": [level_name(int(r["label"])) for r in records],
        "grade": pd.array([None if r.get("grade") is None else int(r["grade"]) for r in records], dtype="Int64"),
        "pred": pd.array(prob.argmax(axis=1) if len(prob) else [], dtype="int64"),
    })
    for g, column in enumerate(_prob_columns(num_grades)):
        table[column] = prob[:, g].astype(np.float64)
    table["fracture_prob"] = 1.0 - prob[:, 0].astype(np.float64)
    broken = ~np.isfinite(prob).all(axis=1)
    if broken.any():
        raise VfnbError(f"the model gave NaN or infinite grade probabilities for {int(broken.sum())} of "
                        f"{len(prob)} vertebrae (first: {table['name'][int(np.argmax(broken))]}); no prediction "
                        "is written (is the checkpoint diverged, or the input extreme?)")
    return table, embeddings


def _sizes_from_checkpoint(ckpt: Mapping, size: int | None, cube_size: int | None) -> tuple[int, int]:
    """Pre-processing patch size and network cube size for a scan.

    ``size`` (in-plane patch size, voxels): the argument, else the checkpoint's
    ``params["patch_size"]``, else its ``params["cube_size"]``, else 128 (the study's).
    ``cube_size``: the argument, else ``params["cube_size"]``, else ``size``.
    """
    params = ckpt.get("params") if isinstance(ckpt.get("params"), Mapping) else {}
    if size is None:
        size = params.get("patch_size") or params.get("cube_size") or DEFAULT_PATCH_SIZE
    if cube_size is None:
        cube_size = params.get("cube_size") or size
    for name, value, low in (("patch_size", size, 2), ("cube_size", cube_size, 8)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value) or not low <= value <= MAX_PATCH_SIZE:
            raise VfnbError(f"{name} {value!r} (from the checkpoint's params or the argument) is not valid; "
                            f"expected an integer {low}-{MAX_PATCH_SIZE} voxels")
    return int(size), int(cube_size)


def predict_scan(ct: str | os.PathLike, seg: str | os.PathLike, checkpoint: str | os.PathLike | GradingModel,
                 device: str | torch.device = "auto", size: int | None = None, cube_size: int | None = None,
                 batch_size: int = 8):
    """Grade every vertebra of one scan.

    ``ct``: CT NIfTI in HU; ``seg``: VerSe label map NIfTI on the same voxel grid
    (same shape and affine, any orientation). Every label 1-25 and 28 in the map is
    graded (26 sacrum and 27 coccyx never are). ``checkpoint``: a vfnb or released
    checkpoint file (or a ready :class:`GradingModel`, then give ``size``).
    ``size``/``cube_size``: see :func:`_sizes_from_checkpoint`.

    Returns a DataFrame in spine order, one row per vertebra: ``label, level, pred,
    p0, p1, p2, p3, fracture_prob, warnings`` (``warnings``: pre-processing notes,
    e.g. a vertebra cut off by the scan border). Raises :class:`DatasetError` naming
    the files when they do not match or the map holds no gradable vertebra.
    """
    from .data.preprocess import _as_label_map, extract_patches_from_arrays

    ct, seg = Path(ct), Path(seg)
    if isinstance(checkpoint, torch.nn.Module):
        model, ckpt = checkpoint, {}
    else:
        ckpt = load_checkpoint_dict(checkpoint)
        model = model_from_checkpoint(ckpt, checkpoint)
    size, cube_size = _sizes_from_checkpoint(ckpt, size, cube_size)

    image, affine, _ = load_nifti(ct)
    label_map, seg_affine, _ = load_nifti(seg)
    if image.ndim != 3 or image.dtype.kind not in "iuf":
        raise DatasetError(f"{ct}: CT has shape {image.shape} and type {image.dtype}; expected a 3D volume of HU values")
    if label_map.shape != image.shape:
        raise DatasetError(f"{seg}: label map shape {label_map.shape} does not match the CT {ct} shape {image.shape}; "
                           "expected the label map of this CT, on the same voxel grid")
    if not np.allclose(seg_affine, affine, rtol=0.0, atol=AFFINE_TOLERANCE_MM):
        raise DatasetError(f"{seg}: label map affine does not match the CT {ct} affine (they differ by up to "
                           f"{np.abs(seg_affine - affine).max():.4g} mm); expected the label map of this CT, "
                           "on the same voxel grid and orientation")
    label_map = _as_label_map(label_map, str(seg))
    present = sorted(int(v) for v in np.unique(label_map) if v)
    labels = sorted((v for v in present if v in GRADABLE_LABELS), key=spine_order)
    if not labels:
        raise DatasetError(f"{seg}: the label map holds no vertebra to grade (labels present: {present or 'none'}; "
                           "expected VerSe labels 1-25 or 28)")

    skipped: list = []
    patches = extract_patches_from_arrays(image, label_map, affine, size=size, labels=labels,
                                          seg_affine=seg_affine, where=str(seg), skipped=skipped)
    for _, reason in skipped:
        print(f"warning: {seg}: {reason}", file=sys.stderr)
    if not patches:
        raise DatasetError(f"{seg}: no vertebra left to grade ({len(skipped)} label(s) too small or too thin "
                           "for a vertebra); expected VerSe vertebra labels of plausible size")
    del image, label_map
    image_id = strip_nifti_suffix(ct.name)
    # write the patches as a tiny processed dataset so they take the very same
    # evaluation path (resize to the cube, channels, centred cube) as in training
    with tempfile.TemporaryDirectory(prefix="vfnb-predict-") as tmp:
        records = []
        for patch in patches:
            name = f"patch_{patch.label}.nii.gz"
            records.append({"image": str(save_nifti(Path(tmp) / "img" / name, patch.image, patch.affine)),
                            "seg": str(save_nifti(Path(tmp) / "seg" / name, patch.mask, patch.affine)),
                            "label": patch.label, "name": name, "image_id": image_id})
        table, _ = predict_patches(model, records, cube_size, batch_size=batch_size, device=device)
    table = table.drop(columns=["name", "image_id", "grade"])
    table["warnings"] = ["; ".join(p.warnings) for p in patches]
    return table


def predict_scan_cli(ct, seg, checkpoint, out=None, device: str = "auto", overwrite: bool = False) -> None:
    """``vfnb predict``: write the table to ``out`` (CSV, atomically) or print it as CSV.

    An existing ``out`` is refused unless ``overwrite``.
    """
    if out is not None and Path(out).is_dir():
        raise VfnbError(f"{out}: --out is a folder; expected the path of a CSV file to write")
    if out is not None and Path(out).exists() and not overwrite:
        raise VfnbError(f"{out}: file already exists (choose another --out, or pass --overwrite)")
    from .models import resolve_device

    resolve_device(device)  # an unknown or absent device is refused before any file is read
    try:
        table = predict_scan(ct, seg, checkpoint, device=device)
    except (RuntimeError, ValueError) as exc:
        if isinstance(exc, VfnbError):
            raise
        # e.g. a cube too small for the network: say which files were involved, not a traceback
        raise VfnbError(f"{ct}: grading with {checkpoint} failed ({type(exc).__name__}: {exc})") from None
    text = table.to_csv(index=False, float_format="%.6f")
    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
        print(f"wrote {out} ({len(table)} vertebrae)", file=sys.stderr)
