"""One patient: the run of vertebrae, their sizes, bone density and fractures (no image yet)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...levels import level_name
from .config import _ANATOMY, _ORDER, _POS, HEIGHT_POSITIONS, MORPHOLOGIES, SynthConfig
from .fracture_signs import NO_SIGNS, EndplateSigns, degenerative_signs, endplate_relief, fracture_signs


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
    signs: EndplateSigns = NO_SIGNS  # non-height signs: a fracture's, or a degenerative normal's look-alikes
    variant: str = "typical"   # normal variant: typical / deep_concavity / short_body / degenerative
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
        if with_signs and self.signs.any:
            dt, db = endplate_relief(self.signs, u, v, self.b, ct, cb)
            top, bot = top - dt, bot + db
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



def _draw_run(rng: np.random.Generator, config: SynthConfig) -> list[int]:
    """Consecutive levels within [first_level, last_level], rarely with a T13 or an L6 (VerSe labels)."""
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
    return run


def _ratio_floor(config: SynthConfig, name: str, pos: float) -> float:
    """The lowest normal Ha/Hp of a level: thoracic wedging, the thoracolumbar junction's, lumbar."""
    if name in config.thoracolumbar_levels:
        return config.thoracolumbar_ratio_floor
    return 1.0 - config.thoracic_wedge_max if pos <= 12.5 else config.lumbar_ratio_floor


def _normal_variant(rng: np.random.Generator, config: SynthConfig) -> str:
    """Which normal variant a vertebra is: most are typical; a few deep-concave, short-bodied or degenerative."""
    p = (config.p_deep_concavity, config.p_short_body, config.p_degenerative)
    x = rng.random()
    for name, edge in zip(("deep_concavity", "short_body", "degenerative"), np.cumsum(p)):
        if x < edge:
            return name
    return "typical"


def _new_vertebra(rng: np.random.Generator, config: SynthConfig, lab: int, size: float, density: int,
                  hu_offset: float = 0.0) -> _Vertebra:
    """One intact vertebra of level ``lab``: the level's mean anatomy scaled to the patient, with individual variation.

    Normal variation (the config's v2 shape block): Ha/Hp varies around the level's
    mean, lower at the thoracolumbar junction (physiological wedging), down to a floor
    by region; endplate concavity varies, deep in some normals; body depth and width
    vary per vertebra; a few normals are short-bodied or mildly degenerative (anterior
    narrowing, endplate sclerosis and irregularity). None of this is a fracture: the
    grade is set later against these, the vertebra's own, heights.
    """
    H, ratio, depth, width, disc = _interp_anatomy(lab)
    pos, name = _POS[lab], level_name(lab)
    variant = _normal_variant(rng, config)
    H *= size * (1.0 + config.level_height_sd * rng.standard_normal())
    if variant == "short_body":
        H *= rng.uniform(*config.short_body_scale)
    if name in config.thoracolumbar_levels:
        ratio -= config.thoracolumbar_wedge
    ratio = ratio + config.wedge_ratio_sd * rng.standard_normal()
    if variant == "degenerative":
        ratio -= rng.uniform(*config.degenerative_ratio_loss)
    ratio = float(np.clip(ratio, _ratio_floor(config, name, pos), 1.22))
    Hp0 = 2.0 * H / (1.0 + ratio)
    Ha0 = ratio * Hp0
    lum = float(np.clip((pos - 10.0) / 4.0, 0.0, 1.0))
    trab = (config.trabecular_hu_l1[density] + hu_offset + config.trabecular_hu_sd * rng.standard_normal()
            + config.trabecular_hu_per_level * (13.0 - pos))
    concavity = config.deep_concavity_mm if variant == "deep_concavity" else config.endplate_concavity_mm
    sd = config.body_depth_sd
    return _Vertebra(
        label=lab, name=name, Ha0=float(Ha0), Hp0=float(Hp0),
        a=float(0.5 * width * size * (1 + sd * rng.standard_normal())),
        b=float(0.5 * depth * size * (1 + sd * rng.standard_normal())),
        disc_below=float(disc * size * (1 + 0.12 * rng.standard_normal())),
        waist=float(rng.uniform(0.04, 0.09)), dep_top=float(rng.uniform(*concavity)),
        dep_bot=float(rng.uniform(*concavity)), trab_hu=float(trab), lumbar_t=lum, variant=variant,
        signs=degenerative_signs(rng, config) if variant == "degenerative" else NO_SIGNS)


def _fracture(rng: np.random.Generator, config: SynthConfig, v: _Vertebra, morph: str) -> None:
    """Make ``v`` a fracture: a grade, its deformity within the grade's band, and the faint signs."""
    v.grade = 1 + int(rng.choice(3, p=np.asarray(config.grade_mix, dtype=float)))
    lo_d, hi_d = config.grade_bands[v.grade - 1]
    v.deformity = float(rng.uniform(lo_d, hi_d))
    v.morphology = morph
    v.signs = fracture_signs(rng, config, v.grade, morph)


def _deform(rng: np.random.Generator, config: SynthConfig, v: _Vertebra, fractured: bool) -> None:
    """A fracture, a sub-threshold deformity (a short or slightly wedged normal vertebra, no signs) or neither."""
    mprobs = config.morphology_thoracic if _POS[v.label] <= 10.0 else config.morphology_lumbar
    morph = MORPHOLOGIES[int(rng.choice(3, p=np.asarray(mprobs, dtype=float)))]
    if fractured:
        _fracture(rng, config, v, morph)
    elif rng.random() < config.p_subthreshold:
        v.deformity = float(rng.uniform(*config.subthreshold_range))
        v.morphology = morph
    else:
        rng.random()  # keep the stream aligned whatever the branch
    if v.morphology == "wedge":
        v.endplate = "inferior" if rng.random() < config.p_inferior_endplate else "superior"
    elif v.morphology != "none":
        v.endplate = "both"
    if v.deformity > 0:
        _solve_collapse(v)
    if v.grade == 0:
        v.morphology = "none"  # the table's morphology names fractures only


def _draw_fractures(rng: np.random.Generator, config: SynthConfig, verts: list[_Vertebra], density: int) -> None:
    """Fractures by level x density x a per-patient frailty, clustered below a fractured neighbour."""
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
        _deform(rng, config, v, fractured)


def sample_patient(rng: np.random.Generator, config: SynthConfig) -> dict:
    """Draw one patient's run of vertebrae, sizes, bone density and fractures (no image)."""
    sex = "F" if rng.random() < config.p_female else "M"
    density = int(rng.choice(3, p=np.asarray(config.density_probs, dtype=float)))
    size = (config.female_scale if sex == "F" else 1.0) * (1.0 + config.size_sd * rng.standard_normal())
    hu_offset = config.patient_trabecular_sd * rng.standard_normal()  # density varies within a class too
    verts = [_new_vertebra(rng, config, lab, size, density, hu_offset) for lab in _draw_run(rng, config)]
    _draw_fractures(rng, config, verts, density)
    return dict(sex=sex, density=density, size=float(size), vertebrae=verts)


def _solve_collapse(v: _Vertebra) -> None:
    """Set ``v.delta`` so the largest height reduction at the Genant positions equals ``v.deformity``."""
    v.delta = 1.0
    before = np.array(v.heights(after=False))
    after = np.array(v.heights(after=True))
    unit = (before - after) / before  # reduction per mm of collapse (linear in delta)
    v.delta = float(v.deformity / unit.max())
