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
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import DatasetError, ParamsError
from ..io import atomic_write_json, atomic_write_text, output_folder, save_nifti, NIFTI_SUFFIX
from ..levels import level_name

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


def _draw_vertebra(hu, seg, grid, v: _Vertebra, pat: dict, rng, config: SynthConfig, tex_amp, cortex_hu, cortex_mm):
    """Composite one vertebra (body, posterior elements, ribs) into ``hu``; label its voxels in ``seg``.

    Local frame (mm): u lateral, v anterior, w superior, origin at the body centre.
    Each primitive is evaluated only inside its own bounding box (speed).
    """
    lt = v.lumbar_t
    H = v.Hmid
    cw = 8.5 + 3.0 * lt          # canal half-width
    cd = 7.5 + 1.0 * lt          # canal half-depth
    pw = 3.0 + 1.5 * lt          # pedicle half-width
    ph = 0.3 * H                 # pedicle half-height
    lam = 5.0 + 1.0 * lt         # lamina thickness
    Ls = 34.0 - 6.0 * lt         # spinous process length
    alpha = np.deg2rad(50.0 - 42.0 * lt)  # spinous process slope (thoracic steep, lumbar horizontal)
    sh = 4.5 + 3.5 * lt          # spinous half-height
    Lt = 24.0 + 5.0 * lt         # transverse process length
    beta = np.deg2rad(35.0 - 25.0 * lt)
    rt = 4.5 - 1.0 * lt
    vc = -v.b - cd               # canal centre (v)
    wp = 0.18 * H                # pedicle centre (w)
    thoracic = _POS[v.label] <= 12.5

    s0 = np.array([0.0, vc - cd - 0.5 * lam, wp - 0.4 * ph])  # spinous process root
    tip = s0 + Ls * np.array([0.0, -np.cos(alpha), -np.sin(alpha)])
    tp1 = np.array([cw + pw + Lt * np.cos(beta), vc + 2.0 - Lt * np.sin(beta), wp + 2.0])  # transverse tip
    far = np.array([75.0, tp1[1] - 14.0, tp1[2] - 10.0])  # where a rib leaves the field of view
    lateral = 70.0 if thoracic else max(v.a * 1.3, tp1[0] + rt + 1.0)
    lo_c = np.array([-lateral, min(tip[1], far[1]) - sh - 5.0,
                     min(-H / 2 - 6.5, tip[2] - sh - 1.0, far[2] - 5.5 if thoracic else 0.0)])
    hi_c = np.array([lateral, v.b * 1.3 + 3.0, H / 2 + 6.5])
    box = grid.box(_corners(v.centre, v.rot, lo_c, hi_c))
    if box is None:
        return
    u, vv, w = grid.local(box, v.centre, v.rot)
    au = np.abs(u)  # processes are symmetric: work on |u|
    ew = grid.extent_along(v.rot[:, 2])
    er = 0.5 * (grid.extent_along(v.rot[:, 0]) + grid.extent_along(v.rot[:, 1]))
    eiso = float(np.mean(grid.spacing))
    sub = hu[box]
    def part(lo, hi):
        """Slices (relative to ``box``) covering the local box lo..hi, or None."""
        b = grid.box(_corners(v.centre, v.rot, lo, hi), margin=1.5)
        if b is None:
            return None
        rel = tuple(slice(max(bb.start, ob.start) - ob.start, min(bb.stop, ob.stop) - ob.start)
                    for bb, ob in zip(b, box))
        return None if any(r.stop <= r.start for r in rel) else rel

    T = np.zeros(sub.shape, np.float32)
    core = part((-max(v.a, cw + lam + pw) * 1.3, lo_c[1], lo_c[2]), (max(v.a, cw + lam + pw) * 1.3, hi_c[1], hi_c[2]))
    if core is not None:
        T[core] = _texture(T[core].shape, rng, 0.8 / grid.spacing)


    # ---------------- body
    body_frac = np.zeros(sub.shape, np.float32)
    shell = np.zeros(sub.shape, np.float32)
    inner = np.zeros(sub.shape, np.float32)
    body_inside = np.zeros(sub.shape, bool)
    trab = v.trab_hu + tex_amp * T
    bs = part((-v.a * 1.3, -v.b * 1.3, -H / 2 - 2), (v.a * 1.3, v.b * 1.3, H / 2 + 2))
    if bs is not None:
        U, V, W = u[bs], vv[bs], w[bs]
        top, bot, ct, cb = v.endplates(U, V)
        dw = np.minimum(top - W, W - bot)
        tt = np.clip(W / (0.5 * H), -1.0, 1.0)
        scale = 1.0 - v.waist * (1.0 - tt * tt)
        if v.signs and v.buckle > 0:
            # cortical buckling: the wall bulges just beneath the collapsed endplate
            depth = np.where(ct >= cb, top - W, W - bot)
            scale = scale * (1.0 + v.buckle * np.exp(-((depth - 2.5) / 1.8) ** 2) * (np.maximum(ct, cb) > 0.3)
                             * np.clip(V / v.b + 0.3, 0.0, 1.0))
        if v.morphology == "crush":
            scale = scale * (1.0 + 0.25 * v.deformity)
        a_s, b_s = v.a * scale, v.b * scale
        ax_, av_ = np.abs(U) / a_s, np.abs(V) / b_s
        p = np.where(V >= 0, 2.0, 3.0).astype(np.float32)
        f = ax_ ** p + av_ ** p - 1.0
        g = p * np.sqrt((ax_ ** (p - 1) / a_s) ** 2 + (av_ ** (p - 1) / b_s) ** 2) + 1e-3
        dr = -f / g
        bf = _frac(dw, ew) * _frac(dr, er)
        inn = _frac(dw - 0.9, ew) * _frac(dr - cortex_mm, er)
        body_frac[bs], inner[bs], shell[bs] = bf, inn, bf - inn
        body_inside[bs] = (dw > 0) & (dr > 0)
        if v.signs and v.compaction_hu > 0:
            cm = v.compaction_mm
            band = (np.clip(ct / 0.5, 0, 1) * np.exp(-(((top - W) - 0.5 * cm) / cm) ** 2)
                    + np.clip(cb / 0.5, 0, 1) * np.exp(-(((W - bot) - 0.5 * cm) / cm) ** 2))
            trab[bs] += v.compaction_hu * np.clip(band, 0.0, 1.0)

    # ---------------- posterior elements (union of primitives, minus the canal)
    d = np.full(sub.shape, -50.0, np.float32)

    def add(sl, dist):
        if sl is not None:
            d[sl] = np.maximum(d[sl], dist)

    up = (cw + 0.6 * pw)
    sl = part((-up - pw, vc - 0.3 * cd, wp - ph), (up + pw, -v.b + 2.5, wp + ph))
    if sl is not None:
        add(sl, np.minimum(_ellipse2(au[sl] - up, w[sl] - wp, pw, ph),
                           np.minimum(vv[sl] - (vc - 0.3 * cd), (-v.b + 2.5) - vv[sl])))
    sl = part((-cw - lam, vc - cd - lam, wp - 1.5 * ph), (cw + lam, vc + 1.0, wp + 0.9 * ph))
    if sl is not None:
        U, V, W = u[sl], vv[sl], w[sl]
        ring = np.minimum(_ellipse2(U, V - vc, cw + lam, cd + lam), -_ellipse2(U, V - vc, cw, cd))
        add(sl, np.minimum(ring, np.minimum((vc + 1.0) - V, np.minimum(W - (wp - 1.5 * ph), (wp + 0.9 * ph) - W))))
    # spinous process: a tapering plate sloping posteriorly and caudally
    sl = part((-3.0, min(s0[1], tip[1]) - sh, min(s0[2], tip[2]) - sh), (3.0, s0[1] + sh, s0[2] + sh))
    if sl is not None:
        V, W = vv[sl] - s0[1], w[sl] - s0[2]
        sa = -V * np.cos(alpha) - W * np.sin(alpha)
        sn = V * np.sin(alpha) - W * np.cos(alpha)
        half = sh * (1.0 - 0.35 * np.clip(sa / Ls, 0, 1))
        add(sl, np.minimum(np.minimum(sa, Ls - sa), np.minimum(3.0 - au[sl], half - np.abs(sn))))

    def capsule(p0, p1, r):
        lo = np.minimum(p0, p1) - r
        hi = np.maximum(p0, p1) + r
        out = []
        for sign in (1.0, -1.0):  # left and right copies
            lo_s = (lo[0], lo[1], lo[2]) if sign > 0 else (-hi[0], lo[1], lo[2])
            hi_s = (hi[0], hi[1], hi[2]) if sign > 0 else (-lo[0], hi[1], hi[2])
            sl_ = part(lo_s, hi_s)
            if sl_ is not None:
                out.append((sl_, _capsule(au[sl_], vv[sl_], w[sl_], p0, p1, r)))
        return out

    tp0 = np.array([cw + pw, vc + 2.0, wp])
    prims = capsule(tp0, tp1, rt)
    prims += capsule(np.array([cw + 0.8 * pw, vc - 2.0, wp]), np.array([cw + 0.8 * pw + 1.0, vc - 4.0, H / 2 + 3.0]), 3.2)
    prims += capsule(np.array([cw + 0.5, vc - 0.6 * cd, wp - ph]), np.array([cw + 0.5, vc - 0.8 * cd - 2.0, -H / 2 - 3.0]), 3.2)
    for sl, dist in prims:
        add(sl, dist)
    sl = part((-cw - 1, vc - cd - 1, lo_c[2]), (cw + 1, vc + cd + 1, hi_c[2]))
    if sl is not None:
        d[sl] = np.minimum(d[sl], -_ellipse2(u[sl], vv[sl] - vc, cw, cd))  # the spinal canal stays empty
    post_frac = _frac(d, eiso) * (1.0 - body_frac)
    post_inner = _frac(d - 1.2, eiso) * (1.0 - body_frac)
    post_inside = d > 0

    # ---------------- ribs at thoracic levels (bone, not labelled)
    if thoracic:
        rib = np.full(sub.shape, -50.0, np.float32)
        head = np.array([0.75 * v.a, -0.55 * v.b, 0.45 * H])
        tub = np.array([tp1[0] + 2.0, tp1[1] + 4.0, tp1[2] - 1.0])
        for sl, dist in capsule(head, tub, 3.5) + capsule(tub, far, 4.5):
            rib[sl] = np.maximum(rib[sl], dist)
        keep = (1.0 - body_frac) * (1.0 - post_frac)
        rib_frac = _frac(rib, eiso) * keep
        rib_inner = _frac(rib - 1.0, eiso) * keep
        sub = sub * (1 - rib_frac) + (rib_frac - rib_inner) * cortex_hu + rib_inner * (v.trab_hu + 60 + tex_amp * T)

    # ---------------- composite: posterior elements, then the body on top
    post_hu = (post_frac - post_inner) * cortex_hu + post_inner * (v.trab_hu + 120.0 + tex_amp * T)
    sub = sub * (1 - post_frac) + post_hu
    sub = sub * (1 - body_frac) + shell * cortex_hu + inner * trab
    hu[box] = sub
    labelled = (body_inside | post_inside) & (seg[box] == 0)
    # keep one connected piece: tips of thin processes sampled between voxels leave specks
    pieces, n = ndimage.label(labelled)
    if n > 1:
        labelled = pieces == (1 + int(np.argmax(np.bincount(pieces.ravel())[1:])))
    seg[box][labelled] = v.label


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


