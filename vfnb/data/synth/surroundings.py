"""What lies around the spine in a CT: aorta, inferior vena cava, kidneys and bowel gas (SynthSpine v2).

A real spine CT is never bone in a uniform muscle bath: the aorta runs along the
anterior-left of the vertebral bodies, the inferior vena cava anterior-right in the
abdomen, the kidneys lie lateral to the psoas at the thoracolumbar junction in a
capsule of fat, and pockets of bowel gas (-1000 HU, with a soft-tissue wall) sit in
front of the lumbar spine. None of them is labelled; they give the network's input
cube the edges and dark and bright structures a real one has next to the bone.

Everything is painted into the background HU volume before the vertebrae are drawn,
from the same per-slice look-ups :func:`vfnb.data.synth.drawing._background` uses
(the spine's centre line ``cy``, the body half-width ``a`` and half-depth ``b``, the
level position ``pos``). Shapes are cross-sections per slice (circles, ellipses), so
the cost is a few whole-volume array operations per structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SynthConfig


@dataclass
class SliceFrame:
    """The background's coordinates: world X (mm, + = patient left is -), Y relative to the
    body centre line (``rel``, mm, + anterior), scanner z (mm) and the per-slice look-ups."""

    X: np.ndarray
    rel: np.ndarray
    z: np.ndarray     # (1, 1, nz)
    pos: np.ndarray   # (1, 1, nz) level position (T1 = 1 ... L1 = 13 ...)
    a: np.ndarray     # (1, 1, nz) body half-width
    b: np.ndarray     # (1, 1, nz) body half-depth


def _paint(hu: np.ndarray, mask: np.ndarray, value: float) -> None:
    hu[np.broadcast_to(mask, hu.shape)] = np.float32(value)


def _body_front(f: SliceFrame, x: np.ndarray) -> np.ndarray:
    """The anterior surface of the body (rel, mm) at lateral offset ``x`` (per slice)."""
    return f.b * np.sqrt(np.clip(1.0 - (x / f.a) ** 2, 0.0, 1.0))


def _aorta(hu, f: SliceFrame, rng, config: SynthConfig, fat: float) -> None:
    """Descending then abdominal aorta, anterior-left of the bodies, ending at the bifurcation (~L4)."""
    r = np.float32(rng.uniform(*config.aorta_radius_mm))
    blood = rng.uniform(*config.blood_hu)
    t = np.clip((f.pos - 10.0) / 3.0, 0.0, 1.0)         # thoracic: lateral; abdominal: in front
    xc = -((0.75 - 0.45 * t) * f.a + 0.4 * r)           # patient left is -x (RAS)
    yc = _body_front(f, xc) + r + 2.5 - (1.0 - t) * 0.45 * f.b
    on = f.pos <= 16.2
    d2 = (f.X - xc) ** 2 + (f.rel - yc) ** 2
    _paint(hu, (d2 < (r + 2.5) ** 2) & on, fat)          # periaortic fat
    _paint(hu, (d2 < r * r) & on, blood)
    if rng.random() < config.p_aortic_calcification:
        # calcified plaque: a bright arc of the anterior wall over a few stretches of the vessel
        z0, z1 = float(f.z.min()), float(f.z.max())
        starts = rng.uniform(z0, z1, size=3)
        lengths = rng.uniform(3.0, 12.0, size=3)
        band = np.zeros(f.z.shape, bool)
        for s, n in zip(starts, lengths):
            band |= (f.z >= s) & (f.z < s + n)
        wall = (d2 < r * r) & (d2 > (r - 1.3) ** 2) & (f.rel - yc > 0.3 * r) & band & on
        _paint(hu, wall, rng.uniform(350.0, 800.0))
    # the common iliac arteries below the bifurcation
    below = f.pos > 16.2
    for side in (-1.0, 1.0):
        xi = side * (0.6 * r + 3.0 + 4.0 * np.clip(f.pos - 16.2, 0.0, 2.0))
        yi = _body_front(f, xi) + 0.65 * r + 2.0
        _paint(hu, ((f.X - xi) ** 2 + (f.rel - yi) ** 2 < (0.65 * r) ** 2) & below, blood)


def _vena_cava(hu, f: SliceFrame, rng, config: SynthConfig) -> None:
    """The inferior vena cava: a flattened ellipse anterior-right of the lumbar bodies."""
    rx, ry = rng.uniform(9.0, 13.0), rng.uniform(5.0, 8.0)
    xc = 0.45 * f.a + rx
    yc = _body_front(f, xc) + ry + 3.0
    on = (f.pos >= 11.5) & (f.pos <= 16.5)
    _paint(hu, (((f.X - xc) / rx) ** 2 + ((f.rel - yc) / ry) ** 2 < 1.0) & on, rng.uniform(*config.blood_hu))


def _kidneys(hu, f: SliceFrame, rng, config: SynthConfig, fat: float, psoas: np.ndarray) -> None:
    """Both kidneys (the right one lower), lateral to the psoas, each in a capsule of perirenal fat."""
    value = rng.uniform(*config.kidney_hu)
    for side, centre in ((-1.0, rng.uniform(12.8, 13.3)), (1.0, rng.uniform(13.3, 13.9))):
        xk = side * (f.a + rng.uniform(36.0, 44.0))
        yk = rng.uniform(-14.0, -4.0)
        ru, rv, rp = rng.uniform(18.0, 24.0), rng.uniform(24.0, 30.0), rng.uniform(1.3, 1.7)
        e = ((f.X - xk) / ru) ** 2 + ((f.rel - yk) / rv) ** 2 + ((f.pos - centre) / rp) ** 2
        _paint(hu, (e < 1.45) & ~psoas, fat)
        _paint(hu, (e < 1.0) & ~psoas, value)


def _bowel_gas(hu, f: SliceFrame, rng, config: SynthConfig, soft: float) -> None:
    """Pockets of gas with a thin soft-tissue wall in front of the lumbar spine."""
    lo, hi = config.bowel_gas_pockets
    count = int(rng.integers(int(lo), int(hi) + 1))
    lumbar = np.nonzero(f.pos.ravel() >= 13.0)[0]
    zs = f.z.ravel()
    for _ in range(count):
        r = rng.uniform(4.0, 10.0)
        x0, y0 = rng.uniform(-40.0, 40.0), rng.uniform(22.0, 48.0) + float(np.median(f.b))
        if len(lumbar) == 0:
            continue
        z0 = zs[int(lumbar[int(rng.integers(len(lumbar)))])]
        k = (np.abs(zs - z0) < r + 2.0).nonzero()[0]
        sl = slice(int(k.min()), int(k.max()) + 1)

        def slab(arr):
            return arr[:, :, sl] if arr.shape[2] > 1 else arr

        d2 = (slab(f.X) - x0) ** 2 + (slab(f.rel) - y0) ** 2 + ((f.z[:, :, sl] - z0) * 1.3) ** 2
        sub = hu[:, :, sl]
        sub[np.broadcast_to(d2 < (r + 1.5) ** 2, sub.shape)] = np.float32(soft)
        sub[np.broadcast_to(d2 < r * r, sub.shape)] = np.float32(config.air_hu)


def add_surroundings(hu: np.ndarray, frame: SliceFrame, rng, config: SynthConfig, *, fat: float, soft: float,
                     psoas: np.ndarray) -> None:
    """Paint the aorta, the inferior vena cava, the kidneys and bowel gas into ``hu`` (in place)."""
    _kidneys(hu, frame, rng, config, fat, psoas)
    _vena_cava(hu, frame, rng, config)
    _aorta(hu, frame, rng, config, fat)
    _bowel_gas(hu, frame, rng, config, soft)
