"""What an entry point sets up for its process, once: the warning filters vfnb wants.

Importing a vfnb module or building one of its objects changes no global state; the
places where a process starts call :func:`setup_entry_point` instead: the ``vfnb``
command's ``main`` (:mod:`vfnb.cli`) and each study notebook's setup cell (the kernel
papermill starts for ``vfnb study``, or a person's own). Light: no torch, no Matplotlib.
"""

from __future__ import annotations

import warnings

#: ``(message regex, why)``: notices vfnb silences for its whole process.
IGNORED_WARNINGS = (
    # tqdm.auto looks for ipywidgets in a kernel and warns when they are missing;
    # the plain-text progress bars it falls back to are what the study wants
    ("IProgress not found", "tqdm in a kernel without ipywidgets"),
)


def setup_entry_point() -> None:
    """Install :data:`IGNORED_WARNINGS` (calling it again adds nothing)."""
    for message, _why in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
