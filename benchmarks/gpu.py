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
   DataLoader with CPU workers running vfnb's training transform, and from
   vfnb's batched device augmentation (:mod:`vfnb.data.device_augment`), each
   against the views per second the fastest step consumes;
5. per setting of :data:`SETTINGS` (SEResNet50-3D at 128^3 and 64^3, the light
   resnet10 at 128^3; ``--tiny``: resnet10 at 16^3), bf16 autocast + channels-last-3d
   on CUDA: compute-only steps/s (the step on one fixed input), pipeline-fed steps/s
   (a DataLoader of cached int16 patches with pinned memory, then device
   augmentation and the step: what training with ``augment_on: device`` does), their
   ratio, the achieved TFLOP/s (FLOPs of the fp32 step / step time) and its fraction
   of the card's bf16 dense ceiling (:data:`BF16_DENSE_TFLOPS`, datasheet numbers:
   a constant, so the fraction does not move with a matmul measurement).
   ``torch.compile`` is tried for each setting; when it fails (or time is short) the
   eager model is used and the figure says which (``compiled``, ``compile_error``).

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

PAPER_SIZE, PAPER_VERTEBRAE = 128, 12  # 12 vertebrae x 2 views = 24 inputs per step (STUDY §1.5)
SETTINGS = (("seresnet50", 128), ("seresnet50", 64), ("resnet10", 128))  # (backbone, cube) of part 5
TINY_SETTINGS = (("resnet10", 16),)
# Dense (no structured sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s, matched
# by a substring of the card's name; the denominators of "fraction of the bf16 dense ceiling".
BF16_DENSE_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def bf16_dense_ceiling(card: str) -> float | None:
    """The datasheet bf16 dense peak (TFLOP/s) of ``card``, or None for a card not in the table."""
    for name, tflops in BF16_DENSE_TFLOPS.items():
        if name.lower() in card.lower():
            return tflops
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, reps: int, device: torch.device) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn()``, the device synchronised after each."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


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
    times = _timed(step, steps, device)
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


def _device_augment_views_per_s(device: torch.device, size: int, vertebrae: int, batches: int) -> dict:
    """Views/s of vfnb's batched device augmentation (:func:`vfnb.data.device_augment.augment_batch`), two per vertebra."""
    from vfnb.data.device_augment import augment_batch

    loader = _cached_patch_loader(size, vertebrae, workers=0, pin=device.type == "cuda")
    it = iter(loader)
    generator = torch.Generator().manual_seed(0)
    augment_batch(next(it), 2, "paper", size, generator, device)
    _sync(device)
    elapsed, views = 0.0, 0
    for _ in range(batches):
        batch = next(it)  # read outside the timing: the loader is measured with the step (part 5)
        t0 = time.perf_counter()
        out = augment_batch(batch, 2, "paper", size, generator, device)
        _sync(device)
        elapsed += time.perf_counter() - t0
        views += out.shape[0] * out.shape[1]
    return {"views_per_s": views / elapsed, "output_device": str(out.device)}


def _cached_patch_loader(size: int, vertebrae: int, workers: int, pin: bool):
    """A DataLoader of cached int16 patches (:class:`vfnb.data.device_augment.CachedPatches`), endless."""
    from types import SimpleNamespace

    from vfnb.data.device_augment import CachedPatches

    from benchmarks.patches import synthetic_hu_patch

    items = []
    for i in range(16):  # depths 0.5-0.7 of the in-plane size, as pre-processed vertebrae: padding is exercised
        hu, mask = synthetic_hu_patch(size, seed=i, depth_fraction=0.5 + 0.2 * (i % 5) / 4)
        items.append({"hu": hu, "mask": mask, "label": 17 + i % 4, "grade": i % 4})
    dataset = CachedPatches(SimpleNamespace(loaded=items))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**7)
    return torch.utils.data.DataLoader(dataset, batch_size=vertebrae, sampler=sampler, num_workers=workers,
                                       pin_memory=pin, persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers > 0 else None, drop_last=True)


