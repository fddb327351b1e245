"""SynthSpine: the embedded default dataset, synthetic spine CTs with Genant-graded fractures.

SYNTHETIC DATA. Every scan is drawn from a hand-built geometric model of the
thoracolumbar spine (STUDY §3-4); no patient data is involved. What is modelled:

- a run of ``min_vertebrae``-``max_vertebrae`` consecutive vertebrae between T4 and L5
  (rarely a T13, label 28, or an L6, label 25), placed along a curve with thoracic
  kyphosis and lumbar lordosis, so every vertebra is tilted;
- each vertebra: a waisted, kidney-shaped body with a cortical shell, flat endplates
  with a shallow physiological concavity and a textured trabecular interior;
  pedicles, laminae, spinous, transverse and articular processes, a spinal canal;
  intervertebral discs; ribs (not labelled) at thoracic levels;
- a body contour: paraspinal / psoas muscle, subcutaneous and retroperitoneal fat,
  mediastinal soft tissue, lungs beside the thoracic spine, air behind the back;
- sizes by level and sex (women ~8 % smaller) with individual and level-to-level
  variation, physiological thoracic wedging up to ~15 %;
- per-patient bone density class (normal / osteopenic / osteoporotic) setting the
  trabecular HU; cortical, disc, muscle, fat, lung and air HU; partial-volume
  sampling, a Gaussian point-spread blur and white noise (sigma 10-40 HU); int16 HU;
- scanner geometry: in-plane 0.6-1.0 mm, slices 1-3 mm; headers in RAS, LPS, permuted
  and slightly oblique orientations (the anatomy is defined in world millimetres and
  sampled through the header's affine, so the label map is right in world space);
- fractures: the Genant grade follows from the deformity against the vertebra's own
  pre-fracture heights (grade 1 20-25 %, grade 2 25-40 %, grade 3 40-60 %), as wedge,
  biconcave or crush; fractured endplates carry faint signs (irregular depressed
  endplate, cortical buckling, a denser band of compacted trabecular bone);
  normal vertebrae may carry a sub-threshold deformity (< 15 %) without those signs.
  Fractures are more likely at T12-L1 and T7-T8, in osteoporotic patients, and
  cluster in frail patients.

Not modelled: metal, degenerative disease (osteophytes, disc degeneration), other
pathology (tumours, infection), contrast agent, scanner artefacts beyond noise and
blur (no beam hardening, streaks, ring or motion artefacts), organs beyond crude
tissue classes, scoliosis.

Determinism: case ``k`` is a function of ``(seed, k, config)`` only (its random
generator is ``np.random.default_rng([seed, k])``), so case ``k`` is byte-identical
whatever ``cases`` is; gzip output is deterministic (no mtime, no file name).
"""

from __future__ import annotations

import csv
import dataclasses
import io as _io
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ..errors import DatasetError, ParamsError
from ..io import NIFTI_SUFFIX, atomic_write_json, atomic_write_text, output_folder, save_nifti
from ..levels import level_name
from .original import write_annotation
from .preprocess import preprocess_dataset
from .split import split_dataset

GENERATOR_VERSION = "synthspine-1.0"
DENSITY_CLASSES = ("normal", "osteopenic", "osteoporotic")
MORPHOLOGIES = ("wedge", "biconcave", "crush")
ORIENTATIONS = ("ras", "lps", "permuted", "oblique")
TRUTH_FILE = "synth_truth.csv"
META_FILE = "synth.json"
# Genant heights are read at these normalised antero-posterior positions of the body
# (v / half-depth): posterior, middle, anterior (15 % in from each wall).
HEIGHT_POSITIONS = (-0.7, 0.0, 0.7)

# The modelled run: T1..T12, T13, L1..L6 in cranio-caudal order (VerSe labels).
_ORDER = [8 + i for i in range(12)] + [28] + [20 + i for i in range(6)]
# Level position along the spine (T1 = 1, ..., T12 = 12, T13 = 12.5, L1 = 13, ..., L6 = 18).
_POS = {**{8 + i: 1.0 + i for i in range(12)}, 28: 12.5, **{20 + i: 13.0 + i for i in range(6)}}

# Male mean anatomy by level: body mean height (mm), anterior/posterior height ratio,
# AP depth (mm), width (mm), disc below (mm). STUDY §4: upper thoracic ~17 mm,
# T9 ~19, steep rise to L1, L5 anterior 30 / posterior 26, lumbar depth ~35, width 40-50,
# discs 4-12 mm thicker caudally. Women are scaled by ``female_scale``.
_ANATOMY = {
    # label: (H_mean, Ha/Hp, depth, width, disc_below)
    8: (15.5, 0.95, 20.0, 25.0, 3.8), 9: (16.0, 0.94, 21.0, 26.0, 3.8), 10: (16.5, 0.93, 22.5, 27.0, 3.9),
    11: (17.0, 0.93, 24.0, 29.0, 4.0), 12: (17.3, 0.92, 25.0, 30.0, 4.2), 13: (17.8, 0.91, 26.0, 31.0, 4.4),
    14: (18.2, 0.91, 27.0, 32.0, 4.6), 15: (18.6, 0.91, 28.0, 33.0, 4.8), 16: (19.0, 0.92, 28.5, 34.0, 5.0),
    17: (20.3, 0.93, 29.5, 36.0, 5.4), 18: (21.8, 0.94, 30.5, 38.0, 5.8), 19: (23.3, 0.95, 31.5, 40.0, 6.5),
    28: (24.2, 0.95, 32.0, 41.0, 7.0), 20: (25.0, 0.96, 32.5, 42.0, 7.5), 21: (26.3, 0.98, 33.5, 44.0, 8.5),
    22: (27.3, 1.00, 34.5, 46.0, 9.5), 23: (27.8, 1.04, 35.0, 48.0, 10.5), 24: (28.0, 1.15, 35.0, 50.0, 11.0),
    25: (28.0, 1.12, 35.0, 50.0, 10.0),
}

# Sagittal tangent angle (degrees, + = heading anterior going up) at level positions:
# kyphosis apex ~T7, lordosis apex ~L3.
_CURVE_KNOTS = ((1.0, 20.0), (4.0, 16.0), (7.0, 0.0), (10.0, -10.0), (12.0, -12.0), (13.0, -10.0),
                (15.0, 0.0), (17.0, 22.0), (18.0, 26.0))


