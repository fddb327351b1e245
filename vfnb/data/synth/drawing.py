"""Drawing the anatomy into the HU volume: soft tissue, discs, and each vertebra (body, posterior elements, ribs).

Each vertebra is drawn in its own local frame (mm): u lateral, v anterior, w superior,
origin at the body centre; every primitive is evaluated only inside its own bounding box."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import _POS, SynthConfig
from .fracture_signs import cortical_buckling, dense_band
from .geometry import _capsule, _corners, _ellipse2, _frac, _Grid
from .patient import _Vertebra
from .surroundings import SliceFrame, add_surroundings


def _background(grid: _Grid, verts: list[_Vertebra], pat: dict, rng, config: SynthConfig) -> np.ndarray:
    """Soft-tissue HU over the whole grid: muscle, fat, mediastinum, lungs, the surroundings
    (:mod:`.surroundings`: aorta, vena cava, kidneys, bowel gas), air (float32).

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
    hu[np.broadcast_to(lungs, hu.shape)] = lung
    # aorta, vena cava, kidneys, bowel gas (v2 appearance)
    add_surroundings(hu, SliceFrame(X, rel, zs[None, None, :], pos_z, a_z, b_z), rng, config,
                     fat=fat, soft=soft, psoas=psoas)
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
    patchiness_hu: float = 0.0   # coarse within-body heterogeneity (v2 appearance)
    csf_hu: float = 10.0         # the thecal sac
    epidural_fat_hu: float = -100.0
    epidural_fat_mm: float = 0.0


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


def _patchiness(loc: _Local, sl, rng) -> np.ndarray:
    """Smooth heterogeneity (about unit SD) over the sub-box ``sl``: products of waves 12-30 mm long along the grid axes.

    Real trabecular bone is not equally dense throughout a body (denser under the
    endplates and posteriorly, sparser centrally, patchy in osteoporosis); this coarse
    field, added to the fine texture, gives the core a spread of values at scales the
    fine texture cannot. Separable in the grid's axes, so it costs one product per term.
    """
    grid, box = loc.grid, loc.box
    axes = [(np.arange(box[d].start, box[d].stop)[sl[d]] * grid.spacing[d]).astype(np.float32) for d in range(3)]
    out = None
    for _ in range(2):
        waves = [np.cos(np.float32(2 * np.pi / rng.uniform(12.0, 30.0)) * ax + np.float32(rng.uniform(0, 6.3)))
                 for ax in axes]
        term = waves[0][:, None, None] * waves[1][None, :, None] * waves[2][None, None, :]
        out = term if out is None else out + term
    return out * np.float32(2.0)  # each term has SD 1/(2 sqrt 2); two terms: SD ~ 1


def _trabecular_texture(loc: _Local, s: _Posterior, lo, hi, rng, tissue: _Tissue) -> np.ndarray:
    """Smooth noise over the body and posterior elements in units of ``tissue.texture_hu`` (zero elsewhere):
    the fine trabecular texture (unit variance) plus the coarse patchiness scaled to its HU."""
    v = loc.v
    texture = np.zeros(loc.shape, np.float32)
    reach = max(v.a, s.cw + s.lam + s.pw) * 1.3
    core = loc.part((-reach, lo[1], lo[2]), (reach, hi[1], hi[2]))
    if core is not None:
        texture[core] = _texture(texture[core].shape, rng, 0.8 / loc.grid.spacing)
        if tissue.patchiness_hu > 0:
            texture[core] += np.float32(tissue.patchiness_hu / tissue.texture_hu) * _patchiness(loc, core, rng)
    return texture


def _thecal_sac(loc: _Local, s: _Posterior, sub: np.ndarray, lo, hi, tissue: _Tissue) -> np.ndarray:
    """``sub`` with the spinal canal filled: a rim of epidural fat, then the CSF-filled thecal sac.

    Drawn over the vertebra's whole height and the half discs beside it (neighbours'
    canals overlap and agree), only where no bone is drawn yet.
    """
    sl = loc.part((-s.cw - 1, s.vc - s.cd - 1, lo[2]), (s.cw + 1, s.vc + s.cd + 1, hi[2]))
    if sl is None:
        return sub
    d = _ellipse2(loc.u[sl], loc.vv[sl] - s.vc, s.cw, s.cd)
    soft = sub[sl] < 150.0
    canal = _frac(d, loc.er) * soft
    sac = _frac(d - tissue.epidural_fat_mm, loc.er) * soft
    out = sub.copy()
    out[sl] = (sub[sl] * (1 - canal) + (canal - sac) * np.float32(tissue.epidural_fat_hu)
               + sac * np.float32(tissue.csf_hu))
    return out


def _body_scale(v: _Vertebra, V, W, top, bot, ct, cb):
    """Radial scale of the body cross-section: waist, cortical buckling under a collapse, crush bulge."""
    H = v.Hmid
    tt = np.clip(W / (0.5 * H), -1.0, 1.0)
    scale = 1.0 - v.waist * (1.0 - tt * tt)
    scale = scale * cortical_buckling(v.signs, V, W, v.b, top, bot, ct, cb)
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
    if v.signs.band_hu:  # a fracture's compaction band, a degenerative normal's sclerosis
        body.trab[bs] += dense_band(v.signs, W, top, bot, ct, cb)
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
    texture = _trabecular_texture(loc, s, lo, hi, rng, tissue)
    body = _vertebral_body(loc, texture, tissue)
    d = _posterior_elements(loc, s, lo, hi)
    post_frac = _frac(d, loc.eiso) * (1.0 - body.frac)
    post_inner = _frac(d - 1.2, loc.eiso) * (1.0 - body.frac)
    sub = _thecal_sac(loc, s, hu[box], lo, hi, tissue)
    if s.thoracic:
        sub = _ribs(loc, s, sub, (1.0 - body.frac) * (1.0 - post_frac), texture, tissue)
    post_hu = (post_frac - post_inner) * tissue.cortex_hu + post_inner * (v.trab_hu + 120.0 + tissue.texture_hu * texture)
    sub = sub * (1 - post_frac) + post_hu
    sub = sub * (1 - body.frac) + body.shell * tissue.cortex_hu + body.inner * body.trab
    hu[box] = sub
    _label_vertebra(seg, box, body.inside | (d > 0), v.label)
