"""vfnb's vertebral heights against TotalSegmentator's spine report, on label maps of known geometry.

TotalSegmentator's spine report (``totalsegmentator.spine_report.measure_verte_height``,
``VertebraeProcessor``) is the field's open peer of vfnb's height measurement
(:func:`vfnb.inference.heights_grading.scan_heights`, the heights ``vfnb predict``
writes). Its height code runs on label maps without model weights, so both can
measure the very same maps, here drawn by SynthSpine with known true heights:

- **The maps.** Five runs T11-L5 (seven vertebrae each) placed on SynthSpine's
  sagittal curve (kyphosis above L1, lordosis below, so L4-L5 are tilted by 5-30
  degrees): ``normal``, ``lordotic`` (lordosis x 1.4) and ``straighter`` (x 0.6) hold
  normal vertebrae; ``subthreshold`` holds wedge, biconcave and crush deformities of
  10-15 % (grade 0, as SynthSpine's normal vertebrae may have); ``fractured`` a wedge
  (superior endplate), a crush, a biconcave, an inferior-endplate wedge and a grade-3
  biconcave vertebra at L5. Each is drawn at 0.8 x 0.8 x 1 mm and 0.8 x 0.8 x 3 mm
  (generated on that grid, no resampling), stored RAS. The drawing is SynthSpine's own
  (:mod:`vfnb.data.synth.drawing`, reached through its private functions): a voxel is
  labelled when its centre lies inside the body or the posterior elements; the body is
  drawn as its own primitive, so the body's voxels of each label are the
  **vertebral-body mask** the peer needs. Fracture signs (irregular endplates, cortical
  buckling) are off, so the true heights are exactly SynthSpine's
  (``_Vertebra.heights``: along the vertebra's own supero-inferior axis, in its
  mid-sagittal plane, at 15 %, 50 % and 85 % of its depth), and so is the true grade
  (Genant's band of the deformity against the vertebra's own heights before it).
- **The peer's inputs.** The label map in TotalSegmentator's ``total`` numbering with
  its label names (:data:`TOTALSEG_VERTEBRAE`, :func:`to_totalseg`), and the body
  mask as class 1 ``vertebrae_body`` (the inputs of the report's command line,
  ``-v`` and ``-b``), as nibabel images in canonical RAS, the horizontal axis found
  on the raw mask (``horizontal_mask_type="raw"``, as ``totalseg_spine_report`` calls it).
  A second pass runs the same code with its boundary-search step (``STEP_SIZE``, 0.5
  voxel, whose refinement loop returns the previous step) set to :data:`FINE_STEP`,
  to tell the peer's quantisation from its method (``peerfine``).
- **Figures.** Per level and height, ``|vfnb - peer|`` over the ten maps (median, max;
  targets: median <= 1 mm, none > 2.5 mm), and per voxel size against the peer and
  the fine-step peer; per voxel size, each method's ``|measured - true|`` (the signed
  median as ``signed_median``); how many grade-0 and fractured vertebrae each method's
  own fracture rule flags (the peer: ``1 - min / max`` of its three heights > 0.2,
  ``detect_potential_fracture``; vfnb: Genant grade >= 1 of the morphometry grader);
  seconds per map of each.
- **Beside the JSON**, in the work folder: ``heights_peer_figures/<run>_<voxel>.png``
  (each vertebra's body on vfnb's slice at its centroid plane in grey, the peer's
  chosen slice outlined in red, vfnb's height segments blue, the peer's red, the true
  ones dashed green) and ``largest_differences.png`` (the four vertebrae where the two
  differ most, larger, with the three sets of heights), ``heights_peer_rows.csv`` (every vertebra: truth, each method's
  heights, grade, flag) and ``heights_peer_levels.md`` (per level and voxel size,
  median and max ``|vfnb - peer|``).

Needs ``totalsegmentator`` and ``scikit-image`` (and ``imgkit``, which the report's
module imports); neither is a vfnb dependency. Without them the section is reported
as not measured, saying so.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .harness import figure, single

#: VerSe label -> (TotalSegmentator ``total`` task label, its name), C1-L5.
TOTALSEG_VERTEBRAE: dict[int, tuple[int, str]] = {
    **{verse: (51 - verse, f"vertebrae_C{verse}") for verse in range(1, 8)},
    **{verse: (51 - verse, f"vertebrae_T{verse - 7}") for verse in range(8, 20)},
    **{verse: (51 - verse, f"vertebrae_L{verse - 19}") for verse in range(20, 25)},
}
#: The body mask's one class, as TotalSegmentator's ``vertebrae_body`` task names it.
BODY_CLASS = {1: "vertebrae_body"}
HEIGHTS = ("anterior", "middle", "posterior")
#: The peer's measurement positions (fraction of depth from the posterior end) -> height.
PEER_POSITIONS = {"15%": "posterior", "50%": "middle", "85%": "anterior"}
VOXELS = {"1mm": (0.8, 0.8, 1.0), "3mm": (0.8, 0.8, 3.0)}
LEVELS = (18, 19, 20, 21, 22, 23, 24)  # T11-L5 (VerSe)
TARGET_MEDIAN_MM, TARGET_MAX_MM = 1.0, 2.5
FIGURES_DIR = "heights_peer_figures"


@dataclass(frozen=True)
class SpineRun:
    """One run of vertebrae to draw: its curve and its deformities ``{VerSe label: (morphology, endplate, loss)}``."""

    name: str
    seed: int
    lordosis: float = 1.0
    kyphosis: float = 1.0
    deformities: dict = field(default_factory=dict)
    levels: tuple = LEVELS


RUNS = (
    SpineRun("normal", seed=0),
    SpineRun("lordotic", seed=1, lordosis=1.4),
    SpineRun("straighter", seed=3, lordosis=0.6, kyphosis=0.6),
    SpineRun("subthreshold", seed=4, deformities={19: ("wedge", "superior", 0.15), 20: ("biconcave", "both", 0.14),
                                                  21: ("crush", "both", 0.12), 22: ("wedge", "superior", 0.10),
                                                  23: ("biconcave", "both", 0.15), 24: ("wedge", "inferior", 0.13)}),
    SpineRun("fractured", seed=2, deformities={19: ("wedge", "superior", 0.32), 20: ("crush", "both", 0.30),
                                               21: ("biconcave", "both", 0.30), 23: ("wedge", "inferior", 0.22),
                                               24: ("biconcave", "both", 0.45)}),
)
QUICK_RUNS = (SpineRun("normal", seed=0, levels=(20, 21, 22)),)
#: The peer's boundary search with this step (voxels) instead of its own 0.5: its quantisation taken out.
FINE_STEP = 0.05


@dataclass
class Phantom:
    """One drawn run: VerSe label map, body mask, a CT (HU) and affine (RAS), and per vertebra its truth."""

    run: SpineRun
    voxel: str
    seg: np.ndarray
    body: np.ndarray
    ct: np.ndarray
    affine: np.ndarray
    truth: dict          # label -> {"anterior", "middle", "posterior"} mm
    morphology: dict     # label -> "none" | "wedge" | "biconcave" | "crush"
    grade: dict          # label -> Genant grade of its deformity against its own heights before it
    truth_segments: dict  # label -> {height: ((y, z), (y, z))}, mm from the grid's first voxel centre


# ------------------------------------------------------------------ the peer's label scheme
def totalseg_names(labels) -> dict[int, str]:
    """TotalSegmentator's ``{label: name}`` for the VerSe ``labels`` (C1-L5); other levels are refused."""
    out = {}
    for label in sorted(int(l) for l in labels):
        if label not in TOTALSEG_VERTEBRAE:
            raise ValueError(f"VerSe label {label}: TotalSegmentator's 'total' task has no vertebra for it "
                             "(expected C1-L5, VerSe labels 1-24)")
        ts, name = TOTALSEG_VERTEBRAE[label]
        out[ts] = name
    return out