@dataclass(frozen=True)
class SynthConfig:
    """Every rate and range of SynthSpine. Units: mm, HU, degrees, probabilities.

    The default grade mix is close to VerSe'19 (~80 / 10 / 6.5 / 3.5 % for grades 0-3).
    """

    # the run of vertebrae
    min_vertebrae: int = 8
    max_vertebrae: int = 12
    first_level: str = "T4"
    last_level: str = "L5"
    p_t13: float = 0.04          # an extra 13th thoracic vertebra (label 28)
    p_l6: float = 0.04           # a sixth lumbar vertebra (label 25)
    # the population
    p_female: float = 0.6
    female_scale: float = 0.92
    size_sd: float = 0.04        # between-person size variation (fraction)
    level_height_sd: float = 0.03  # level-to-level height variation within a person
    wedge_ratio_sd: float = 0.03   # physiological Ha/Hp variation
    thoracic_wedge_max: float = 0.15  # normal thoracic Ha may be up to 15 % below Hp
    curve_scale: tuple = (0.6, 1.4)   # individual kyphosis / lordosis factor
    density_probs: tuple = (0.45, 0.35, 0.20)          # normal, osteopenic, osteoporotic
    trabecular_hu_l1: tuple = (178.0, 143.0, 118.0)     # STUDY §4, at L1
    trabecular_hu_sd: float = 10.0
    trabecular_hu_per_level: float = 2.0  # denser cranially (HU per level above L1)
    trabecular_texture_hu: tuple = (25.0, 40.0)
    cortical_hu: tuple = (750.0, 1100.0)
    cortical_thickness_mm: tuple = (1.0, 0.8, 0.6)   # by density class
    disc_hu: tuple = (70.0, 100.0)
    muscle_hu: tuple = (40.0, 60.0)
    fat_hu: tuple = (-115.0, -85.0)
    soft_tissue_hu: tuple = (25.0, 45.0)
    lung_hu: tuple = (-880.0, -820.0)
    air_hu: float = -1000.0
    # fractures
    fracture_rate: float = 0.18          # base per-vertebra rate (calibrated for ~20 % overall)
    grade_mix: tuple = (0.50, 0.325, 0.175)  # P(grade 1, 2, 3 | fracture)
    grade_bands: tuple = ((0.20, 0.25), (0.25, 0.40), (0.40, 0.60))
    level_weights: tuple = (("T4", 0.5), ("T5", 0.6), ("T6", 0.9), ("T7", 1.5), ("T8", 1.5), ("T9", 0.9),
                            ("T10", 0.9), ("T11", 1.3), ("T12", 2.3), ("T13", 2.3), ("L1", 2.6),
                            ("L2", 1.6), ("L3", 1.1), ("L4", 0.9), ("L5", 0.7), ("L6", 0.7))
    density_fracture_risk: tuple = (0.4, 1.0, 2.6)  # relative risk by density class
    frailty_shape: float = 0.8    # gamma shape of a per-patient frailty (smaller = more clustered)
    neighbour_boost: float = 1.6  # risk multiplier below a fractured vertebra (clusters)
    max_fracture_prob: float = 0.9
    morphology_thoracic: tuple = (0.65, 0.20, 0.15)  # wedge, biconcave, crush (T4-T10)
    morphology_lumbar: tuple = (0.40, 0.35, 0.25)    # T11 and below
    p_inferior_endplate: float = 0.25  # a wedge collapsing at the inferior endplate
    p_subthreshold: float = 0.30       # normal vertebrae with a sub-threshold deformity
    subthreshold_range: tuple = (0.02, 0.15)
    compaction_hu: tuple = ((40.0, 90.0), (60.0, 130.0), (90.0, 180.0))  # by grade 1-3
    # scanner
    inplane_spacing: tuple = (0.6, 1.0)
    slice_spacings: tuple = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    max_voxels: int = 4_500_000     # thinner slices are dropped when a scan would exceed this
    orientation_probs: tuple = (0.3, 0.3, 0.2, 0.2)  # ras, lps, permuted, oblique
    oblique_max_deg: float = 6.0
    noise_sigma: tuple = (10.0, 40.0)
    psf_sigma_mm: tuple = (0.35, 0.6)
    fov_lateral_mm: float = 55.0     # half-width of the field of view (left-right)
    fov_anterior_mm: float = 55.0    # in front of the vertebral body centres
    fov_posterior_mm: float = 100.0  # behind the vertebral body centres (reaches the skin)
    back_depth_mm: tuple = (70.0, 105.0)  # body centre -> skin of the back
    fat_layer_mm: tuple = (6.0, 28.0)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "SynthConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ParamsError(f"SynthSpine config: unknown field(s) {sorted(unknown)}; expected some of {sorted(names)}")

        def tup(x):
            return tuple(tup(i) for i in x) if isinstance(x, list) else x

        return cls(**{k: tup(v) for k, v in data.items()})


@dataclass
class SynthCase:
    """One generated scan. ``image`` int16 HU and ``seg`` uint8 labels share ``affine`` (voxel -> RAS mm)."""

    case_id: str
    image: np.ndarray
    seg: np.ndarray
    affine: np.ndarray
    grades: dict[int, int]
    truth: list[dict]
    meta: dict = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return self.case_id + NIFTI_SUFFIX


def case_id(seed: int, index: int) -> str:
    return f"synth-s{int(seed)}-{int(index):04d}"


# ============================================================== patient sampling
@dataclass
class _Vertebra:
    label: int
    name: str
    Ha0: float
    Hp0: float
    a: float          # body half-width (mm)
    b: float          # body half-depth (mm)
    disc_below: float
    waist: float
    dep_top: float    # physiological central endplate concavity (mm)
    dep_bot: float
    grade: int = 0
    morphology: str = "none"
    deformity: float = 0.0
    endplate: str = "none"     # which endplate collapses: superior / inferior / both
    delta: float = 0.0         # collapse amplitude (mm)
    signs: bool = False        # faint fracture signs present
    compaction_hu: float = 0.0
    compaction_mm: float = 2.0
    buckle: float = 0.0
    irregularity_mm: float = 0.0
    irr_phase: tuple = (0.0, 0.0, 1.0, 1.0)
    trab_hu: float = 150.0
    lumbar_t: float = 0.0      # 0 thoracic .. 1 lumbar (posterior-element shape)
    phi: float = 0.0           # sagittal tilt (radians)
    centre: np.ndarray = None
    rot: np.ndarray = None     # columns: u (lateral), v (anterior), w (superior) in world
    virtual: bool = False

    @property
    def Hmid(self) -> float:
        return 0.5 * (self.Ha0 + self.Hp0)

    # ---- endplate geometry (local mm); works on arrays or scalars
    def collapse_units(self, u, vb):
        """Unit collapse profiles (top, bottom) at local ``u`` mm and ``vb = v / b``."""
        zero = np.zeros_like(np.asarray(vb, dtype=np.float32) + np.asarray(u, dtype=np.float32) * 0)
        if self.morphology == "none" and self.delta == 0.0:
            return zero, zero
        if self.morphology == "wedge":
            prof = np.clip((vb + 1.0) / 1.7, 0.0, 1.2)
            return (prof, zero) if self.endplate == "superior" else (zero, prof)
        if self.morphology == "biconcave":
            rho2 = (u / self.a) ** 2 + vb ** 2
            bowl = np.clip(1.0 - rho2 / 0.85 ** 2, 0.0, 1.0)
            return 0.5 * bowl, 0.5 * bowl
        # crush: the whole body loses height, a little more anteriorly
        return 0.55 * (1.0 + 0.2 * np.clip(vb, -1.2, 1.2)) + zero, 0.45 + zero

    def endplates(self, u, v, with_signs: bool = True):
        """Superior and inferior endplate positions ``w`` (mm) at local ``(u, v)``; also the collapses."""
        vb = v / self.b
        rim = self.Hmid + (self.Ha0 - self.Hp0) * np.clip(vb, -1.3, 1.3) / 1.4
        rho2 = (u / self.a) ** 2 + vb ** 2
        bowl = np.clip(1.0 - rho2 / 0.85 ** 2, 0.0, 1.0)
        ut, ub = self.collapse_units(u, vb)
        ct, cb = self.delta * ut, self.delta * ub
        top = 0.5 * rim - self.dep_top * bowl - ct
        bot = -0.5 * rim + self.dep_bot * bowl + cb
        if with_signs and self.signs and self.irregularity_mm > 0:
            p1, p2, k1, k2 = self.irr_phase
            wav = self.irregularity_mm * np.sin(k1 * u + p1) * np.sin(k2 * v + p2)
            top = top - wav * np.clip(ct / 0.5, 0, 1)
            bot = bot + wav * np.clip(cb / 0.5, 0, 1)
        return top, bot, ct, cb

    def heights(self, after: bool) -> tuple[float, float, float]:
        """(anterior, middle, posterior) body heights in mm, at the Genant positions."""
        out = {}
        for name, vb in zip(("p", "m", "a"), HEIGHT_POSITIONS):
            if after:
                top, bot, _, _ = self.endplates(0.0, vb * self.b, with_signs=False)
            else:
                saved, self.delta = self.delta, 0.0
                top, bot, _, _ = self.endplates(0.0, vb * self.b, with_signs=False)
                self.delta = saved
            out[name] = float(top - bot)
        return out["a"], out["m"], out["p"]


def _interp_anatomy(label: int) -> tuple:
    return _ANATOMY[label]


def _level_weight(config: SynthConfig, name: str) -> float:
    table = dict(config.level_weights)
    core = [table[n] for n in ("T4", "T5", "T6", "T7", "T8", "T9", "T10", "T11", "T12",
                               "L1", "L2", "L3", "L4", "L5") if n in table]
    return table.get(name, 1.0) / (sum(core) / len(core))


