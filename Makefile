# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make course   # install, run every lesson (PROFILE=auto) into build/lessons/, print the headline table
#   make test     # install with [dev], run the whole test suite (library + every lesson in the smoke profile)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: course test lab notebooks benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package's requirements change.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

course: $(VENV)/.installed
	$(PY) -m tools.lessons course

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lab: $(VENV)/.installed-dev
	$(VENV)/bin/jupyter lab notebooks/

# Maintainers: re-execute lessons in the cpu profile and rewrite the committed notebooks.
notebooks: $(VENV)/.installed-dev
	$(PY) -m tools.lessons build $(LESSONS)

benchmark: $(VENV)/.installed-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build .pytest_cache
