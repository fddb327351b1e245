"""The training configuration: one declaration per parameter, checked, documented and listed by the CLI."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from vfnb.training import config
from vfnb.cli import build_parser
from vfnb.cli import main as cli_main
from vfnb.training.config import TrainConfig, defaults, parse_override, parse_overrides, validate_params
from vfnb.errors import ParamsError
from vfnb.io import load_yaml

REPO = Path(__file__).resolve().parent.parent
# settings of params/paper.yaml that are about the machine or the data, not the recipe
NOT_RECIPE = {"dataset", "tag", "backbone", "cube_size", "workers", "device", "amp", "batches_per_epoch"}


def test_every_parameter_has_a_default_a_check_and_help():
    for f in fields(TrainConfig):
        assert isinstance(f.metadata["check"], config.Check) and f.metadata["help"], f.name
    assert validate_params({}) == defaults() == TrainConfig().as_dict()
    assert TrainConfig.from_params(defaults()) == TrainConfig()


def test_defaults_are_the_papers_recipe():
    paper = load_yaml(REPO / "params" / "paper.yaml")
    shared = {k: v for k, v in paper.items() if k in config.FIELDS and k not in NOT_RECIPE}
    assert {"epoch_mode", "lr_schedule", "lr_milestones", "momentum", "weight_decay", "temperature",
            "batch_per_grade"} <= set(shared)
    assert {k: defaults()[k] for k in shared} == shared
    assert defaults()["lr"] == paper["supcon_lr"] == 0.005 and defaults()["views"] == 2
    assert defaults()["augmentation"] == paper["supcon_augmentation"] == "paper"


def test_choices_match_what_models_and_transforms_provide():
    from vfnb.data.transforms import AUGMENTATIONS
    from vfnb.models import networks

    assert networks.BACKBONES == config.BACKBONES and networks.HEADS == config.HEADS
    assert tuple(AUGMENTATIONS) == config.AUGMENTATIONS


@pytest.mark.parametrize("key, value, expected", [
    ("cube_size", 4096, "an integer 8-512 (network input cube edge in voxels"),
    ("lr", 0, "a number > 0 ("),
    ("momentum", 1.0, "a number >= 0 and < 1 ("),
    ("mode", "simclr", "one of supcon, linear, finetune, joint, ce ("),
    ("amp", "yes", "auto, true or false ("),
    ("threads", 0, "auto or an integer >= 1 ("),
    ("lr_milestones", [1, "x"], "a list of integers >= 0 ("),
    ("tag", "", "a non-empty text ("),
    ("batches_per_epoch", 2.5, "an integer 1-100000 or null ("),
])
def test_a_bad_value_names_file_key_and_what_is_expected(key, value, expected):
    with pytest.raises(ParamsError) as err:
        TrainConfig.from_params({key: value}, where="run.yaml")
    assert str(err.value).startswith(f"run.yaml: parameter {key!r} = {value!r} is invalid; expected {expected}")


def test_values_are_put_in_canonical_form():
    cfg = TrainConfig.from_params({"epochs": 3.0, "lr": 1, "lr_milestones": [9, 2.0], "dataset": Path("/d")})
    assert (cfg.epochs, cfg.lr, cfg.lr_milestones, cfg.dataset) == (3, 1.0, [2, 9], "/d")
    assert isinstance(cfg.lr, float) and isinstance(cfg.epochs, int)
    a, b = TrainConfig(), TrainConfig()
    a.lr_milestones.append(5)
    assert b.lr_milestones == [800, 900]  # no default shared between instances


def test_rules_across_parameters():
    for params, key in (({"warmup_epochs": 30, "epochs": 30}, "warmup_epochs"),
                        ({"batches_per_epoch": 5}, "batches_per_epoch"),
                        ({"mode": "finetune"}, "init_checkpoint"),
                        ({"backbone_kwargs": {"nope": 1}}, "backbone_kwargs"),
                        ({"backbone_kwargs": {"block_inplanes": [100000, 8, 8, 8]}}, "backbone_kwargs")):
        with pytest.raises(ParamsError, match=repr(key)):
            TrainConfig.from_params(params)
    with pytest.raises(ParamsError, match="unknown parameter 'learning_rate'"):
        TrainConfig.from_params({"learning_rate": 0.1})


def test_an_empty_override_means_null_in_training_and_in_the_study():
    from vfnb.study import parse_override as study_parse_override

    assert parse_override("init_checkpoint=") == ("init_checkpoint", None) == study_parse_override("init_checkpoint=")
    assert parse_override("operating_points_from=  ") == ("operating_points_from", None)
    assert parse_overrides(["lr=0.01", "lr_milestones=[3, 4]", "batches_per_epoch=", "amp=false"]) == {
        "lr": 0.01, "lr_milestones": [3, 4], "batches_per_epoch": None, "amp": False}
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(ParamsError, match="unknown parameter 'lrr'"):
        parse_overrides(["lrr=1"])


def test_train_help_lists_every_parameter(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    shown = capsys.readouterr().out
    for name, f in config.FIELDS.items():
        assert f"  {name} (default " in shown, name
    assert "cube_size (default 48; an integer 8-512)" in shown and "an empty value means null" in shown


def test_every_cli_argument_has_help_and_version_is_shown(capsys):
    import argparse

    from vfnb import __version__

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, subparser in sub.choices.items():
        for action in subparser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"vfnb {command} {action.dest}"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vfnb {__version__}"


def test_every_command_help_ends_with_examples_and_shows_no_format_escapes(capsys):
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command in sub.choices:
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        shown = capsys.readouterr().out
        assert "\nexamples:\n  vfnb " + command in shown, command
        assert "%%" not in shown, command


def test_an_unknown_training_parameter_gets_a_did_you_mean(tmp_path, capsys):
    assert cli_main(["train", "-p", "tempreature=0.1", "--out", str(tmp_path / "run")]) == 2
    assert "unknown parameter 'tempreature' (did you mean 'temperature'?)" in capsys.readouterr().err
    with pytest.raises(ParamsError, match=r"'batch_per_grad' \(did you mean 'batch_per_grade'\?\)"):
        config.TrainConfig.from_params({"batch_per_grad": 3})