def _check_config(config: SynthConfig) -> None:
    if not 6 <= config.min_vertebrae <= config.max_vertebrae:
        raise ParamsError(f"SynthSpine config: min_vertebrae/max_vertebrae = {config.min_vertebrae}/"
                          f"{config.max_vertebrae}; expected 6 <= min <= max")
    for name in ("density_probs", "grade_mix", "orientation_probs", "morphology_thoracic", "morphology_lumbar"):
        p = np.asarray(getattr(config, name), dtype=float)
        if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
            raise ParamsError(f"SynthSpine config: {name} = {list(p)}; expected non-negative probabilities summing to 1")
    lo, hi = config.inplane_spacing
    if not (0 < lo <= hi):
        raise ParamsError(f"SynthSpine config: inplane_spacing = {config.inplane_spacing}; expected 0 < low <= high")


def sample_patient(rng: np.random.Generator, config: SynthConfig) -> dict:
    """Draw one patient's run of vertebrae, sizes, bone density and fractures (no image)."""
    sex = "F" if rng.random() < config.p_female else "M"
    density = int(rng.choice(3, p=np.asarray(config.density_probs, dtype=float)))
    size = (config.female_scale if sex == "F" else 1.0) * (1.0 + config.size_sd * rng.standard_normal())

    # the run: consecutive levels within [first_level, last_level], plus rare variants
    base = [lab for lab in _ORDER if lab not in (28, 25)]
    names = [level_name(lab) for lab in base]
    lo, hi = names.index(config.first_level.upper()), names.index(config.last_level.upper())
    n = int(rng.integers(config.min_vertebrae, config.max_vertebrae + 1))
    n = min(n, hi - lo + 1)
    start = int(rng.integers(lo, hi - n + 2))
    run = base[start:start + n]
    t13, l6 = rng.random() < config.p_t13, rng.random() < config.p_l6
    if t13 and 19 in run and 20 in run:
        run.insert(run.index(20), 28)
    if l6 and run[-1] == 24:
        run.append(25)

    verts = []
    for lab in run:
        H, ratio, depth, width, disc = _interp_anatomy(lab)
        pos = _POS[lab]
        H *= size * (1.0 + config.level_height_sd * rng.standard_normal())
        ratio = ratio + config.wedge_ratio_sd * rng.standard_normal()
        thoracic = pos <= 12.5
        ratio = float(np.clip(ratio, 1.0 - config.thoracic_wedge_max if thoracic else 0.9, 1.22))
        Hp0 = 2.0 * H / (1.0 + ratio)
        Ha0 = ratio * Hp0
        lum = float(np.clip((pos - 10.0) / 4.0, 0.0, 1.0))
        trab = (config.trabecular_hu_l1[density] + config.trabecular_hu_sd * rng.standard_normal()
                + config.trabecular_hu_per_level * (13.0 - pos))
        v = _Vertebra(
            label=lab, name=level_name(lab), Ha0=float(Ha0), Hp0=float(Hp0),
            a=float(0.5 * width * size * (1 + 0.03 * rng.standard_normal())),
            b=float(0.5 * depth * size * (1 + 0.03 * rng.standard_normal())),
            disc_below=float(disc * size * (1 + 0.12 * rng.standard_normal())),
            waist=float(rng.uniform(0.04, 0.09)), dep_top=float(rng.uniform(0.2, 0.8)),
            dep_bot=float(rng.uniform(0.2, 0.8)), trab_hu=float(trab), lumbar_t=lum)
        verts.append(v)

    # fractures: level x density x frailty risk, clustered below a fractured neighbour
    frailty = rng.gamma(config.frailty_shape, 1.0 / config.frailty_shape)
    dens_risk = np.asarray(config.density_fracture_risk, dtype=float)
    dens_risk = dens_risk[density] / float(np.dot(dens_risk, config.density_probs))
    previous_fractured = False
    for v in verts:
        p = config.fracture_rate * _level_weight(config, v.name) * dens_risk * frailty
        if previous_fractured:
            p *= config.neighbour_boost
        fractured = rng.random() < min(p, config.max_fracture_prob)
        previous_fractured = fractured
        thoracic = _POS[v.label] <= 10.0
        mprobs = config.morphology_thoracic if thoracic else config.morphology_lumbar
        morph = MORPHOLOGIES[int(rng.choice(3, p=np.asarray(mprobs, dtype=float)))]
        if fractured:
            v.grade = 1 + int(rng.choice(3, p=np.asarray(config.grade_mix, dtype=float)))
            lo_d, hi_d = config.grade_bands[v.grade - 1]
            v.deformity = float(rng.uniform(lo_d, hi_d))
            v.morphology = morph
            v.signs = True
            clo, chi = config.compaction_hu[v.grade - 1]
            v.compaction_hu = float(rng.uniform(clo, chi))
            v.compaction_mm = float(rng.uniform(1.5, 3.0))
            v.buckle = float(rng.uniform(0.03, 0.07)) if morph in ("wedge", "crush") else 0.0
            v.irregularity_mm = float(rng.uniform(0.3, 0.8))
        elif rng.random() < config.p_subthreshold:
            # a short or slightly wedged normal vertebra: no fracture signs
            v.deformity = float(rng.uniform(*config.subthreshold_range))
            v.morphology = morph
        else:
            rng.random()  # keep the stream aligned whatever the branch
        if v.morphology == "wedge":
            v.endplate = "inferior" if rng.random() < config.p_inferior_endplate else "superior"
        elif v.morphology != "none":
            v.endplate = "both"
        v.irr_phase = tuple(float(x) for x in (rng.uniform(0, 6.3), rng.uniform(0, 6.3),
                                                  rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.7)))
        if v.deformity > 0:
            _solve_collapse(v)
        if v.grade == 0:
            v.morphology = "none"  # the table's morphology names fractures only
    return dict(sex=sex, density=density, size=float(size), vertebrae=verts)


def _solve_collapse(v: _Vertebra) -> None:
    """Set ``v.delta`` so the largest height reduction at the Genant positions equals ``v.deformity``."""
    v.delta = 1.0
    before = np.array(v.heights(after=False))
    after = np.array(v.heights(after=True))
    unit = (before - after) / before  # reduction per mm of collapse (linear in delta)
    v.delta = float(v.deformity / unit.max())


# ============================================================== geometry helpers
def _frac(d, width):
    """Partial-volume fraction of a voxel ``width`` mm wide whose centre lies ``d`` mm inside a surface."""
    return np.clip(0.5 + d / width, 0.0, 1.0)