def to_totalseg(label_map: np.ndarray) -> tuple[np.ndarray, dict[int, str]]:
    """A VerSe label map renumbered to TotalSegmentator's ``total`` task, with its label names."""
    present = [int(l) for l in np.unique(label_map) if l != 0]
    names = totalseg_names(present)
    lut = np.zeros(max(present, default=0) + 1, dtype=np.uint8)
    for label in present:
        lut[label] = TOTALSEG_VERTEBRAE[label][0]
    return lut[np.asarray(label_map, dtype=np.int64)], names


# ------------------------------------------------------------------ the maps
def _vertebrae(run: SpineRun):
    """SynthSpine's vertebrae of ``run``, deformed and placed on the curve (world mm)."""
    from vfnb.data.synth.config import SynthConfig
    from vfnb.data.synth.geometry import _place
    from vfnb.data.synth.patient import _new_vertebra, _solve_collapse

    rng = np.random.default_rng([run.seed, 7])
    verts = [_new_vertebra(rng, SynthConfig(), label, 1.0, 0) for label in run.levels]
    for v in verts:
        if v.label in run.deformities:
            v.morphology, v.endplate, v.deformity = run.deformities[v.label]
            _solve_collapse(v)
    _place(verts, run.kyphosis, run.lordosis)
    return verts


