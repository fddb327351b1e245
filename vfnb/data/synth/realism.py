"""How close SynthSpine looks to real CT: per-vertebra statistics, on SynthSpine and on a real scan.

``vfnb synth realism [--real CT --seg LABELS] --out DIR`` measures, per vertebra, on a
freshly generated small SynthSpine cohort (or an existing SynthSpine folder) and,
when given, on a real CT with its vertebra label map:

- ``core_median_hu`` / ``core_sd_hu``: median and SD of the HU in the vertebra's
  *core*, its label voxels at least 4 mm from the label's edge (Euclidean distance
  transform in mm): the trabecular bone, away from cortex and endplates;
- ``share_below_100``: the share of the label's voxels below 100 HU (how far the
  mask reaches into soft tissue and disc, and how dense the bone is);
- ``canal_hu``: the median HU of the spinal canal, the hole the vertebra's ring
  encloses in an axial slice;
- ``noise_correlation`` (per scan): the residual (image minus its Gaussian blur,
  sigma 2 voxels) in soft tissue (blurred image -20..100 HU, outside labels,
  eroded 3 voxels),
  correlated with its in-plane neighbour; white noise gives ~0, reconstruction
  kernels ~0.25-0.3.

It writes ``realism.csv`` (one row per vertebra, source ``synthspine`` or ``real``),
``summary.json`` (cohort medians, the fracture AUC of a low core HU, the reference
ranges of :mod:`.reference_ranges`, and which statistics fall inside them) and
``realism.png`` (SynthSpine's distributions with the real values and the reference
ranges side by side).
"""

from __future__ import annotations

import csv
import io as _io
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...levels import level_name, spine_order
from .reference_ranges import REFERENCE_RANGES, RANGES

CORE_MM = 4.0
STATISTICS = ("core_median_hu", "core_sd_hu", "share_below_100", "noise_correlation", "canal_hu")
COLUMNS = ["source", "scan", "label", "level", "grade", "spacing_mm", *STATISTICS, "core_voxels"]


def voxel_sizes(affine) -> np.ndarray:
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(axis=0))


def slice_axis(affine) -> int:
    """The array axis of the slices: the one with the largest voxel size (the last such axis on a tie)."""
    sizes = voxel_sizes(affine)
    return int(len(sizes) - 1 - np.argmax(sizes[::-1] >= sizes.max() - 1e-3))


