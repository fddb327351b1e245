"""The study runner: parameter merging, refusals, failures that name the cell, and a real smoke study.

The smoke study runs the four notebooks with papermill on ``params/smoke.yaml``
(SynthSpine generated into ``tmp_path``) and checks what a reader relies on:
finite metrics per model, the rendered reports, an index whose links resolve, no
errored cell, provenance.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from vfnb import cli
from vfnb.errors import ParamsError, VfnbError
from vfnb.study import MODEL_TITLES, NOTEBOOK_TITLES, NOTEBOOKS, StudyError, merge_params, parse_override, run_study

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "params" / "smoke.yaml"


# ------------------------------------------------------------------ parameters
def test_merge_later_files_and_overrides_win(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("supcon_epochs: 3\nseed: 5\n")
    b.write_text("supcon_epochs: 4\n")
    merged = merge_params([a, b], ["seed=7", "batches_per_epoch=null", "models=[ce]", "tag=f-1"])
    assert merged["supcon_epochs"] == 4          # b over a
    assert merged["seed"] == 7                   # -p over files
    assert merged["batches_per_epoch"] is None   # YAML scalars
    assert merged["models"] == ["ce"]
    assert merged["tag"] == "f-1"
    assert merged["ce_lr"] == 0.05               # untouched default


def test_unknown_key_in_a_file_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("supcon_epoch: 3\n")
    with pytest.raises(ParamsError, match=r"bad\.yaml: unknown parameter 'supcon_epoch' \(did you mean 'supcon_epochs'\?\)"):
        merge_params([bad])


def test_unknown_or_malformed_override():
    with pytest.raises(ParamsError, match=r"-p nonsense=1: unknown parameter 'nonsense'"):
        merge_params([], ["nonsense=1"])
    with pytest.raises(ParamsError, match="expected KEY=VALUE"):
        parse_override("seed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        parse_override("models=[a, b")


def test_study_validation_names_the_file_that_set_a_bad_training_value(tmp_path):
    from vfnb.study import merge_params_with_sources, validate_study_params

    bad = tmp_path / "fast.yaml"
    bad.write_text("supcon_lr: fast\n")
    params, sources = merge_params_with_sources([bad])
    with pytest.raises(ParamsError, match=r"fast\.yaml: .*parameter 'supcon_lr' = 'fast' is invalid.*\(model supcon\)"):
        validate_study_params(params, sources=sources)
    params, sources = merge_params_with_sources([], ["finetune_epochs=0"])
    with pytest.raises(ParamsError, match=r"-p finetune_epochs=0: .*'finetune_epochs'.*\(model supcon_finetune\)"):
        validate_study_params(params, sources=sources)
    from vfnb.study.parameters import StudyParams

    epochs = StudyParams().supcon_epochs  # a warm-up as long as the whole run is refused
    params, sources = merge_params_with_sources([], [f"supcon_warmup_epochs={epochs}"])
    with pytest.raises(ParamsError, match=r"'supcon_warmup_epochs'"):
        validate_study_params(params, sources=sources)


def test_params_file_must_be_a_mapping_and_plain_yaml(tmp_path):
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="list.yaml: expected a mapping"):
        merge_params([listy])
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("seed: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ParamsError, match="tagged.yaml"):
        merge_params([tagged])


# ------------------------------------------------------------------ the typed parameters
# one bad value of each kind of parameter: (override, the parameter named, what the message expects)
BAD_VALUES = [
    ("projection=tsne", "projection", "one of umap, pca"),
    ("morphometry=[morphometry_magic]", "morphometry", "a list of distinct names among morphometry_rule, morphometry_logistic"),
    ("models=[]", "models", "a non-empty list of distinct names among supcon_linear"),
    ("models=[ce, ce]", "models", "a non-empty list of distinct names"),
    ("models=[supcon]", "models", "a non-empty list"),
    ("checkpoints={resnet: a.pt}", "checkpoints", "a mapping model"),
    ("checkpoints={ce: 3}", "checkpoints", "a mapping model"),
    ("saliency_per_grade=0", "saliency_per_grade", "an integer 1-100"),
    ("occlusion_checked=-1", "occlusion_checked", "an integer 0-100"),
    ("umap_neighbors=1", "umap_neighbors", "an integer 2-500"),
    ("umap_neighbors=100000", "umap_neighbors", "an integer 2-500"),
    ("umap_max_points=many", "umap_max_points", "an integer 2-200000"),
    ("n_boot=0", "n_boot", "an integer 1-100000"),
    ("n_boot=10000000000", "n_boot", "an integer 1-100000"),
    ("synth_cases=2.5", "synth_cases", "an integer 1-10000"),
    ("patch_size=100000", "patch_size", "an integer 8-512"),
    ("workers=1000", "workers", "an integer 0-64"),
    ("batch_per_grade=100000", "batch_per_grade", "an integer 1-256"),
    ("batches_per_epoch=10000000000", "batches_per_epoch", "an integer 1-100000 or null"),
    ("val_fraction=1", "val_fraction", "a number > 0 and < 1"),
    ("target_specificity=0", "target_specificity", "a number > 0 and < 1"),
    ("operating_points_from=3", "operating_points_from", "a text"),
    ("smoke=maybe", "smoke", "true or false"),
    ("reuse_checkpoints=1", "reuse_checkpoints", "true or false"),
    ("dataset=", "dataset", "a non-empty text"),
    ("temperature=0", "temperature", "a number > 0"),
    ("backbone=vgg", "backbone", "one of resnet10"),
    ("device=gpu", "device", "auto, cpu, cuda or cuda:N"),
    ("ce_lr=-1", "ce_lr", r"a number > 0.*\(model ce\)"),
    ("supcon_augmentation=strong", "supcon_augmentation", r"one of paper, weak.*\(model supcon\)"),
]


@pytest.mark.parametrize("override, key, expected", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_bad_value_is_refused_naming_its_option(override, key, expected):
    from vfnb.study import merge_params_with_sources, validate_study_params

    params, sources = merge_params_with_sources([], [override])
    with pytest.raises(ParamsError, match=rf"^vfnb study: -p {re.escape(override)}: parameter '{key}' = .* is "
                                          rf"invalid; expected {expected}"):
        validate_study_params(params, sources=sources)


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    from vfnb.study import merge_params_with_sources, validate_study_params

    bad = tmp_path / "quick.yaml"
    bad.write_text("projection: tsne\n")
    params, sources = merge_params_with_sources([SMOKE, bad])
    with pytest.raises(ParamsError, match=r"quick\.yaml: parameter 'projection' = 'tsne' is invalid"):
        validate_study_params(params, sources=sources)


def test_cli_refuses_a_bad_projection_before_any_notebook(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["study", "--params", str(SMOKE), "-p", "projection=tsne", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "-p projection=tsne" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "run.failed").exists()


@pytest.mark.parametrize("files", [[], [SMOKE], [ROOT / "params" / "paper.yaml"]], ids=["default", "smoke", "paper"])
def test_params_round_trip_through_json(files):
    from vfnb.study import StudyParams

    params = StudyParams.from_dict(merge_params(files))
    assert StudyParams.from_json(params.to_json()) == params
    assert StudyParams.from_json(json.loads(params.to_json())) == params  # what papermill injects: the data
    assert StudyParams.from_dict(params.as_dict()).as_dict() == params.as_dict()


def test_empty_study_params_are_the_defaults():
    """A notebook run by hand in JupyterLab gets ``study_params = {}``: params/default.yaml's values."""
    from vfnb.study import StudyParams

    assert StudyParams.from_json({}) == StudyParams.from_json("") == StudyParams.from_dict(merge_params([]))
    with pytest.raises(ParamsError, match=r"study_params: unknown parameter 'temprature' \(did you mean 'temperature'"):
        StudyParams.from_json({"temprature": 0.1})
    with pytest.raises(ParamsError, match="study_params: not valid JSON"):
        StudyParams.from_json("{temperature")


