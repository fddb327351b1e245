"""GPU benchmark of the paper's setting: SEResNet50-3D, 128^3, 24 inputs per step.

    python benchmarks/gpu.py                 # on a CUDA machine, < 10 min
    python benchmarks/gpu.py --tiny          # CPU smoke run: resnet10, 16^3, 4 inputs, 2 steps

Measures, in one run:

1. a matrix-multiply ceiling (TFLOP/s of large ``torch.matmul`` in bf16, TF32 and
   strict fp32) on the same card;
2. the FLOPs of one training step (``torch.utils.flop_counter.FlopCounterMode`` on
   one fp32 step of 2 inputs, forward and backward, times the vertebrae per step);
3. samples/s of the joint step (CE on the detached feature + SupCon, SGD;
   :mod:`benchmarks.steps`) in fp32, bf16 autocast, bf16 + channels-last-3d and,
   when the time budget allows, ``torch.compile`` of the fastest of those; the
   achieved TFLOP/s of each against the ceiling of its precision (a variant that
   runs out of memory is retried with half the batch, and says so);
4. whether the input pipeline keeps up: augmented 128^3 views per second from a
   DataLoader with CPU workers running vfnb's training transform, and from the
   same MONAI transforms applied to CUDA tensors (augmentation on the GPU), each
   against the views per second the fastest step consumes.

Writes ``benchmarks/results/gpu-<card>.json`` (``--out``; ``--tiny``: the temporary
folder) in the format of the CPU benchmarks (``{"meta", "figures", "errors"}``), so
``python -m benchmarks --markdown`` and ``--update-doc`` render it. Every part is
guarded: one that fails is recorded under ``errors`` and the rest still run; parts
that would exceed ``--budget-s`` are skipped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks import harness
from benchmarks.steps import build_step

PAPER_SIZE, PAPER_VERTEBRAE = 128, 12  # 12 vertebrae x 2 views = 24 inputs per step (REFERENCE 1.5)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, n: int, dtype: torch.dtype, tf32: bool, reps: int) -> list[float]:
    """TFLOP/s of ``n x n`` matmuls (2 n^3 FLOPs each), one value per repetition."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        inner = 10 if device.type == "cuda" else 2
        for _ in range(3):
            a @ b
        _sync(device)
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                a @ b
            _sync(device)
            out.append(2 * n**3 * inner / (time.perf_counter() - t0) / 1e12)
        return out
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def flops_per_vertebra(device: torch.device, backbone: str, size: int) -> float:
    """FLOPs of one fp32 training step (forward + backward) per vertebra (2 views), by FlopCounterMode.

    Counted on a 1-vertebra step (the network's FLOPs are linear in the batch; the
    loss's quadratic part is negligible), so counting never runs out of memory.
    """
    from torch.utils.flop_counter import FlopCounterMode

    step, _, _ = build_step(backbone, size, 1, device=str(device))
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    del step
    return float(counter.get_total_flops())


def time_variant(device, backbone, size, vertebrae, steps, warmup, autocast_dtype=None, channels_last=False,
                 compile_model=False) -> dict:
    step, model, x = build_step(backbone, size, vertebrae, device=str(device), autocast_dtype=autocast_dtype,
                                channels_last=channels_last)
    if compile_model:
        compiled = torch.compile(model)
        from benchmarks.steps import balanced_grades, make_joint_step

        step, _ = make_joint_step(compiled, x, balanced_grades(vertebrae), autocast_dtype=autocast_dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del step, model, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"times": times, "warmup_s": warm_s, "peak_mb": peak}


def _loader_views_per_s(size: int, workers: int, vertebrae: int, batches: int, seconds_cap: float) -> dict:
    """Augmented views/s from a DataLoader with ``workers`` CPU processes (vfnb's two-view transform)."""
    from vfnb.data.transforms import TwoViews, augment_transform

    from benchmarks.patches import synthetic_hu_patch

    class InMemory(torch.utils.data.Dataset):
        # cached HU + mask, as vfnb's CacheDataset holds them; two augmented views per item
        def __init__(self):
            self.items = [dict(zip(("hu", "mask"), synthetic_hu_patch(size, seed=i)), label=17 + i % 4,
                               grade=i % 4) for i in range(8)]
            self.transform = TwoViews(augment_transform(size, seed=0))

        def __len__(self):
            return 10**6

        def __getitem__(self, i):
            out = self.transform(dict(self.items[i % len(self.items)]))
            return {"image": out["image"], "grade": out["grade"]}

    loader = torch.utils.data.DataLoader(InMemory(), batch_size=vertebrae, num_workers=workers,
                                         prefetch_factor=2 if workers else None, persistent_workers=False)
    it = iter(loader)
    next(it)  # workers started, first batch out
    t0 = time.perf_counter()
    got = 0
    for _ in range(batches):
        batch = next(it)
        got += batch["image"].shape[0] * batch["image"].shape[1]
        if time.perf_counter() - t0 > seconds_cap:
            break
    elapsed = time.perf_counter() - t0
    del it, loader
    return {"views_per_s": got / elapsed, "views": got, "seconds": elapsed}


