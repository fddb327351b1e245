"""Geometry of the synthetic scan: partial-volume fractions, signed distances, the spine's curve and the sampling grid."""

from __future__ import annotations

import dataclasses

import numpy as np

from .config import _CURVE_KNOTS, _POS, HEIGHT_POSITIONS, SynthConfig
from .fracture_signs import NO_SIGNS
from .patient import _Vertebra


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
    n = dataclasses.replace(v, grade=0, morphology="none", deformity=0.0, delta=0.0, signs=NO_SIGNS,
                            endplate="none", virtual=True)
    n.Ha0 = n.Hp0 = v.Hmid
    disc = v.disc_below if not above else max(3.5, v.disc_below * 0.9)
    step = v.Hmid + disc
    sign = 1.0 if above else -1.0
    n.centre = v.centre + sign * step * v.rot[:, 2]
    if not above:
        n.disc_below = v.disc_below
    return n


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
