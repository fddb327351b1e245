"""The faint signs of a fracture beyond height loss, and the look-alikes that normal spines carry.

A fractured endplate in SynthSpine may show, besides the height loss that defines
its Genant grade:

- **endplate irregularity**: a waviness of the collapsed endplate (amplitude in mm,
  a product of two sines across the endplate);
- **endplate step**: the endplate on one side of a fracture line sits lower than
  on the other (a smooth step across the antero-posterior axis, in mm);
- **a compaction band**: trabecular bone beneath the collapsed endplate pressed
  denser (HU added over a band a few mm thick); older, remodelled fractures show
  none, so a share of fractures per grade is drawn without it;
- **anterior cortical buckling**: the front wall bulges just beneath the collapsed
  endplate (a fraction of the body's radius), in wedge and crush fractures.

The strength of each sign is a ``(low, high)`` range per grade in
:class:`~vfnb.data.synth.config.SynthConfig` (the "v2 shape" block), drawn
uniformly. The ranges are kept small on purpose: at grade 1 the signs are about
the size of a voxel (a fraction of a millimetre, a few tens of HU under noise of
10-40 HU), so a mild fracture is hard, not obvious, and no single intensity
statistic of the body separates fractured from normal vertebrae well
(:mod:`vfnb.data.synth.statistics` measures this).

Normal vertebrae are not all clean: a mildly degenerative normal carries endplate
sclerosis (the same kind of dense band, under both endplates) and a slight
irregularity, without any collapse. Signs then do not give a fracture away on
their own, as in real spines.

Every function works on arrays in a vertebra's local frame (mm; u lateral,
v anterior, w superior) and on the collapse amplitudes ``ct`` / ``cb`` of its top
and bottom endplates (mm), as :meth:`~vfnb.data.synth.patient._Vertebra.endplates`
returns them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SynthConfig


@dataclass(frozen=True)
class EndplateSigns:
    """The non-height signs drawn for one vertebra (all zero: none)."""

    irregularity_mm: float = 0.0
    phase: tuple = (0.0, 0.0, 1.0, 1.0)  # waviness: phase across u, phase across v, wavenumbers (1/mm)
    step_mm: float = 0.0
    step_at: float = 0.0                 # where the fracture line crosses the endplate (v / half-depth)
    band_hu: float = 0.0                 # dense band: compaction (fracture) or sclerosis (degenerative)
    band_mm: float = 2.0
    buckle: float = 0.0
    both_endplates: bool = False         # degenerative: signs on both endplates, no collapse needed

    @property
    def any(self) -> bool:
        return bool(self.irregularity_mm or self.step_mm or self.band_hu or self.buckle)


NO_SIGNS = EndplateSigns()


def _uniform(rng: np.random.Generator, bounds) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi))


def _phase(rng: np.random.Generator) -> tuple:
    return (float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3)),
            float(rng.uniform(0.35, 0.7)), float(rng.uniform(0.35, 0.7)))


def fracture_signs(rng: np.random.Generator, config: SynthConfig, grade: int, morphology: str) -> EndplateSigns:
    """The signs of one fracture of ``grade`` (1-3), strengths from the config's ranges for that grade."""
    i = int(grade) - 1
    band = _uniform(rng, config.compaction_hu[i])
    band_mm = _uniform(rng, config.compaction_mm[i])
    if rng.random() < config.p_no_compaction[i]:
        band = 0.0
    buckle = _uniform(rng, config.buckle[i])
    return EndplateSigns(
        irregularity_mm=_uniform(rng, config.irregularity_mm[i]), phase=_phase(rng),
        step_mm=_uniform(rng, config.step_mm[i]), step_at=float(rng.uniform(-0.4, 0.5)),
        band_hu=band, band_mm=band_mm, buckle=buckle if morphology in ("wedge", "crush") else 0.0)


def degenerative_signs(rng: np.random.Generator, config: SynthConfig) -> EndplateSigns:
    """A mildly degenerative normal's endplates: sclerosis under both, a slight irregularity, no step."""
    return EndplateSigns(irregularity_mm=_uniform(rng, config.degenerative_irregularity_mm), phase=_phase(rng),
                         band_hu=_uniform(rng, config.degenerative_sclerosis_hu), band_mm=float(rng.uniform(2.0, 4.0)),
                         both_endplates=True)


def _weights(signs: EndplateSigns, ct, cb):
    """How much each endplate (top, bottom) shows the signs: by its collapse, or fully when degenerative."""
    if signs.both_endplates:
        return 1.0, 1.0
    return np.clip(ct / 0.5, 0.0, 1.0), np.clip(cb / 0.5, 0.0, 1.0)


def endplate_relief(signs: EndplateSigns, u, v, b: float, ct, cb):
    """Downward shift of the top endplate and upward shift of the bottom one (mm): waviness and step."""
    if not (signs.irregularity_mm or signs.step_mm):
        return 0.0, 0.0
    p1, p2, k1, k2 = signs.phase
    relief = signs.irregularity_mm * np.sin(k1 * u + p1) * np.sin(k2 * v + p2)
    if signs.step_mm:
        # the anterior part of the endplate sits lower than the posterior one, over ~1.5 mm
        relief = relief + signs.step_mm * 0.5 * (1.0 + np.tanh((v / b - signs.step_at) * b / 1.5))
    wt, wb = _weights(signs, ct, cb)
    return relief * wt, relief * wb


def dense_band(signs: EndplateSigns, W, top, bot, ct, cb):
    """HU added beneath the affected endplates: compacted (fracture) or sclerotic (degenerative) bone."""
    if not signs.band_hu:
        return 0.0
    cm = signs.band_mm
    wt, wb = _weights(signs, ct, cb)
    # centred half its thickness beneath the endplate, fading within about its thickness
    band = (wt * np.exp(-(((top - W) - 0.5 * cm) / (0.5 * cm)) ** 2)
            + wb * np.exp(-(((W - bot) - 0.5 * cm) / (0.5 * cm)) ** 2))
    return signs.band_hu * np.clip(band, 0.0, 1.0)


def cortical_buckling(signs: EndplateSigns, V, W, b: float, top, bot, ct, cb):
    """Radial scale factor of the body wall: an anterior bulge just beneath the collapsed endplate."""
    if not signs.buckle:
        return 1.0
    depth = np.where(ct >= cb, top - W, W - bot)
    return 1.0 + (signs.buckle * np.exp(-((depth - 2.5) / 1.8) ** 2) * (np.maximum(ct, cb) > 0.3)
                  * np.clip(V / b + 0.3, 0.0, 1.0))
