"""Deprecated alias: ``vfnb.predict`` moved to :mod:`vfnb.inference.grading`; this alias goes in vfnb 0.3."""

from .lazy import moved_module

__getattr__ = moved_module(__name__, "vfnb.inference.grading", removal="0.3")
