"""The install pins: requirements.lock, environment.yml and the Makefile agree."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, version = line.partition("==")
        assert version, f"requirements.lock: {line!r} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    return pins


def test_environment_yml_matches_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    conda_pins = {}
    for entry in pip_section:
        name, _, version = entry.partition("==")
        conda_pins[name.lower().replace("_", "-")] = version
    assert conda_pins == _lock_pins()


def test_every_direct_requirement_is_pinned():
    pins = _lock_pins()
    for line in (ROOT / "requirements.in").read_text().splitlines():
        name = line.split("#")[0].strip()
        if name:
            assert name.lower() in pins, f"{name} in requirements.in has no pin in requirements.lock"


def test_torch_is_pinned_and_installed_first():
    assert _lock_pins()["torch"] == "2.13.0"
    makefile = (ROOT / "Makefile").read_text()
    torch_at = makefile.index("torch==2.13.0")
    rest_at = makefile.index("-c requirements.lock")
    assert torch_at < rest_at
    # the constraints file must be used for everything after torch
    assert re.search(r"-r requirements.in -c requirements.lock", makefile)


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
