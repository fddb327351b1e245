"""The study: four papermill notebooks, the helpers they share, and the report of a run.

One module per job (this file only re-exports, lazily: :mod:`vfnb.lazy`):

- :mod:`~vfnb.study.registry`: the notebooks and the models of the study (``MODELS``);
- :mod:`~vfnb.study.parameters`: :class:`StudyParams`, every study parameter (type, default, check, help);
- :mod:`~vfnb.study.params`: reading and merging parameter files, and the checks before notebook 00;
- :mod:`~vfnb.study.runner`: ``run_study`` (``vfnb study``): papermill, staging folder, ``run.log``;
- :mod:`~vfnb.study.provenance`: code, packages, machine and data of a run;
- :mod:`~vfnb.study.report`: ``index.html`` and ``summary.md`` (style in ``report.css``);
- :mod:`~vfnb.study.budget`: validation figures against optimizer steps, SupCon and CE side by side;
- the notebook API: :mod:`~vfnb.study.run` (:class:`StudyRun`, the run folder),
  :mod:`~vfnb.study.records` (the typed records notebooks exchange),
  :mod:`~vfnb.study.data` (:class:`StudyData`), :mod:`~vfnb.study.training`
  (``train_model``, ``checkpoint_cube_size``) and :mod:`~vfnb.study.evaluation`
  (``predict``, operating points, ``metrics.json``).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "run_answer": "answer", "study_comparisons": "answer", "sweep_answer": "answer",
    "beyond_measurement": "beyond", "explain_networks": "beyond", "grade_by_morphometry": "beyond",
    "morphometry_models": "beyond", "occlusion_agreement": "beyond", "saliency_overview": "beyond",
    "saliency_record": "beyond",
    "StudyData": "data", "augmented_views": "data", "data_statement": "data", "example_scans": "data",
    "load_patch_input": "data", "prepare_dataset": "data",
    "PERMUTATION_P": "evaluation", "metrics_document": "evaluation", "operating_point": "evaluation",
    "paper_row": "evaluation", "per_grade_table": "evaluation", "predict": "evaluation",
    "probe_comparison": "evaluation", "read_operating_points": "evaluation", "readable": "evaluation",
    "validation_grading": "evaluation",
    "StudyParams": "parameters",
    "PATH_PARAMS": "params", "RECIPE_KEYS": "params", "check_param_files": "params", "RUNNER_PARAMS": "params",
    "SYNTHSPINE": "params", "merge_params": "params", "merge_params_with_sources": "params",
    "notebook_parameters": "params", "parse_override": "params", "read_params_file": "params",
    "recipe_deviations": "params", "resolve_param_paths": "params", "unknown_key": "params",
    "validate_study_params": "params",
    "default_params_file": "paths", "notebooks_dir": "paths", "paper_params_file": "paths",
    "project_root": "paths", "resolve_path": "paths", "shown_path": "paths",
    "VERSION_PACKAGES": "provenance", "build_provenance": "provenance", "dataset_fingerprint": "provenance",
    "git_state": "provenance", "machine_info": "provenance", "package_versions": "provenance",
    "OperatingPoint": "records", "TrainedModel": "records", "TrainingSettings": "records",
    "TrainingSummary": "records",
    "GRADERS": "registry", "MODELS": "registry", "MODEL_TITLES": "registry", "MORPHOMETRY_TITLES": "registry",
    "ModelSpec": "registry", "NOTEBOOKS": "registry", "NOTEBOOK_TITLES": "registry", "PRETRAINED": "registry",
    "model_title": "registry", "needs_pretraining": "registry",
    "REPORT_CSS": "report", "dataset_sentence": "report", "headline_rows": "report", "html_table": "report",
    "md_table": "report", "markdown_text": "report", "OwnMarkdown": "report", "strip_tags": "report", "write_report": "report",
    "StudyError": "run", "StudyRun": "run", "figure_index": "run", "read_json": "run",
    "execute_notebook": "runner", "project_kernel": "runner", "render_html": "runner", "run_study": "runner",
    "checkpoint_cube_size": "training", "initial_model": "training", "model_training_params": "training",
    "pretrain": "training", "train_model": "training", "training_curves": "training",
})
