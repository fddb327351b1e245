"""A per-scan report: one self-contained HTML page for the person holding the scan.

`vfnb predict ... --report scan.html` writes it: a sagittal overview of the scan
with every graded vertebra labelled by its predicted Genant grade, then per
vertebra its mid-sagittal slice (with the Grad-CAM map when computed), its
measured body heights and ratios, the probability of each grade and, when the
study's validated operating point is given, the screening decision at that
threshold; with the model's provenance (checkpoint, the data it was trained on)
and a visible note that this is research software, not a medical device.

Figures are PNGs embedded as data URIs, so the page is one file that opens
anywhere, offline. They are built as ``matplotlib.figure.Figure`` objects (as in
:mod:`vfnb.plots`), which render without a backend: importing this module leaves
Matplotlib's backend to whoever runs it. Grades are coloured with the package's one
palette, :data:`vfnb.levels.GRADE_COLORS`.
"""

from __future__ import annotations

import base64
import html
from urllib.parse import quote
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from ..data.channels import BONE_WINDOW, window
from ..io import atomic_write_text
from ..levels import GRADE_COLORS, GRADE_NAMES, NUM_GRADES
from .safety import reading_sentence

NOT_ASSESSABLE_COLOR = "#777777"  # a vertebra without a grade
NOT_A_DEVICE = ("Research software, not a medical device: these grades come from a model and must not be "
                "used for diagnosis or treatment decisions.")


@dataclass
class VertebraView:
    """What the report shows of one graded vertebra.

    ``row``: its line of the prediction table (``label, level, pred, p0..p3,
    fracture_prob, warnings``; ``pred`` empty when it is not assessable, the
    probabilities empty then and for the morphometry grader); ``patch_hu`` /
    ``patch_mask``: its pre-processed patch ``[X, Y, Z]`` (patch axis convention), or
    None (no picture); ``heights``: measured heights (mm, on the scan's own grid),
    ratios, ``height_loss``, ``borderline``, ``assessable``, or empty; ``saliency``: a
    map on the patch grid ``[X, Y, Z]`` in [0, 1], or None.
    """

    row: Mapping
    patch_hu: np.ndarray | None
    patch_mask: np.ndarray | None
    heights: Mapping = field(default_factory=dict)
    saliency: np.ndarray | None = None