def noise_correlation(image: np.ndarray, labels: np.ndarray, axis: int) -> float:
    """Correlation of the soft-tissue noise residual with its in-plane neighbours (mean over both in-plane axes)."""
    img = np.asarray(image, np.float32)
    blur = ndimage.gaussian_filter(img, 2.0, mode="nearest")
    residual = img - blur
    # the tissue is told by the blurred image: with noise of 30-40 HU SD the raw voxels of muscle stray out
    # of the window so often that nothing would survive the erosion
    soft = ndimage.binary_erosion((blur >= -20) & (blur <= 100) & (labels == 0), iterations=3)
    values = []
    for a in (d for d in range(3) if d != axis):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        both = soft[tuple(lo)] & soft[tuple(hi)]
        if both.sum() < 100:
            continue
        x, y = residual[tuple(lo)][both], residual[tuple(hi)][both]
        values.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def _canal_values(image: np.ndarray, mask: np.ndarray, axis: int, pixel_mm2: float) -> np.ndarray:
    """HU of the holes (>= 15 mm^2) the mask encloses in each slice along ``axis``."""
    out = []
    for k in range(mask.shape[axis]):
        m = np.take(mask, k, axis=axis)
        if m.sum() < 10:
            continue
        holes = ndimage.binary_fill_holes(m) & ~m
        if holes.sum() * pixel_mm2 < 15.0:
            continue
        pieces, n = ndimage.label(holes)
        sizes = np.bincount(pieces.ravel())[1:] * pixel_mm2
        keep = np.isin(pieces, 1 + np.nonzero(sizes >= 15.0)[0])
        out.append(np.take(image, k, axis=axis)[keep])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def vertebra_statistics(image: np.ndarray, mask: np.ndarray, spacing, axis: int) -> dict:
    """Core median and SD, share of label voxels below 100 HU and canal HU of one vertebra's ``mask``."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - 2), b.stop + 2) for b in box)
    m, img = mask[box], np.asarray(image[box], np.float32)
    core = ndimage.distance_transform_edt(np.pad(m, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] >= CORE_MM
    inplane = [s for d, s in enumerate(spacing) if d != axis]
    canal = _canal_values(img, m, axis, float(inplane[0] * inplane[1]))
    values = img[core]
    return dict(core_median_hu=float(np.median(values)) if values.size else float("nan"),
                core_sd_hu=float(np.std(values)) if values.size > 1 else float("nan"),
                share_below_100=float(np.mean(img[m] < 100)),
                canal_hu=float(np.median(canal)) if canal.size else float("nan"),
                core_voxels=int(values.size))


def scan_statistics(image: np.ndarray, labels: np.ndarray, affine, scan: str, source: str,
                    grades: dict | None = None) -> list[dict]:
    """One row per vertebra (VerSe labels 1-25, 28) of one scan; ``grades`` when known."""
    axis = slice_axis(affine)
    spacing = voxel_sizes(affine)
    noise = noise_correlation(image, labels, axis)
    present = sorted((int(x) for x in np.unique(labels) if 0 < x <= 25 or x == 28), key=spine_order)
    rows = []
    for lab in present:
        grade = (grades or {}).get(lab, "")
        row = dict(source=source, scan=scan, label=lab, level=level_name(lab), grade=grade,
                   spacing_mm="x".join(f"{s:.3g}" for s in spacing),
                   **vertebra_statistics(image, labels == lab, spacing, axis), noise_correlation=noise)
        rows.append(row)
    return rows


def synth_rows(cases: int = 8, seed: int = 0, config=None) -> list[dict]:
    """Statistics of a freshly generated SynthSpine cohort (in memory), graded vertebrae only."""
    from .scan import generate_case

    rows = []
    for k in range(int(cases)):
        case = generate_case(k, seed, config)
        rows += [r for r in scan_statistics(case.image, case.seg, case.affine, case.case_id, "synthspine", case.grades)
                 if r["label"] in case.grades]
    return rows


def dataset_rows(root, limit: int | None = None) -> list[dict]:
    """Statistics of an existing SynthSpine (or any original-layout) dataset: graded vertebrae of each case
    (the first ``limit`` cases in name order, or all)."""
    from ..label_schemes import read_vertebra_labels
    from ..original import read_original
    from ..resample import onto_ct_grid
    from ..scan_input import read_ct

    rows = []
    cases = sorted(read_original(root), key=lambda c: c.case_id)
    for case in cases[:limit] if limit is not None else cases:
        ct = read_ct(case.image_path)
        labels = read_vertebra_labels(case.seg_path, case.label_scheme)
        seg, _ = onto_ct_grid(labels.array, labels.affine, ct.image.shape, ct.affine)
        rows += [r for r in scan_statistics(ct.image, seg, ct.affine, case.case_id, "synthspine", case.grades)
                 if r["label"] in case.grades]
    return rows


def real_rows(ct_path, seg_path, scheme: str = "auto") -> list[dict]:
    """Statistics of a real CT (NIfTI or DICOM folder) with its vertebra label map (VerSe or TotalSegmentator)."""
    from ...errors import DatasetError
    from ..label_schemes import read_vertebra_labels
    from ..resample import onto_ct_grid
    from ..scan_input import read_ct

    ct = read_ct(ct_path)
    labels = read_vertebra_labels(seg_path, scheme)
    seg, seg_affine = onto_ct_grid(labels.array, labels.affine, ct.image.shape, ct.affine)
    if seg.shape != ct.image.shape:
        raise DatasetError(f"{seg_path}: label map of shape {seg.shape}; expected the CT's grid {ct.image.shape} "
                           f"({ct.source})")
    rows = scan_statistics(ct.image, seg, ct.affine, Path(ct_path).name, "real")
    if not rows:
        raise DatasetError(f"{seg_path}: no vertebra labels (VerSe 1-25 or 28) found; expected a vertebra label map")
    return rows


def fracture_auc(rows: list[dict]) -> float:
    """AUC of "lower core HU means fractured" over graded rows (NaN without both classes)."""
    graded = [r for r in rows if r["grade"] != "" and np.isfinite(r["core_median_hu"])]
    y = np.array([int(r["grade"]) > 0 for r in graded])
    if y.all() or not y.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, -np.array([r["core_median_hu"] for r in graded])))


def summarise(rows: list[dict]) -> dict:
    """Cohort medians of each statistic (the core HU over vertebrae without a fracture), the fracture AUC,
    and for each whether it lies inside its reference range."""
    out = {}
    for name in STATISTICS:
        use = [r for r in rows if name != "core_median_hu" or r["grade"] in ("", 0)]
        values = np.array([r[name] for r in use], float)
        values = values[np.isfinite(values)]
        out[name] = float(np.median(values)) if values.size else float("nan")
    out["fracture_auc_low_hu"] = fracture_auc(rows)
    inside = {k: bool(RANGES[k].low <= v <= RANGES[k].high) for k, v in out.items() if np.isfinite(v)}
    return {"statistics": out, "inside_reference_range": inside}


def summary_rows(summary: dict) -> list[dict]:
    """One row per statistic: the cohort's value, the real range and whether it lies inside (for a table)."""
    values = summary["statistics"]
    return [dict(statistic=r.statistic, value=round(values[r.statistic], 3), real_low=r.low, real_high=r.high,
                 unit=r.unit, inside=summary["inside_reference_range"].get(r.statistic)) for r in REFERENCE_RANGES]


