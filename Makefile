# `make demo` and `make test` do all set-up on a fresh machine: the first run creates .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	MPLBACKEND=Agg $(VENV)/bin/papa-bayes demo --out demo_output

test: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q tests

bench: $(STAMP)
	MPLBACKEND=Agg $(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) demo_output
