"""Packaging: the two ways to build the environment name the same dependencies, as ranges; the
extras fit their users (a learner, `make course`, `make test`); the version, the release tag in
every lesson's setup cell and the licence files agree; no test can skip for a missing
reference library."""
import ast
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
SELF = "medmm-lite["


def name_of(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pyproject_requirements():
    reqs = set(PROJECT["dependencies"]) | set(EXTRAS["course"]) | set(EXTRAS["dev"])
    return {r for r in reqs if not r.startswith(SELF)}


def conda_pip_requirements():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    reqs = [ln.strip()[2:].strip() for ln in lines if ln.startswith("      - ")]
    return {r for r in reqs if not r.startswith("-e")}


def test_environment_yml_matches_pyproject():
    assert conda_pip_requirements() == pyproject_requirements()


def test_environment_yml_installs_the_package_with_dev_extras():
    assert '-e ".[dev]"' in (ROOT / "environment.yml").read_text()
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_requirements_are_ranges_not_pins():
    for req in pyproject_requirements():
        assert "==" not in req, f"{req}: pin-free ranges let Colab keep its preinstalled torch"


def test_torch_is_a_range():
    assert "torch>=2.2" in pyproject_requirements()


def test_colab_keeps_its_ipywidgets():
    # Colab ships ipywidgets 7.7.1, and upgrading it in a session breaks widget display there.
    assert "ipywidgets>=7.7" in PROJECT["dependencies"]


# ---- the extras fit their users

LESSON_IMPORT = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)
# import name -> distribution name, where they differ
DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image",
                "open_clip": "open-clip-torch", "rouge_score": "rouge-score",
                "IPython": "ipywidgets"}  # ipywidgets requires ipython: a lesson's display() comes with it


def third_party_imports(text: str) -> set[str]:
    import sys

    names = set(LESSON_IMPORT.findall(text))
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("medmm_lite", "tools", "__future__")}


def test_the_package_installs_everything_the_lessons_import():
    """`pip install medmm-lite` (what Colab's setup cell runs) is enough for every lesson."""
    runtime = {name_of(r) for r in PROJECT["dependencies"]}
    missing = {}
    for lesson in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        for module in third_party_imports(lesson.read_text()):
            dist = DISTRIBUTION.get(module, module).lower().replace("_", "-")
            if dist not in runtime:
                missing.setdefault(dist, []).append(lesson.name)
    assert not missing, f"the lessons import packages that pip install medmm-lite does not bring: {missing}"


def test_the_library_imports_only_its_dependencies_at_top_level():
    """Module-level imports of medmm_lite are declared (optional ones sit inside functions)."""
    runtime = {name_of(r) for r in PROJECT["dependencies"]}
    missing = {}
    for path in sorted((ROOT / "medmm_lite").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:                       # top level only: lazy imports are optional extras
            if isinstance(node, ast.Import):
                modules = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module.split(".")[0]]
            else:
                continue
            for module in third_party_imports("\n".join(f"import {m}" for m in modules)):
                dist = DISTRIBUTION.get(module, module).lower().replace("_", "-")
                if dist not in runtime:
                    missing.setdefault(dist, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"medmm_lite imports undeclared packages at module level: {missing}"


def test_course_extra_runs_the_lessons_and_dev_builds_on_it():
    course = {name_of(r) for r in EXTRAS["course"]}
    assert {"papermill", "jupytext", "ipykernel", "jupyterlab", "nbformat"} <= course
    assert "medmm-lite[course]" in EXTRAS["dev"], "[dev] includes [course]"
    dev = {name_of(r) for r in EXTRAS["dev"]}
    # the maintainers' tools stay out of what a learner installs
    assert not course & {"pytest", "selenium", "timm", "open-clip-torch", "peft", "scikit-image", "nltk", "ruff"}
    for reference in ("sacrebleu", "rouge-score", "diffusers", "timm", "open-clip-torch", "peft", "torchvision",
                      "scikit-image", "nltk", "pytest", "ruff"):
        assert reference in dev, f"[dev] must install {reference}"


def test_make_course_installs_course_not_dev():
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^course: (.*)$", makefile, re.M)
    assert rule and ".installed-course" in rule.group(1), "make course installs the [course] extras"
    assert re.search(r'install -q -e "\.\[course\]"', makefile)


# Reference libraries the tests compare against, by import name: a test that imports one with
# pytest.importorskip would skip silently where it is missing; [dev] installs them all.
def importorskip_modules() -> set[str]:
    found = set()
    for path in (ROOT / "tests").glob("*.py"):
        found |= set(re.findall(r"importorskip\(\s*[\"']([A-Za-z0-9_.]+)[\"']", path.read_text()))
    return found


@pytest.mark.parametrize("module", sorted(importorskip_modules()))
def test_no_test_skips_for_a_missing_reference_library(module):
    top = module.split(".")[0]
    if top == "medmm_lite":
        importlib.import_module(module)      # the library's own module: it must import
        return
    assert importlib.util.find_spec(top) is not None, (
        f"{top} is not installed: tests that need it would skip; install the [dev] extras")
    dist = DISTRIBUTION.get(top, top).lower().replace("_", "-")
    declared = {name_of(r) for r in pyproject_requirements()}
    assert dist in declared, f"{dist} (imported by a test) is in no dependency list of pyproject.toml"


# ---- version, release tag, licence

def test_version_is_one_number():
    from tools import lessons as L

    assert PROJECT["version"] == L.package_version(), \
        "pyproject.toml's version and medmm_lite.__version__ differ"


def test_every_lesson_installs_the_release_of_this_version():
    from tools import lessons as L

    tag = f"v{L.package_version()}"
    for lesson in L.lessons():
        for path in (lesson, lesson.with_suffix(".ipynb")):
            text = path.read_text()
            specs = re.findall(r"medmm-lite @ git\+[^\"'\s\\]+", text)
            assert len(specs) == 1, f"{path.name}: expected one install line, found {specs}"
            assert specs[0] == f"medmm-lite @ git+{L.repository_url()}@{tag}", (
                f"{path.name} installs {specs[0]!r}, not the release {tag} of this version; run "
                "python -m tools.lessons sync-urls")


def test_licence_and_citation_files():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and PROJECT["license"] == "MIT"
    readme = (ROOT / "README.md").read_text()
    assert "CC BY 4.0" in readme and "creativecommons.org/licenses/by/4.0" in readme
    citation = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in citation and f'version: "{PROJECT["version"]}"' in citation
    assert "Multimodal Foundation Models for Medical Imaging" in citation and "Huang" in citation
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for needed in ("jupytext", "make notebooks LESSONS=", "checks.toml", "make exercises", "ruff"):
        assert needed in contributing, f"CONTRIBUTING.md should explain {needed}"


def test_ci_runs_the_readme_test_command():
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)
    readme = (ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme
    assert readme.index("make course") < readme.index("## Lessons"), "the two commands come first"


def test_make_test_runs_ruff_before_pytest():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "ruff check" in recipe and recipe.index("ruff check") < recipe.index("pytest")
    assert "colab-check" in (ROOT / "README.md").read_text(), "the maintainers' section documents make colab-check"
