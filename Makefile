# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   -> creates .venv if needed, then runs the embedded phantom demo on CPU
#   make test   -> creates .venv if needed, then runs the whole test suite
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python

.PHONY: demo test env clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/actionpp demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q Testing

clean:
	rm -rf $(VENV) demo_output