def _capsule(u, v, w, p0, p1, r):
    """Signed distance (mm, + inside) to a capsule of radius ``r`` around segment p0-p1."""
    ab = np.asarray(p1, float) - np.asarray(p0, float)
    t = ((u - p0[0]) * ab[0] + (v - p0[1]) * ab[1] + (w - p0[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    du, dv, dw = u - (p0[0] + t * ab[0]), v - (p0[1] + t * ab[1]), w - (p0[2] + t * ab[2])
    return r - np.sqrt(du * du + dv * dv + dw * dw)


def _ellipse2(x, y, rx, ry):
    """Approximate signed distance (mm, + inside) to an ellipse with radii rx, ry."""
    f = (x / rx) ** 2 + (y / ry) ** 2 - 1.0
    g = 2.0 * np.sqrt((x / rx ** 2) ** 2 + (y / ry ** 2) ** 2) + 1e-3
    return -f / g


def _rotation(phi: float) -> np.ndarray:
    """Vertebra frame in world RAS: u = +x, v = anterior tilted by phi, w = superior tilted by phi."""
    c, s = np.cos(phi), np.sin(phi)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])  # columns u, v, w


def _curve_angle(pos: float, kyph: float, lord: float) -> float:
    xs, ys = zip(*_CURVE_KNOTS)
    ang = float(np.interp(pos, xs, ys))
    return np.deg2rad(ang * (kyph if pos <= 12.5 else lord))


def _place(verts: list[_Vertebra], kyph: float, lord: float) -> None:
    """Set centres and rotations along the sagittal curve, top vertebra first (world mm)."""
    centre = np.zeros(3)
    for i, v in enumerate(verts):
        v.phi = _curve_angle(_POS.get(v.label, 13.0), kyph, lord)
        v.rot = _rotation(v.phi)
        if i == 0:
            v.centre = centre.copy()
            continue
        up = verts[i - 1]
        # gap along the curve: posterior rims, so a wedge collapse tilts rather than shifts
        vb = HEIGHT_POSITIONS[0]
        _, bot_up, _, _ = up.endplates(0.0, vb * up.b, with_signs=False)
        top_lo, _, _, _ = v.endplates(0.0, vb * v.b, with_signs=False)
        step = float(-bot_up + up.disc_below + top_lo)
        phim = 0.5 * (up.phi + v.phi)
        v.centre = up.centre - step * np.array([0.0, np.sin(phim), np.cos(phim)])


def _virtual_neighbour(v: _Vertebra, above: bool, config: SynthConfig) -> _Vertebra:
    """An undrawn neighbour beyond the end of the run: only bounds the end disc."""
    n = dataclasses.replace(v, grade=0, morphology="none", deformity=0.0, delta=0.0, signs=False,
                            endplate="none", virtual=True)
    n.Ha0 = n.Hp0 = v.Hmid
    disc = v.disc_below if not above else max(3.5, v.disc_below * 0.9)
    step = v.Hmid + disc
    sign = 1.0 if above else -1.0
    n.centre = v.centre + sign * step * v.rot[:, 2]
    if not above:
        n.disc_below = v.disc_below
    return n


# ============================================================== volume synthesis
class _Grid:
    """The canonical sampling grid: index (i, j, k) -> scanner s = origin + idx * spacing; world = R s."""

    def __init__(self, origin, spacing, shape, R):
        self.origin = np.asarray(origin, float)
        self.spacing = np.asarray(spacing, float)
        self.shape = tuple(int(s) for s in shape)
        self.R = np.asarray(R, float)

    @property
    def affine(self) -> np.ndarray:
        A = np.eye(4)
        A[:3, :3] = self.R @ np.diag(self.spacing)
        A[:3, 3] = self.R @ self.origin
        return A

    def box(self, world_points: np.ndarray, margin: float = 2.0):
        """Index slices covering the world points (N x 3), or None if outside the grid."""
        s = world_points @ self.R  # R^T p for each row
        lo = np.floor((s.min(0) - margin - self.origin) / self.spacing).astype(int)
        hi = np.ceil((s.max(0) + margin - self.origin) / self.spacing).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def local(self, box, centre, rot):
        """Local coordinates (u, v, w) float32 arrays over ``box`` in the frame (centre, rot)."""
        M = rot.T @ self.R                      # scanner -> local rotation
        t = -rot.T @ centre
        axes = [(self.origin[d] + np.arange(box[d].start, box[d].stop) * self.spacing[d]).astype(np.float32)
                for d in range(3)]
        out = []
        for r in range(3):
            c = (M[r, 0] * axes[0][:, None, None] + M[r, 1] * axes[1][None, :, None]
                 + M[r, 2] * axes[2][None, None, :] + np.float32(t[r]))
            out.append(c.astype(np.float32, copy=False))
        return out

    def extent_along(self, direction_world: np.ndarray) -> float:
        """Width (mm) of a voxel measured along a world direction (support of the voxel box)."""
        d = self.R.T @ direction_world
        return float(np.sum(np.abs(d) * self.spacing))


def _corners(centre, rot, lo, hi) -> np.ndarray:
    pts = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return centre + pts @ rot.T


def _background(grid: _Grid, verts: list[_Vertebra], pat: dict, rng, config: SynthConfig) -> np.ndarray:
    """Soft-tissue HU over the whole grid: muscle, fat, mediastinum, lungs, air (float32).

    X and Y are exact world coordinates; the level-dependent look-ups (spine centre line,
    body size, thoracic or lumbar) use the scanner's z, which differs from world z by at
    most a few mm in oblique scans: soft tissue has no label, so this only blurs the
    tissue boundaries slightly.
    """
    ax = [(grid.origin[d] + np.arange(grid.shape[d]) * grid.spacing[d]).astype(np.float32) for d in range(3)]
    R = grid.R.astype(np.float32)
    axb = (ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :])

    def world(r):
        # broadcast only the axes that contribute: a non-oblique scan keeps X 1-D and Y 1-D (speed)
        terms = [R[r, c] * axb[c] for c in range(3) if abs(R[r, c]) > 1e-9]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out

    X, Y = world(0), world(1)
    zs = ax[2]  # scanner z ~ world z
    zc = np.array([v.centre[2] for v in verts])[::-1]
    cy = np.interp(zs, zc, [v.centre[1] for v in verts][::-1]).astype(np.float32)[None, None, :]
    a_z = np.interp(zs, zc, [v.a for v in verts][::-1]).astype(np.float32)[None, None, :]
    b_z = np.interp(zs, zc, [v.b for v in verts][::-1]).astype(np.float32)[None, None, :]
    pos_z = np.interp(zs, zc, [_POS[v.label] for v in verts][::-1]).astype(np.float32)[None, None, :]
    rel = Y - cy
    absx = np.abs(X)

    soft = np.float32(rng.uniform(*config.soft_tissue_hu))
    muscle = np.float32(rng.uniform(*config.muscle_hu))
    fat = np.float32(rng.uniform(*config.fat_hu))
    lung = np.float32(rng.uniform(*config.lung_hu))
    back = rng.uniform(*config.back_depth_mm)
    fat_layer = rng.uniform(*config.fat_layer_mm)

    hu = np.full(grid.shape, soft, dtype=np.float32)
    # retroperitoneal / mediastinal fat mixed with organs: a smooth random pattern
    k = rng.uniform(0.03, 0.09, size=6)
    ph = rng.uniform(0, 6.3, size=6)
    sx_, sy_, sz_ = (np.sin(k[i] * ax[i % 3] + ph[i]) for i in range(3))
    tx_, ty_, tz_ = (np.sin(k[3 + i] * ax[i] + ph[3 + i]) for i in range(3))
    pattern = (sx_[:, None, None] * sy_[None, :, None] + ty_[None, :, None] * sz_[None, None, :]
               + tx_[:, None, None] * tz_[None, None, :])
    hu[np.broadcast_to((rel > 0) & (pattern > 0.9), hu.shape)] = fat
    # paraspinal muscles behind the bodies; psoas beside the lumbar bodies
    hu[np.broadcast_to(rel < -0.6 * b_z, hu.shape)] = muscle
    psoas = (pos_z >= 12.8) & (absx > a_z + 1.0) & (absx < a_z + 28.0) & (np.abs(rel + 3.0) < 22.0)
    hu[np.broadcast_to(psoas, hu.shape)] = muscle
    # lungs beside the thoracic bodies (down to the costophrenic recess near T12/L1)
    lungs = (pos_z <= 12.6) & (absx > a_z + 5.0) & (rel > -b_z - 22.0) & (rel < 85.0)
    aorta = ((X + a_z + 6.0) ** 2 + (rel - 0.7 * b_z) ** 2) < 144.0  # patient left (-x), non-contrast
    hu[np.broadcast_to(lungs & ~aorta, hu.shape)] = lung
    # subcutaneous fat and air behind the back
    hu[np.broadcast_to(rel < -back + fat_layer, hu.shape)] = fat
    hu[np.broadcast_to(rel < -back, hu.shape)] = np.float32(config.air_hu)
    return hu


def _texture(shape, rng, sigma_vox) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="nearest")
    sd = float(t.std()) or 1.0
    return t / np.float32(sd)