def test_training_settings_and_budgets_come_from_the_params():
    from vfnb.study import MODELS, StudyParams, TrainingSettings, model_training_params

    params = StudyParams.from_dict(merge_params([SMOKE], ["temperature=0.2", "lr_milestones=[9, 3]"]))
    settings = params.training_settings()
    assert isinstance(settings, TrainingSettings) and settings.temperature == 0.2 and settings.cube_size == 24
    assert settings.lr_milestones == [3, 9]  # canonical, as the training configuration holds it
    assert MODELS["supcon"].budget_of(params) == {"epochs": 2, "lr": 0.05, "augmentation": "weak", "warmup_epochs": 1,
                                                  "batch_per_grade": 1, "batches_per_epoch": 3}
    trained = model_training_params("ce", settings.as_dict(), MODELS["ce"].budget_of(params), "d", params.tag)
    assert trained["epochs"] == params.ce_epochs and trained["temperature"] == 0.2


def test_supcon_batches_are_its_own_and_the_other_models_keep_the_shared_ones():
    """SupCon's batch size and epoch length replace the shared ones for SupCon only; a bad one names its key."""
    from vfnb.study import MODELS, StudyParams, model_training_params

    params = StudyParams.from_dict(merge_params([], ["supcon_batch_per_grade=5", "supcon_batches_per_epoch=7"]))
    settings = params.training_settings().as_dict()
    trained = {m: model_training_params(m, settings, MODELS[m].budget_of(params), "d", params.tag,
                                        "-" if MODELS[m].starts_from else None) for m in MODELS}
    assert (trained["supcon"]["batch_per_grade"], trained["supcon"]["batches_per_epoch"]) == (5, 7)
    for model in ("supcon_linear", "supcon_finetune", "ce"):
        assert (trained[model]["batch_per_grade"], trained[model]["batches_per_epoch"]) == \
            (params.batch_per_grade, params.batches_per_epoch), model
    # balanced epochs have no batch count: the message speaks of the study's SupCon key
    with pytest.raises(ParamsError, match=r"'supcon_batches_per_epoch'.*\(model supcon\)"):
        StudyParams.from_dict(merge_params([], ["epoch_mode=balanced", "batches_per_epoch=null"]))
    assert StudyParams.from_dict(merge_params([], ["epoch_mode=balanced", "batches_per_epoch=null",
                                                   "supcon_batches_per_epoch=null"])).supcon_batches_per_epoch is None


