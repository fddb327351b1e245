"""Benchmark inputs that need no dataset: vertebra-like 3-channel patches.

A pre-processed patch is ``size x size x N`` voxels with N about 0.6 x size for a
vertebra with its posterior elements (the square in-plane box is set by the AP
extent, ~90 mm, the height is ~40-55 mm). :func:`synthetic_patch` builds such a
patch: an ellipsoidal "body" of bone HU with a cortical rim, soft tissue around
it and noise, turned into the network input of STUDY §1.3. Only the shape and
value ranges matter for throughput; the content keeps nearest-neighbour
resampling honest (real edges, not a constant).
"""

from __future__ import annotations

import numpy as np

from vfnb.data.channels import make_input_channels

DEPTH_FRACTION = 0.6  # N / size of a typical vertebra patch


def synthetic_hu_patch(size: int, seed: int = 0,
                       depth_fraction: float = DEPTH_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """``(image int16 HU [size, size, N], mask uint8 0/1)`` with N = round(depth_fraction * size)."""
    rng = np.random.default_rng(seed)
    depth = max(2, int(round(depth_fraction * size)))
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in (size, size, depth)), indexing="ij")
    r = np.sqrt((x / 0.55) ** 2 + ((y - 0.1) / 0.45) ** 2 + (z / 0.8) ** 2)
    body = r < 1.0
    image = np.full(x.shape, 40.0, dtype=np.float32)  # soft tissue
    image[body] = 180.0  # trabecular bone
    image[body & (r > 0.85)] = 700.0  # cortical shell
    image += rng.normal(0.0, 20.0, size=image.shape).astype(np.float32)
    return np.round(image).astype(np.int16), body.astype(np.uint8)


def synthetic_patch(size: int, label: int = 20, seed: int = 0, depth_fraction: float = DEPTH_FRACTION) -> np.ndarray:
    """Network input ``[3, size, size, N]`` float32 of a synthetic vertebra with VerSe ``label``."""
    image, mask = synthetic_hu_patch(size, seed, depth_fraction)
    return make_input_channels(image, mask, label)
