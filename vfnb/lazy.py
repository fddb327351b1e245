"""Package faces that import nothing until a name is used.

A package's ``__init__`` re-exports the names users reach for (``from vfnb.training
import train``), but importing the package must stay cheap and free of side effects:
``import vfnb.training.config`` runs ``vfnb/training/__init__.py`` first, and a light
command (``vfnb --help``, ``vfnb check``) must not pay for torch or Matplotlib because
of it. :func:`lazy_exports` gives a package a module ``__getattr__`` (PEP 562) that
imports the defining submodule on first use of a name.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable, list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` re-exporting ``{name: submodule}``.

    ``submodule`` is relative to the package (``"engine"`` for ``vfnb.training.engine``).
    """
    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)


def moved_module(old: str, new: str, removal: str) -> Callable:
    """A module ``__getattr__`` for a module that moved: warn once per name, then forward.

    Used by the short-lived aliases of the modules the 0.2 layout moved (``vfnb.train``
    -> ``vfnb.training``, ...): ``from vfnb.train import train`` keeps working, with a
    :class:`DeprecationWarning` naming the new place, until ``removal``.
    """
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        target = importlib.import_module(new)
        if not hasattr(target, name):
            raise AttributeError(f"module {old!r} (moved to {new!r}) has no attribute {name!r}")
        warnings.warn(f"{old} moved to {new}; import {name} from there ({old} goes in vfnb {removal})",
                      DeprecationWarning, stacklevel=2)
        return getattr(target, name)

    return __getattr__
