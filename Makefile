# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m parallel_orchestrator demo

test: $(STAMP)
	$(PY) -m ruff check daemon tests benchmarks
	$(PY) -m ruff format --check daemon tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) benchmarks/executor.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/junit.py

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info
