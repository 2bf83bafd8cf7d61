# make book: set up the environment if needed, execute the notebooks, build _build/html.
# make test: the same set-up, then unit tests, nbval over every notebook, a strict book build.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
# Notebook kernels must use the inline backend: a MPLBACKEND from the caller would change the outputs.
NB_ENV := env -u MPLBACKEND

.PHONY: all env book test unit nbval book-strict benchmark clean

all: book

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

env: $(STAMP)

book: env
	$(NB_ENV) $(VENV)/bin/jupyter-book build .

unit: env
	$(PY) -m pytest tests -p no:cacheprovider

nbval: env
	$(NB_ENV) $(PY) -m pytest --nbval --nbval-current-env -p no:cacheprovider $(NOTEBOOKS)

book-strict: env
	$(NB_ENV) $(VENV)/bin/jupyter-book build . -W -n --keep-going

test: unit nbval book-strict

benchmark: env
	$(PY) benchmarks/step_time.py

clean:
	rm -rf _build
