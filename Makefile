# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make course   # install, run every lesson (PROFILE=auto) into build/lessons/, print the headline table
#   make test     # install with [dev], run the whole test suite (library + every lesson in the smoke profile)
# Teaching (docs/instructors.md):
#   make course PROFILE=cpu   # every lesson in one profile: fills the cache ($MEDMM_DATA) to copy to a room of laptops
#   make exercises            # exercises/NN_name.ipynb: the lessons with solutions replaced by stubs, checks kept
#   make book                 # build/book/: the lessons with their committed outputs as a static site
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# make course's profile: auto ($MEDMM_PROFILE, else gpu with CUDA, else cpu), smoke, cpu or gpu.
PROFILE ?= auto

.PHONY: course test browser lab notebooks exercises book benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package's requirements change.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

# Running lessons needs papermill, jupytext and ipykernel: the [dev] extras.
course: $(VENV)/.installed-dev
	$(PY) -m tools.lessons course --profile $(PROFILE)

test: $(VENV)/.installed-dev browser
	$(PY) -m pytest

# tests/test_browser.py opens the lessons in JupyterLab in headless Chromium. Install Debian's
# chromium where we can (root with apt-get); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } ; } || \
	  echo "make test: no chromium installed here; tests/test_browser.py will be skipped"

lab: $(VENV)/.installed-dev
	$(VENV)/bin/jupyter lab notebooks/

# Maintainers: re-execute lessons in the cpu profile and rewrite the committed notebooks.
# One thread, as every committed run: another thread count adds floating-point sums in another
# order, and a few thousand steps from scratch grow that into other numbers (docs/performance.md).
notebooks: $(VENV)/.installed-dev
	OMP_NUM_THREADS=1 $(PY) -m tools.lessons build $(LESSONS)

# The exercise notebooks, regenerated from the lessons (tests/test_exercises.py fails when they are stale).
exercises: $(VENV)/.installed-dev
	$(PY) -m tools.exercises build

# The lessons with their committed outputs as a static site in build/book/ (nothing is executed).
book: $(VENV)/.installed-dev
	$(PY) -m tools.book

benchmark: $(VENV)/.installed-dev
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build .pytest_cache
