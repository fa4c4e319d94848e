# The README's quick start: `make demo` and `make test` on a machine with
# only python3 (and the C compiler every Linux Python build toolchain has).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all lint build bench chaos clean

# Any C source under ipcsem/, wherever the extension lives.
$(STAMP): pyproject.toml setup.py $(wildcard ipcsem/*.c ipcsem/*/*.c)
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

# ruff (pyproject.toml says which rules, and why each exception) over the
# package, the tests and the tools; mypy --strict over the package; stubtest:
# the C extension's stub (_ledger.pyi) against the compiled module.  The
# lint extra (ruff, mypy, stubs) is installed once, into the same venv.
LINT_STAMP := $(VENV)/.lint-installed
$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $(LINT_STAMP)

# All three run, whatever the first finds, so one run shows every problem.
lint: $(LINT_STAMP)
	@status=0; \
	$(PY) -m ruff check ipcsem tests tools || status=1; \
	$(PY) -m mypy --strict ipcsem || status=1; \
	$(PY) -m mypy.stubtest ipcsem._shm._ledger || status=1; \
	exit $$status

# The suite on every CPython >= 3.10 found (pyenv, python3.1x on PATH), one
# venv .venv-3.X each, one summary line per interpreter; fails if any failed.
# TEST_ALL_ARGS: e.g. --oldest-newest, --only 3.13, -- -k supervisor
test-all:
	$(PYTHON) tools/test_all.py $(TEST_ALL_ARGS)

# sdist and wheel into dist/ (the wheel is linux_x86_64: release wheels come
# from cibuildwheel, see pyproject.toml)
# (without the egg-info an earlier build left: its SOURCES.txt would be added
# to the sdist whatever MANIFEST.in says now)
build: $(STAMP)
	$(PY) -m pip install -q build
	rm -rf ipcsem.egg-info
	$(PY) -m build

# Then the ZooKeeper backend beside kazoo's Semaphore (ratios ipcsem/kazoo,
# standalone and a 3-node ensemble; BENCH_ZK_ARGS: e.g. --quick): it needs
# java and Debian's zookeeper package, and says so when they are absent.
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m tools.bench $(BENCH_ARGS)
	@if $(PY) -c 'import sys; from ipcsem._zk import server; sys.exit(server.missing() is not None)'; then \
	    echo "$(PY) -m tools.bench.zk $(BENCH_ZK_ARGS)"; $(PY) -m tools.bench.zk $(BENCH_ZK_ARGS); \
	else \
	    echo "bench: ZooKeeper figures skipped: no server here (apt-get install -y zookeeper)"; \
	fi

chaos: $(STAMP)
	$(VENV)/bin/ipcsem chaos --kills 10000 --spawn fork

clean:
	rm -rf $(VENV) .venv-* dist build *.egg-info ipcsem/*.so ipcsem/*/*.so
