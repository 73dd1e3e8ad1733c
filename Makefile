# normlab: the two set-up commands of the README.
#   make report   create the environment, build the C++ kernels, prepare the data, execute the notebooks,
#                 build the HTML book
#   make test     same set-up, then the whole test suite (pytest + nbval + quick pipeline + browser + PDF)
#   make test-fast   the fast tier: unit tests and in-process refusals, no notebook or book (a few minutes)
#   make pdf      the book as one PDF, _build/pdf/normlab.pdf, from the executed notebooks of the last
#                 `make report` (runs it first if there are none)
# Options: PROFILE=quick|default|full|path.yaml   SET="name=value other=value"   PYTHON=python3.11
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= default
SET ?=
PY := $(VENV)/bin/python

.PHONY: report test test-fast pdf setup kernels data browser poppler benchmark readme-figure clean

report: setup kernels data
	$(PY) -m normlib.pipeline --profile $(PROFILE) $(foreach s,$(SET),--set $(s))

test: setup kernels data browser poppler
	$(PY) -m pytest

test-fast: setup kernels data
	$(PY) -m pytest -m "not slow" tests

pdf: setup kernels data browser
	$(PY) -m normlib.pdf --profile $(PROFILE) $(foreach s,$(SET),--set $(s))

benchmark: setup kernels data
	$(PY) benchmarks/bench.py

# The README's figure, from the last `make report` (book/images/overview.png, committed)
readme-figure: setup
	$(PY) -m normlib.pipeline --readme-figure

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -c requirements.lock -e '.[test]'  # no .pyc of every installed module: ~40 s
	$(PY) -m ipykernel install --sys-prefix --name normlab --display-name "normlab (.venv)" > /dev/null
	touch $@

# The fused C++ kernels of the from-scratch layers (normlib/csrc/*.cpp): compiled once (about a
# minute), then only loaded; a changed source is rebuilt.
kernels: setup
	@$(PY) -m normlib.kernels

# Fashion-MNIST: local files first; on Debian as root install the package; else torchvision's download.
data: setup
	@$(PY) -m normlib.data 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    (apt-get install -y -qq dataset-fashion-mnist > /dev/null 2>&1 || \
	     (apt-get update -qq > /dev/null && apt-get install -y -qq dataset-fashion-mnist > /dev/null)); \
	  fi; \
	  $(PY) -m normlib.data || $(PY) -m normlib.data --download; }

# Headless Chromium for the browser test of the rendered book and for `make pdf` (Debian's package, when root).
browser:
	@command -v chromium > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "installing Debian's chromium"; \
	    (apt-get install -y -qq chromium > /dev/null 2>&1 || \
	     (apt-get update -qq > /dev/null && apt-get install -y -qq chromium > /dev/null)); \
	  else echo "chromium not found: the browser and PDF tests will be skipped, make pdf stops"; fi; }

# pdftotext and pdfinfo for the PDF test (Debian's poppler-utils, when root).
poppler:
	@command -v pdftotext > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "installing Debian's poppler-utils"; \
	    (apt-get install -y -qq poppler-utils > /dev/null 2>&1 || \
	     (apt-get update -qq > /dev/null && apt-get install -y -qq poppler-utils > /dev/null)); \
	  else echo "pdftotext not found: the PDF test will be skipped"; fi; }

clean:
	rm -rf _build .build-tmp book/notebooks results
