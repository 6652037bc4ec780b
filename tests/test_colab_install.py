"""The Colab-shaped install check (``make colab-check``, tools/colab_check.py), in its fast parts.

The check itself builds a venv with torch and runs two lessons (10-20 minutes), so ``make test``
does not run it; these tests keep its inputs honest: the pins and their date, that every
dependency of the package is pinned as Colab has it, that the setup cell it runs is the lessons'
own, and how it compares package lists.
"""
import re
import tomllib
from datetime import date

from tools import colab_check as C
from tools import lessons as L


def test_constraints_say_when_they_were_taken():
    taken = date.fromisoformat(C.taken_on())
    assert date(2026, 1, 1) <= taken <= date.today()


def test_colab_pins_of_the_widget_stack_and_the_majors():
    pins = C.pins()
    assert pins["ipywidgets"] == "7.7.1", "Colab's ipywidgets: the one the views must work with"
    assert pins["widgetsnbextension"].startswith("3.") and pins["ipykernel"].startswith("6.")
    assert pins["numpy"].split(".")[0] == "2" and pins["matplotlib"].split(".")[0] == "3"
    assert pins["torch"] and pins["torchvision"]


def test_every_dependency_of_the_package_is_preinstalled_at_colabs_version():
    """Then 'pip changed no preinstalled package' covers every package the install could touch."""
    project = tomllib.loads((L.ROOT / "pyproject.toml").read_text())["project"]
    names = {C.normalise(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in project["dependencies"]}
    missing = names - set(C.pins())
    assert not missing, f"tools/colab-constraints.txt pins no Colab version of {sorted(missing)}"


def test_the_pins_satisfy_the_package_ranges():
    """pip must have no reason to change a Colab package: each pin is inside the declared range."""
    from packaging.requirements import Requirement

    project = tomllib.loads((L.ROOT / "pyproject.toml").read_text())["project"]
    pins = C.pins()
    for text in project["dependencies"]:
        req = Requirement(text)
        version = pins[C.normalise(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"Colab's {req.name} {version} is outside {req}"


def test_the_setup_cell_run_is_the_lessons_own_pointed_at_the_checkout(tmp_path):
    lesson = L.find_lesson("00")
    cell = C.setup_cell(lesson)
    local = C.local_setup_cell(lesson, tmp_path)
    assert L.install_spec() in cell and L.install_spec() not in local
    assert local == cell.replace(L.install_spec(), f"medmm-lite @ {tmp_path.as_uri()}")
    for other in L.lessons():                      # every lesson has the same setup cell
        assert C.setup_cell(other) == cell


def test_changed_packages_reports_upgrades_and_removals_not_additions():
    before = {"ipywidgets": "7.7.1", "numpy": "2.1.3", "torch": "2.14.1"}
    after = {"ipywidgets": "8.1.9", "torch": "2.14.1", "medmm-lite": "0.1.0"}
    assert C.changed_packages(before, after) == {"ipywidgets": ("7.7.1", "8.1.9"), "numpy": ("2.1.3", None)}
    assert C.changed_packages(before, {**before, "new": "1"}) == {}


def test_the_copy_holds_what_the_package_is_built_from(tmp_path):
    dest = C.copy_package(tmp_path / "checkout")
    assert (dest / "pyproject.toml").exists() and (dest / "medmm_lite" / "__init__.py").exists()
    assert (dest / "LICENSE").exists() and (dest / "README.md").exists()
    assert not list(dest.rglob("__pycache__"))


def test_make_colab_check_is_a_separate_target():
    makefile = (L.ROOT / "Makefile").read_text()
    assert re.search(r"^colab-check:", makefile, re.M)
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "colab" not in test_recipe
