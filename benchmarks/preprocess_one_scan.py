"""Benchmark: pre-process one realistic-size CT (issue target: <= 30 s, <= 4 GB on 2 cores).

Builds, in a temporary folder, an original-layout dataset holding one synthetic
scan of 512 x 512 x 300 int16 voxels (0.8 x 0.8 x 1.0 mm, HU noise sigma 20) with
12 graded vertebrae T6-L5 (ellipsoid bodies plus a posterior arch, so each label
spans about 80 x 75 x 25 mm like a real one), then runs ``preprocess_dataset`` at
``--size`` in a child process and prints its wall time and peak resident memory
(the child's own ``VmHWM``).

    .venv/bin/python benchmarks/preprocess_one_scan.py [--size 128] [--oblique] [--workers 1]

``--oblique`` tilts the scanner frame by 5 degrees (the general, slower sampling
path); the default header is LPS-like (x and y flipped), the common clinical case.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (512, 512, 300)
SPACING = (0.8, 0.8, 1.0)
LABELS = tuple(range(13, 25))  # T6 .. L5


def build_scan(root: Path, oblique: bool, seed: int = 0) -> None:
    """Write ``root/img/bench.nii.gz``, ``root/seg/bench.nii.gz`` and ``annotation.yaml``."""
    from vfnb.data.original import write_annotation
    from vfnb.io import save_nifti

    rng = np.random.default_rng(seed)
    ct = np.empty(SHAPE, dtype=np.int16)
    for z in range(0, SHAPE[2], 25):  # noise in slabs keeps memory low
        slab = rng.normal(40.0, 20.0, size=SHAPE[:2] + (min(25, SHAPE[2] - z),))
        ct[:, :, z:z + slab.shape[2]] = np.round(slab).astype(np.int16)
    seg = np.zeros(SHAPE, dtype=np.uint8)

    # array index -> mm about the scan centre; the spine runs along axis 2
    cx, cy = SHAPE[0] // 2, SHAPE[1] // 2 + 40
    step_mm = SHAPE[2] * SPACING[2] / (len(LABELS) + 0.5)
    for n, label in enumerate(sorted(LABELS, reverse=True)):  # caudal (L5) lowest
        cz = int((n + 0.75) * step_mm / SPACING[2])
        half = np.array([40.0, 40.0, 14.0]) / np.array(SPACING)
        lo = np.maximum(np.array([cx, cy, cz]) - half.astype(int) - 2, 0)
        hi = np.minimum(np.array([cx, cy, cz]) + half.astype(int) + 3, SHAPE)
        x, y, z = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        dx, dy, dz = (x - cx) * SPACING[0], (y - cy) * SPACING[1], (z - cz) * SPACING[2]
        body = (dx / 22.0) ** 2 + ((dy - 12.0) / 17.0) ** 2 + (dz / 11.0) ** 2 <= 1.0
        arch = (np.abs(dx) <= 38.0) & (dy >= -35.0) & (dy <= -3.0) & (np.abs(dz) <= 6.0)
        arch &= (np.abs(dx) >= 10.0) | (dy <= -25.0)  # a canal in the middle
        bone = body | arch
        region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        seg[region][bone] = label
        ct[region][bone] += np.int16(260)

    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])  # LPS-like storage
    affine[:3, 3] = (200.0, 180.0, -150.0)
    if oblique:
        a = np.deg2rad(5.0)
        rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        affine[:3, :3] = rot @ affine[:3, :3]
    save_nifti(root / "img" / "bench.nii.gz", ct, affine)
    save_nifti(root / "seg" / "bench.nii.gz", seg, affine)
    write_annotation(root / "annotation.yaml", {"bench.nii.gz": {label: 0 for label in LABELS}})


def child(original: str, processed: str, size: int, workers: int) -> None:
    start = time.perf_counter()
    from vfnb.data.preprocess import preprocess_dataset

    imported = time.perf_counter()
    preprocess_dataset(original, processed, size=size, workers=workers)
    done = time.perf_counter()
    print(json.dumps({"import_s": imported - start, "preprocess_s": done - imported, "peak_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's own peak RSS (``VmHWM``); ``ru_maxrss`` would include the parent's at fork."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--oblique", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("ORIGINAL", "PROCESSED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, size=args.size, workers=args.workers)
        return 0

    with tempfile.TemporaryDirectory(prefix="vfnb-bench-") as tmp:
        original, processed = Path(tmp) / "original", Path(tmp) / "processed"
        t0 = time.perf_counter()
        build_scan(original, args.oblique)
        print(f"built {SHAPE} int16 scan with {len(LABELS)} vertebrae in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--workers", str(args.workers),
                                 "--child", str(original), str(processed)],
                                check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        timing = json.loads(result.stdout.strip().splitlines()[-1])
        peak_mb = timing["peak_mb"]  # measured inside the child (workers > 1: the main process only)
        patches = len(list((processed / "img").glob("*.nii.gz")))
        import csv

        with open(processed / "patches.csv", newline="") as handle:
            shapes = [row["patch_shape"] for row in csv.DictReader(handle)]
        print(f"patch shapes: {', '.join(shapes)}")
        print(f"size {args.size}, workers {args.workers}, {'oblique' if args.oblique else 'axis-aligned'} header: "
              f"{patches} patches; preprocess {timing['preprocess_s']:.1f} s "
              f"(child wall {wall:.1f} s incl. {timing['import_s']:.1f} s imports); peak RSS {peak_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
