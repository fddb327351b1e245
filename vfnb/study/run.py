"""The run folder as the notebooks see it: :class:`StudyRun`.

A study run folder holds ``figures/`` (every figure as PNG, and ``figures/index.json``
with the captions the report uses), ``runs/<model>/`` (the training folders) and the
records the notebooks hand to each other. A notebook reads an earlier notebook's
result through an accessor that returns a typed record (:mod:`vfnb.study.records`)
and, when the file is missing, names the notebook that writes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import VfnbError
from ..evaluate import jsonable
from ..io import atomic_write_json, atomic_write_text, spreadsheet_safe, spreadsheet_unescape
from ..plots import save_figure
from ..evaluate.operating_points import read_operating_points
from .paths import resolve_path
from .records import OperatingPoint, TrainedModel, TrainingSettings, TrainingSummary
from .registry import NOTEBOOKS

TRAINING_FILE = "training.json"
OPERATING_POINTS_FILE = "operating_points.json"
DATASET_FILE = "dataset.json"
FIGURE_INDEX = "figures/index.json"
RUN_LOG = "run.log"
#: The loggers whose lines go to ``run.log``: the study's own and the training's (one line per epoch).
LOGGER = "vfnb"


class StudyError(VfnbError):
    """A study notebook failed, or a result an earlier notebook writes is missing; the message says which."""


def read_json(path: str | os.PathLike) -> Any:
    """The JSON content of ``path``, or ``None`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def figure_index(run_dir: str | os.PathLike) -> list[dict]:
    """``figures/index.json`` as written by :meth:`StudyRun.figure` (``[]`` when absent)."""
    return read_json(Path(run_dir) / FIGURE_INDEX) or []


def _show(fig) -> None:
    """Display ``fig`` once when running inside a notebook kernel (IPython is optional elsewhere)."""
    with contextlib.suppress(ImportError):
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(fig)


def say(text: str) -> None:
    """A line for the notebook's reader that also goes to ``run.log`` (and the console of ``vfnb study``)."""
    print(text)
    logging.getLogger(f"{LOGGER}.study").info(text)


def log_to_run_folder(root: Path) -> None:
    """Send INFO lines of the ``vfnb`` loggers to ``<root>/run.log`` (once per folder and process).

    Under ``vfnb study`` the runner echoes that file to the console while a notebook
    runs, so training reports its epochs on the console and in the log alike.
    """
    logger = logging.getLogger(LOGGER)
    target = str((root / RUN_LOG).resolve())
    if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target for h in logger.handlers):
        handler = logging.FileHandler(target, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class StudyRun:
    """The run folder of one study: figures, training folders and the records notebooks exchange."""

    def __init__(self, run_dir: str | os.PathLike):
        self.root = resolve_path(run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.figures = self.root / "figures"
        self.figures.mkdir(exist_ok=True)
        log_to_run_folder(self.root)

    # ------------------------------------------------------------ places
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def model_dir(self, model: str) -> Path:
        return self.root / "runs" / model

    def checkpoint(self, model: str) -> Path:
        """Where a model trained in this run keeps its selected checkpoint."""
        return self.model_dir(model) / "best.pt"

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the run folder when inside it, else absolute."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    # ------------------------------------------------------------ files
    def write_json(self, name: str, obj: Any) -> Path:
        return atomic_write_json(self.root / name, jsonable(obj))

    def _require(self, name: str, produced_by: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise StudyError(f"{path}: not found; it is written by {produced_by} (run that notebook first "
                             "with the same run_dir)")
        return path

    def read_json(self, name: str, produced_by: str = "an earlier notebook") -> Any:
        return json.loads(self._require(name, produced_by).read_text(encoding="utf-8"))

    def write_csv(self, name: str, table: pd.DataFrame) -> Path:
        return atomic_write_text(self.root / name, spreadsheet_safe(table).to_csv(index=False))

    def read_csv(self, name: str, produced_by: str = "an earlier notebook") -> pd.DataFrame:
        return spreadsheet_unescape(pd.read_csv(self._require(name, produced_by)))

    def figure(self, fig, name: str, caption: str, key: bool = False, show: bool = True) -> None:
        """Save ``fig`` as ``figures/<name>.png``, record its caption, show it once in the notebook.

        ``key=True`` puts it among the report's key figures. Returns nothing, so a
        notebook cell ending with it shows the figure and no ``Out[..]`` line.
        """
        path = self.figures / f"{name}.png"
        if show:
            _show(fig)
        save_figure(fig, path)
        entry = {"name": name, "path": f"figures/{name}.png", "caption": caption, "key": bool(key)}
        index = figure_index(self.root)
        # a cell executed again replaces its figure where it was, so the report keeps the notebook's order
        at = next((i for i, f in enumerate(index) if f.get("name") == name), len(index))
        index[at:at + 1] = [entry]
        atomic_write_json(self.root / FIGURE_INDEX, index)

    # ------------------------------------------------------------ the dataset
    def record_dataset(self, data) -> None:
        """Note the dataset of the study (notebook 00), for notebooks 01-03 and the report."""
        self.write_json(DATASET_FILE, data.describe())

    def dataset_description(self) -> dict:
        """What :meth:`record_dataset` noted (read it as data with :meth:`vfnb.study.StudyData.from_run`)."""
        return self.read_json(DATASET_FILE, NOTEBOOKS[0])

    # ------------------------------------------------------------ training records
    def record_training_settings(self, settings: TrainingSettings) -> None:
        """Start ``training.json`` with the settings every model shares (notebook 01).

        The models recorded so far are kept when the settings are those they were
        trained with (notebook 01's setup cell executed again), dropped otherwise.
        """
        kept = {}
        if (self.root / TRAINING_FILE).is_file():
            with contextlib.suppress(VfnbError):
                before = self.training_summary()
                kept = before.models if before.settings == settings else {}
        self.write_json(TRAINING_FILE, TrainingSummary(settings, kept).as_dict())

    def training_summary(self) -> TrainingSummary:
        """The shared settings and every model's checkpoint so far (written by 01 and 02)."""
        data = self.read_json(TRAINING_FILE, NOTEBOOKS[1])
        return TrainingSummary.from_dict(data, str(self.root / TRAINING_FILE))

    def record_trained(self, trained: TrainedModel) -> TrainedModel:
        """Add ``trained`` to ``training.json`` (its checkpoint relative to the run folder when inside it)."""
        summary = self.training_summary()
        shown = TrainedModel(**{**trained.as_dict(), "checkpoint": self.relative(trained.checkpoint)})
        models = {**summary.models, trained.model: shown}
        self.write_json(TRAINING_FILE, TrainingSummary(summary.settings, models).as_dict())
        return shown

    def has_checkpoint(self, model: str) -> bool:
        return (self.root / TRAINING_FILE).is_file() and model in self.training_summary().models

    def checkpoint_of(self, model: str) -> Path:
        """The checkpoint ``model`` uses, as recorded by :func:`vfnb.study.train_model`."""
        models = self.training_summary().models
        if model not in models:
            raise StudyError(f"{self.root / TRAINING_FILE}: no checkpoint recorded for {model!r} "
                             f"(recorded: {', '.join(models) or 'none'}); run {NOTEBOOKS[2]} with this model "
                             "in 'models'")
        return resolve_path(models[model].checkpoint, self.root)

    def history(self, model: str) -> list[dict]:
        """The per-epoch history of ``runs/<model>/`` (empty for a given, untrained checkpoint)."""
        return read_json(self.model_dir(model) / "history.json") or []

    # ------------------------------------------------------------ operating points
    def record_operating_points(self, points: dict[str, OperatingPoint]) -> None:
        """Write ``operating_points.json``; each network's point carries the ``run_id`` of its checkpoint
        (``vfnb predict`` uses a point only with that checkpoint); a point that has one keeps it."""
        self.write_json(OPERATING_POINTS_FILE, {m: self._with_run_id(m, p).as_dict() for m, p in points.items()})

    def _with_run_id(self, model: str, point: OperatingPoint) -> OperatingPoint:
        if point.run_id is not None or not self.has_checkpoint(model):
            return point  # already stamped, or not a network (the morphometry graders)
        from dataclasses import replace

        from ..models.checkpoints import checkpoint_identity

        return replace(point, run_id=checkpoint_identity(self.checkpoint_of(model)))

    def operating_points(self) -> dict[str, OperatingPoint]:
        """Each model's screening threshold, chosen in 02 (``operating_points.json``)."""
        models = list(self.read_json(OPERATING_POINTS_FILE, NOTEBOOKS[2]) or {})
        return read_operating_points(self.root / OPERATING_POINTS_FILE, models) if models else {}
