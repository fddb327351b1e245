"""SynthSpine's settings: every rate and range of the generator, and the anatomy tables it draws from."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from ...errors import ParamsError


GENERATOR_VERSION = "synthspine-2.0"
DENSITY_CLASSES = ("normal", "osteopenic", "osteoporotic")
MORPHOLOGIES = ("wedge", "biconcave", "crush")
ORIENTATIONS = ("ras", "lps", "permuted", "oblique")
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
    level_height_sd: float = 0.045  # level-to-level height variation within a person
    wedge_ratio_sd: float = 0.045  # physiological Ha/Hp variation (v2 shape: wider)
    thoracic_wedge_max: float = 0.15  # normal thoracic Ha may be up to 15 % below Hp
    curve_scale: tuple = (0.6, 1.4)   # individual kyphosis / lordosis factor
    density_probs: tuple = (0.45, 0.35, 0.20)          # normal, osteopenic, osteoporotic
    trabecular_hu_per_level: float = 2.0  # denser cranially (HU per level above L1)
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
    density_fracture_risk: tuple = (0.7, 1.0, 1.5)  # relative risk by density class
    frailty_shape: float = 0.8    # gamma shape of a per-patient frailty (smaller = more clustered)
    neighbour_boost: float = 1.6  # risk multiplier below a fractured vertebra (clusters)
    max_fracture_prob: float = 0.9
    morphology_thoracic: tuple = (0.65, 0.20, 0.15)  # wedge, biconcave, crush (T4-T10)
    morphology_lumbar: tuple = (0.40, 0.35, 0.25)    # T11 and below
    p_inferior_endplate: float = 0.25  # a wedge collapsing at the inferior endplate
    p_subthreshold: float = 0.30       # normal vertebrae with a sub-threshold deformity
    subthreshold_range: tuple = (0.02, 0.15)
    # ---------------------------------------------------------------- v2 shape
    # Normal variation as in real spines, so that a normal vertebra's heights may look
    # deformed against a population reference (what makes grade 1 hard), and the faint
    # non-height signs of a fracture with their strength per grade (grade 1, 2, 3).
    # Normal Ha/Hp: the level's mean (the anatomy table) lowered at the thoracolumbar
    # junction, with individual variation, clipped to a floor by region.
    thoracolumbar_levels: tuple = ("T11", "T12", "T13", "L1")
    thoracolumbar_wedge: float = 0.06      # physiological anterior wedging: mean Ha/Hp lowered by this
    thoracolumbar_ratio_floor: float = 0.79  # normal Ha/Hp at T11-L1 down to this
    lumbar_ratio_floor: float = 0.86       # L2 and below
    endplate_concavity_mm: tuple = (0.2, 1.1)  # central endplate concavity (each endplate), usual range
    p_deep_concavity: float = 0.15         # normals with deep (biconcave-looking) endplates
    deep_concavity_mm: tuple = (1.2, 2.4)
    body_depth_sd: float = 0.05            # individual variation of body depth and width (fraction)
    patient_trabecular_sd: float = 25.0    # per-patient trabecular HU offset: density varies within a class too
    p_short_body: float = 0.05             # short-bodied normals: both heights lower than the level's
    short_body_scale: tuple = (0.80, 0.90)
    p_degenerative: float = 0.07           # mildly degenerative normals: anterior narrowing, sclerosis, irregularity
    degenerative_ratio_loss: tuple = (0.03, 0.10)
    degenerative_sclerosis_hu: tuple = (20.0, 70.0)
    degenerative_irregularity_mm: tuple = (0.2, 0.6)
    # fracture signs by grade 1-3 (each a (low, high) range drawn uniformly; see fracture_signs.py)
    compaction_hu: tuple = ((40.0, 100.0), (60.0, 130.0), (80.0, 160.0))  # denser band beneath the endplate
    compaction_mm: tuple = ((1.5, 2.5), (1.5, 3.0), (2.0, 3.5))          # its thickness
    p_no_compaction: tuple = (0.25, 0.15, 0.10)   # fractures without a visible band (older, remodelled)
    irregularity_mm: tuple = ((0.2, 0.5), (0.3, 0.8), (0.4, 1.0))        # endplate waviness amplitude
    step_mm: tuple = ((0.0, 0.6), (0.3, 1.0), (0.5, 1.5))                # endplate step at the fracture line
    buckle: tuple = ((0.01, 0.035), (0.03, 0.06), (0.04, 0.08))          # anterior cortical bulge (fraction)
    # fracture-enriched test cohort (the default study's extra test-only cases): its own rates
    test_fracture_rate: float = 0.45
    test_grade_mix: tuple = (0.60, 0.25, 0.15)
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
    # ---- v2 appearance (SynthSpine 2.0): bone density, noise texture, canal, surroundings, label maps
    # trabecular HU at L1 by density class: a middle-aged to elderly screening cohort, from a
    # young-normal spine (~180 HU) down to osteoporotic (< 100 HU)
    trabecular_hu_l1: tuple = (155.0, 128.0, 105.0)
    trabecular_hu_sd: float = 22.0
    trabecular_texture_hu: tuple = (30.0, 45.0)       # fine trabecular texture (SD, HU)
    trabecular_patchiness_hu: tuple = (8.0, 20.0)     # coarse within-body heterogeneity (amplitude, HU)
    noise_grain_vox: tuple = (0.47, 0.56)  # in-plane Gaussian width (voxels) shaping the noise: the kernel's grain
    noise_grain_slice: float = 0.4       # the same along the slice axis, as a fraction of the in-plane width
    csf_hu: tuple = (0.0, 20.0)          # the thecal sac in the spinal canal
    epidural_fat_mm: float = 1.2         # the fat rim between the canal wall and the thecal sac
    blood_hu: tuple = (35.0, 50.0)       # aorta, unenhanced
    aorta_radius_mm: tuple = (9.0, 13.0)
    p_aortic_calcification: float = 0.35
    kidney_hu: tuple = (25.0, 40.0)      # unenhanced renal parenchyma
    bowel_gas_pockets: tuple = (0, 5)    # pockets of gas in front of the lumbar spine (inclusive range)
    # the label map written as seg/: a segmenter's, generous around the bone (seg_exact/ keeps the exact one)
    seg_margin_mm: tuple = (0.6, 1.4)    # how far the label reaches beyond the bone (varies smoothly)
    seg_margin_scale_mm: float = 6.0     # the length over which that reach varies (irregular boundary)
    p_seg_disc_bleed: float = 0.25       # per endplate: the label bleeds into the adjacent disc
    seg_disc_bleed_mm: tuple = (1.0, 2.5)

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


def _check_config(config: SynthConfig) -> None:
    if not 6 <= config.min_vertebrae <= config.max_vertebrae:
        raise ParamsError(f"SynthSpine config: min_vertebrae/max_vertebrae = {config.min_vertebrae}/"
                          f"{config.max_vertebrae}; expected 6 <= min <= max")
    for name in ("density_probs", "grade_mix", "test_grade_mix", "orientation_probs", "morphology_thoracic",
                 "morphology_lumbar"):
        p = np.asarray(getattr(config, name), dtype=float)
        if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
            raise ParamsError(f"SynthSpine config: {name} = {list(p)}; expected non-negative probabilities summing to 1")
    _check_appearance(config)
    lo, hi = config.inplane_spacing
    if not (0 < lo <= hi):
        raise ParamsError(f"SynthSpine config: inplane_spacing = {config.inplane_spacing}; expected 0 < low <= high")
    _check_shape(config)


def _check_range(name: str, value, lo: float, hi: float) -> None:
    try:
        a, b = (float(x) for x in value)
    except (TypeError, ValueError):
        raise ParamsError(f"SynthSpine config: {name} = {value!r}; expected a (low, high) pair") from None
    if not lo <= a <= b <= hi:
        raise ParamsError(f"SynthSpine config: {name} = {value!r}; expected {lo} <= low <= high <= {hi}")


def _check_shape(config: SynthConfig) -> None:
    """The v2 shape block: probabilities in [0, 1], ranges ordered and bounded, one range per grade."""
    for name in ("p_deep_concavity", "p_short_body", "p_degenerative", "test_fracture_rate"):
        if not 0.0 <= float(getattr(config, name)) <= 1.0:
            raise ParamsError(f"SynthSpine config: {name} = {getattr(config, name)!r}; expected a probability in [0, 1]")
    for name in ("thoracolumbar_ratio_floor", "lumbar_ratio_floor"):
        if not 0.6 <= float(getattr(config, name)) <= 1.0:
            raise ParamsError(f"SynthSpine config: {name} = {getattr(config, name)!r}; expected a ratio in [0.6, 1]")
    if not 0.0 <= float(config.thoracolumbar_wedge) <= 0.2:
        raise ParamsError(f"SynthSpine config: thoracolumbar_wedge = {config.thoracolumbar_wedge!r}; expected 0-0.2")
    if not 0.0 <= float(config.patient_trabecular_sd) <= 60.0:
        raise ParamsError(f"SynthSpine config: patient_trabecular_sd = {config.patient_trabecular_sd!r}; "
                          "expected 0-60 HU")
    if not 0.0 <= float(config.body_depth_sd) <= 0.2:
        raise ParamsError(f"SynthSpine config: body_depth_sd = {config.body_depth_sd!r}; expected 0-0.2")
    unknown = set(config.thoracolumbar_levels) - set(dict(config.level_weights))
    if unknown:
        raise ParamsError(f"SynthSpine config: thoracolumbar_levels has {sorted(unknown)}; expected level names "
                          f"of level_weights")
    for name, lo, hi in (("endplate_concavity_mm", 0.0, 4.0), ("deep_concavity_mm", 0.0, 4.0),
                         ("short_body_scale", 0.5, 1.0), ("degenerative_ratio_loss", 0.0, 0.2),
                         ("degenerative_sclerosis_hu", 0.0, 400.0), ("degenerative_irregularity_mm", 0.0, 2.0)):
        _check_range(name, getattr(config, name), lo, hi)
    for name, lo, hi in (("compaction_hu", 0.0, 400.0), ("compaction_mm", 0.5, 6.0), ("irregularity_mm", 0.0, 2.0),
                         ("step_mm", 0.0, 3.0), ("buckle", 0.0, 0.2)):
        per_grade = getattr(config, name)
        if len(per_grade) != 3:
            raise ParamsError(f"SynthSpine config: {name} = {per_grade!r}; expected one (low, high) range per grade 1-3")
        for grade, value in enumerate(per_grade, start=1):
            _check_range(f"{name}[grade {grade}]", value, lo, hi)
    if len(config.p_no_compaction) != 3 or not all(0.0 <= float(p) <= 1.0 for p in config.p_no_compaction):
        raise ParamsError(f"SynthSpine config: p_no_compaction = {config.p_no_compaction!r}; expected three "
                          "probabilities in [0, 1], one per grade 1-3")


def _check_appearance(config: SynthConfig) -> None:
    """The v2 appearance block: every range ordered and physically plausible."""
    hu = np.asarray(config.trabecular_hu_l1, dtype=float)
    if hu.shape != (3,) or not (np.all(np.diff(hu) < 0) and 40.0 <= hu.min() and hu.max() <= 300.0):
        raise ParamsError(f"SynthSpine config: trabecular_hu_l1 = {config.trabecular_hu_l1}; expected three HU "
                          "values (normal, osteopenic, osteoporotic), decreasing, within 40-300")
    for name, low, high in (("trabecular_texture_hu", 0.0, 150.0), ("trabecular_patchiness_hu", 0.0, 100.0),
                            ("noise_grain_vox", 0.0, 3.0), ("csf_hu", -20.0, 40.0), ("blood_hu", 0.0, 80.0),
                            ("aorta_radius_mm", 5.0, 20.0), ("kidney_hu", 0.0, 60.0), ("bowel_gas_pockets", 0, 20),
                            ("seg_margin_mm", 0.0, 4.0), ("seg_disc_bleed_mm", 0.0, 8.0)):
        _check_range(name, getattr(config, name), low, high)
    for name, low, high in (("trabecular_hu_sd", 0.0, 60.0), ("noise_grain_slice", 0.0, 2.0),
                            ("epidural_fat_mm", 0.0, 4.0), ("p_aortic_calcification", 0.0, 1.0),
                            ("seg_margin_scale_mm", 1.0, 50.0), ("p_seg_disc_bleed", 0.0, 1.0)):
        value = float(getattr(config, name))
        if not low <= value <= high:
            raise ParamsError(f"SynthSpine config: {name} = {value}; expected {low}-{high}")
