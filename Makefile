# Two commands do all the set-up on a fresh machine (Python 3.11+, a C compiler):
#   make study   -- create .venv, install aigen, run the study on the embedded synthetic dataset
#   make test    -- create .venv, install aigen with its test extra, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.aigen-installed
ARGS   ?=

.PHONY: install build study test bench clean

# (Re)install when the packaging or the Cython sources change; the build is done inside the venv
# (no build isolation) so a rebuild needs no network once the venv exists.
$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard csrc/*.pyx csrc/*.pxd csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt setuptools Cython numpy wheel
	$(PY) -m pip install --quiet -c constraints.txt --no-build-isolation -e '.[test]'
	touch $@

install: $(STAMP)

# Rebuild the Cython extension in place after editing csrc/.
build: install
	$(PY) setup.py --quiet build_ext --inplace

study: install
	$(VENV)/bin/aigen study $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

bench: install
	$(PY) scripts/bench_kernels.py $(ARGS)

clean:
	rm -rf build aigen/kernels/_ckernels*.so csrc/*.c $(STAMP)