@dataclass
class ScanReport:
    """Everything on the page. ``operating_point``: ``{"threshold", "val_specificity",
    "val_sensitivity", "model"}`` from a study's ``operating_points.json``, or None;
    ``provenance``: ``{"checkpoint", "trained_on", "synthetic"}``; ``grader``: None for a
    network, ``"morphometry"`` when graded from the measured heights alone; ``notices``:
    what the page says first (:func:`vfnb.inference.safety.model_notes`, a foreign
    operating point)."""

    scan_name: str
    ct_hu: np.ndarray
    label_map: np.ndarray
    affine: np.ndarray
    vertebrae: Sequence[VertebraView]
    provenance: Mapping
    operating_point: Mapping | None = None
    grader: str | None = None
    notices: Sequence[str] = ()


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` reoriented to RAS+ voxel axes (left->right, posterior->anterior, inferior->superior)."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=float)))
    return np.asarray(image.dataobj), image.affine


def overview_figure(report: ScanReport) -> str:
    """Mid-sagittal and mid-coronal slices through the labelled spine, each graded vertebra named and coloured.

    Axes are world millimetres (the scan's RAS coordinates) with the anatomical
    direction of each; the grade palette is the legend, outside the images.
    """
    from matplotlib.patches import Patch

    ct, ras_affine = canonical(report.ct_hu, report.affine)
    labels, _ = canonical(report.label_map, report.affine)
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    centres = [ras_affine[a, 3] + np.arange(ct.shape[a]) * spacing[a] for a in range(3)]  # voxel centres, mm
    spine = np.nonzero(labels)
    x0 = int(round(spine[0].mean()))
    ct_coronal, labels_coronal = _curved_coronal(ct, labels)
    widths = [ct.shape[1] * spacing[1], ct.shape[0] * spacing[0]]  # mm across the sagittal and coronal panels
    fig = Figure(figsize=(11, _overview_height(ct.shape[2] * spacing[2], sum(widths))), layout="constrained")
    sagittal, coronal = fig.subplots(1, 2, gridspec_kw={"width_ratios": widths})
    _overview_panel(sagittal, ct[x0], labels[x0], centres[1], centres[2], report.vertebrae, names=True)
    sagittal.set_xlabel("posterior <- -> anterior (mm)")
    sagittal.set_title("sagittal, through the spine's middle", fontsize=10)
    _overview_panel(coronal, ct_coronal, labels_coronal, centres[0], centres[2], report.vertebrae, names=False)
    coronal.set_xlabel("patient's right <- -> left (mm)")
    coronal.set_title("coronal, following the vertebral bodies", fontsize=10)
    coronal.invert_xaxis()  # radiological convention: the patient's right on the viewer's left
    for ax in (sagittal, coronal):
        ax.set_ylabel("inferior <- -> superior (mm)")
    fig.suptitle(f"{report.scan_name}: predicted Genant grade per vertebra", fontsize=11)
    handles = [Patch(color=GRADE_COLORS[g], label=f"grade {g}") for g in sorted(GRADE_COLORS)]
    handles.append(Patch(color=NOT_ASSESSABLE_COLOR, label="not assessable"))
    coronal.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
    return _png(fig)


def _overview_height(height_mm: float, width_mm: float, panels_width_in: float = 8.0) -> float:
    """Figure height (inches) that fits the two panels at their true aspect, so no band of white sits above them.

    ``panels_width_in``: the part of the 11-inch figure the images get (the rest is
    axis labels and the legend); 1.4 inches for the titles and the axis labels.
    """
    return float(np.clip(panels_width_in * height_mm / max(width_mm, 1.0) + 1.4, 3.5, 14.0))


def _curved_coronal(ct: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coronal ``[X, Z]`` slices of the RAS volumes through the vertebral bodies at every height.

    A flat coronal plane misses the bodies where the spine curves (lordosis,
    kyphosis); at each axial level the plane is moved to the labels' anterior part
    (the 75th percentile of their antero-posterior position), smoothed along the
    spine and held constant above and below it.
    """
    from scipy.ndimage import uniform_filter1d

    depth = np.full(ct.shape[2], np.nan)
    for z in range(ct.shape[2]):
        ys = np.nonzero(labels[:, :, z])[1]
        if ys.size:
            depth[z] = np.quantile(ys, 0.75)
    known = np.flatnonzero(np.isfinite(depth))
    depth = np.interp(np.arange(ct.shape[2]), known, depth[known])
    rows = np.clip(np.round(uniform_filter1d(depth, size=5)).astype(int), 0, ct.shape[1] - 1)
    z = np.arange(ct.shape[2])
    return ct[:, rows, z], labels[:, rows, z]


def _overview_panel(ax, ct_slice, label_slice, across, up, vertebrae, names: bool) -> None:
    """One slice of the overview in mm, each vertebra outlined in its grade's colour (named when ``names``)."""
    from matplotlib import patheffects

    step_a, step_u = across[1] - across[0], up[1] - up[0]
    extent = (across[0] - step_a / 2, across[-1] + step_a / 2, up[0] - step_u / 2, up[-1] + step_u / 2)
    ax.imshow(window(ct_slice.T, *BONE_WINDOW), cmap="gray", origin="lower", extent=extent)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for view in vertebrae:
        mask = label_slice == int(view.row["label"])
        voxels = np.nonzero(mask)
        if voxels[0].size == 0:
            continue
        grade = _grade(view.row)
        colour = NOT_ASSESSABLE_COLOR if grade is None else GRADE_COLORS[grade]
        ax.contour(across, up, mask.T, levels=[0.5], colors=colour, linewidths=1.4)
        if names:
            ax.text(across[voxels[0].max()] + 4, up[int(round(np.mean(voxels[1])))],
                    f"{view.row['level']}: {'n/a' if grade is None else grade}",
                    color=colour, fontsize=10, va="center", fontweight="bold", path_effects=outline)


def _grade(row: Mapping) -> int | None:
    """The row's grade, None when the vertebra was not graded (not assessable)."""
    value = row.get("pred")
    return None if value is None or _missing(value) else int(value)


def _missing(value) -> bool:
    try:
        return bool(np.isnan(float(value)))
    except (TypeError, ValueError):
        return True


def _not_assessable_reasons(row: Mapping) -> list[str]:
    prefix = "not assessable: "
    return [part.strip()[len(prefix):] for part in str(row.get("warnings") or "").split("; ")
            if part.strip().startswith(prefix)]


#: A saliency map whose values span less than this (of its 0-1 scale) shows no evidence worth reading.
FLAT_SALIENCY = 0.05


def vertebra_figure(view: VertebraView) -> str:
    """The vertebra's mid-sagittal patch slice with its outline, and beside it the saliency when given."""
    x0 = int(round(np.nonzero(view.patch_mask)[0].mean())) if view.patch_mask.any() else view.patch_hu.shape[0] // 2
    panels = 1 if view.saliency is None else 2
    fig = Figure(figsize=(2.8 * panels, 2.8))
    axes = fig.subplots(1, panels, squeeze=False)
    slice_hu = window(view.patch_hu[x0].T, *BONE_WINDOW)
    for ax in axes[0]:
        ax.imshow(slice_hu, cmap="gray", origin="lower", interpolation="nearest")
        ax.contour(view.patch_mask[x0].T > 0, levels=[0.5], colors="#4fc3f7", linewidths=0.8, origin="lower")
        ax.set_axis_off()
    axes[0][0].set_title(f"{view.row['level']}, mid-sagittal (anterior right)", fontsize=8)
    if view.saliency is not None:
        heat = axes[0][1].imshow(view.saliency[x0].T, cmap="inferno", alpha=0.5, origin="lower", vmin=0, vmax=1,
                                 interpolation="bilinear")
        flat = float(np.ptp(view.saliency)) < FLAT_SALIENCY
        axes[0][1].set_title("Grad-CAM of the predicted grade" + ("\n(empty or flat: no evidence shown)" if flat
                                                                 else ""), fontsize=8)
        bar = fig.colorbar(heat, ax=axes[0][1], fraction=0.046, pad=0.04)
        bar.set_label("share of the map's peak (0-1)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return _png(fig)


def _decision(view: VertebraView, point: Mapping | None, grader: str | None = None) -> str:
    grade = _grade(view.row)
    if grade is None:
        return "none: the vertebra is not assessable"
    if grader is not None:
        return (f"{'<b>fracture</b>' if grade >= 1 else 'no fracture'} (grade {grade}; the morphometry grader's "
                "decision is grade 1 or more)")
    if point is None:
        return "no operating point given (pass a study's operating_points.json)"
    fractured = float(view.row["fracture_prob"]) >= float(point["threshold"])
    sentence = reading_sentence(view.row, point)
    return (f"{'<b>fracture</b>' if fractured else 'no fracture'} at threshold {float(point['threshold']):.3f} "
            f"({'NOT validated for this model' if point.get('foreign') else 'validated'}: specificity "
            f"{float(point['val_specificity']):.2f}, sensitivity {float(point['val_sensitivity']):.2f})"
            + ("" if sentence is None else f". {html.escape(sentence)}"))


def _loss_text(heights: Mapping) -> str:
    value = heights.get("height_loss")
    if value is None or not np.isfinite(value):
        return "-"
    mark = " <b>(borderline: within 2 points of a Genant band edge, 20/25/40 %)</b>" if heights.get("borderline") else ""
    return f"{100 * value:.0f} %{mark}"


def _heights_rows(heights: Mapping) -> str:
    names = (("anterior", "anterior height Ha (mm)"), ("middle", "middle height Hm (mm)"),
             ("posterior", "posterior height Hp (mm)"), ("anterior_ratio", "Ha / Hp"), ("middle_ratio", "Hm / Hp"),
             ("posterior_ratio", "Hp / neighbours' Hp"), ("height_loss", "relative height loss"))
    rows = []
    for key, title in names:
        value = heights.get(key)
        if key == "height_loss":
            text = _loss_text(heights)
        else:
            text = "-" if value is None or not np.isfinite(value) else (
                f"{value:.2f}" if "ratio" in key else f"{value:.1f}")
        rows.append(f"<tr><td>{title}</td><td>{text}</td></tr>")
    return "".join(rows)


def _title(view: VertebraView) -> str:
    """The section's heading: the level and its grade, or why it is not assessable."""
    level, grade = html.escape(str(view.row["level"])), _grade(view.row)
    if grade is None:
        reasons = "; ".join(_not_assessable_reasons(view.row)) or "no grade"
        return f"<h3 style='color:{NOT_ASSESSABLE_COLOR}'>{level}: not assessable: {html.escape(reasons, quote=False)}</h3>"
    return f"<h3 style='color:{GRADE_COLORS[grade]}'>{level}: grade {grade} ({GRADE_NAMES[grade]})</h3>"


#: Grade probabilities spanning less than this (highest - lowest) are read as "the model cannot tell".
UNSURE_SPREAD = 0.15


def _probabilities(row: Mapping) -> str:
    values = [row.get(f"p{g}") for g in range(NUM_GRADES)]
    if any(_missing(v) for v in values):
        return ""
    probs = "".join(f"<tr><td>grade {g} ({GRADE_NAMES[g]})</td><td>{float(v):.3f}</td></tr>"
                    for g, v in enumerate(values))
    spread = max(float(v) for v in values) - min(float(v) for v in values)
    flat = ("" if spread >= UNSURE_SPREAD else
            f"<tr><td colspan=2 class='warn'>nearly uniform (spread {spread:.2f}): the model cannot<br>"
            "tell the grades apart here; its grade is close to a guess</td></tr>")
    return f"<table><tr><th colspan=2>grade probabilities</th></tr>{probs}{flat}</table>"


def _vertebra_section(view: VertebraView, point: Mapping | None, grader: str | None = None) -> str:
    row = view.row
    warn = f"<p class='warn'>{html.escape(str(row['warnings']))}</p>" if str(row.get("warnings") or "") else ""
    picture = "" if view.patch_hu is None else f"<img src='{vertebra_figure(view)}' alt='{row['level']}'>"
    return (f"<section>{_title(view)}<div class='row'>{picture}{_probabilities(row)}"
            f"<table><tr><th colspan=2>measured heights (mm, on the scan's own grid)</th></tr>"
            f"{_heights_rows(view.heights)}</table></div><p>{'Decision' if grader else 'Screening'}: "
            f"{_decision(view, point, grader)}</p>{warn}</section>")


_CSS = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;color:#222} .notice{background:#fff3e0;"
        "border:2px solid #ef6c00;padding:.6em} .row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start} "
        "table{border-collapse:collapse} td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left;white-space:nowrap} "
        ".warn{color:#a15c00}")


def _grader_line(report: ScanReport, trained: str) -> str:
    """Who graded: the network's checkpoint and data, or the morphometry grader."""
    if report.grader is not None:
        return (f"<p><b>Grader: {html.escape(report.grader)}</b>: each vertebra is graded from its measured heights "
                "with Genant's height-loss bands (loss against its own posterior wall and its neighbours' posterior "
                "heights); no network, no probabilities; fracture = grade 1 or more.</p>")
    point, prov = report.operating_point, report.provenance
    return (f"<p>Model: checkpoint <code>{html.escape(str(prov.get('checkpoint', '-')))}</code>, trained on {trained}."
            f"{'' if point is None else ' Operating point: ' + html.escape(str(point.get('model', '')))}</p>")
def _notices(notices: Sequence[str]) -> str:
    """The page's first lines: what the reader must know before any grade (nothing when there is none)."""
    if not notices:
        return ""
    return "<div class='notice'>" + "".join(f"<p><b>{html.escape(n)}</b></p>" for n in notices) + "</div>"


def render(report: ScanReport) -> str:
    """The whole page as an HTML string."""
    prov = report.provenance
    trained = html.escape(str(prov.get("trained_on", "unknown data")))
    if prov.get("synthetic"):
        trained += " <b>(synthetic data: this model has never seen a real CT)</b>"
    point = report.operating_point
    sections = "".join(_vertebra_section(view, point, report.grader) for view in report.vertebrae)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vfnb: {html.escape(report.scan_name)}</title>"
            f"<style>{_CSS}</style></head><body>{_notices(report.notices)}<h1>Vertebral fracture grades: {html.escape(report.scan_name)}</h1>"
            f"<p class='notice'>{NOT_A_DEVICE}</p>"
            f"{_grader_line(report, trained)}"
            f"<p>Genant grades: 0 normal, 1 mild (20-25 % height loss), 2 moderate (25-40 %), 3 severe (over 40 %). "
            f"Heights are measured on the label map in the CT's own voxel grid, in the sagittal plane through the "
            f"vertebral body's centroid (15 %, 50 % and 85 % of the body's depth from the front); a vertebra whose "
            f"body touches the scan's edge is not assessable and not graded; the saliency (Grad-CAM, when shown) marks where the network's evidence for its grade "
            f"lies, brighter = more.</p>"
            f"<img src='{overview_figure(report)}' alt='sagittal and coronal overview'>{sections}</body></html>")


def write_scan_report(path: str | Path, report: ScanReport) -> Path:
    """Write the page to ``path`` atomically; returns the path."""
    atomic_write_text(path, render(report))
    return Path(path)


def write_report_index(folder: str | Path, table, failures: Sequence[tuple[str, str]]) -> Path:
    """``folder/index.html``: one line per scan of a folder run, linking its page, with its worst grade.

    ``table``: the run's rows (``scan``, ``level``, ``pred``); ``failures``: ``(scan, why)``
    of the scans that could not be graded (no page, the reason shown).
    """
    import pandas as pd

    why = dict(failures)
    rows = []
    for scan in dict.fromkeys(str(s) for s in table["scan"]):
        name = html.escape(scan)
        if scan in why:
            rows.append(f"<tr><td>{name}</td><td colspan=3 class='warn'>not graded: {html.escape(why[scan])}</td></tr>")
            continue
        mine = table[table["scan"].astype(str) == scan]
        grades = pd.to_numeric(mine["pred"], errors="coerce")
        worst = None if grades.isna().all() else int(grades.max())
        fractured = ", ".join(html.escape(str(level)) for level, g in zip(mine["level"], grades) if g >= 1) or "-"
        colour = NOT_ASSESSABLE_COLOR if worst is None else GRADE_COLORS[worst]
        worst_text = "-" if worst is None else f"{worst} ({GRADE_NAMES[worst]})"
        rows.append(f"<tr><td><a href='{html.escape(quote(scan + '.html'))}'>{name}</a></td>"
                    f"<td>{int(grades.notna().sum())} of {len(mine)}</td>"
                    f"<td style='color:{colour}'><b>{worst_text}</b></td><td>{fractured}</td></tr>")
    body = ("<tr><th>scan</th><th>vertebrae graded</th><th>highest grade</th><th>grade 1 or more</th></tr>"
            + "".join(rows))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>vfnb: {len(rows)} scans graded</title>"
            f"<style>{_CSS}</style></head><body><h1>Vertebral fracture grades: {len(rows)} scans</h1>"
            f"<p class='notice'>{NOT_A_DEVICE}</p><table>{body}</table></body></html>")
    return atomic_write_text(Path(folder) / "index.html", page)
