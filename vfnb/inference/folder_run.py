"""A folder of scans graded one by one, each finished scan kept, so that a rerun grades only the rest.

``vfnb predict`` over two folders grades every scan it can: a scan that cannot be
graded (a truncated file, a label map of another scan) becomes one row of the
table saying why, the others are graded, and the command ends non-zero naming
the failures. Each finished scan's rows are written at once to a hidden folder
beside the table (``.<table name>.scans/``, one CSV per scan, atomically), with a
record of what the run was (the CT and label-map folders, the checkpoint, the
operating point). ``--resume`` reads them back and grades only the scans not
finished (failed, or never reached because the run was stopped), with the same
inputs only; the table is then assembled from every finished scan. A complete
run without failures removes the hidden folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping

import pandas as pd

from ..errors import VfnbError
from ..io import atomic_write_json, atomic_write_text

#: The file recording what a folder run was, inside its progress folder.
RUN_RECORD = "run.json"


def progress_folder(out: Path) -> Path:
    """``<out's folder>/.<out name>.scans``: where a folder run keeps its finished scans."""
    out = Path(out)
    return out.parent / f".{out.name}.scans"


def _identity(value) -> str | None:
    return None if value is None else str(Path(value).resolve())


class FolderProgress:
    """The finished scans of one folder run of ``vfnb predict`` (see the module docstring).

    ``run``: what identifies the run (paths and choices; compared on ``resume``).
    Without ``out`` (the table printed), nothing is kept and nothing resumes.
    """

    def __init__(self, out: Path | None, run: Mapping[str, object], resume: bool, overwrite: bool):
        self.folder = None if out is None else progress_folder(out)
        self.run = {key: _identity(value) if key in ("ct", "seg", "checkpoint", "operating_points") else value
                    for key, value in run.items()}
        self.resume = resume
        if out is None:
            if resume:
                raise VfnbError("--resume needs --out: only a table written to a file keeps its finished scans")
            return
        if resume:
            self._check_same_run()
        elif self.folder.exists():
            if not overwrite:
                raise VfnbError(f"{out}: a previous run of this folder did not finish (its finished scans are in "
                                f"{self.folder}); rerun with --resume to grade only the scans it did not finish, "
                                "or with --overwrite to start again")
            shutil.rmtree(self.folder)

    def _check_same_run(self) -> None:
        record = self.folder / RUN_RECORD
        if not record.is_file():
            return  # nothing finished yet: the whole folder is graded
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise VfnbError(f"{record}: cannot read the record of the previous run ({exc}); rerun with "
                            "--overwrite to start again") from None
        changed = [key for key in sorted(set(before) | set(self.run)) if before.get(key) != self.run.get(key)]
        if changed:
            key = changed[0]
            raise VfnbError(f"--resume: the previous run had {key} {before.get(key)!r}, this one "
                            f"{self.run.get(key)!r}; a run resumes only with the same inputs and choices "
                            "(rerun with --overwrite to start again)")

    def finished(self, name: str) -> pd.DataFrame | None:
        """The rows of scan ``name`` from an earlier run, when resuming and it finished; else None."""
        if not self.resume or self.folder is None:
            return None
        path = self.folder / f"{name}.csv"
        return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None

    def record(self, name: str, text: str) -> None:
        """Keep the CSV ``text`` of the finished scan ``name``."""
        if self.folder is None:
            return
        self.folder.mkdir(exist_ok=True)
        if not (self.folder / RUN_RECORD).is_file():
            atomic_write_json(self.folder / RUN_RECORD, self.run)
        atomic_write_text(self.folder / f"{name}.csv", text)

    def close(self, failed: int) -> None:
        """After the table is written: forget the finished scans unless some failed (kept for ``--resume``)."""
        if self.folder is not None and not failed and self.folder.exists():
            shutil.rmtree(self.folder)
