# make book: set up the environment if needed, build _build/html from the committed, executed notebooks.
# make lint: ruff (lint, and the format check), the width of the chapters' code cells
#            (tools/check_code_width.py) and mypy (make typecheck); run it before a pull request.
# make test: what CI runs (.ci/run): lint, the data (make data), unit tests, the stand-in data tests,
#            nbval with this machine's CPU kernels, the Colab-like check (nbval again, with generic
#            kernels on one thread, in a Colab-like environment), the strict book build, the check
#            of its rendered pages and the workflow schema check.
#            See README.md, "Testing" and "Contributing".
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))
# Notebook kernels must use the inline backend: a MPLBACKEND from the caller would change the outputs.
NB_ENV := env -u MPLBACKEND
NBVAL := $(NB_ENV) $(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg -p no:cacheprovider
# What differs between machines, reproduced on one: no AVX2/AVX-512 kernels, one thread
# (make colab-check runs its nbval pass so; nbval-portable is the same pass in the book's venv).
PORTABLE_ENV := ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
STANDIN_TESTS := tests/harness/test_standin_data.py tests/book/test_full_runs.py

.PHONY: all env data book notebooks code-overflow lint typecheck test unit standins nbval nbval-portable colab-check book-strict book-checked standin-rows full-runs rendered workflows benchmark clean

all: book

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

env: $(STAMP)

# Fashion-MNIST (chapter 7, tests/harness/test_fmnist.py): Debian's package dataset-fashion-mnist, installed with apt-get
# when the four files are neither there nor in $(REVLIB_DATA)/FashionMNIST/raw and we are root; else say what to do.
FMNIST_DEBIAN := /usr/share/datasets/fashion-mnist
FMNIST_FILES := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
FMNIST_USER := $${REVLIB_DATA:-data}/FashionMNIST/raw
data:
	@have() { for f in $(FMNIST_FILES); do [ -f "$$1/$$f.gz" ] || [ -f "$$1/$$f" ] || return 1; done; }; \
	if have $(FMNIST_DEBIAN); then echo "Fashion-MNIST: $(FMNIST_DEBIAN)"; \
	elif have "$(FMNIST_USER)"; then echo "Fashion-MNIST: $(FMNIST_USER)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST is missing. Get it one of these ways:"; \
		echo "  sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; files in $(FMNIST_DEBIAN))"; \
		echo "  python -c \"import torchvision; torchvision.datasets.FashionMNIST('data', download=True)\"   (online)"; \
		echo "  copy the four *-ubyte.gz files into $(FMNIST_USER)"; \
	fi

book: env
	$(NB_ENV) $(VENV)/bin/jupyter-book build .

# Re-execute every chapter from its source (book/src/*.py) and write book/*.ipynb.
notebooks: env
	$(NB_ENV) $(PY) tools/notebooks.py build --all

# ruff's settings: pyproject.toml (the chapters: book/src/ruff.toml, whose line-length is also
# the width tools/check_code_width.py holds the chapters' code cells to).
lint: env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) tools/check_code_width.py
	$(MAKE) --no-print-directory typecheck

# mypy's settings (which files, how strict) are in pyproject.toml.
typecheck: env
	$(PY) -m mypy

unit: env data
	$(PY) -m pytest tests -p no:cacheprovider $(addprefix --ignore=,$(STANDIN_TESTS))

# CIFAR-10/100 and STL-10 code paths on small stand-ins (listed one by one): the harness's rows, and
# the chapters' full-run branches (two jobs, so that make -j2 can run them side by side).
standins: standin-rows full-runs

standin-rows: env
	$(PY) -m pytest -rA -p no:cacheprovider $(word 1,$(STANDIN_TESTS))

full-runs: env
	$(PY) -m pytest -rA -p no:cacheprovider $(word 2,$(STANDIN_TESTS))

nbval: env data
	$(NBVAL) $(NOTEBOOKS)

nbval-portable: env data
	$(PORTABLE_ENV) $(NBVAL) $(NOTEBOOKS)

colab-check: env data
	$(PY) tools/colab_check.py

book-strict: env
	$(NB_ENV) $(VENV)/bin/jupyter-book build . -W -n --keep-going

# The built pages (make book or book-strict first): no raw TeX or unresolved role outside math and code.
rendered: env
	$(PY) tools/check_rendered.py

# The built chapters in headless Chromium: no code cell scrolls sideways at 1366 pixels.
# Local only (needs a chromium; the CI machine has none).
code-overflow: env
	$(PY) tools/check_code_overflow.py

workflows: env
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# The strict build, then the check of its pages (one job of make test's first group).
book-checked: env
	$(MAKE) --no-print-directory book-strict
	$(MAKE) --no-print-directory rendered

# Two jobs at a time, for a 2-core machine: the chapters' full-run branches (the longest job)
# beside the unit tests, the harness's stand-in rows and the book's build and page check; then
# the two nbval passes side by side (the chapters compute on one thread).
test: lint data
	$(MAKE) --no-print-directory -j2 full-runs unit standin-rows book-checked
	$(MAKE) --no-print-directory -j2 nbval colab-check
	$(MAKE) --no-print-directory workflows

benchmark: env
	$(PY) benchmarks/step_time.py

clean:
	rm -rf _build
