# The two commands that do all set-up: `make train` and `make test`. Everything else here is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= cifar100_resnet18
ARGS ?=
PYTEST_ARGS ?=
# A GPU machine gets the CUDA build of the same TensorFlow version.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TF_PACKAGE ?= $(if $(HAS_GPU),tensorflow[and-cuda]==2.21.0,tensorflow-cpu==2.21.0)

.DEFAULT_GOAL := help
.PHONY: help install dev train test test-fast lint tensorboard presets bench clean

include docker/Makefile.inc
include scripts/Makefile.distributed.inc

## this list: every documented target (a bare `make` prints it rather than starting a 200-epoch training)
help:
	@awk '/^## /{doc=substr($$0, 4); next} /^[a-zA-Z0-9_-]+:/ && doc {split($$0, t, ":"); printf "  make %-14s %s\n", t[1], doc} {doc=""}' $(MAKEFILE_LIST)

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

$(VENV)/.installed: setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TF_PACKAGE)" -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt $(wildcard tests/tools/install.sh)
	$(PY) -m pip install -q -r requirements-dev.txt
	VENV=$(VENV) bash tests/tools/install.sh
	bash docker/build-horovod.sh --python $(PY)
	touch $@

## train the preset CONFIG (default cifar100_resnet18) with ARGS="key=value ..." into runs/<preset>; rerun resumes
train: install
	$(PY) -m job train --config $(CONFIG) $(ARGS)

# After `dev` every tool the tests use is installed, so a skip means a broken install: it fails the run unless
# tests/allowed_skips.txt lists it (tests/support/skip_guard.py). A bare `pytest` only reports skips.
FAIL_ON_SKIPS := JOB_FAIL_ON_UNLISTED_SKIPS=1
# Two pytest workers (pytest-xdist), a test file each at a time: most tests wait on child processes, so two at once use
# the 2 cores better than one; whole files keep each module's fixtures (a trained run, a server) built once.
PARALLEL ?= -n 2 --dist loadfile

## the whole test suite, slow end-to-end tests included (what CI runs)
test: dev
	$(FAIL_ON_SKIPS) $(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

## the unit tests (tests/unit/: no process, no server; under a minute on two workers), for the edit-test loop
test-fast: dev
	$(FAIL_ON_SKIPS) $(PY) -m pytest $(PARALLEL) tests/unit $(PYTEST_ARGS)

## ruff on the whole repository (ruff.toml); CI runs it
lint: dev
	$(VENV)/bin/ruff check .

## benchmarks (about half an hour; bench.run --sections picks some): loop vs fit, pipeline, checkpoints, serving, recipe; docs/performance.md
bench: dev
	$(PY) -m bench.run

## the bundled presets, one line each
presets: install
	$(PY) -m job presets

## TensorBoard on http://127.0.0.1:6006 over every run in runs/
tensorboard: install
	$(VENV)/bin/tensorboard --logdir runs --host 127.0.0.1 --port 6006

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