def _grid(verts, spacing, lateral_mm: float = 50.0):
    """A RAS grid holding every vertebra's drawn extent (laterally cut to +-``lateral_mm``), 3 mm margin."""
    from vfnb.data.synth.drawing import _posterior_shape, _vertebra_extent
    from vfnb.data.synth.geometry import _corners, _Grid

    points = np.vstack([_corners(v.centre, v.rot, *_vertebra_extent(v, _posterior_shape(v))) for v in verts])
    lo, hi = points.min(0) - 3.0, points.max(0) + 3.0
    lo[0], hi[0] = -lateral_mm, lateral_mm
    shape = np.ceil((hi - lo) / np.asarray(spacing)).astype(int) + 1
    return _Grid(lo, spacing, shape, np.eye(3))


def draw_phantom(run: SpineRun, voxel: str) -> Phantom:
    """``run`` drawn on a RAS grid of ``VOXELS[voxel]`` mm by SynthSpine: labels, body mask, CT, truth."""
    from vfnb.data.synth.config import SynthConfig
    from vfnb.data.synth.drawing import (_draw_vertebra, _Local, _posterior_shape, _Tissue, _vertebra_extent,
                                         _vertebral_body)
    from vfnb.data.synth.geometry import _corners

    verts = _vertebrae(run)
    grid = _grid(verts, VOXELS[voxel])
    hu = np.full(grid.shape, 40.0, dtype=np.float32)
    seg = np.zeros(grid.shape, dtype=np.uint8)
    body = np.zeros(grid.shape, dtype=bool)
    tissue = _Tissue(texture_hu=0.0, cortex_hu=900.0, cortex_mm=1.0)
    rng = np.random.default_rng(run.seed)
    for v in verts:  # top first, as SynthSpine draws them: a voxel already labelled stays with the upper one
        _draw_vertebra(hu, seg, grid, v, rng, tissue)
        box = grid.box(_corners(v.centre, v.rot, *_vertebra_extent(v, _posterior_shape(v))))
        inside = _vertebral_body(_Local(grid, v, box), np.zeros(1, np.float32), tissue).inside
        body[box] |= inside & (seg[box] == v.label)
    truth = {v.label: dict(zip(HEIGHTS, v.heights(after=True))) for v in verts}
    bands = np.asarray([band[0] for band in SynthConfig().grade_bands])
    grades = {v.label: int(np.searchsorted(bands, v.deformity, side="right")) for v in verts}
    segments = {v.label: _true_segments(v, grid.origin) for v in verts}
    return Phantom(run, voxel, seg, body, hu, grid.affine, truth, {v.label: v.morphology for v in verts}, grades,
                   segments)


def _true_segments(v, origin) -> dict:
    """SynthSpine's three height segments of ``v`` (its mid-sagittal plane), as (y, z) mm from ``origin``."""
    from vfnb.data.synth.config import HEIGHT_POSITIONS

    out = {}
    for name, vb in zip(("posterior", "middle", "anterior"), HEIGHT_POSITIONS):
        top, bot, _, _ = v.endplates(0.0, vb * v.b, with_signs=False)
        ends = [v.centre + v.rot @ np.array([0.0, vb * v.b, w]) - origin for w in (bot, top)]
        out[name] = tuple((float(p[1]), float(p[2])) for p in ends)
    return out