def generate_case(case_index: int, seed: int = 0, config: SynthConfig | None = None) -> SynthCase:
    """Generate SynthSpine case ``case_index``: a function of ``(seed, case_index, config)`` only.

    Returns a :class:`SynthCase` with ``image`` int16 HU and ``seg`` uint8 VerSe labels,
    both in the array order of the chosen header orientation, and ``affine`` voxel -> RAS mm.
    """
    config = config or SynthConfig()
    _check_config(config)
    rng = np.random.default_rng([int(seed), int(case_index)])
    pat = sample_patient(rng, config)
    verts: list[_Vertebra] = pat["vertebrae"]
    kyph, lord = rng.uniform(*config.curve_scale), rng.uniform(*config.curve_scale)
    _place(verts, kyph, lord)
    above = _virtual_neighbour(verts[0], True, config)
    below = _virtual_neighbour(verts[-1], False, config)

    # field of view: the run, cut through the middle of the end discs
    ys = np.array([v.centre[1] for v in verts])
    z_top = verts[0].centre[2] + 0.5 * verts[0].Hmid + 0.5 * max(3.5, verts[0].disc_below * 0.9)
    z_bot = verts[-1].centre[2] - 0.5 * verts[-1].Hmid - 0.5 * verts[-1].disc_below
    world_lo = np.array([-config.fov_lateral_mm, ys.min() - config.fov_posterior_mm, z_bot])
    world_hi = np.array([config.fov_lateral_mm, ys.max() + config.fov_anterior_mm, z_top])
    spacing, kind, R, half = _choose_geometry(rng, config, world_lo, world_hi)
    centre = 0.5 * (world_lo + world_hi)
    shape = tuple(int(x) for x in np.ceil(2 * half / np.array(spacing)) + 1)
    origin = R.T @ centre - 0.5 * (np.array(shape) - 1) * np.array(spacing)
    grid = _Grid(origin, spacing, shape, R)

    tex_amp = rng.uniform(*config.trabecular_texture_hu) * (1.15 if pat["density"] == 2 else 1.0)
    cortex_hu = rng.uniform(*config.cortical_hu) * (1.0, 0.92, 0.85)[pat["density"]]
    cortex_mm = config.cortical_thickness_mm[pat["density"]]
    disc_hu = rng.uniform(*config.disc_hu)
    noise = rng.uniform(*config.noise_sigma)
    psf = rng.uniform(*config.psf_sigma_mm)

    hu = _background(grid, verts, pat, rng, config)
    seg = np.zeros(grid.shape, dtype=np.uint8)
    chain = [above] + verts + [below]
    for up, lo in zip(chain[:-1], chain[1:]):
        ew = grid.extent_along(up.rot[:, 2])
        er = 0.5 * (grid.extent_along(up.rot[:, 0]) + grid.extent_along(up.rot[:, 1]))
        _draw_disc(hu, grid, up, lo, disc_hu, ew, er)
    for v in verts:
        _draw_vertebra(hu, seg, grid, v, pat, rng, config, tex_amp, cortex_hu, cortex_mm)

    # scanner: point-spread blur (in-plane PSF, slice profile), then white noise
    sigma = (psf / spacing[0], psf / spacing[1], max(0.35, 0.5 * psf / spacing[2] + 0.2))
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    # write in the chosen header orientation (array re-ordered, affine adjusted to match)
    import nibabel as nib

    ornt = _output_orientation(kind, rng)
    image = np.ascontiguousarray(nib.orientations.apply_orientation(image, ornt))
    seg = np.ascontiguousarray(nib.orientations.apply_orientation(seg, ornt))
    affine = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    axcodes = "".join(nib.aff2axcodes(affine))

    cid = case_id(seed, case_index)
    sex = pat["sex"]
    dens = DENSITY_CLASSES[pat["density"]]
    present = set(int(x) for x in np.unique(seg)) - {0}
    truth, grades = [], {}
    for v in verts:
        if v.label not in present:
            continue
        ha0, hm0, hp0 = v.heights(after=False)
        ha1, hm1, hp1 = v.heights(after=True)
        grades[v.label] = int(v.grade)
        truth.append(dict(
            case=cid, label=v.label, level=v.name, grade=v.grade, morphology=v.morphology,
            endplate=v.endplate if v.grade > 0 else "none",
            height_anterior_before_mm=round(ha0, 3), height_middle_before_mm=round(hm0, 3),
            height_posterior_before_mm=round(hp0, 3), height_anterior_after_mm=round(ha1, 3),
            height_middle_after_mm=round(hm1, 3), height_posterior_after_mm=round(hp1, 3),
            deformity_pct=round(100.0 * v.deformity, 2), trabecular_hu=round(v.trab_hu, 1),
            sex=sex, density_class=dens, orientation=kind, axcodes=axcodes,
            spacing_mm="x".join(f"{s:g}" for s in spacing), noise_sigma_hu=round(noise, 1)))
    meta = dict(sex=sex, density_class=dens, orientation=kind, axcodes=axcodes, spacing_mm=list(spacing),
                noise_sigma_hu=float(noise), shape=list(image.shape), kyphosis_scale=float(kyph),
                lordosis_scale=float(lord), cortical_hu=float(cortex_hu), disc_hu=float(disc_hu))
    return SynthCase(cid, image, seg, affine, grades, truth, meta)


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
    import multiprocessing

    return get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _meta(cases: int, seed: int, config: SynthConfig) -> dict:
    return {"generator": "vfnb.data.synth", "version": GENERATOR_VERSION, "seed": int(seed),
            "cases": int(cases), "config": config.to_dict(), "synthetic": True}


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
    cfg = config.to_dict()
    with output_folder(out, overwrite=overwrite) as staging:
        (staging / "img").mkdir()
        (staging / "seg").mkdir()
        jobs = [(str(staging), k, int(seed), cfg) for k in range(int(cases))]
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(jobs), desc="SynthSpine", unit="case")
        results = []
        if int(workers) == 1:
            for job in jobs:
                results.append(_write_case(job))
                if bar:
                    bar.update()
        else:
            with ProcessPoolExecutor(max_workers=int(workers), mp_context=_mp_context()) as pool:
                for res in pool.map(_write_case, jobs):
                    results.append(res)
                    if bar:
                        bar.update()
        if bar:
            bar.close()
        annotation = {name: grades for name, grades, _ in results}
        try:
            from .original import write_annotation
        except ImportError:  # the original-layout module not present: plain safe YAML
            from ..io import atomic_write_yaml as _w

            def write_annotation(path, mapping):
                return _w(path, {k: dict(sorted(v.items())) for k, v in mapping.items()})
        write_annotation(staging / "annotation.yaml", annotation)
        buf = _io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for _, _, rows in results:
            writer.writerows(rows)
        atomic_write_text(staging / TRUTH_FILE, buf.getvalue())
        atomic_write_json(staging / META_FILE, _meta(cases, seed, config))
    return out