def _draw_disc(hu, grid, up: _Vertebra, lo: _Vertebra, disc_hu, extent_w, extent_r):
    pts = np.vstack([_corners(up.centre, up.rot, (-up.a - 4, -up.b - 4, -up.Hmid / 2 - 4), (up.a + 4, up.b + 4, -up.Hmid / 2 + 3)),
                     _corners(lo.centre, lo.rot, (-lo.a - 4, -lo.b - 4, lo.Hmid / 2 - 3), (lo.a + 4, lo.b + 4, lo.Hmid / 2 + 4))])
    box = grid.box(pts)
    if box is None:
        return
    u1, v1, w1 = grid.local(box, up.centre, up.rot)
    u2, v2, w2 = grid.local(box, lo.centre, lo.rot)
    _, bot_up, _, _ = up.endplates(u1, v1)
    top_lo, _, _, _ = lo.endplates(u2, v2)
    d1 = bot_up - w1
    d2 = w2 - top_lo
    t = np.clip(d1 / np.maximum(d1 + d2, 1e-3), 0.0, 1.0)
    rho = (1 - t) * np.sqrt((u1 / up.a) ** 2 + (v1 / up.b) ** 2) + t * np.sqrt((u2 / lo.a) ** 2 + (v2 / lo.b) ** 2)
    dr = (1.02 - rho) * min(up.a, up.b)
    frac = _frac(np.minimum(d1, d2), extent_w) * _frac(dr, extent_r)
    value = disc_hu - 20.0 * np.clip(1.0 - rho, 0.0, 1.0)  # softer nucleus
    sub = hu[box]
    hu[box] = sub * (1 - frac) + frac * value


@dataclass(frozen=True)
class _Tissue:
    """One patient's bone appearance: trabecular texture amplitude, cortical HU and cortical thickness (mm)."""

    texture_hu: float
    cortex_hu: float
    cortex_mm: float


@dataclass(frozen=True)
class _Posterior:
    """Sizes and landmarks of a vertebra's posterior elements in its local frame (mm; u lateral, v anterior, w up).

    Thoracic and lumbar shapes are blended by ``lumbar_t`` (0 thoracic .. 1 lumbar).
    """

    cw: float     # canal half-width
    cd: float     # canal half-depth
    pw: float     # pedicle half-width
    ph: float     # pedicle half-height
    lam: float    # lamina thickness
    Ls: float     # spinous process length
    alpha: float  # spinous process slope (thoracic steep, lumbar horizontal)
    sh: float     # spinous half-height
    rt: float     # transverse process radius
    vc: float     # canal centre (v)
    wp: float     # pedicle centre (w)
    s0: np.ndarray   # spinous process root
    tip: np.ndarray  # spinous process tip
    tp1: np.ndarray  # transverse process tip
    far: np.ndarray  # where a rib leaves the field of view
    thoracic: bool


def _posterior_shape(v: _Vertebra) -> _Posterior:
    lt = v.lumbar_t
    H = v.Hmid
    cw = 8.5 + 3.0 * lt
    cd = 7.5 + 1.0 * lt
    pw = 3.0 + 1.5 * lt
    ph = 0.3 * H
    lam = 5.0 + 1.0 * lt
    Ls = 34.0 - 6.0 * lt
    alpha = np.deg2rad(50.0 - 42.0 * lt)
    sh = 4.5 + 3.5 * lt
    Lt = 24.0 + 5.0 * lt         # transverse process length
    beta = np.deg2rad(35.0 - 25.0 * lt)
    rt = 4.5 - 1.0 * lt
    vc = -v.b - cd
    wp = 0.18 * H
    s0 = np.array([0.0, vc - cd - 0.5 * lam, wp - 0.4 * ph])
    tip = s0 + Ls * np.array([0.0, -np.cos(alpha), -np.sin(alpha)])
    tp1 = np.array([cw + pw + Lt * np.cos(beta), vc + 2.0 - Lt * np.sin(beta), wp + 2.0])
    far = np.array([75.0, tp1[1] - 14.0, tp1[2] - 10.0])
    return _Posterior(cw, cd, pw, ph, lam, Ls, alpha, sh, rt, vc, wp, s0, tip, tp1, far, _POS[v.label] <= 12.5)


def _vertebra_extent(v: _Vertebra, s: _Posterior) -> tuple[np.ndarray, np.ndarray]:
    """Local bounding box (lo, hi) of everything drawn for ``v``: body, posterior elements, ribs."""
    H = v.Hmid
    lateral = 70.0 if s.thoracic else max(v.a * 1.3, s.tp1[0] + s.rt + 1.0)
    lo = np.array([-lateral, min(s.tip[1], s.far[1]) - s.sh - 5.0,
                   min(-H / 2 - 6.5, s.tip[2] - s.sh - 1.0, s.far[2] - 5.5 if s.thoracic else 0.0)])
    hi = np.array([lateral, v.b * 1.3 + 3.0, H / 2 + 6.5])
    return lo, hi


class _Local:
    """The voxels of one vertebra's bounding box: local coordinates, voxel widths, and sub-boxes.

    Each primitive is evaluated only inside its own sub-box (:meth:`part`), for speed.
    """

    def __init__(self, grid: _Grid, v: _Vertebra, box):
        self.grid, self.v, self.box = grid, v, box
        self.u, self.vv, self.w = grid.local(box, v.centre, v.rot)
        self.au = np.abs(self.u)  # processes are symmetric: work on |u|
        self.ew = grid.extent_along(v.rot[:, 2])  # voxel width along the vertebra's axis
        self.er = 0.5 * (grid.extent_along(v.rot[:, 0]) + grid.extent_along(v.rot[:, 1]))
        self.eiso = float(np.mean(grid.spacing))
        self.shape = self.u.shape

    def part(self, lo, hi):
        """Slices (relative to the box) covering the local box lo..hi, or None."""
        b = self.grid.box(_corners(self.v.centre, self.v.rot, lo, hi), margin=1.5)
        if b is None:
            return None
        rel = tuple(slice(max(bb.start, ob.start) - ob.start, min(bb.stop, ob.stop) - ob.start)
                    for bb, ob in zip(b, self.box))
        return None if any(r.stop <= r.start for r in rel) else rel

    def capsules(self, p0, p1, r):
        """Left and right copies of a capsule (radius ``r`` around p0-p1, at +u): ``[(slices, distance)]``."""
        lo = np.minimum(p0, p1) - r
        hi = np.maximum(p0, p1) + r
        out = []
        for sign in (1.0, -1.0):
            lo_s = (lo[0], lo[1], lo[2]) if sign > 0 else (-hi[0], lo[1], lo[2])
            hi_s = (hi[0], hi[1], hi[2]) if sign > 0 else (-lo[0], hi[1], hi[2])
            sl = self.part(lo_s, hi_s)
            if sl is not None:
                out.append((sl, _capsule(self.au[sl], self.vv[sl], self.w[sl], p0, p1, r)))
        return out


def _trabecular_texture(loc: _Local, s: _Posterior, lo, hi, rng) -> np.ndarray:
    """Unit-variance smooth noise over the body and posterior elements (zero elsewhere in the box)."""
    v = loc.v
    texture = np.zeros(loc.shape, np.float32)
    reach = max(v.a, s.cw + s.lam + s.pw) * 1.3
    core = loc.part((-reach, lo[1], lo[2]), (reach, hi[1], hi[2]))
    if core is not None:
        texture[core] = _texture(texture[core].shape, rng, 0.8 / loc.grid.spacing)
    return texture


def _body_scale(v: _Vertebra, V, W, top, bot, ct, cb):
    """Radial scale of the body cross-section: waist, cortical buckling under a collapse, crush bulge."""
    H = v.Hmid
    tt = np.clip(W / (0.5 * H), -1.0, 1.0)
    scale = 1.0 - v.waist * (1.0 - tt * tt)
    if v.signs and v.buckle > 0:
        # cortical buckling: the wall bulges just beneath the collapsed endplate
        depth = np.where(ct >= cb, top - W, W - bot)
        scale = scale * (1.0 + v.buckle * np.exp(-((depth - 2.5) / 1.8) ** 2) * (np.maximum(ct, cb) > 0.3)
                         * np.clip(V / v.b + 0.3, 0.0, 1.0))
    if v.morphology == "crush":
        scale = scale * (1.0 + 0.25 * v.deformity)
    return scale


