"""A finished run folder made readable on any machine: the paths of the machine that made it, relative.

A study records where its data and run folders were (``params.yaml``,
``provenance.json``, ``dataset.json``, ``run.log``, the pages), as absolute paths
because its notebooks run in their own working folders. For a run that is shared
(the repository's committed reference runs), those paths name another person's
disk. :func:`make_portable` rewrites every mention of the folder the run was made
from (``root``) as a path relative to it, in the run's text files, and changes
nothing else: numbers and figures are untouched, and each JSON file still parses.
Checkpoints (``.pt``) record the training parameters they were made with, paths
included; those strings are rewritten the same way (the file read with
``weights_only=True`` and written back atomically), their tensors untouched.

    python -m vfnb.study.portable results/default    # root: the current folder
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..io import atomic_write_text

#: The run's files that are text and may name paths.
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".log", ".html", ".ipynb", ".csv", ".txt")


def make_portable(run_dir: str | Path, root: str | Path | None = None) -> list[Path]:
    """Rewrite ``root``'s absolute path (default: the current folder) as relative in ``run_dir``; the files changed."""
    run_dir = Path(run_dir)
    prefix = str(Path(root or Path.cwd()).resolve())

    def relative(text: str) -> str:
        return text.replace(prefix + "/", "").replace(prefix, ".")

    changed = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and path.suffix == ".pt" and _portable_checkpoint(path, relative):
            changed.append(path)
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="strict")
        new = relative(text)
        if new == text:
            continue
        if path.suffix in (".json", ".ipynb"):
            json.loads(new)  # still the same document
        atomic_write_text(path, new)
        changed.append(path)
    return changed


def _portable_checkpoint(path: Path, relative) -> bool:
    """Rewrite the path strings among a checkpoint's recorded ``params``; whether anything changed."""
    from ..io import atomic_torch_save
    from ..models.checkpoints import load_checkpoint_dict

    ckpt = load_checkpoint_dict(path)
    params = ckpt.get("params")
    if not isinstance(params, dict):
        return False
    new = {k: relative(v) if isinstance(v, str) else v for k, v in params.items()}
    if new == params:
        return False
    atomic_torch_save({**ckpt, "params": new}, path)
    return True


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        done = make_portable(folder)
        print(f"{folder}: {len(done)} file(s) rewritten with paths relative to {Path.cwd()}")