def test_recipe_table_comes_from_the_fields():
    from dataclasses import fields

    from vfnb.study import RECIPE_KEYS, StudyParams

    assert RECIPE_KEYS == {f.name: f.metadata["recipe"] for f in fields(StudyParams) if f.metadata.get("recipe")}
    assert RECIPE_KEYS["temperature"] == "SupCon temperature" and "seed" not in RECIPE_KEYS
    for f in fields(StudyParams):
        assert f.metadata["help"] and "\n" not in f.metadata["help"], f.name


# ------------------------------------------------------------------ refusals and failures
def test_refuses_an_existing_out_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("previous run")
    with pytest.raises(VfnbError, match="already exists"):
        run_study([SMOKE], [], out, progress=False)
    assert (out / "keep.txt").read_text() == "previous run"
    assert cli.main(["study", "--params", str(SMOKE), "--out", str(out)]) == 2


def _notebook(path: Path, *sources: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("# test notebook"))
    nb.cells.append(nbformat.v4.new_code_cell('run_dir = "x"\nstudy_params = {}', metadata={"tags": ["parameters"]}))
    for source in sources:
        nb.cells.append(nbformat.v4.new_code_cell(source))
    nbformat.write(nb, str(path))


def test_failing_cell_names_notebook_and_cell_and_keeps_the_partial_run(tmp_path, capfd, monkeypatch):
    notebooks = tmp_path / "nb"
    notebooks.mkdir()
    # a notebook that logs a training line the way vfnb.training.engine does, into the run folder's run.log
    _notebook(notebooks / "ok.ipynb", "from pathlib import Path\nfrom vfnb.study import StudyParams\n"
              "p = StudyParams.from_json(study_params)\nPath(run_dir, 'ok.txt').write_text(str(p.seed))",
              "import logging\nfrom vfnb.study import StudyRun\nStudyRun(run_dir)\n"
              "logging.getLogger('vfnb.training.engine').info('supcon epoch 1/1: loss 0.5000, val macro-F1 0.250')")
    _notebook(notebooks / "broken.ipynb", "x = 1", "%matplotlib inline\ny = 0\nraise ValueError('boom in the study')",
              "y = 2")
    monkeypatch.chdir(tmp_path)
    out = Path("results") / "run"  # relative, as `make study` gives it: the kernels run in another folder
    with pytest.raises(StudyError) as info:
        run_study([SMOKE], ["seed=3"], out, progress=True, notebooks=("ok", "broken"), notebook_dir=notebooks)
    message = str(info.value)
    # cell 0 markdown, 1 parameters, 2 papermill's injected parameters, 3 "x = 1", 4 the raise
    assert "broken.ipynb" in message and "cell 4" in message
    assert "line 3: raise ValueError('boom in the study')" in message  # the failing step, not `%matplotlib inline`
    assert "ValueError: boom in the study" in message
    assert not out.exists()
    failed = out.with_name("run.failed")
    assert (failed / "ok.txt").read_text() == "3"  # parameters passed, earlier notebook ran
    executed = nbformat.read(str(failed / "broken.ipynb"), as_version=4)
    assert any(o.get("output_type") == "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "<title>broken · vfnb study</title>" in (failed / "broken.html").read_text()
    # the console named the staging folder first, echoed the kernel's training line, and no kernel notice
    console = capfd.readouterr().err
    assert re.search(r"building the run in \S*\.tmp-run-\S+ \(moved to \S*results/run when complete", console)
    assert "supcon epoch 1/1: loss 0.5000" in console and "without encryption" not in console
    assert "Traceback" not in console and "Exception in thread" not in console
    log = (failed / "run.log").read_text()
    assert log.index("[1/2] ok ...") < log.index("supcon epoch 1/1: loss 0.5000") < log.index("[2/2] broken ...")
    assert "FAILED: notebook broken.ipynb failed in cell 4" in log


def test_a_write_that_fails_in_the_staging_folder_is_named_where_the_run_goes(tmp_path):
    """The staging folder is removed when a write fails (a full disk), so the error names the file in --out."""
    import errno

    from vfnb.study.runner import _named_in_out

    staging, out = tmp_path / ".tmp-run-1-ab", tmp_path / "run"
    named = _named_in_out(OSError(errno.EFBIG, "File too large", str(staging / "figures" / "a.png")), staging, out)
    assert (named.errno, named.filename) == (errno.EFBIG, str(out / "figures" / "a.png"))
    elsewhere = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "data" / "x.nii.gz"))
    assert _named_in_out(elsewhere, staging, out) is elsewhere