# ------------------------------------------------------------------ the two measurements
def measure_vfnb(ph: Phantom) -> dict:
    """vfnb's heights (mm), grade and centroid-plane slice per label, as ``vfnb predict`` measures them."""
    from vfnb.inference.heights_grading import morphometry_grades, scan_heights

    labels = sorted(ph.truth)
    heights = scan_heights(ph.seg, ph.affine, labels)
    graded = morphometry_grades(heights).set_index("label")
    out = {}
    for row in heights.itertuples():
        out[int(row.label)] = {
            **{name: float(getattr(row, f"{name}_height_mm")) for name in HEIGHTS},
            "grade": int(graded.loc[row.label, "pred"]) if row.assessable else None,
            "height_loss": float(row.height_loss), "assessable": bool(row.assessable)}
    return out


def peer_available() -> str | None:
    """None when TotalSegmentator's height code imports; else why not."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from totalsegmentator.spine_report import measure_verte_height  # noqa: F401
    except ImportError as exc:
        return f"TotalSegmentator's spine report cannot be imported ({exc}); install totalsegmentator, " \
               "scikit-image and imgkit (a benchmark only: vfnb does not depend on them)"
    return None


def peer_images(ph: Phantom):
    """The peer's four inputs: CT, vertebra map (TotalSegmentator numbering) + names, body mask + its class."""
    import nibabel as nib

    ts_map, names = to_totalseg(ph.seg)
    canonical = nib.as_closest_canonical
    ct = canonical(nib.Nifti1Image(ph.ct.astype(np.float32), ph.affine))
    verte = canonical(nib.Nifti1Image(ts_map, ph.affine))
    body = canonical(nib.Nifti1Image(ph.body.astype(np.uint8), ph.affine))
    return ct, verte, names, body, dict(BODY_CLASS)


@contextlib.contextmanager
def _peer_step(step: float | None):
    """The peer's boundary-search step (``STEP_SIZE``, voxels) set to ``step`` for the block (None: its own)."""
    from totalsegmentator.spine_report import measure_verte_height as peer

    own = peer.STEP_SIZE
    peer.STEP_SIZE = own if step is None else float(step)
    try:
        yield
    finally:
        peer.STEP_SIZE = own


def measure_peer(ph: Phantom, step: float | None = None) -> dict:
    """The peer's heights (mm), fracture flag, slice and segments per VerSe label (its own log silenced).

    ``step``: its boundary search's step in voxels instead of its own (``STEP_SIZE`` = 0.5;
    its refinement loop returns the previous step, so its boundary lies 0 - 0.5 voxel inside).
    """
    from totalsegmentator.spine_report.measure_verte_height import VertebraeProcessor, detect_potential_fracture

    by_name = {name: verse for verse, (_, name) in TOTALSEG_VERTEBRAE.items()}
    with contextlib.redirect_stdout(io.StringIO()), _peer_step(step), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # its skimage binary_erosion is deprecated in 0.26
        info = VertebraeProcessor(*peer_images(ph), horizontal_mask_type="raw").process_vertebrae()
    out = {}
    for name, vertebra in info.items():
        measured = vertebra["height_measurements"]
        heights = {PEER_POSITIONS[pos]: float(m["height_mm"]) if m["height_mm"] > 0 else float("nan")
                   for pos, m in measured.items()}
        segments = {PEER_POSITIONS[pos]: (m["height_start"], m["height_end"]) for pos, m in measured.items()
                    if m["height_start"] and m["height_end"]}
        out[by_name[name]] = {**heights, "fracture": bool(detect_potential_fracture(measured)["is_fracture"]),
                              "x_slice": int(vertebra["x_slice"]), "segments": segments}
    return out


# ------------------------------------------------------------------ comparing
METHODS = {"vfnb": "vfnb", "peer": "TotalSegmentator",
           "peerfine": f"TotalSegmentator with a {FINE_STEP:g}-voxel boundary step"}


