"""The study: four papermill notebooks, the helpers they share, and the report of a run.

One module per job (this file only re-exports):

- :mod:`~vfnb.study.registry`: the notebooks and the models of the study (``MODELS``);
- :mod:`~vfnb.study.parameters`: :class:`StudyParams`, every study parameter (type, default, check, help);
- :mod:`~vfnb.study.params`: reading and merging parameter files, and the checks before notebook 00;
- :mod:`~vfnb.study.runner`: ``run_study`` (``vfnb study``): papermill, staging folder, ``run.log``;
- :mod:`~vfnb.study.provenance`: code, packages, machine and data of a run;
- :mod:`~vfnb.study.report`: ``index.html`` and ``summary.md`` (style in ``report.css``);
- the notebook API: :mod:`~vfnb.study.run` (:class:`StudyRun`, the run folder),
  :mod:`~vfnb.study.records` (the typed records notebooks exchange),
  :mod:`~vfnb.study.data` (:class:`StudyData`), :mod:`~vfnb.study.training`
  (``train_model``, ``checkpoint_cube_size``) and :mod:`~vfnb.study.evaluation`
  (``predict``, operating points, ``metrics.json``).
"""

from ..evaluate import HEADLINE_METRICS, format_ci
from .beyond import (beyond_measurement, explain_networks, grade_by_morphometry, morphometry_models,
                     occlusion_agreement, saliency_overview, saliency_record)
from .data import (StudyData, augmented_views, data_statement, example_scans, load_patch_input,
                   prepare_dataset)
from .evaluation import (PERMUTATION_P, metrics_document, operating_point, paper_row, per_grade_table, predict,
                         probe_comparison, read_operating_points, readable, validation_grading)
from .parameters import StudyParams
from .params import (PATH_PARAMS, RECIPE_KEYS, RUNNER_PARAMS, SYNTHSPINE, merge_params, merge_params_with_sources,
                     notebook_parameters, parse_override, read_params_file, recipe_deviations,
                     resolve_param_paths, unknown_key, validate_study_params)
from .paths import default_params_file, notebooks_dir, paper_params_file, project_root, resolve_path, shown_path
from .provenance import (VERSION_PACKAGES, build_provenance, dataset_fingerprint, git_state, machine_info,
                         package_versions)
from .records import OperatingPoint, TrainedModel, TrainingSettings, TrainingSummary
from .registry import (GRADERS, MODEL_TITLES, MODELS, MORPHOMETRY_TITLES, NOTEBOOK_TITLES, NOTEBOOKS, PRETRAINED, ModelSpec,
                       model_title, needs_pretraining)
from .report import REPORT_CSS, dataset_sentence, headline_rows, html_table, md_table, strip_tags, write_report
from .run import StudyError, StudyRun, figure_index, read_json
from .runner import execute_notebook, project_kernel, render_html, run_study
from .training import (checkpoint_cube_size, initial_model, model_training_params, pretrain, train_model,
                       training_curves)

__all__ = [
    "beyond_measurement", "explain_networks", "grade_by_morphometry", "morphometry_models", "occlusion_agreement",
    "saliency_overview", "saliency_record",
    "GRADERS", "HEADLINE_METRICS", "MORPHOMETRY_TITLES", "MODELS", "MODEL_TITLES", "NOTEBOOKS", "NOTEBOOK_TITLES", "PATH_PARAMS",
    "PERMUTATION_P", "PRETRAINED", "RECIPE_KEYS", "REPORT_CSS", "RUNNER_PARAMS", "SYNTHSPINE", "VERSION_PACKAGES",
    "ModelSpec", "OperatingPoint", "StudyData", "StudyError", "StudyParams", "StudyRun", "TrainedModel", "TrainingSettings",
    "TrainingSummary", "augmented_views", "build_provenance", "checkpoint_cube_size", "data_statement",
    "dataset_fingerprint", "dataset_sentence", "default_params_file", "example_scans", "execute_notebook",
    "figure_index", "format_ci", "git_state", "headline_rows", "html_table", "initial_model", "load_patch_input",
    "machine_info", "md_table", "merge_params", "merge_params_with_sources", "metrics_document", "model_title",
    "model_training_params", "needs_pretraining", "notebook_parameters", "notebooks_dir", "operating_point",
    "package_versions", "paper_params_file", "paper_row", "parse_override", "per_grade_table", "predict",
    "prepare_dataset", "pretrain", "probe_comparison", "project_kernel", "project_root", "read_json",
    "read_operating_points", "read_params_file", "readable", "recipe_deviations", "render_html", "resolve_param_paths",
    "resolve_path", "run_study", "shown_path", "strip_tags", "train_model", "training_curves", "unknown_key",
    "validate_study_params", "validation_grading", "write_report",
]
