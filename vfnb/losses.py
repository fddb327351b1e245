"""Deprecated alias: ``vfnb.losses`` moved to :mod:`vfnb.models.losses`; this alias goes in vfnb 0.3."""

from .lazy import moved_module

__getattr__ = moved_module(__name__, "vfnb.models.losses", removal="0.3")
