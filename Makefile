# vfnb: two commands on a fresh machine.
#   make study   install everything into .venv, then run the default study (SynthSpine, CPU)
#   make test    install everything into .venv, then run the whole test suite
# Both reuse .venv; it is reinstalled only when requirements.in, requirements.lock
# or pyproject.toml change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vfnb-installed
RUN    ?= run-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: install study test lab bench reference clean-venv

install: $(STAMP)

$(STAMP): requirements.in requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an open requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.in -c requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name vfnb --display-name "vfnb (.venv)" >/dev/null
	touch $(STAMP)

# The default study: SynthSpine is generated into data/ when missing and reused when present.
# Each run writes a new folder results/$(RUN); pass RUN=name to choose it.
study: $(STAMP)
	$(VENV)/bin/vfnb study --params params/default.yaml --out results/$(RUN)

# Regenerate the committed reference report results/default (replaces it).
reference: $(STAMP)
	$(VENV)/bin/vfnb study --params params/default.yaml --out results/default --overwrite

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

bench: $(STAMP)
	$(PY) -m benchmarks

clean-venv:
	rm -rf $(VENV)
