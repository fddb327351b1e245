"""The original study's augmentation chain, written out per sample with numpy/scipy.

This is the *baseline* the benchmark compares vfnb's MONAI pipeline against; it
follows STUDY §1.4 as the original code ran it, one sample at a time on the
CPU, every resampling nearest-neighbour (``order=0``) and done as separate
scipy calls:

1. cutout: up to 2 boxes, each drawn with probability 0.5, edge up to 20 voxels
   (at 128^3), set to 0 on every channel;
2. with probability 0.7, in this order:
   intensity scale +-10 % on the two window channels, Gaussian noise sigma 0.05
   on the two window channels, then clip them to [0, 1];
   ``scipy.ndimage.rotate`` by +-10 degrees about each of the three axes (three
   calls), ``scipy.ndimage.zoom`` by a factor in [0.8, 1.2],
   ``scipy.ndimage.shift`` by +-10 voxels (at 128^3) per axis;
3. crop or pad to the cube at a random offset;
4. cutout again.

Ranges given for 128^3 (shift 10, cutout edge 20) scale with the cube size, as
vfnb's pipeline does. The mask channel (channel 2: mask x label/28) is never
scaled or noised and, being resampled nearest-neighbour, keeps its two values.

Not used by vfnb itself: do not make it slower or faster than the original was.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vfnb.data.channels import crop_or_pad_to_cube, random_cube_offset

WINDOW_CHANNELS = slice(0, 2)  # soft-tissue and bone windows; channel 2 is the mask code
REFERENCE_SIZE = 128  # the size the study's ranges are given for
P_AFFINE = 0.7  # intensity + geometric block, applied together
INTENSITY_SCALE = 0.10
NOISE_SIGMA = 0.05
ROTATE_DEGREES = 10.0
ZOOM_RANGE = 0.20
SHIFT_VOXELS_128 = 10.0
CUTOUT_EDGE_128 = 20
CUTOUT_BOXES = 2
P_CUTOUT_BOX = 0.5


def _cutout(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Zero up to two boxes (each with p 0.5) of edge 1..20*size/128 voxels, in place."""
    max_edge = max(1, int(round(CUTOUT_EDGE_128 * size / REFERENCE_SIZE)))
    spatial = x.shape[1:]
    for _ in range(CUTOUT_BOXES):
        if rng.random() >= P_CUTOUT_BOX:
            continue
        index = [slice(None)]
        for dim in spatial:
            edge = int(rng.integers(1, min(max_edge, dim) + 1))
            start = int(rng.integers(0, dim - edge + 1))
            index.append(slice(start, start + edge))
        x[tuple(index)] = 0
    return x


def reference_augment(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented view of a patch, the original study's way.

    Args:
        x: ``[3, X, Y, Z]`` float32 network input (STUDY §1.3), any spatial size.
        size: cube edge in voxels (128 in the paper); ranges scale with it.
        rng: numpy generator; the same seed gives the same view.

    Returns:
        ``[3, size, size, size]`` float32; ``x`` is not modified.
    """
    x = np.array(x, dtype=np.float32, copy=True)
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"expected a [3, X, Y, Z] patch, got shape {x.shape}")
    x = _cutout(x, size, rng)
    if rng.random() < P_AFFINE:
        windows = x[WINDOW_CHANNELS]  # a view: edits land in x
        windows *= np.float32(rng.uniform(1 - INTENSITY_SCALE, 1 + INTENSITY_SCALE))
        windows += rng.normal(0.0, NOISE_SIGMA, size=windows.shape).astype(np.float32)
        np.clip(windows, 0.0, 1.0, out=windows)
        # one scipy call per rotation axis, as the original did; axes are the
        # spatial planes of the [C, X, Y, Z] array (channel axis left alone)
        for plane in ((2, 3), (1, 3), (1, 2)):
            angle = rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES)
            x = ndimage.rotate(x, angle, axes=plane, reshape=False, order=0, mode="constant", cval=0.0)
        factor = rng.uniform(1 - ZOOM_RANGE, 1 + ZOOM_RANGE)
        x = ndimage.zoom(x, (1.0, factor, factor, factor), order=0, mode="constant", cval=0.0)
        max_shift = SHIFT_VOXELS_128 * size / REFERENCE_SIZE
        offset = [0.0] + [rng.uniform(-max_shift, max_shift) for _ in range(3)]
        x = ndimage.shift(x, offset, order=0, mode="constant", cval=0.0)
    x = crop_or_pad_to_cube(x, size, random_cube_offset(x.shape[1:], size, rng))
    x = _cutout(x, size, rng)
    return np.ascontiguousarray(x, dtype=np.float32)