# ============================================================== default dataset for the study
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def ensure_default_dataset(data_dir, cases: int = 64, seed: int = 0, size: int = 64, workers: int = 2,
                           tag: str = "synth", folds: int = 5, val_fraction: float = 0.2,
                           config: SynthConfig | None = None) -> dict:
    """Generate (when missing) and reuse (when present) the default SynthSpine dataset.

    Layout: ``data_dir/synthspine-s{seed}-n{cases}/original`` (original layout) and
    ``.../processed-{size}`` (patches + split lists ``{tag}-f0`` ...). A folder that
    exists is reused only when its recorded generator version and parameters match;
    otherwise a :class:`DatasetError` says so (nothing is overwritten).
    Returns ``{"original": Path, "processed": Path}``.
    """
    config = config or SynthConfig()
    root = Path(data_dir) / f"synthspine-s{int(seed)}-n{int(cases)}"
    original = root / "original"
    processed = root / f"processed-{int(size)}"
    want = _meta(cases, seed, config)
    if original.exists():
        have = _read_json(original / META_FILE)
        if have != json.loads(json.dumps(want)):
            raise DatasetError(
                f"{original}: exists but its {META_FILE} does not match SynthSpine {GENERATOR_VERSION} with "
                f"seed={seed}, cases={cases} and this config (missing, older generator or other parameters); "
                "delete the folder or choose another data directory")
    else:
        generate_dataset(original, cases=cases, seed=seed, workers=workers, config=config)

    recipe = {"source": want, "size": int(size), "tag": tag, "folds": int(folds),
              "val_fraction": float(val_fraction), "split_seed": int(seed)}
    marker = processed / "synth_processed.json"
    if processed.exists():
        have = _read_json(marker)
        if have != json.loads(json.dumps(recipe)):
            raise DatasetError(
                f"{processed}: exists but {marker.name} is missing or records other parameters "
                f"(expected size={size}, tag={tag}, folds={folds}, val_fraction={val_fraction} from "
                f"SynthSpine {GENERATOR_VERSION}); delete the folder or choose another data directory")
        return {"original": original, "processed": processed}

    from .preprocess import preprocess_dataset
    from .split import split_dataset

    staging = processed.with_name(f".tmp-{processed.name}-{os.getpid()}-{int(time.time())}")
    try:
        preprocess_dataset(original, staging, size=size, workers=workers)
        split_dataset(staging, tag, folds=folds, val_fraction=val_fraction, seed=seed)
        atomic_write_json(staging / marker.name, recipe)
        os.replace(staging, processed)
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return {"original": original, "processed": processed}
