"""Every lesson is a test: executed with papermill in the smoke profile, its headline
numbers checked against the thresholds declared beside it (``NN_name.checks.toml``).

Also checked without executing anything: the .py/.ipynb pair is in sync, the standard
header cells are there, and the committed notebook came from a real cpu-profile run
whose recorded numbers pass the lesson's ``[cpu]`` thresholds.
"""
from __future__ import annotations

import re
import tomllib

import nbformat
import pytest

from tools import lessons as L

LESSONS = L.lessons()
IDS = [p.stem for p in LESSONS]
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def thresholds(lesson, profile):
    path = lesson.with_suffix(".checks.toml")
    if not path.exists():
        pytest.fail(f"{lesson.name} has no {path.name} declaring its headline thresholds")
    table = tomllib.loads(path.read_text()).get(profile)
    if not table:
        pytest.fail(f"{path.name} has no [{profile}] table")
    return table


def check_results(results, table, where):
    problems = []
    for name, bound in table.items():
        if name not in results:
            problems.append(f"{name}: not recorded")
            continue
        value = results[name]
        if "min" in bound and value < bound["min"]:
            problems.append(f"{name} = {value:.4g} < min {bound['min']}")
        if "max" in bound and value > bound["max"]:
            problems.append(f"{name} = {value:.4g} > max {bound['max']}")
    assert not problems, f"{where}: " + "; ".join(problems)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def text_of(outputs):
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out["text"])
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts).strip()


def committed(lesson):
    path = lesson.with_suffix(".ipynb")
    if not path.exists():
        pytest.fail(f"{lesson.name} has no committed {path.name}; run: python -m tools.lessons build {lesson.stem[:2]}")
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_pair_in_sync(lesson):
    source = L.read_source(lesson)
    nb = committed(lesson)
    src_cells = [(c.cell_type, c.source.strip()) for c in source.cells]
    nb_cells = [(c.cell_type, c.source.strip()) for c in nb.cells]
    assert src_cells == nb_cells, (
        f"{lesson.name} and its .ipynb differ; rebuild with: python -m tools.lessons build {lesson.stem[:2]}")


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_standard_header(lesson):
    cells = L.read_source(lesson).cells
    title = cells[0]
    assert title.cell_type == "markdown" and re.match(r"# \d\d ", title.source), "first cell: '# NN Title' markdown"
    assert L.colab_badge(lesson) in title.source, "title cell needs the Colab badge (python -m tools.lessons sync-urls)"
    params = code_cells(L.read_source(lesson))[0]
    assert "parameters" in params.metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    for name in ("PROFILE", "SEED", "DATASET"):
        assert re.search(rf"^{name} = ", params.source, re.M), f"parameters cell must set {name}"
    setup = code_cells(L.read_source(lesson))[1]
    assert "except ImportError" in setup.source and L.install_spec() in setup.source, (
        "second code cell must pip-install the package only when 'import medmm_lite' fails")


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_committed_outputs_are_a_real_cpu_run(lesson):
    nb = committed(lesson)
    meta = nb.metadata.get("medmm", {})
    assert meta.get("profile") == "cpu", f"{lesson.name}: committed outputs must come from the cpu profile"
    errors = [o for c in code_cells(nb) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{lesson.name}: committed notebook holds an error output"
    assert all(c.get("execution_count") for c in code_cells(nb)), "every code cell must have been executed"
    check_results(meta.get("results", {}), thresholds(lesson, "cpu"), f"{lesson.name} (committed cpu run)")


@pytest.mark.notebook
@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_lesson_runs_in_smoke_profile(lesson, python3_kernel):
    out = L.BUILD / "test-notebooks" / f"{lesson.stem}.ipynb"
    results_file = out.with_suffix(".results.json")
    try:
        executed = L.execute(lesson, out, profile=None, parameters={"PROFILE": "smoke"}, results=results_file)
    except Exception as err:
        pytest.fail(f"{lesson.name} failed in the smoke profile; executed copy kept at {out}\n{err}")
    check_results(L.read_results(results_file), thresholds(lesson, "smoke"), f"{lesson.name} (smoke)")

    # Cells marked NBVAL_CHECK_OUTPUT print only profile-independent facts (counts, shapes,
    # parameter numbers): their text must match the committed cpu-run outputs exactly.
    reference = {c.source.strip(): c for c in code_cells(committed(lesson))}
    for cell in code_cells(executed):
        if CHECK_MARK in cell.source:
            ref = reference.get(cell.source.strip())
            assert ref is not None, f"{lesson.name}: marked cell not found in committed notebook"
            assert text_of(cell.outputs) == text_of(ref.outputs), (
                f"{lesson.name}: deterministic cell output changed:\n{cell.source[:200]}")
    out.unlink(missing_ok=True)
