"""Locks that let sweep jobs share a folder: :func:`vfnb.io.held_lock`, raising :class:`SweepError`.

The lock file holds pid, host and time; a lock whose process died on this host is
taken over, one held from another host is refused (see :func:`vfnb.io.claim_lock`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ..io import held_lock
from .plan import SweepError


@contextlib.contextmanager
def pid_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold ``path`` while the context is open; :class:`SweepError` names the lock, ``what`` and its holder."""
    with held_lock(path, what, SweepError) as lock:
        yield lock
