# The two set-up commands (see README.md):
#   make demo   install everything into .venv and run the main job on the mini world: R0 training, then the evaluation
#   make test   install what the tests need into .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := constraints.txt
# One test worker per core (pytest-xdist); each pins torch to one thread (tests/conftest.py).
JOBS ?= 2
PYTEST_ARGS ?=

.PHONY: demo test install install-dev bench-kernels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamps re-run an install only when the project's dependency files change.
$(VENV)/.installed-all: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) -e '.[all]'
	touch $@

# hpsv2 and image-reward are installed without their dependencies: they hard-pin
# pytest==7.2.0 and timm==0.6.13, which conflict with current open_clip and pytest.
# r0kit does not import them; the parity tests compare against them.
$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) requirements/upstream.txt requirements/upstream-deps.txt | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) -e '.[dev]' -r requirements/upstream-deps.txt
	$(PIP) install -c $(CONSTRAINTS) --no-deps -r requirements/upstream.txt
	touch $@ $(VENV)/.installed-all

install: $(VENV)/.installed-all
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/r0kit train --overwrite  # the mini preset; a demo run replaces the previous demo's files in r0kit-demo/

test: install-dev
	$(BIN)/python -m pytest -n $(JOBS) $(PYTEST_ARGS)

bench-kernels: install
	$(BIN)/r0kit bench kernels

clean:
	rm -rf $(VENV) r0kit-out .pytest_cache
