"""Deprecated alias: ``vfnb.config`` moved to :mod:`vfnb.training.config`; this alias goes in vfnb 0.3."""

from .lazy import moved_module

__getattr__ = moved_module(__name__, "vfnb.training.config", removal="0.3")