def compare(phantoms, measured: dict[str, list[dict]]) -> list[dict]:
    """One row per vertebra and map: the truth, each method's heights, vfnb's grade, the peer's flag."""
    from vfnb.levels import level_name

    rows = []
    for i, ph in enumerate(phantoms):
        for label, truth in ph.truth.items():
            row = {"run": ph.run.name, "voxel": ph.voxel, "label": label, "level": level_name(label),
                   "morphology": ph.morphology[label], "grade": ph.grade[label],
                   "vfnb_grade": measured["vfnb"][i].get(label, {}).get("grade"),
                   "peer_fracture": measured["peer"][i].get(label, {}).get("fracture")}
            for name in HEIGHTS:
                row[f"truth_{name}"] = truth[name]
                for method in measured:
                    row[f"{method}_{name}"] = measured[method][i].get(label, {}).get(name, float("nan"))
            rows.append(row)
    return rows


def _abs_figure(values, note: str, **extra) -> dict | None:
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if values.size == 0:
        return None
    return figure(np.abs(values), "mm", note, signed_median=float(np.median(values)), **extra)


def difference_figures(rows: list[dict]) -> dict:
    """Per level and height, |vfnb - peer| over every map; per voxel size and height, the same over every level."""
    from vfnb.levels import level_name

    out = {}
    target = f"target: median <= {TARGET_MEDIAN_MM:g} mm, max <= {TARGET_MAX_MM:g} mm"
    maps = len({(r["run"], r["voxel"]) for r in rows})
    for label in sorted({r["label"] for r in rows}, key=LEVELS.index):
        here = [r for r in rows if r["label"] == label]
        for name in HEIGHTS:
            fig = _abs_figure([r[f"vfnb_{name}"] - r[f"peer_{name}"] for r in here],
                              f"{level_name(label)} {name} height, |vfnb - TotalSegmentator| over {len(here)} maps "
                              f"(every run, 1 and 3 mm slices); signed_median = vfnb - peer; {target}",
                              target_median_mm=TARGET_MEDIAN_MM, target_max_mm=TARGET_MAX_MM)
            if fig:
                out[f"heights_peer.diff_{level_name(label)}_{name}_mm"] = fig
    for voxel in VOXELS:
        here = [r for r in rows if r["voxel"] == voxel]
        for name in HEIGHTS if here else ():
            fig = _abs_figure([r[f"vfnb_{name}"] - r[f"peer_{name}"] for r in here],
                              f"{name} height at {_spacing(voxel)} mm, |vfnb - TotalSegmentator| over {len(here)} "
                              f"vertebrae of {maps // len(VOXELS) or 1} runs; signed_median = vfnb - peer; {target}",
                              target_median_mm=TARGET_MEDIAN_MM, target_max_mm=TARGET_MAX_MM)
            if fig:
                out[f"heights_peer.diff_{voxel}_{name}_mm"] = fig
            fig = _abs_figure([r[f"vfnb_{name}"] - r[f"peerfine_{name}"] for r in here if f"peerfine_{name}" in r],
                              f"{name} height at {_spacing(voxel)} mm, |vfnb - TotalSegmentator with its boundary "
                              f"step at {FINE_STEP:g} voxel| over {len(here)} vertebrae; signed_median = vfnb - peer")
            if fig:
                out[f"heights_peer.diff_fine_{voxel}_{name}_mm"] = fig
    return out


def _spacing(voxel: str) -> str:
    return "x".join(f"{s:g}" for s in VOXELS[voxel])


def error_figures(rows: list[dict]) -> dict:
    """Per voxel size, method and height: |measured - true| over every vertebra (signed median beside)."""
    out = {}
    methods = [m for m in METHODS if rows and f"{m}_anterior" in rows[0]]
    for voxel in VOXELS:
        here = [r for r in rows if r["voxel"] == voxel]
        for method in methods if here else ():
            for name in HEIGHTS:
                fig = _abs_figure([r[f"{method}_{name}"] - r[f"truth_{name}"] for r in here],
                                  f"{METHODS[method]}: {name} height against SynthSpine's true height, {len(here)} "
                                  f"vertebrae T11-L5 (every shape) at {_spacing(voxel)} mm; signed_median = "
                                  "measured - true")
                if fig:
                    out[f"heights_peer.{method}_error_{voxel}_{name}_mm"] = fig
    return out