def _body_radial_distance(v: _Vertebra, U, V, scale):
    """Approximate signed distance (mm, + inside) to the kidney-shaped cross-section (round front, flat back)."""
    a_s, b_s = v.a * scale, v.b * scale
    ax_, av_ = np.abs(U) / a_s, np.abs(V) / b_s
    p = np.where(V >= 0, 2.0, 3.0).astype(np.float32)
    f = ax_ ** p + av_ ** p - 1.0
    g = p * np.sqrt((ax_ ** (p - 1) / a_s) ** 2 + (av_ ** (p - 1) / b_s) ** 2) + 1e-3
    return -f / g


def _compaction(v: _Vertebra, W, top, bot, ct, cb):
    """The denser band of compacted trabecular bone beneath a collapsed endplate (0-1)."""
    cm = v.compaction_mm
    band = (np.clip(ct / 0.5, 0, 1) * np.exp(-(((top - W) - 0.5 * cm) / cm) ** 2)
            + np.clip(cb / 0.5, 0, 1) * np.exp(-(((W - bot) - 0.5 * cm) / cm) ** 2))
    return np.clip(band, 0.0, 1.0)


@dataclass
class _Body:
    """The vertebral body over a vertebra's box: partial-volume fractions and trabecular HU."""

    frac: np.ndarray    # body (shell and interior)
    shell: np.ndarray   # cortical shell
    inner: np.ndarray   # trabecular interior
    inside: np.ndarray  # voxel centres inside the body (labelled)
    trab: np.ndarray    # trabecular HU


def _vertebral_body(loc: _Local, texture, tissue: _Tissue) -> _Body:
    """The body: endplates (with any collapse) above and below, the waisted kidney-shaped wall around."""
    v, H = loc.v, loc.v.Hmid
    body = _Body(*(np.zeros(loc.shape, np.float32) for _ in range(3)), np.zeros(loc.shape, bool),
                 v.trab_hu + tissue.texture_hu * texture)
    bs = loc.part((-v.a * 1.3, -v.b * 1.3, -H / 2 - 2), (v.a * 1.3, v.b * 1.3, H / 2 + 2))
    if bs is None:
        return body
    U, V, W = loc.u[bs], loc.vv[bs], loc.w[bs]
    top, bot, ct, cb = v.endplates(U, V)
    dw = np.minimum(top - W, W - bot)
    dr = _body_radial_distance(v, U, V, _body_scale(v, V, W, top, bot, ct, cb))
    bf = _frac(dw, loc.ew) * _frac(dr, loc.er)
    inn = _frac(dw - 0.9, loc.ew) * _frac(dr - tissue.cortex_mm, loc.er)
    body.frac[bs], body.inner[bs], body.shell[bs] = bf, inn, bf - inn
    body.inside[bs] = (dw > 0) & (dr > 0)
    if v.signs and v.compaction_hu > 0:
        body.trab[bs] += v.compaction_hu * _compaction(v, W, top, bot, ct, cb)
    return body


def _pedicles_and_lamina(loc: _Local, s: _Posterior, d: np.ndarray) -> None:
    v = loc.v
    u, vv, w, au = loc.u, loc.vv, loc.w, loc.au
    up = (s.cw + 0.6 * s.pw)
    sl = loc.part((-up - s.pw, s.vc - 0.3 * s.cd, s.wp - s.ph), (up + s.pw, -v.b + 2.5, s.wp + s.ph))
    if sl is not None:
        d[sl] = np.maximum(d[sl], np.minimum(_ellipse2(au[sl] - up, w[sl] - s.wp, s.pw, s.ph),
                                             np.minimum(vv[sl] - (s.vc - 0.3 * s.cd), (-v.b + 2.5) - vv[sl])))
    sl = loc.part((-s.cw - s.lam, s.vc - s.cd - s.lam, s.wp - 1.5 * s.ph), (s.cw + s.lam, s.vc + 1.0, s.wp + 0.9 * s.ph))
    if sl is not None:
        U, V, W = u[sl], vv[sl], w[sl]
        ring = np.minimum(_ellipse2(U, V - s.vc, s.cw + s.lam, s.cd + s.lam), -_ellipse2(U, V - s.vc, s.cw, s.cd))
        d[sl] = np.maximum(d[sl], np.minimum(ring, np.minimum((s.vc + 1.0) - V,
                                                              np.minimum(W - (s.wp - 1.5 * s.ph),
                                                                         (s.wp + 0.9 * s.ph) - W))))


def _spinous_process(loc: _Local, s: _Posterior, d: np.ndarray) -> None:
    """A tapering plate sloping posteriorly and caudally."""
    sl = loc.part((-3.0, min(s.s0[1], s.tip[1]) - s.sh, min(s.s0[2], s.tip[2]) - s.sh),
                  (3.0, s.s0[1] + s.sh, s.s0[2] + s.sh))
    if sl is None:
        return
    V, W = loc.vv[sl] - s.s0[1], loc.w[sl] - s.s0[2]
    sa = -V * np.cos(s.alpha) - W * np.sin(s.alpha)
    sn = V * np.sin(s.alpha) - W * np.cos(s.alpha)
    half = s.sh * (1.0 - 0.35 * np.clip(sa / s.Ls, 0, 1))
    d[sl] = np.maximum(d[sl], np.minimum(np.minimum(sa, s.Ls - sa), np.minimum(3.0 - loc.au[sl], half - np.abs(sn))))


def _processes(loc: _Local, s: _Posterior, d: np.ndarray) -> None:
    """Transverse processes and the superior and inferior articular processes, left and right."""
    H = loc.v.Hmid
    tp0 = np.array([s.cw + s.pw, s.vc + 2.0, s.wp])
    prims = loc.capsules(tp0, s.tp1, s.rt)
    prims += loc.capsules(np.array([s.cw + 0.8 * s.pw, s.vc - 2.0, s.wp]),
                          np.array([s.cw + 0.8 * s.pw + 1.0, s.vc - 4.0, H / 2 + 3.0]), 3.2)
    prims += loc.capsules(np.array([s.cw + 0.5, s.vc - 0.6 * s.cd, s.wp - s.ph]),
                          np.array([s.cw + 0.5, s.vc - 0.8 * s.cd - 2.0, -H / 2 - 3.0]), 3.2)
    for sl, dist in prims:
        d[sl] = np.maximum(d[sl], dist)


def _posterior_elements(loc: _Local, s: _Posterior, lo, hi) -> np.ndarray:
    """Signed distance (mm, + inside) to the posterior elements: a union of primitives, minus the spinal canal."""
    d = np.full(loc.shape, -50.0, np.float32)
    _pedicles_and_lamina(loc, s, d)
    _spinous_process(loc, s, d)
    _processes(loc, s, d)
    sl = loc.part((-s.cw - 1, s.vc - s.cd - 1, lo[2]), (s.cw + 1, s.vc + s.cd + 1, hi[2]))
    if sl is not None:
        d[sl] = np.minimum(d[sl], -_ellipse2(loc.u[sl], loc.vv[sl] - s.vc, s.cw, s.cd))  # the canal stays empty
    return d


def _ribs(loc: _Local, s: _Posterior, sub, keep, texture, tissue: _Tissue):
    """``sub`` with the thoracic ribs (bone, not labelled) drawn where neither body nor posterior elements are."""
    v, H = loc.v, loc.v.Hmid
    rib = np.full(loc.shape, -50.0, np.float32)
    head = np.array([0.75 * v.a, -0.55 * v.b, 0.45 * H])
    tub = np.array([s.tp1[0] + 2.0, s.tp1[1] + 4.0, s.tp1[2] - 1.0])
    for sl, dist in loc.capsules(head, tub, 3.5) + loc.capsules(tub, s.far, 4.5):
        rib[sl] = np.maximum(rib[sl], dist)
    rib_frac = _frac(rib, loc.eiso) * keep
    rib_inner = _frac(rib - 1.0, loc.eiso) * keep
    return (sub * (1 - rib_frac) + (rib_frac - rib_inner) * tissue.cortex_hu
            + rib_inner * (v.trab_hu + 60 + tissue.texture_hu * texture))


