"""Training: the engine, its configuration, processes and run folders.

- :mod:`~vfnb.training.config`: :class:`TrainConfig`, every training parameter with its
  default, check and help;
- :mod:`~vfnb.training.engine`: one engine for every mode (``train``, ``vfnb train``);
- :mod:`~vfnb.training.run_folder`: a run's folder, checkpoint selection, history;
- :mod:`~vfnb.training.distributed`: processes (torchrun / DDP) and CPU threads.

This file only re-exports, lazily (:mod:`vfnb.lazy`).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "TrainConfig": "config", "defaults": "config", "validate_params": "config", "parse_override": "config",
    "parse_overrides": "config", "MODES": "config",
    "train": "engine", "train_from_cli": "engine", "show_progress": "engine", "OBJECTIVES": "engine",
    "Selection": "run_folder", "TrainResult": "run_folder", "Checkpointer": "run_folder",
    "Processes": "distributed", "training_processes": "distributed",
})