def _gpu_augment_views_per_s(device: torch.device, size: int, views: int) -> dict:
    """vfnb's augmentation with the patch as a CUDA tensor (MONAI transforms run on the tensor's device)."""
    from vfnb.data.transforms import augment_transform

    from benchmarks.patches import synthetic_hu_patch

    hu, mask = synthetic_hu_patch(size)
    item = {"hu": hu, "mask": mask, "label": 20}
    transform = augment_transform(size, seed=0)
    # the channels are computed on the CPU by InputChannelsd; move them to the device
    # right after, by running the transform list by hand: channels (CPU) -> device -> the rest
    steps = list(transform.transforms)
    first, rest = steps[0], steps[1:]

    from monai.data import MetaTensor

    def one():
        d = first(dict(item))
        d["image"] = MetaTensor(torch.as_tensor(d["image"]).to(device))
        for t in rest:
            d = t(d)
        return d["image"]

    out = one()
    on_device = str(out.device)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(views):
        one()
    _sync(device)
    return {"views_per_s": views / (time.perf_counter() - t0), "output_device": on_device}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: 16^3, 4 inputs, 2 steps, the light resnet10 "
                   "unless --backbone says otherwise (bf16 3D convolutions are very slow on a CPU)")
    p.add_argument("--backbone", help="encoder (default seresnet50, the paper's; resnet10 with --tiny)")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/gpu-<card>.json)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip parts that would exceed this (s)")
    p.add_argument("--steps", type=int, help="timed steps per variant (default 10; 2 with --tiny)")
    p.add_argument("--workers", type=int, help="CPU DataLoader workers (default: cores - 1)")
    p.add_argument("--no-compile", action="store_true", help="do not try torch.compile")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("error: no CUDA device; run with --tiny for a CPU smoke run", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    size = 16 if args.tiny else PAPER_SIZE
    backbone = args.backbone or ("resnet10" if args.tiny else "seresnet50")
    vertebrae = 2 if args.tiny else PAPER_VERTEBRAE
    steps = args.steps or (2 if args.tiny else 10)
    warmup = 1 if args.tiny else 3
    mm_n = 256 if args.tiny else 8192
    workers = args.workers if args.workers is not None else (1 if args.tiny else max(1, harness.usable_cores() - 1))
    if cuda:
        torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name(device) if cuda else f"cpu ({harness.cpu_model()})"
    if args.out:
        out = args.out
    elif args.tiny:  # smoke figures never land among the committed results
        out = Path(tempfile.gettempdir()) / "vfnb-gpu-tiny.json"
    else:
        out = harness.RESULTS_DIR / f"gpu-{harness.slug(card)}.json"
    figures: dict = {}
    errors: dict = {}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    def part(name: str, fn) -> None:
        print(f"[{name}] ({left():.0f} s of budget left)", flush=True)
        try:
            fn()
        except Exception as exc:  # record and go on: one failing part must not lose the others
            errors[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            print(f"[{name}] failed: {errors[name]}", file=sys.stderr, flush=True)
            if cuda:
                torch.cuda.empty_cache()

    ceilings: dict = {}

    def do_ceiling():
        for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                                  ("fp32", torch.float32, False)):
            if not cuda and name == "tf32":
                continue
            if not cuda and name == "bf16":
                dtype = torch.bfloat16  # CPU bf16 matmul works, slowly; kept for the smoke run
            samples = matmul_ceiling(device, mm_n, dtype, tf32, reps=5 if cuda else 1)
            ceilings[name] = float(np.median(samples))
            figures[f"gpu.matmul_ceiling_{name}_tflops"] = harness.figure(
                samples, "TFLOP/s", f"{mm_n}x{mm_n} matmul, {name}")

    flops: dict = {}

    def do_flops():
        flops["vertebra"] = flops_per_vertebra(device, backbone, size)
        figures["gpu.flops_per_step"] = harness.single(
            flops["vertebra"] * vertebrae / 1e12, "TFLOP", f"one training step (fwd + bwd), {2 * vertebrae} inputs "
            f"at {size}^3 (FlopCounterMode on 2 inputs, x {vertebrae})")

    rates: dict = {}

    def variant(name: str, ceiling: str, **kw):
        def fn():
            v = vertebrae
            while True:  # out of memory: halve the batch (said in the figure), down to 1 vertebra
                try:
                    res = time_variant(device, backbone, size, v, steps, warmup, **kw)
                    break
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if v == 1:
                        raise
                    v = max(1, v // 2)
            n = 2 * v
            what = f"{backbone}, {n} inputs at {size}^3, CE+SupCon+SGD, {name}"
            if v != vertebrae:
                what += f" (batch halved from {2 * vertebrae}: out of memory)"
            extra = {"warmup_s": res["warmup_s"], "peak_gpu_mb": res["peak_mb"], "inputs_per_step": n}
            sps = [n / t for t in res["times"]]
            rates[name] = float(np.median(sps))
            figures[f"gpu.{name}_samples_per_s"] = harness.figure(sps, "inputs/s", what, **extra)
            if flops.get("vertebra"):
                achieved = [flops["vertebra"] * v / t / 1e12 for t in res["times"]]
                figures[f"gpu.{name}_tflops"] = harness.figure(
                    achieved, "TFLOP/s", f"achieved, {name} (FLOPs of the fp32 step / step time)", **extra)
                if ceilings.get(ceiling):
                    figures[f"gpu.{name}_fraction_of_{ceiling}_ceiling"] = harness.figure(
                        [100 * a / ceilings[ceiling] for a in achieved], "%", f"achieved / {ceiling} matmul ceiling")
        return fn

    part("ceiling", do_ceiling)
    part("flops", do_flops)
    part("fp32", variant("fp32", "tf32" if cuda else "fp32"))
    part("bf16", variant("bf16", "bf16", autocast_dtype=torch.bfloat16))
    part("bf16_channels_last", variant("bf16_channels_last", "bf16", autocast_dtype=torch.bfloat16,
                                       channels_last=True))
    if args.no_compile or args.tiny:
        errors["compile"] = "skipped (" + ("--tiny" if args.tiny else "--no-compile") + ")"
    elif left() < 240:
        errors["compile"] = f"skipped: {left():.0f} s of the time budget left (< 240 s)"
    else:
        best_cl = rates.get("bf16_channels_last", 0) >= rates.get("bf16", 0)
        part("compile", variant("bf16_compiled" + ("_channels_last" if best_cl else ""), "bf16",
                                autocast_dtype=torch.bfloat16, channels_last=best_cl, compile_model=True))

    consumer = max(rates.values()) if rates else None

    def do_loader():
        cap = 20.0 if cuda else 5.0
        res = _loader_views_per_s(size, workers, vertebrae, batches=40 if cuda else 2, seconds_cap=cap)
        figures["gpu.cpu_loader_views_per_s"] = harness.single(
            res["views_per_s"], "views/s", f"DataLoader, {workers} CPU worker(s), vfnb two-view augmentation at "
            f"{size}^3, {res['views']} views in {res['seconds']:.1f} s", workers=workers)
        if consumer:
            figures["gpu.cpu_loader_keeps_up_ratio"] = harness.single(
                res["views_per_s"] / consumer, "x", "CPU loader views/s / fastest step's inputs/s (>= 1 keeps up)")

    def do_gpu_augment():
        res = _gpu_augment_views_per_s(device, size, views=20 if cuda else 2)
        figures["gpu.device_augment_views_per_s"] = harness.single(
            res["views_per_s"], "views/s", f"vfnb augmentation with the patch on {res['output_device']} "
            "(one view at a time, channels on CPU first)", output_device=res["output_device"])
        if consumer:
            figures["gpu.device_augment_keeps_up_ratio"] = harness.single(
                res["views_per_s"] / consumer, "x", "device augmentation views/s / fastest step's inputs/s")

    if left() > 30:
        part("cpu_loader", do_loader)
    else:
        errors["cpu_loader"] = "skipped: time budget spent"
    if left() > 15:
        part("device_augment", do_gpu_augment)
    else:
        errors["device_augment"] = "skipped: time budget spent"

    meta = {
        "machine_name": harness.slug(card) if cuda else "cpu-tiny",
        "date": harness.now_iso(),
        "command": "python benchmarks/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": bool(args.tiny),
        "card": card,
        "setting": {"backbone": backbone, "cube_size": size, "inputs_per_step": 2 * vertebrae,
                    "steps": steps, "warmup": warmup, "matmul_n": mm_n},
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": harness.machine_info(),
    }
    if cuda:
        meta["cuda"] = {"version": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                        "capability": list(torch.cuda.get_device_capability(device))}
    path = harness.write_results(out, meta, figures, errors)
    print(harness.format_table(figures))
    if errors:
        print("not measured: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    print(f"wrote {path} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
