"""Networks, checkpoints, the SupCon loss and feature extraction.

- :mod:`~vfnb.models.networks`: encoder + projection head + classifier (:class:`GradingModel`,
  ``build_model``) and what a model takes as input (:class:`ModelInput`);
- :mod:`~vfnb.models.checkpoints`: checkpoint files (vfnb's and the study's released format);
- :mod:`~vfnb.models.losses`: the SupCon loss;
- :mod:`~vfnb.models.features`: pooled features and the logistic-regression probe on them.

This file only re-exports, lazily (:mod:`vfnb.lazy`).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "GradingModel": "networks", "ModelInput": "networks", "RELEASED_INPUT": "networks", "build_model": "networks",
    "resolve_device": "networks", "unwrap_model": "networks",
    "save_checkpoint": "checkpoints", "load_checkpoint": "checkpoints", "load_checkpoint_dict": "checkpoints",
    "model_from_checkpoint": "checkpoints", "checkpoint_input": "checkpoints", "rng_state": "checkpoints",
    "set_rng_state": "checkpoints",
    "SupConLoss": "losses", "ProjectionSimilarity": "losses",
    "Features": "features", "extract": "features", "fit_probe": "features", "probe_predict": "features",
})