def _csv_text(rows: list[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def realism_figure(synth: list[dict], real: list[dict]):
    """SynthSpine's per-vertebra distributions (box and points), real values (red) and reference ranges (band)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(3.0 * len(STATISTICS), 3.6))
    for ax, name in zip(axes, STATISTICS):
        ref = RANGES[name]
        ax.axhspan(ref.low, ref.high, color="0.85", zorder=0, label="real range (cohort median)")
        values = np.array([r[name] for r in synth], float)
        values = values[np.isfinite(values)]
        if values.size:
            ax.boxplot([values], positions=[0], widths=0.5, showfliers=False)
            jitter = np.random.default_rng(0).uniform(-0.18, 0.18, values.size)
            ax.scatter(jitter, values, s=6, alpha=0.4, color="tab:blue", label="SynthSpine vertebrae")
        rv = np.array([r[name] for r in real], float)
        rv = rv[np.isfinite(rv)]
        if rv.size:
            ax.scatter(np.ones(rv.size) + np.random.default_rng(1).uniform(-0.1, 0.1, rv.size), rv, s=14,
                       color="tab:red", label="real CT vertebrae")
        ax.set_xticks([0, 1], ["SynthSpine", "real"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(f"{name} ({ref.unit})", fontsize=9)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("SynthSpine (synthetic) against real CT, per vertebra", fontsize=10)
    fig.tight_layout()
    return fig


def plot_realism(synth: list[dict], real: list[dict], path) -> Path:
    """:func:`realism_figure` written to ``path`` (PNG, atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io import atomic_path

    fig = realism_figure(synth, real)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_realism_report(out, synth: list[dict], real: list[dict] | None = None, overwrite: bool = False) -> Path:
    """``realism.csv``, ``summary.json`` and ``realism.png`` into the new folder ``out`` (refused if it exists)."""
    from ...io import atomic_write_json, atomic_write_text, output_folder

    real = real or []
    out = Path(out)
    summary = {"synthspine": summarise(synth), "real": summarise(real) if real else None,
               "vertebrae": {"synthspine": len(synth), "real": len(real)},
               "reference_ranges": [dict(statistic=r.statistic, low=r.low, high=r.high, unit=r.unit,
                                         meaning=r.meaning) for r in REFERENCE_RANGES],
               "synthetic": True}
    with output_folder(out, overwrite=overwrite) as staging:
        atomic_write_text(staging / "realism.csv", _csv_text(synth + real))
        atomic_write_json(staging / "summary.json", summary)
        plot_realism(synth, real, staging / "realism.png")
    return out
