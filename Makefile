# The README's quick start: `make demo` and `make test` on a machine with
# only python3 (and the C compiler every Linux Python build toolchain has).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench chaos clean

$(STAMP): pyproject.toml setup.py ipcsem/_shm/_ledger.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# PYTHONDONTWRITEBYTECODE may be set: compile once, or every one of the
	@# hundreds of processes the tests start recompiles what it imports.
	-$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	-$(PY) -m compileall -q ipcsem tests tools > /dev/null
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m tools.bench $(BENCH_ARGS)

chaos: $(STAMP)
	$(VENV)/bin/ipcsem chaos --kills 10000 --spawn fork

clean:
	rm -rf $(VENV) build *.egg-info ipcsem/*.so