def _label_vertebra(seg, box, inside, label: int) -> None:
    """Label the voxels inside the vertebra (not already labelled) as one connected piece."""
    labelled = inside & (seg[box] == 0)
    # keep one connected piece: tips of thin processes sampled between voxels leave specks
    pieces, n = ndimage.label(labelled)
    if n > 1:
        labelled = pieces == (1 + int(np.argmax(np.bincount(pieces.ravel())[1:])))
    seg[box][labelled] = label


def _draw_vertebra(hu, seg, grid: _Grid, v: _Vertebra, rng, tissue: _Tissue) -> None:
    """Composite one vertebra (body, posterior elements, ribs) into ``hu``; label its voxels in ``seg``.

    Local frame (mm): u lateral, v anterior, w superior, origin at the body centre.
    The posterior elements go in first, the body on top; ribs (thoracic levels) only
    where neither is. Labels cover the body and the posterior elements.
    """
    s = _posterior_shape(v)
    lo, hi = _vertebra_extent(v, s)
    box = grid.box(_corners(v.centre, v.rot, lo, hi))
    if box is None:
        return
    loc = _Local(grid, v, box)
    texture = _trabecular_texture(loc, s, lo, hi, rng)
    body = _vertebral_body(loc, texture, tissue)
    d = _posterior_elements(loc, s, lo, hi)
    post_frac = _frac(d, loc.eiso) * (1.0 - body.frac)
    post_inner = _frac(d - 1.2, loc.eiso) * (1.0 - body.frac)
    sub = hu[box]
    if s.thoracic:
        sub = _ribs(loc, s, sub, (1.0 - body.frac) * (1.0 - post_frac), texture, tissue)
    post_hu = (post_frac - post_inner) * tissue.cortex_hu + post_inner * (v.trab_hu + 120.0 + tissue.texture_hu * texture)
    sub = sub * (1 - post_frac) + post_hu
    sub = sub * (1 - body.frac) + body.shell * tissue.cortex_hu + body.inner * body.trab
    hu[box] = sub
    _label_vertebra(seg, box, body.inside | (d > 0), v.label)


def _choose_geometry(rng, config: SynthConfig, world_lo, world_hi):
    """Spacing, orientation and rotation of the scan; returns (spacing, ornt_kind, R, ornt)."""
    sx = float(rng.uniform(*config.inplane_spacing))
    sx = round(sx, 3)
    ext = np.asarray(world_hi) - np.asarray(world_lo)
    kind = ORIENTATIONS[int(rng.choice(4, p=np.asarray(config.orientation_probs, dtype=float)))]
    R = np.eye(3)
    if kind == "oblique":
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        ang = np.deg2rad(rng.uniform(1.5, config.oblique_max_deg))
        K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        R = np.eye(3) + np.sin(ang) * K + (1 - np.cos(ang)) * K @ K
    half = 0.5 * np.abs(R.T) @ ext
    choices = [float(s) for s in config.slice_spacings]
    order = rng.permutation(len(choices))
    sz = None
    for idx in order:  # the first slice spacing (in random order) that fits the voxel budget
        n = np.prod(np.ceil(2 * half / np.array([sx, sx, choices[idx]])) + 1)
        if n <= config.max_voxels:
            sz = choices[idx]
            break
    if sz is None:
        sz = max(choices)
    return (sx, sx, sz), kind, R, half


def _output_orientation(kind: str, rng) -> np.ndarray:
    """nibabel orientation array (axis, flip) applied to the canonical RAS-ordered array."""
    if kind in ("ras", "oblique") and (kind == "ras" or rng.random() < 0.5):
        return np.array([[0, 1], [1, 1], [2, 1]])
    if kind == "lps" or kind == "oblique":
        return np.array([[0, -1], [1, -1], [2, 1]])
    perm = [[2, 1, 0], [1, 0, 2], [2, 0, 1], [0, 2, 1]][int(rng.integers(4))]
    flips = rng.choice([-1, 1], size=3)
    return np.array([[perm[i], flips[i]] for i in range(3)])


def _scan_grid(verts: list[_Vertebra], rng, config: SynthConfig) -> tuple[_Grid, str]:
    """The scan's sampling grid around the run (cut through the middle of the end discs) and its orientation kind."""
    ys = np.array([v.centre[1] for v in verts])
    z_top = verts[0].centre[2] + 0.5 * verts[0].Hmid + 0.5 * max(3.5, verts[0].disc_below * 0.9)
    z_bot = verts[-1].centre[2] - 0.5 * verts[-1].Hmid - 0.5 * verts[-1].disc_below
    world_lo = np.array([-config.fov_lateral_mm, ys.min() - config.fov_posterior_mm, z_bot])
    world_hi = np.array([config.fov_lateral_mm, ys.max() + config.fov_anterior_mm, z_top])
    spacing, kind, R, half = _choose_geometry(rng, config, world_lo, world_hi)
    centre = 0.5 * (world_lo + world_hi)
    shape = tuple(int(x) for x in np.ceil(2 * half / np.array(spacing)) + 1)
    origin = R.T @ centre - 0.5 * (np.array(shape) - 1) * np.array(spacing)
    return _Grid(origin, spacing, shape, R), kind


def _patient_tissue(rng, config: SynthConfig, density: int) -> _Tissue:
    """Trabecular texture and cortical bone of one patient (osteoporotic bone: coarser, thinner, less dense)."""
    texture_hu = rng.uniform(*config.trabecular_texture_hu) * (1.15 if density == 2 else 1.0)
    cortex_hu = rng.uniform(*config.cortical_hu) * (1.0, 0.92, 0.85)[density]
    return _Tissue(texture_hu, cortex_hu, config.cortical_thickness_mm[density])


def _draw_spine(hu, seg, grid: _Grid, chain: list[_Vertebra], disc_hu: float, rng, tissue: _Tissue) -> None:
    """The discs between consecutive vertebrae of ``chain`` (virtual end neighbours included), then the vertebrae."""
    for up, lo in zip(chain[:-1], chain[1:]):
        ew = grid.extent_along(up.rot[:, 2])
        er = 0.5 * (grid.extent_along(up.rot[:, 0]) + grid.extent_along(up.rot[:, 1]))
        _draw_disc(hu, grid, up, lo, disc_hu, ew, er)
    for v in chain[1:-1]:
        _draw_vertebra(hu, seg, grid, v, rng, tissue)


