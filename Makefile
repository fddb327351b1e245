# vfnb: two commands on a fresh machine.
#   make study   install everything into .venv, then run the default study (SynthSpine, CPU)
#   make test    install everything into .venv, then run the whole test suite
#   (make test-integration: the kill / resume / full-disk runs, which make test leaves out)
# Both reuse .venv; it is reinstalled only when requirements.in, requirements.lock
# or pyproject.toml change.
#
# Which torch build: `make install` runs `pip install torch==2.13.0` from the package index
# pip is configured with. From plain PyPI on Linux that is a CUDA build (several GB with its
# nvidia-* packages; it runs on a CPU too). For the CPU-only build, take torch from the
# PyTorch CPU index, on a fresh .venv:
#   make clean-venv && make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
# TORCH_INDEX applies to torch alone; everything else comes from the usual index.
# (The project's development machine resolves torch==2.13.0 to a local CPU wheel.)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vfnb-installed
RUN    ?= run-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=
TORCH_INDEX ?=

.PHONY: install study test test-integration slurm-test lab bench reference screenshots clean-venv

install: $(STAMP)

$(STAMP): requirements.in requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@command -v nvidia-smi >/dev/null || [ -n "$(TORCH_INDEX)" ] || echo "note: no NVIDIA driver found; torch comes \
	from pip's index as configured (plain PyPI: the CUDA build, several GB). The CPU-only build: make clean-venv && \
	make install TORCH_INDEX=https://download.pytorch.org/whl/cpu (README: Which PyTorch build gets installed)"
	# torch first, pinned to the version the reference results were made with, and from
	# TORCH_INDEX when given; the constraints below then keep it.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.in -c requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --prefix $(VENV) --name vfnb --display-name "vfnb (.venv)" >/dev/null
	touch $(STAMP)

# The default study: SynthSpine is generated into data/ when missing and reused when present.
# Each run writes a new folder results/$(RUN); pass RUN=name to choose it.
study: $(STAMP)
	$(VENV)/bin/vfnb study --params params/default.yaml --out results/$(RUN)

# Screenshots of each page kind (the reference run's index and evaluation pages, the sweep
# report, a per-scan report of a SynthSpine scan graded from its heights) into docs/screenshots/,
# read in headless Chromium (Debian's chromium package).
SHOTS := $(VENV)/screenshot-work
screenshots: $(STAMP)
	rm -rf $(SHOTS) && mkdir -p $(SHOTS)
	$(VENV)/bin/vfnb synth $(SHOTS)/data --cases 1 --seed 3
	$(VENV)/bin/vfnb predict --ct $(SHOTS)/data/img/synth-s3-0000.nii.gz --seg $(SHOTS)/data/seg/synth-s3-0000.nii.gz \
	    --out $(SHOTS)/grades.csv --report $(SHOTS)/scan-report.html
	$(PY) tests/browser_pages.py docs/screenshots index=results/default/index.html \
	    evaluation=results/default/03_evaluation.html sweep=results/sweep-default/index.html \
	    scan-report=$(SHOTS)/scan-report.html

# Regenerate the committed reference report results/default (replaces it).
reference: $(STAMP)
	$(VENV)/bin/vfnb study --params params/default.yaml --out results/default --overwrite
	$(PY) -m vfnb.study.portable results/default

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Real runs killed (SIGKILL, Ctrl-C), cut off by a file-size limit or losing a torchrun
# worker, then run again (tests marked `integration`, left out of `make test`; minutes).
test-integration: $(STAMP)
	$(PY) -m pytest -m integration $(PYTEST_ARGS)

# The sweep on a real SLURM (tests/test_sweep_slurm.py, skipped by `make test` when no SLURM
# answers): start a single-node SLURM on this machine (scripts/slurm-local.sh, as root, state
# in $(SLURM_DIR), its jobs at niceness 10), run the test against it, stop SLURM whether the
# test passed or not.
SLURM_DIR ?= /tmp/vfnb-slurm
slurm-test: $(STAMP)
	VFNB_SLURM_DIR=$(SLURM_DIR) VFNB_SLURM_NICE=10 scripts/slurm-local.sh start
	SLURM_CONF=$(SLURM_DIR)/slurm.conf $(PY) -m pytest -rs tests/test_sweep_slurm.py $(PYTEST_ARGS); \
	    status=$$?; VFNB_SLURM_DIR=$(SLURM_DIR) scripts/slurm-local.sh stop; exit $$status

# JupyterLab refuses to run as root without --allow-root (containers often run as root).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks$(if $(filter 0,$(shell id -u)), --allow-root)

bench: $(STAMP)
	$(PY) -m benchmarks

clean-venv:
	rm -rf $(VENV)
