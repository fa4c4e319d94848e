# The README's quick start: `make demo` and `make test` on a machine with
# only python3 (and the C compiler every Linux Python build toolchain has).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench chaos clean

$(STAMP): pyproject.toml setup.py ipcsem/_ledger.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m tools.bench

chaos: $(STAMP)
	$(PY) tools/chaos.py --kills 10000

clean:
	rm -rf $(VENV) build *.egg-info ipcsem/*.so
