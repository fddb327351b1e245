"""Child-process entry: ``python -m benchmarks._child '{"func": "mod:fn", "kwargs": {}, "out": PATH}'``.

Imports ``mod``, torch and monai, records resident memory after the imports (the baseline), calls
``fn(**kwargs)`` (which returns a JSON-able dict), adds the process's peak
resident memory and writes the dict to ``out``. Used by
:func:`benchmarks.harness.run_child` so each memory figure comes from a fresh
interpreter.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys

from vfnb.io import atomic_write_json


def _rss_mb(who: int) -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(who).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB.

    ``VmHWM`` (the high-water mark of this process's own address space) rather
    than ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``fork`` + ``exec``, so a
    child started by a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return _rss_mb(resource.RUSAGE_SELF)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return _rss_mb(resource.RUSAGE_SELF)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    module_name, func_name = spec["func"].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    import monai  # noqa: F401  (every measurement uses them: count them in the baseline)
    import torch  # noqa: F401

    baseline = current_rss_mb()
    result = dict(func(**spec.get("kwargs", {})))
    result["baseline_rss_mb"] = round(baseline, 1)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result["workers_peak_rss_mb"] = round(_rss_mb(resource.RUSAGE_CHILDREN), 1)
    atomic_write_json(spec["out"], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
