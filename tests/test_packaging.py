"""The two ways to build the environment name the same dependencies, as ranges."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])


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


def test_ci_runs_the_readme_test_command():
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)
    readme = (ROOT / "README.md").read_text()
    assert "make course" in readme and "make test" in readme
    assert readme.index("make course") < readme.index("## Lessons"), "the two commands come first"