def flag_figures(rows: list[dict]) -> dict:
    """How many grade-0 vertebrae each method's own fracture rule flags, and how many fractures it finds."""
    out = {}
    for kind, group in (("normal", [r for r in rows if r["grade"] == 0]),
                        ("fractured", [r for r in rows if r["grade"] > 0])):
        if not group:
            continue
        what = ("normal vertebrae (true grade 0: physiological shape, some with a sub-threshold 10-15 % "
                "deformity)" if kind == "normal" else "fractured vertebrae (true grade 1-3, loss 22-45 %)")
        peer = sum(1 for r in group if r["peer_fracture"])
        ours = sum(1 for r in group if (r["vfnb_grade"] or 0) >= 1)
        out[f"heights_peer.{kind}_flagged_peer"] = single(
            peer, "vertebrae", f"of {len(group)} {what}, 1 and 3 mm maps: flagged by TotalSegmentator's rule "
            "(1 - min/max of its three heights > 0.2)", of=len(group))
        out[f"heights_peer.{kind}_flagged_vfnb"] = single(
            ours, "vertebrae", f"of {len(group)} {what}, 1 and 3 mm maps: Genant grade >= 1 by vfnb's "
            "morphometry grader (loss against its own posterior wall and its neighbours')", of=len(group))
    return out


# ------------------------------------------------------------------ pictures
def _vfnb_segments(mask: np.ndarray, spacing) -> tuple[int, dict]:
    """vfnb's slice nearest its body's centroid plane and its three height segments there ((y, z) mm ends).

    Re-traces :func:`vfnb.morphometry.heights.sagittal_heights` on that one slice, for drawing only.
    """
    from vfnb.morphometry.heights import HEIGHT_POSITIONS, _fine_outline_points, body_frame, vertebral_body
    from vfnb.morphometry.scan_heights import _body_voxels, _centre_x, _slice_heights

    first = int(round(_centre_x(mask)))
    _, frame = _slice_heights(mask, first, spacing)
    x = int(round(_centre_x(_body_voxels(mask, spacing, frame)))) if frame is not None else first
    points, pixel = _fine_outline_points(vertebral_body(mask[x]), spacing[1], spacing[2])
    ap, si = body_frame(points, bin_mm=2 * max(spacing[1], spacing[2]))
    u, v = points @ ap, points @ si
    front, back = u.max() + pixel / 2, u.min() - pixel / 2
    segments = {}
    for name, fraction in HEIGHT_POSITIONS.items():
        at = front - fraction * (front - back)
        near = np.abs(u - at) <= max(spacing[1], spacing[2]) / 2
        if near.any():
            lo, hi = v[near].min() - pixel / 2, v[near].max() + pixel / 2
            segments[name] = (at * ap + lo * si, at * ap + hi * si)
    return x, segments


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LEGEND = ("vfnb blue (grey: its slice at the body's centroid plane), TotalSegmentator red (outline: its chosen "
          "slice), true heights dashed green; x from the midline")