def _scanner(hu, spacing, psf: float, noise: float, rng) -> np.ndarray:
    """Point-spread blur (in-plane PSF, slice profile), then white noise; int16 HU."""
    sigma = (psf / spacing[0], psf / spacing[1], max(0.35, 0.5 * psf / spacing[2] + 0.2))
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _reorient(image, seg, grid: _Grid, kind: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Arrays re-ordered into the chosen header orientation, with the affine that matches; and its axis codes."""
    ornt = _output_orientation(kind, rng)
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, ornt))
    seg = np.ascontiguousarray(nib.orientations.apply_orientation(seg, ornt))
    affine = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    return image, seg, affine, "".join(nib.aff2axcodes(affine))


def _truth_row(cid: str, v: _Vertebra, scan: dict) -> dict:
    """One vertebra's row of ``synth_truth.csv``: grade, morphology, heights before and after, scan settings."""
    ha0, hm0, hp0 = v.heights(after=False)
    ha1, hm1, hp1 = v.heights(after=True)
    return dict(
        case=cid, label=v.label, level=v.name, grade=v.grade, morphology=v.morphology,
        endplate=v.endplate if v.grade > 0 else "none",
        height_anterior_before_mm=round(ha0, 3), height_middle_before_mm=round(hm0, 3),
        height_posterior_before_mm=round(hp0, 3), height_anterior_after_mm=round(ha1, 3),
        height_middle_after_mm=round(hm1, 3), height_posterior_after_mm=round(hp1, 3),
        deformity_pct=round(100.0 * v.deformity, 2), trabecular_hu=round(v.trab_hu, 1),
        sex=scan["sex"], density_class=scan["density_class"], orientation=scan["orientation"],
        axcodes=scan["axcodes"], spacing_mm="x".join(f"{s:g}" for s in scan["spacing_mm"]),
        noise_sigma_hu=round(scan["noise_sigma_hu"], 1))


def generate_case(case_index: int, seed: int = 0, config: SynthConfig | None = None) -> SynthCase:
    """Generate SynthSpine case ``case_index``: a function of ``(seed, case_index, config)`` only.

    Returns a :class:`SynthCase` with ``image`` int16 HU and ``seg`` uint8 VerSe labels,
    both in the array order of the chosen header orientation, and ``affine`` voxel -> RAS mm.
    Every random draw comes from one generator, in a fixed order: the patient, the
    curve, the scan geometry, the tissues, the soft-tissue background, the bone
    texture of each vertebra, the noise, the header orientation.
    """
    config = config or SynthConfig()
    _check_config(config)
    rng = np.random.default_rng([int(seed), int(case_index)])
    pat = sample_patient(rng, config)
    verts: list[_Vertebra] = pat["vertebrae"]
    kyph, lord = rng.uniform(*config.curve_scale), rng.uniform(*config.curve_scale)
    _place(verts, kyph, lord)
    chain = [_virtual_neighbour(verts[0], True, config), *verts, _virtual_neighbour(verts[-1], False, config)]
    grid, kind = _scan_grid(verts, rng, config)
    tissue = _patient_tissue(rng, config, pat["density"])
    disc_hu, noise, psf = (rng.uniform(*config.disc_hu), rng.uniform(*config.noise_sigma),
                           rng.uniform(*config.psf_sigma_mm))

    hu = _background(grid, verts, pat, rng, config)
    seg = np.zeros(grid.shape, dtype=np.uint8)
    _draw_spine(hu, seg, grid, chain, disc_hu, rng, tissue)
    image, seg, affine, axcodes = _reorient(_scanner(hu, grid.spacing, psf, noise, rng), seg, grid, kind, rng)

    cid = case_id(seed, case_index)
    meta = dict(sex=pat["sex"], density_class=DENSITY_CLASSES[pat["density"]], orientation=kind, axcodes=axcodes,
                spacing_mm=[float(s) for s in grid.spacing], noise_sigma_hu=float(noise), shape=list(image.shape),
                kyphosis_scale=float(kyph), lordosis_scale=float(lord), cortical_hu=float(tissue.cortex_hu),
                disc_hu=float(disc_hu))
    present = set(int(x) for x in np.unique(seg)) - {0}
    labelled = [v for v in verts if v.label in present]
    return SynthCase(cid, image, seg, affine, {v.label: int(v.grade) for v in labelled},
                     [_truth_row(cid, v, meta) for v in labelled], meta)


# ============================================================== dataset
TRUTH_COLUMNS = ["case", "label", "level", "grade", "morphology", "endplate",
                 "height_anterior_before_mm", "height_middle_before_mm", "height_posterior_before_mm",
                 "height_anterior_after_mm", "height_middle_after_mm", "height_posterior_after_mm",
                 "deformity_pct", "trabecular_hu", "sex", "density_class", "orientation", "axcodes",
                 "spacing_mm", "noise_sigma_hu"]


def _write_case(args) -> tuple[str, dict, list]:
    folder, index, seed, config_dict = args
    case = generate_case(index, seed, SynthConfig.from_dict(config_dict))
    save_nifti(Path(folder) / "img" / case.filename, case.image, case.affine)
    save_nifti(Path(folder) / "seg" / case.filename, case.seg, case.affine)
    return case.filename, case.grades, case.truth


def _mp_context():
    # fork where available: scripts without a __main__ guard and notebooks work; the
    # workers only use numpy / scipy / nibabel, so a parent that imported torch is harmless
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _meta(cases: int, seed: int, config: SynthConfig) -> dict:
    return {"generator": "vfnb.data.synth", "version": GENERATOR_VERSION, "seed": int(seed),
            "cases": int(cases), "config": config.to_dict(), "synthetic": True}


def _generate_cases(staging: Path, cases: int, seed: int, workers: int, config: SynthConfig,
                    progress: bool) -> list[tuple[str, dict, list]]:
    """Write every case's CT and label map into ``staging``; ``[(file name, grades, truth rows)]`` in case order."""
    jobs = [(str(staging), k, int(seed), config.to_dict()) for k in range(int(cases))]
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
                     config: SynthConfig | None = None, progress: bool = True) -> Path:
    """Write SynthSpine (original layout) to ``out``: ``img/``, ``seg/``, ``annotation.yaml``,
    ``synth_truth.csv`` (one row per vertebra) and ``synth.json`` (generator version and config).

    Built in a staging folder and renamed into place; refuses an existing ``out``
    unless ``overwrite``. ``workers`` processes generate cases in parallel.
    """
    config = config or SynthConfig()
    _check_config(config)
    if int(cases) < 1:
        raise ParamsError(f"synth: --cases {cases}; expected at least 1")
    if int(workers) < 1:
        raise ParamsError(f"synth: --workers {workers}; expected at least 1")
    out = Path(out)
    with output_folder(out, overwrite=overwrite) as staging:
        (staging / "img").mkdir()
        (staging / "seg").mkdir()
        results = _generate_cases(staging, cases, seed, workers, config, progress)
        write_annotation(staging / "annotation.yaml", {name: grades for name, grades, _ in results})
        atomic_write_text(staging / TRUTH_FILE, _truth_csv(results))
        atomic_write_json(staging / META_FILE, _meta(cases, seed, config))
    return out


# ============================================================== default dataset for the study
PROCESSED_MARKER = "synth_processed.json"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def default_dataset_paths(data_dir, cases: int = 64, seed: int = 0, size: int = 64) -> dict:
    """Where the study keeps SynthSpine: ``{"original": ..., "processed": ...}`` under ``data_dir``."""
    root = Path(data_dir) / f"synthspine-s{int(seed)}-n{int(cases)}"
    return {"original": root / "original", "processed": root / f"processed-{int(size)}"}


def ensure_generated(original: Path, cases: int, seed: int, workers: int, config: SynthConfig) -> Path:
    """Step 1: the original layout at ``original``, generated when missing, reused when its ``synth.json`` matches.

    A folder made with another generator version, seed, case count or config is
    refused (:class:`DatasetError`), never overwritten.
    """
    if not original.exists():
        return generate_dataset(original, cases=cases, seed=seed, workers=workers, config=config)
    if _read_json(original / META_FILE) != json.loads(json.dumps(_meta(cases, seed, config))):
        raise DatasetError(
            f"{original}: exists but its {META_FILE} does not match SynthSpine {GENERATOR_VERSION} with "
            f"seed={seed}, cases={cases} and this config (missing, older generator or other parameters); "
            "delete the folder or choose another data directory")
    return original


def _preprocess_and_split(original: Path, processed: Path, recipe: dict, workers: int) -> Path:
    """Steps 2 and 3 into a staging folder beside ``processed``, renamed into place when both are done."""
    staging = processed.with_name(f".tmp-{processed.name}-{os.getpid()}-{int(time.time())}")
    try:
        preprocess_dataset(original, staging, size=recipe["size"], workers=workers)
        split_dataset(staging, recipe["tag"], folds=recipe["folds"], val_fraction=recipe["val_fraction"],
                      seed=recipe["split_seed"])
        atomic_write_json(staging / PROCESSED_MARKER, recipe)
        os.replace(staging, processed)
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
                           config: SynthConfig | None = None) -> dict:
    """The study's SynthSpine: generated, pre-processed and split when missing, reused when present.

    Layout: ``data_dir/synthspine-s{seed}-n{cases}/original`` (original layout) and
    ``.../processed-{size}`` (patches + split lists ``{tag}-f0`` ...), each reused only
    when its recorded parameters match (otherwise a :class:`DatasetError`; nothing is
    overwritten). Returns ``{"original": Path, "processed": Path}``.
    """
    config = config or SynthConfig()
    paths = default_dataset_paths(data_dir, cases, seed, size)
    ensure_generated(paths["original"], cases, seed, workers, config)
    recipe = {"source": _meta(cases, seed, config), "size": int(size), "tag": tag, "folds": int(folds),
              "val_fraction": float(val_fraction), "split_seed": int(seed)}
    ensure_processed(paths["original"], paths["processed"], recipe, workers)
    return paths
