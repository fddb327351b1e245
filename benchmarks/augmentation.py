"""Augmentation throughput: vfnb's MONAI training pipeline vs the original study's chain.

Both run in the same child process, one thread (as in a DataLoader worker), one
augmented view per call, reps interleaved (reference rep, vfnb rep, ...) so the
machine's drift hits both alike. Each pipeline starts from what its cache holds:

- reference (:mod:`benchmarks.reference_augment`): the 3-channel float32 input
  ``[3, S, S, N]`` (channels computed once, as the original code cached them);
- vfnb (:func:`vfnb.data.transforms.augment_transform`): the cached int16 HU patch
  and uint8 mask of the same vertebra; it computes the channels per draw, so this
  side pays a little more work.

Input patches: :func:`benchmarks.patches.synthetic_patch`, ``S x S x 0.6 S``.
"""

from __future__ import annotations

import time

import numpy as np

from .harness import figure, ratio_figure, run_child


def child(sizes: list[int], samples_per_rep: dict, reps: int, warmup: int, threads: int = 1, seed: int = 0) -> dict:
    import torch

    torch.set_num_threads(int(threads))
    from vfnb.data.transforms import augment_transform

    from .patches import synthetic_hu_patch, synthetic_patch
    from .reference_augment import reference_augment

    out: dict = {"threads": torch.get_num_threads(), "sizes": {}}
    for size in sizes:
        labels = [17, 18, 19, 20]  # T10-T12, L1
        hu_masks = [synthetic_hu_patch(size, seed=seed + i) for i in range(len(labels))]
        channels = [synthetic_patch(size, label, seed=seed + i) for i, label in enumerate(labels)]
        records = [{"hu": hu, "mask": mask, "label": label} for (hu, mask), label in zip(hu_masks, labels)]
        rng = np.random.default_rng(seed)
        vfnb_aug = augment_transform(size, seed=seed)

        n = int(samples_per_rep[str(size)])

        def run_reference():
            for i in range(n):
                reference_augment(channels[i % len(channels)], size, rng)

        def run_vfnb():
            for i in range(n):
                vfnb_aug(dict(records[i % len(records)]))

        for _ in range(warmup):
            run_reference()
            run_vfnb()
        ref_times, vfnb_times = [], []
        for _ in range(reps):
            for fn, times in ((run_reference, ref_times), (run_vfnb, vfnb_times)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        out["sizes"][str(size)] = {"reference": ref_times, "vfnb": vfnb_times,
                                   "input_shape": list(channels[0].shape)}
    return out


def run(cfg) -> dict:
    sizes = [16, 32] if cfg.quick else [64, 128]
    per_rep = {16: 2, 32: 2, 64: 16, 128: 6}
    # one child per size (a fresh process each); --quick shares one to save start-ups
    groups = [sizes] if cfg.quick else [[size] for size in sizes]
    figures: dict = {}
    for group in groups:
        res = run_child("benchmarks.augmentation:child", dict(
            sizes=group, samples_per_rep={str(s): per_rep[s] for s in group}, reps=cfg.reps, warmup=cfg.warmup),
            timeout=cfg.timeout)
        for size in group:
            data = res["sizes"][str(size)]
            n = per_rep[size]
            ref = [n / t for t in data["reference"]]
            ours = [n / t for t in data["vfnb"]]
            shape = "x".join(str(s) for s in data["input_shape"])
            common = dict(threads=res["threads"], samples_per_rep=n, input_shape=data["input_shape"])
            figures[f"augmentation.vfnb_samples_per_s_{size}"] = figure(
                ours, "views/s", f"vfnb MONAI pipeline, one view of a {shape} patch to {size}^3, 1 thread", **common)
            figures[f"augmentation.reference_samples_per_s_{size}"] = figure(
                ref, "views/s", "original chain (scipy, order 0), same input, 1 thread", **common)
            figures[f"augmentation.speedup_{size}"] = ratio_figure(
                ours, ref, "x", f"vfnb / reference views per second at {size}^3 (paired reps; target >= 3 at 128)",
                **common)
    return figures