def _draw_panel(ax, ph: Phantom, label: int, peer: dict, title: str = "") -> None:
    """One vertebra's body on vfnb's slice, with vfnb's, the peer's and the true height segments (mm)."""
    from vfnb.levels import level_name

    sx, sy, sz = (float(s) for s in np.diag(ph.affine)[:3])
    ax.set_axis_off()
    mask = ph.seg == label
    lo = [max(0, int(n.min()) - 1) for n in np.nonzero(mask)]
    hi = [int(n.max()) + 2 for n in np.nonzero(mask)]
    x, ours = _vfnb_segments(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], (sx, sy, sz))
    x += lo[0]
    near = np.nonzero(ph.body & mask)
    extent = (-sy / 2, (ph.seg.shape[1] - 0.5) * sy, -sz / 2, (ph.seg.shape[2] - 0.5) * sz)
    ax.imshow((mask[x] & ph.body[x]).T, origin="lower", cmap="Greys", vmin=0, vmax=1.6, extent=extent,
              interpolation="nearest")
    for a, b in ours.values():
        ax.plot([lo[1] * sy + a[0], lo[1] * sy + b[0]], [lo[2] * sz + a[1], lo[2] * sz + b[1]], "b-", lw=2.2)
    midline = float(ph.affine[0, 3])
    text = f"{level_name(label)} {ph.morphology[label]} {title}\nx {x * sx + midline:+.0f} mm"
    theirs = peer.get(label)
    if theirs:
        xs = theirs["x_slice"]
        ys, zs = np.arange(ph.seg.shape[1]) * sy, np.arange(ph.seg.shape[2]) * sz
        ax.contour(ys, zs, (mask[xs] & ph.body[xs]).T.astype(float), levels=[0.5], colors="r", linewidths=0.6)
        for (y0, z0), (y1, z1) in theirs["segments"].values():
            ax.plot([y0 * sy, y1 * sy], [z0 * sz, z1 * sz], "r-", lw=1.0)
        text += f" / {xs * sx + midline:+.0f} mm"
    for (y0, z0), (y1, z1) in ph.truth_segments[label].values():
        ax.plot([y0, y1], [z0, z1], color="limegreen", lw=1.1, ls=(0, (2, 1.5)), zorder=5)
    ax.set_xlim((near[1].min() - 1) * sy - 2, (near[1].max() + 1) * sy + 2)
    ax.set_ylim((near[2].min() - 1) * sz - 2, (near[2].max() + 1) * sz + 2)
    ax.set_aspect("equal")
    ax.set_title(text, fontsize=7)


