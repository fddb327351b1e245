"""SynthSpine generation time, one source tree against another (e.g. generator v1 against v2).

    python -m benchmarks.synth_versions --cases 64 --workers 2 --reps 3 --ref <git commit>

Each named source is timed in a fresh Python whose ``PYTHONPATH`` points at it:
``--ref REV`` exports that commit's ``vfnb/`` package with ``git archive`` into a
temporary folder, and the working tree is always timed too. Repetitions of the two
alternate (A B A B ...) so that a change in the machine's load hits both alike; the
printed ratio is the median of the paired ratios (working tree over reference). The
cases are written to disk as NIfTI, as ``vfnb synth`` does, and deleted after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys, time
from vfnb.data.synth import GENERATOR_VERSION, generate_dataset
t0 = time.perf_counter()
generate_dataset(sys.argv[1], cases=int(sys.argv[2]), seed=int(sys.argv[3]), workers=int(sys.argv[4]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "version": GENERATOR_VERSION}))
"""


def export_ref(ref: str, into: Path) -> Path:
    """The ``vfnb/`` package of commit ``ref`` extracted under ``into``; returns ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "vfnb"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(into)], input=archive, check=True)
    return into


def time_tree(tree: Path, out: Path, cases: int, seed: int, workers: int) -> dict:
    """Seconds to generate ``cases`` cases with the package at ``tree`` (a fresh process)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        # run from the output's parent folder: ``python -c`` puts the working directory first on sys.path,
        # which would shadow PYTHONPATH with the checkout it was started from
        res = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(cases), str(seed), str(workers)],
                             env=env, check=True, capture_output=True, text=True, cwd=str(Path(out).parent))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def compare(ref: str | None, cases: int, workers: int, reps: int, seed: int = 0) -> dict:
    """Alternating timings of the reference commit (when given) and the working tree."""
    with tempfile.TemporaryDirectory(prefix="synth-versions-") as tmp:
        trees = {"working tree": ROOT}
        if ref:
            trees = {f"ref {ref}": export_ref(ref, Path(tmp) / "ref"), **trees}
        times = {name: [] for name in trees}
        versions = {}
        for rep in range(reps):
            for name, tree in trees.items():
                res = time_tree(tree, Path(tmp) / f"out-{rep}", cases, seed, workers)
                times[name].append(res["seconds"])
                versions[name] = res["version"]
    result = {name: {"version": versions[name], "seconds": t, "median_s": statistics.median(t)}
              for name, t in times.items()}
    if ref:
        ref_t, new_t = times[f"ref {ref}"], times["working tree"]
        result["ratio_median"] = statistics.median(n / r for n, r in zip(new_t, ref_t))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.synth_versions", description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", help="git commit to compare the working tree against (e.g. the last v1 commit)")
    p.add_argument("--cases", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    result = compare(a.ref, a.cases, a.workers, a.reps, a.seed)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