def test_cli_missing_dataset_is_refused_before_any_notebook(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["study", "--params", str(SMOKE), "-p", f"dataset={tmp_path / 'no-such-dataset'}",
                     "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "-p dataset=" in err and "no-such-dataset" in err and "no such folder" in err
    assert "Traceback" not in err
    # nothing was started: no run folder, no failed run, no staging folder
    assert not out.exists() and not (tmp_path / "run.failed").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-run")]


# ------------------------------------------------------------------ the smoke study
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if (tag, key) in (("a", "href"), ("img", "src")) and value:
                self.targets.append(value)


@pytest.mark.slow
def test_smoke_study_end_to_end(smoke_study):
    out = smoke_study  # run once for the session (conftest), its pages also read in a browser (test_browser)
    assert (out / "metrics.json").is_file() and not out.with_name("smoke.failed").exists()

    # metrics.json: every model, every headline number finite, CIs around the point
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"supcon_linear", "supcon_finetune", "ce", "morphometry_rule",
                                      "morphometry_logistic"}
    for model, entry in metrics["models"].items():
        for key in ("sensitivity", "specificity", "roc_auc", "macro_f1", "quadratic_kappa", "accuracy", "weighted_f1"):
            value = entry["metrics"][key]
            assert value["value"] is not None and math.isfinite(value["value"]), (model, key)
            if value["ci_low"] is not None:
                assert value["ci_low"] - 1e-9 <= value["value"] <= value["ci_high"] + 1e-9, (model, key)
        assert entry["n_vertebrae"] == metrics["test"]["vertebrae"] > 0
        # SynthSpine runs T4-L5: every test vertebra lies in exactly one region, thoracic or lumbar
        regions = entry["by_region"]
        assert regions and set(regions) <= {"thoracic", "lumbar"}, model
        assert sum(r["n_vertebrae"] for r in regions.values()) == entry["n_vertebrae"]
    assert metrics["dataset"]["synthetic"] is True
    assert metrics["paper"]["metrics"]["specificity"]["value"] == 0.99
    # the paired differences behind the stated answer: SupCon graders vs CE, each network vs each morphometry grader
    comparisons = metrics["comparisons"]
    assert {"supcon_linear - ce", "supcon_finetune - ce", "ce - morphometry_logistic"} <= set(comparisons)
    for pair in comparisons.values():
        own = {m: metrics["models"][m]["metrics"]["macro_f1"]["value"] for m in (pair["model"], pair["baseline"])}
        diff = pair["metrics"]["macro_f1"]
        assert diff["value"] == pytest.approx(own[pair["model"]] - own[pair["baseline"]])
        if diff["ci_low"] is not None:
            assert diff["ci_low"] - 1e-9 <= diff["value"] <= diff["ci_high"] + 1e-9

    # no cell errored; every notebook executed and rendered
    for name in NOTEBOOKS:
        nb = nbformat.read(str(out / f"{name}.ipynb"), as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.execution_count is not None for c in code), name
        assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"], name
        assert (out / f"{name}.html").stat().st_size > 10_000
        assert f"<title>{NOTEBOOK_TITLES[name]} · vfnb study</title>" in (out / f"{name}.html").read_text()

    # index.html: a headline row per model and the paper's, every link resolves
    index = (out / "index.html").read_text()
    assert "synthetic" in index and "Paper (Wei et al. 2022)" in index
    answer = index.split("<div class='answer'>")[1].split("</div>")[0]
    assert "Does SupCon beat cross-entropy?" in answer and "These are synthetic data" in answer
    assert "sweep" not in answer and "../../index.html" not in index  # a standalone run links no sweep
    for label, _ in [(t, None) for t in ("SupCon encoder + linear probe", "Cross-entropy baseline")]:
        assert label in index
    parser = _Links()
    parser.feed(index)
    assert {f"{n}.html" for n in NOTEBOOKS} | {f"{n}.ipynb" for n in NOTEBOOKS} <= set(parser.targets)
    assert any(t.startswith("figures/") for t in parser.targets)
    for target in parser.targets:
        assert (out / target).is_file(), target
    summary = (out / "summary.md").read_text()
    for target in re.findall(r"\]\(([^)]+)\)", summary):
        assert (out / target).is_file(), target
    assert re.search(r"\| Cross-entropy baseline \| \d", summary)
    assert re.search(r"\| Morphometry: Genant bands on measured heights \| \d", summary)

    # beyond the paper: the morphometry models' thresholds, Grad-CAM per network, region shares
    points = json.loads((out / "operating_points.json").read_text())
    assert {"morphometry_rule", "morphometry_logistic", "ce"} <= set(points)
    # each network's point names the training run of its checkpoint (vfnb predict matches on it)
    ce_run = torch.load(out / "runs" / "ce" / "best.pt", weights_only=True, map_location="cpu")["run_id"]
    assert points["ce"]["run_id"] == ce_run and points["morphometry_rule"].get("run_id") is None
    saliency = json.loads((out / "saliency.json").read_text())
    assert set(saliency) == {"supcon_linear", "supcon_finetune", "ce"}
    for items in saliency.values():
        assert items and all(abs(sum(i["volume_shares"].values()) - 1) < 1e-6 for i in items)
        assert any("occlusion_shares" in i for i in items)
    assert (out / "figures" / "03_saliency_ce.png").is_file()
    evaluation = (out / "03_evaluation.html").read_text()
    assert "What the networks add beyond measuring heights" in evaluation and "Where the networks look" in evaluation

    # a reader's page (issue 17): the smoke warning, what each headline number is computed on, kept starts
    smoke_warning = "Smoke run: these numbers mean nothing"
    assert smoke_warning in index and smoke_warning in summary
    assert "At the operating point" in index and "Threshold-free" in index and "Most probable grade (argmax)" in index
    training = json.loads((out / "training.json").read_text())
    networks = {m for m in metrics["models"] if not m.startswith("morphometry_")}  # measured, not trained
    assert set(training["models"]) == {"supcon", *networks}
    for model, trained in training["models"].items():
        kept = f"{MODEL_TITLES.get(model)}: training did not improve validation macro-F1 on its start"
        assert (kept in index) == (model in MODEL_TITLES and trained["best_epoch"] == 0), model

    # every notebook page: a way back to the index, the warning, parameters as given, no internals
    for name in NOTEBOOKS:
        page, executed = (out / f"{name}.html").read_text(), (out / f"{name}.ipynb").read_text()
        assert "<a href='index.html'>" in page and smoke_warning in page, name
        assert ".tmp-smoke" not in page and ".tmp-smoke" not in executed, name  # the staging folder
        assert "PosixPath(" not in page, name
        nb = nbformat.read(str(out / f"{name}.ipynb"), as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        assert f"run_dir = {str(out)!r}" in injected.source, name
    # the models started from the encoder name it where the run is now, not in the staging folder
    for model in ("supcon_linear", "supcon_finetune"):
        recorded = yaml.safe_load((out / "runs" / model / "params.yaml").read_text())["init_checkpoint"]
        assert Path(recorded).resolve() == (out / "runs" / "supcon" / "best.pt").resolve(), model
        for ckpt in ("best.pt", "last.pt"):
            params = torch.load(out / "runs" / model / ckpt, weights_only=True, map_location="cpu")["params"]
            assert params["init_checkpoint"] == recorded, (model, ckpt)
    probe_page = (out / "01_supcon_pretraining.html").read_text()
    assert "permutation p-value" in probe_page and "p (macro-F1" not in probe_page
    # p-values below 0.001 read "< 0.001" (the last cell of each row of the probe table; an AUC may be 0.000)
    p_cells = re.findall(r"<tr>\s*<th>[^<]*</th>\s*<td>[^<]*</td>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>\s*</tr>",
                         probe_page)
    assert p_cells and "0.000" not in p_cells, p_cells

    # run.log: the console lines of the run and what training said
    log = (out / "run.log").read_text()
    assert log.startswith("building the run in") and "[4/4] 03_evaluation done" in log
    assert "supcon_finetune: training (finetune, 1 epochs)" in log and "study complete" in log

    # provenance
    prov = json.loads((out / "provenance.json").read_text())
    assert set(prov["notebook_seconds"]) == set(NOTEBOOKS)
    assert prov["packages"]["torch"] and prov["packages"]["papermill"]
    assert len(prov["data"]["fingerprint"]) == 64
    assert prov["params"]["supcon_epochs"] == 2 and "seed" in prov["seeds"]
    assert "commit" in prov["git"] and prov["machine"]["cores"]
    # operating points chosen on validation and passed on
    points = json.loads((out / "operating_points.json").read_text())
    assert set(points) == set(metrics["models"]) and all(p["chosen_on"] == "validation" for p in points.values())
    assert (out / "runs" / "ce" / "val_predictions.csv").is_file()


def test_git_state_counts_code_not_outputs(tmp_path):
    import subprocess

    from vfnb.study import git_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results" / "default").mkdir(parents=True)
    (tmp_path / "results" / "default" / "metrics.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    # a re-run replacing its own committed report, and generated data: not code changes
    (tmp_path / "results" / "default" / "metrics.json").write_text('{"a": 1}')
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scan.nii.gz").write_bytes(b"x")
    state = git_state(tmp_path)
    assert state["dirty"] is False and len(state["commit"]) == 40
    (tmp_path / "code.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("")
    state = git_state(tmp_path)
    assert state["dirty"] is True
    assert state["changed_files"] == ["code.py"] and state["untracked_files"] == ["new.py"]


def test_probe_comparison_reports_probe_and_chance(tiny_processed):
    from vfnb.data.processed import ProcessedDataset
    from vfnb.study import PERMUTATION_P, initial_model, probe_comparison

    ds = ProcessedDataset(tiny_processed)
    model = initial_model({"backbone": "resnet10", "head": "linear", "feature_dim": 16, "seed": 0,
                           "backbone_kwargs": {"block_inplanes": [4, 4, 4, 8]}})
    table = probe_comparison({"random init": model}, ds.records("train", "t0"), ds.records("val", "t0"), 16,
                             device="cpu", n_permutations=50)
    assert list(table.index) == ["random init", "chance: always grade 0", "chance: uniform guess"]
    row = table.loc["random init"]
    assert 0 <= row["macro-F1"] <= 1 and 0 <= row["fracture AUC"] <= 1 and 1 / 51 <= row[PERMUTATION_P] <= 1
    # the val list holds all four grades about equally: always-0 reaches F1(grade 0) / 4
    assert table.loc["chance: always grade 0", "macro-F1"] < 0.2


def test_recipe_deviations_are_listed_in_the_report(tmp_path):
    from vfnb.study import RECIPE_KEYS, paper_params_file, read_params_file, recipe_deviations, write_report

    paper = read_params_file(paper_params_file())
    assert set(RECIPE_KEYS) <= set(paper)  # every recipe setting has the paper's value on record
    default = merge_params([])
    deviations = {d["key"]: d for d in recipe_deviations(default)}
    assert deviations["supcon_augmentation"]["value"] == "weak" and deviations["supcon_augmentation"]["paper"] == "paper"
    assert recipe_deviations({**default, **paper}) == []
    index, summary = write_report(tmp_path, default, {})
    assert "departs from the paper" in index.read_text() and "<code>supcon_augmentation</code>" in index.read_text()
    assert "| `supcon_augmentation` | augmentation during SupCon pretraining | weak | paper |" in summary.read_text()
    index, _ = write_report(tmp_path, {**default, **paper}, {})
    assert "None: every setting that defines the method has the paper's value." in index.read_text()


@pytest.mark.parametrize("override, expected", [
    ("dataset={tmp}/nowhere", r"-p dataset=.*: parameter 'dataset' = .*nowhere': no such folder"),
    ("dataset={tmp}/ds", r"-p tag=t1: parameter 'tag' = 't1': .* has no train_file_list.t1.yaml"),
    ("operating_points_from={tmp}/op.json", r"parameter 'operating_points_from' = .*op.json': file not found"),
    ("checkpoints={{ce: {tmp}/ce.pt}}", r"parameter 'checkpoints' names .*ce.pt' for model 'ce': file not found"),
])
def test_files_the_parameters_name_are_checked_before_notebook_00(tmp_path, override, expected):
    (tmp_path / "ds").mkdir()
    out = tmp_path / "run"
    with pytest.raises(ParamsError, match=expected):
        run_study([SMOKE], [override.format(tmp=tmp_path), "tag=t1"], out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_the_same_synthspine_generated_again_elsewhere_has_the_same_fingerprint(tmp_path):
    from vfnb.data.preprocess import preprocess_dataset
    from vfnb.data.split import split_dataset
    from vfnb.data.synth import generate_dataset
    from vfnb.study.provenance import dataset_fingerprint

    prints = []
    for where in ("a", "b/elsewhere"):
        generate_dataset(tmp_path / where / "original", cases=1, seed=3)
        processed = preprocess_dataset(tmp_path / where / "original", tmp_path / where / "processed", size=16)
        prints.append(dataset_fingerprint(processed))
    assert prints[0] == prints[1]
    split_dataset(tmp_path / "a" / "processed", "t", folds=1, val_fraction=0.5, test_fraction=0.0)
    assert dataset_fingerprint(tmp_path / "a" / "processed") != prints[0]  # a new split list is new data


def test_a_run_folder_over_its_data_is_refused_even_with_overwrite(tmp_path):
    data = tmp_path / "data"
    (data / "keep").mkdir(parents=True)
    for out in (data / "run", tmp_path):
        with pytest.raises(ParamsError, match=r"--out is, contains or lies inside the input data_dir"):
            run_study([SMOKE], [f"data_dir={data}"], out, overwrite=True, progress=False)
    assert (data / "keep").is_dir()