def _save(fig, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def draw_figure(ph: Phantom, peer: dict, path: Path) -> Path:
    """One PNG per map: each vertebra's mid-sagittal body with the three methods' height segments."""
    labels = sorted(ph.truth, key=LEVELS.index)
    fig, axes = _pyplot().subplots(1, len(labels), figsize=(2.0 * len(labels), 2.6), squeeze=False)
    for ax, label in zip(axes[0], labels):
        _draw_panel(ax, ph, label, peer)
    fig.suptitle(f"{ph.run.name}, {_spacing(ph.voxel)} mm: {LEGEND}", fontsize=7)
    return _save(fig, path, 110)


def draw_largest(phantoms, peer: list[dict], rows: list[dict], path: Path, n: int = 4) -> Path:
    """The ``n`` vertebrae where vfnb and the peer differ most (largest height difference), larger."""
    where = {(ph.run.name, ph.voxel): (ph, theirs) for ph, theirs in zip(phantoms, peer)}

    def spread(row):
        d = [abs(row[f"vfnb_{h}"] - row[f"peer_{h}"]) for h in HEIGHTS]
        return max((x for x in d if np.isfinite(x)), default=0.0)

    worst = sorted(rows, key=spread, reverse=True)[:n]
    fig, axes = _pyplot().subplots(1, len(worst), figsize=(3.0 * len(worst), 3.6), squeeze=False)
    for ax, row in zip(axes[0], worst):
        ph, theirs = where[(row["run"], row["voxel"])]
        _draw_panel(ax, ph, row["label"], theirs, f"({row['run']}, {_spacing(row['voxel'])} mm)")
        ax.text(0.5, -0.02, "A/M/P mm: true " + "/".join(f"{row[f'truth_{h}']:.1f}" for h in HEIGHTS)
                + "\nvfnb " + "/".join(f"{row[f'vfnb_{h}']:.1f}" for h in HEIGHTS)
                + ", peer " + "/".join(f"{row[f'peer_{h}']:.1f}" for h in HEIGHTS),
                transform=ax.transAxes, ha="center", va="top", fontsize=7)
    fig.suptitle(f"Largest vfnb - TotalSegmentator differences: {LEGEND}", fontsize=7)
    return _save(fig, path, 100)


# ------------------------------------------------------------------ the section
def measure_all(runs, voxels) -> tuple[list[Phantom], dict[str, list[dict]], dict[str, list[float]]]:
    """Every run drawn at every voxel size and measured by each method; seconds per map of each method."""
    phantoms = []
    measured: dict[str, list[dict]] = {method: [] for method in METHODS}
    seconds: dict[str, list[float]] = {method: [] for method in METHODS}
    measure = {"vfnb": measure_vfnb, "peer": measure_peer, "peerfine": lambda ph: measure_peer(ph, FINE_STEP)}
    for spine in runs:
        for voxel in voxels:
            ph = draw_phantom(spine, voxel)
            for method in METHODS:
                t0 = time.perf_counter()
                measured[method].append(measure[method](ph))
                seconds[method].append(time.perf_counter() - t0)
            phantoms.append(ph)
    return phantoms, measured, seconds


def run(cfg) -> dict:
    missing = peer_available()
    if missing:
        raise RuntimeError(f"skipped: {missing}")
    runs, voxels = (QUICK_RUNS, ("3mm",)) if cfg.quick else (RUNS, tuple(VOXELS))
    phantoms, measured, seconds = measure_all(runs, voxels)
    rows = compare(phantoms, measured)
    folder = Path(cfg.workdir) / FIGURES_DIR
    for ph, peer in zip(phantoms, measured["peer"]):
        draw_figure(ph, peer, folder / f"{ph.run.name}_{ph.voxel}.png")
    draw_largest(phantoms, measured["peer"], rows, folder / "largest_differences.png")
    print_rows(rows)
    write_rows(rows, Path(cfg.workdir) / "heights_peer_rows.csv")
    table = level_table(rows)
    (Path(cfg.workdir) / "heights_peer_levels.md").write_text(table + "\n")
    print(table)
    print(f"[heights_peer] pictures in {folder}; per-vertebra rows and the level table in {cfg.workdir}", flush=True)
    figures = {**difference_figures(rows), **error_figures(rows), **flag_figures(rows)}
    for method in ("vfnb", "peer"):
        figures[f"heights_peer.{method}_seconds_per_map"] = figure(
            seconds[method], "s", f"{METHODS[method]}: measuring one map of {len(runs[0].levels)} vertebrae "
            "(vfnb: scan_heights + the morphometry grades; the peer: VertebraeProcessor.process_vertebrae)")
    return figures


def print_rows(rows: list[dict]) -> None:
    """The per-vertebra table on the console: truth and each method's heights (anterior / middle / posterior, mm)."""
    methods = [m for m in ("truth", *METHODS) if f"{m}_anterior" in rows[0]] if rows else []
    print(f"{'run':12s} {'vox':4s} {'level':5s} {'shape':9s} g " + " ".join(f"{m + ' A/M/P':>17s}" for m in methods)
          + " vfnb-grade peer-flag")
    for r in rows:
        cells = ["/".join(f"{r[f'{k}_{n}']:.1f}" for n in HEIGHTS) for k in methods]
        print(f"{r['run']:12s} {r['voxel']:4s} {r['level']:5s} {r['morphology']:9s} {r['grade']} "
              + " ".join(f"{c:>17s}" for c in cells) + f" {r['vfnb_grade']!s:10s} {r['peer_fracture']}")


def write_rows(rows: list[dict], path: Path) -> Path:
    """The per-vertebra rows as CSV (truth, each method's heights, grades and flags)."""
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.2f")
    return path


def level_table(rows: list[dict]) -> str:
    """Markdown: per level and voxel size, median (max) |vfnb - peer| of each height, mm."""
    from vfnb.levels import level_name

    voxels = [v for v in VOXELS if any(r["voxel"] == v for r in rows)]
    head = "| level | " + " | ".join(f"{_spacing(v)} mm: {name[0].upper()}" for v in voxels for name in HEIGHTS) + " |"
    lines = [head, "|---|" + "---:|" * (len(voxels) * len(HEIGHTS))]
    for label in sorted({r["label"] for r in rows}, key=LEVELS.index):
        cells = []
        for voxel in voxels:
            here = [r for r in rows if r["label"] == label and r["voxel"] == voxel]
            for name in HEIGHTS:
                d = np.abs([r[f"vfnb_{name}"] - r[f"peer_{name}"] for r in here])
                d = d[np.isfinite(d)]
                cells.append(f"{np.median(d):.1f} ({d.max():.1f})" if d.size else "-")
        lines.append(f"| {level_name(label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
