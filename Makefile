# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make course   # install with [course], run every lesson (PROFILE=auto) into build/lessons/, print the headline table
#   make test     # install with [dev], ruff check, then the whole test suite (library + every lesson in smoke)
# Teaching (docs/instructors.md):
#   make course PROFILE=cpu   # every lesson in one profile: fills the cache ($MEDMM_DATA) to copy to a room of laptops
#   make exercises            # exercises/NN_name.ipynb: the lessons with solutions replaced by stubs, checks kept
#   make book                 # build/book/: the lessons with their committed outputs as a static site
# Maintainers:
#   make colab-check          # a fresh venv shaped like Colab (tools/colab-constraints.txt): install as the
#                             # setup cell does, assert no preinstalled package changed, run lessons 00 and 07
#   make gpu-dry-run          # every lesson at the gpu profile's shapes on this CPU, each fit capped at 3 steps
#                             # (tools/gpu_dry_run.py): shape, dtype and memory errors before a GPU is at hand
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# make course's profile: auto ($MEDMM_PROFILE, else gpu with CUDA, else cpu), smoke, cpu or gpu.
PROFILE ?= auto

.PHONY: course test lint colab-check gpu-dry-run browser lab notebooks exercises book benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package's requirements change.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

# [course]: the package and what running the lessons needs (papermill, jupytext, ipykernel, jupyterlab).
$(VENV)/.installed-course: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[course]"
	touch $@ $(VENV)/.installed

# [dev]: [course], the test tools, ruff and the reference libraries the tests compare against.
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev]"
	touch $@ $(VENV)/.installed-course $(VENV)/.installed

course: $(VENV)/.installed-course
	$(PY) -m tools.lessons course --profile $(PROFILE)

# Lint first (seconds), then the tests. The rule set is in pyproject.toml ([tool.ruff]).
test: $(VENV)/.installed-dev browser
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .

# Slow (a fresh venv with torch, then two lessons), so not part of make test: tools/colab_check.py.
# Niced, one thread: it must not slow whatever else this machine runs.
colab-check: $(VENV)/.installed-dev
	OMP_NUM_THREADS=1 nice -n 19 $(PY) -m tools.colab_check $(COLAB_CHECK_ARGS)

gpu-dry-run: $(VENV)/.installed-dev
	$(PY) -m tools.gpu_dry_run $(LESSONS)

# tests/test_browser.py opens the lessons in JupyterLab in headless Chromium. Install Debian's
# chromium where we can (root with apt-get); elsewhere that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } ; } || \
	  echo "make test: no chromium installed here; tests/test_browser.py will be skipped"

lab: $(VENV)/.installed-course
	$(VENV)/bin/jupyter lab notebooks/

# Maintainers: re-execute lessons in the cpu profile and rewrite the committed notebooks.
# One thread, as every committed run: another thread count adds floating-point sums in another
# order, and a few thousand steps from scratch grow that into other numbers (docs/performance.md).
# The committed notebooks: one thread, in lesson order, in a model cache of their own that no
# experiment shares (a model another thread count or another branch trained must never be served
# to a committed lesson). All 13 start it empty, i.e. cold; a subset (LESSONS="07 09") reuses it,
# so a rebuilt lesson loads what the last full build's earlier lessons trained.
NOTEBOOK_CACHE := $(abspath build/notebook-cache)
notebooks: $(VENV)/.installed-dev
	$(if $(LESSONS),,rm -rf $(NOTEBOOK_CACHE))
	MEDMM_DATA=$(NOTEBOOK_CACHE) OMP_NUM_THREADS=1 $(PY) -m tools.lessons build $(LESSONS)

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