def time_setting(device: torch.device, backbone: str, size: int, vertebrae: int, steps: int, warmup: int,
                 workers: int, try_compile: bool) -> dict:
    """Compute-only and pipeline-fed step times of one setting (bf16 + channels-last on CUDA, fp32 on CPU)."""
    from vfnb.data.device_augment import augment_batch

    from benchmarks.steps import balanced_grades, make_joint_step

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else None
    step, model, x = build_step(backbone, size, vertebrae, device=str(device), autocast_dtype=dtype,
                                channels_last=cuda)
    compiled, compile_error = False, None
    t0 = time.perf_counter()
    if try_compile:
        try:
            compiled_step, _ = make_joint_step(torch.compile(model), x, balanced_grades(vertebrae),
                                               autocast_dtype=dtype)
            for _ in range(2):  # compiles here (and fails here when it fails)
                compiled_step()
            step, compiled = compiled_step, True
        except Exception as exc:  # fall back to eager; the figure records why
            compile_error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]
            torch._dynamo.reset()
    for _ in range(warmup):
        step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    compute = _timed(step, steps, device)

    loader = _cached_patch_loader(size, vertebrae, workers, pin=cuda)
    batches = iter(loader)
    generator = torch.Generator().manual_seed(0)

    def fed_step():
        views = augment_batch(next(batches), 2, "paper", size, generator, device)  # [B, 2, 3, S, S, S]
        inputs = views.transpose(0, 1).reshape((2 * vertebrae, 3) + (size,) * 3)  # view-major, as the step expects
        if cuda:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        step(inputs)

    for _ in range(max(1, warmup)):
        fed_step()
    _sync(device)
    fed = _timed(fed_step, steps, device)
    ready = [next(batches) for _ in range(max(2, steps // 2))]  # read before the timing: augmentation alone
    augment = _timed(lambda: augment_batch(ready.pop(), 2, "paper", size, generator, device), len(ready), device)
    return {"compute": compute, "fed": fed, "augment": augment, "warmup_s": warm_s, "compiled": compiled,
            "compile_error": compile_error}


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
    p.add_argument("--settings-only", action="store_true", help="skip parts 3 and 4 (the fp32 / bf16 variants and "
                   "the views/s comparison): ceiling, FLOPs and the per-setting pipeline figures only")
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
        if args.settings_only and name in ("fp32", "bf16", "bf16_channels_last", "cpu_loader", "device_augment"):
            errors[name] = "skipped (--settings-only)"
            return
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

    dense = bf16_dense_ceiling(card) if cuda else None

    def setting(backbone_s: str, size_s: int):
        tag = f"{backbone_s}_{size_s}"

        def fn():
            per_vertebra = flops_per_vertebra(device, backbone_s, size_s)
            try_compile = cuda and not args.no_compile and left() > 180
            res = time_setting(device, backbone_s, size_s, vertebrae, steps, warmup, workers, try_compile)
            if cuda:
                torch.cuda.empty_cache()  # the setting's model, inputs and loader are gone with its frame
            how = "bf16 + channels-last-3d" if cuda else "fp32"
            how += ", torch.compile" if res["compiled"] else ", eager"
            extra = {"compiled": res["compiled"], "warmup_s": res["warmup_s"], "inputs_per_step": 2 * vertebrae,
                     "workers": workers}
            if res["compile_error"]:
                extra["compile_error"] = res["compile_error"]
            elif not try_compile:
                extra["compile_error"] = "not tried (" + ("CPU" if not cuda else "--no-compile or time budget") + ")"
            what = f"{backbone_s}, {2 * vertebrae} inputs at {size_s}^3, {how}"
            figures[f"gpu.{tag}.compute_steps_per_s"] = harness.figure(
                [1 / t for t in res["compute"]], "steps/s", f"{what}, one fixed input (compute only)", **extra)
            figures[f"gpu.{tag}.fed_steps_per_s"] = harness.figure(
                [1 / t for t in res["fed"]], "steps/s", f"{what}, fed by a DataLoader of cached patches "
                f"({workers} workers) + device augmentation", **extra)
            figures[f"gpu.{tag}.fed_over_compute_ratio"] = harness.single(
                float(np.median(res["compute"]) / np.median(res["fed"])), "x",
                "pipeline-fed steps/s / compute-only steps/s (target >= 0.9)")
            figures[f"gpu.{tag}.device_augment_views_per_s"] = harness.figure(
                [2 * vertebrae / t for t in res["augment"]], "views/s", f"device augmentation alone at {size_s}^3")
            achieved = [per_vertebra * vertebrae / t / 1e12 for t in res["compute"]]
            figures[f"gpu.{tag}.tflops"] = harness.figure(
                achieved, "TFLOP/s", "achieved, compute only (FLOPs of the fp32 step / step time)", **extra)
            if dense:
                figures[f"gpu.{tag}.fraction_of_bf16_dense_ceiling"] = harness.figure(
                    [100 * a / dense for a in achieved], "%", f"achieved / {dense:.0f} TFLOP/s (datasheet bf16 dense "
                    "peak, benchmarks.gpu.BF16_DENSE_TFLOPS)")
        return fn

    part("ceiling", do_ceiling)
    part("flops", do_flops)
    for backbone_s, size_s in (TINY_SETTINGS if args.tiny else SETTINGS):
        if left() > 60:
            part(f"setting_{backbone_s}_{size_s}", setting(backbone_s, size_s))
        else:
            errors[f"setting_{backbone_s}_{size_s}"] = "skipped: time budget spent"
    part("fp32", variant("fp32", "tf32" if cuda else "fp32"))
    part("bf16", variant("bf16", "bf16", autocast_dtype=torch.bfloat16))
    part("bf16_channels_last", variant("bf16_channels_last", "bf16", autocast_dtype=torch.bfloat16,
                                       channels_last=True))
    if args.no_compile or args.tiny or args.settings_only:
        errors["compile"] = "skipped (" + ("--tiny" if args.tiny else "--no-compile" if args.no_compile
                                           else "--settings-only") + ")"
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
        res = _device_augment_views_per_s(device, size, vertebrae, batches=10 if cuda else 2)
        figures["gpu.device_augment_views_per_s"] = harness.single(
            res["views_per_s"], "views/s", f"vfnb.data.device_augment on {res['output_device']}, "
            f"{vertebrae} vertebrae x 2 views per batch at {size}^3", output_device=res["output_device"])
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
