"""The settings the benchmarks measure: vfnb's defaults and the paper's.

``default_settings()`` reads :func:`vfnb.training.config.defaults` (backbone, cube
size, vertebrae per grade per batch) so the benchmark follows the defaults when
they change.
"""

from __future__ import annotations

PAPER = {"backbone": "seresnet50", "cube_size": 128, "per_grade": 3, "views": 2}  # STUDY §1.3, 1.5
FALLBACK_DEFAULT = {"backbone": "resnet10", "cube_size": 64, "per_grade": 3, "views": 2}


def _first(params: dict, names: tuple[str, ...], default):
    for name in names:
        if name in params and params[name] is not None:
            return params[name]
    return default


def default_settings() -> dict:
    """``{"backbone", "cube_size", "per_grade", "views", "source"}`` of vfnb's default training."""
    try:
        from vfnb.training.config import defaults
    except Exception as exc:  # the engine is optional for the parts that do not train
        return {**FALLBACK_DEFAULT, "source": f"fallback (vfnb.training.config not importable: {type(exc).__name__})"}
    p = defaults()
    return {
        "backbone": str(_first(p, ("backbone",), FALLBACK_DEFAULT["backbone"])),
        "cube_size": int(_first(p, ("cube_size", "patch_size", "size"), FALLBACK_DEFAULT["cube_size"])),
        "per_grade": int(_first(p, ("per_grade", "batch_per_grade"), FALLBACK_DEFAULT["per_grade"])),
        "views": int(_first(p, ("views",), 2)),
        "source": "vfnb.training.config.defaults()",
    }
