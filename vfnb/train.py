"""Deprecated alias: ``vfnb.train`` moved to :mod:`vfnb.training.engine`; this alias goes in vfnb 0.3."""

from .lazy import moved_module

__getattr__ = moved_module(__name__, "vfnb.training.engine", removal="0.3")
