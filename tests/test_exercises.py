"""The exercise notebooks (``exercises/``): up to date, and every check can pass and can fail.

Each lesson's checks run in-process on only what they need (``tools.exercises.check_program``:
a backward slice of the lesson's statements), in the smoke profile with a dozen training
steps and a throw-away cache, first after the stub (the check must fail), then after the
solution (the check must pass). About 30 s for all lessons on 2 CPU cores. On the stub every
check must show its hint: its own assert message, or the stub's "exercise N: write f", never
an error from elsewhere (tools.exercises adds a `None` guard to a check that needs one).
"""
from __future__ import annotations

import re

import nbformat
import pytest

from tools import exercises as E
from tools import lessons as L

LESSONS = E.lessons_with_exercises()
IDS = [p.stem for p in LESSONS]


def test_exercises_are_up_to_date():
    problems = E.stale()
    assert not problems, "exercises/ is out of date with the lessons: " + "; ".join(problems) + \
        ". Regenerate them: run make exercises (python -m tools.exercises build)"


def test_lessons_with_exercises_are_found():
    assert LESSONS, "no lesson has a cell tagged 'solution'"


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_exercise_notebook_hides_solutions_and_keeps_checks(lesson):
    nb = nbformat.read(E.target(lesson), as_version=4)
    source = L.read_source(lesson)
    found = E.exercises(source, lesson.name)
    stubs = [c for c in nb.cells if E.EXERCISE_TAG in c.metadata.get("tags", [])]
    checks = [c for c in nb.cells if E.CHECK_TAG in c.metadata.get("tags", [])]
    assert [c.source for c in stubs] == [e.stub for e in found]
    assert [c.source for c in checks] == [e.exercise_check for e in found]
    for e in found:                      # the lesson's check, whole, with at most a guard added
        added = e.exercise_check.splitlines()
        for line in e.check.splitlines():
            assert line in added, f"exercise {e.number}: the check lost a line: {line}"
            added.remove(line)
        assert not added or added[0].startswith("assert "), added
    assert not any(E.SOLUTION_TAG in c.metadata.get("tags", []) for c in nb.cells)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert [c.id for c in nb.cells] == [f"cell-{i:03d}" for i in range(len(nb.cells))]
    assert E.colab_badge(lesson) in nb.cells[0].source, "the Colab badge opens the exercise notebook"
    # Links to the lesson are absolute (Colab cannot follow ../notebooks/), from pyproject's URL.
    intro = nb.cells[1].source
    assert E.lesson_url(lesson) in intro and L.colab_url(lesson) in intro
    assert E.lesson_url(lesson).startswith(L.repository_url() + "/blob/main/notebooks/")
    relative = [u for c in nb.cells if c.cell_type == "markdown"
                for u in re.findall(r"\]\((?!https?://|#)([^)]+)\)", c.source)]
    assert not relative, f"relative links do not resolve in Colab: {relative}"


def test_readme_has_a_colab_badge_for_every_exercise_notebook():
    readme = (L.ROOT / "README.md").read_text()
    missing = [p.stem for p in LESSONS if E.colab_url(p) not in readme]
    assert not missing, f"README.md: no Colab link to the exercise notebooks of {missing}"


@pytest.mark.parametrize("lesson", LESSONS, ids=IDS)
def test_checks_pass_on_solutions_and_fail_on_stubs(lesson, tmp_path_factory, monkeypatch):
    # A throw-away cache: briefly trained models must never be served to a real run.
    monkeypatch.setenv("MEDMM_DATA", str(tmp_path_factory.getbasetemp() / "exercise-cache"))
    monkeypatch.setenv("MEDMM_PROGRESS", "text")
    with E.quick_profile(steps=12):
        outcomes = E.run_checks(lesson)
    assert outcomes, f"{lesson.name}: no exercise was run"
    problems = []
    for o in outcomes:
        if o.solution_error is not None:
            problems.append(f"{o.label}: the check fails on the solution: "
                            f"{type(o.solution_error).__name__}: {o.solution_error}")
        if o.stub_error is None:
            problems.append(f"{o.label}: the check passes on the stub, so it cannot tell a wrong answer")
        elif isinstance(o.stub_error, NameError):
            problems.append(f"{o.label}: the stub leaves a name undefined: {o.stub_error}")
        elif not o.shows_hint:
            problems.append(f"{o.label}: against the stub the check fails with "
                            f"{type(o.stub_error).__name__}: {o.stub_error} (raised in {o.stub_raised_in}) "
                            f"instead of its hint")
    assert not problems, "\n".join(problems)


# ---- the stub generator on small sources, no lesson involved

def test_stub_keeps_decorators_signature_and_docstring():
    solution = '''import math
from torch import nn


@decorate(1)
def attention(q, k,
              scale=None):  # by hand
    """Softmax(q k^T / sqrt(d))."""
    w = q @ k.T
    return w


class Head(nn.Module):
    """A linear head."""

    def forward(self, x):
        return self.fc(x)
'''
    stub = E.make_stub(solution, set(), "exercise 1")
    assert "import math\nfrom torch import nn" in stub
    assert '@decorate(1)\ndef attention(q, k,\n              scale=None):  # by hand\n    """Softmax(q k^T / sqrt(d))."""' in stub
    assert 'raise NotImplementedError("exercise 1: write attention")' in stub
    assert 'class Head(nn.Module):\n    """A linear head."""' in stub
    assert 'raise NotImplementedError("exercise 1: write forward")' in stub
    assert "q @ k.T" not in stub and "self.fc" not in stub
    compile(stub, "<stub>", "exec")


def test_stub_sets_only_the_answers_later_cells_read():
    solution = "own = s.diagonal()\ncloser = (s > own[:, None]).sum(1)\nrecall = (closer < 5).float().mean()\nprint(recall)\n"
    stub = E.make_stub(solution, {"recall", "s"}, "exercise 2")
    assert stub.splitlines() == ["# TODO (exercise 2): your code here; then set `recall`", "recall = None"]


def test_one_line_def_is_stubbed():
    stub = E.make_stub("def f(x): return 2 * x\n", {"f"}, "exercise 3")
    namespace = {}
    exec(stub, namespace)
    with pytest.raises(NotImplementedError, match="exercise 3: write f"):
        namespace["f"](1)


def test_slice_keeps_definitions_and_drops_plots(tmp_path, monkeypatch):
    import jupytext

    text = '''# %% tags=["parameters"]
PROFILE = "auto"
SEED = 0
DATASET = "synthcxr"

# %%
a = 2
b = 3
plt.plot(a)
assert b == 99
rows = []
for i in range(a):
    rows.append(i)

# %% tags=["solution"]
answer = sum(rows) * a

# %% tags=["check"]
assert answer is not None and answer == 2, "sum the rows, times a"
'''
    path = tmp_path / "99_toy.py"
    path.write_text(text)
    monkeypatch.setattr(L, "read_source", lambda p: jupytext.reads(path.read_text(), fmt="py:percent"))
    steps = E.check_program(path)
    setup = "\n".join(s.text for s in steps if s.kind == "setup")
    assert "a = 2" in setup and "rows.append(i)" in setup and "PROFILE = 'smoke'" in setup
    assert "b = 3" not in setup and "plt.plot" not in setup and "assert b" not in setup
    outcomes = E.run_checks(path)
    assert len(outcomes) == 1 and outcomes[0].solution_error is None
    assert isinstance(outcomes[0].stub_error, AssertionError)


def test_check_command_says_how_to_fix_stale_exercises(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(E, "EXERCISES", tmp_path / "exercises")
    assert E.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "is missing" in out and "run: make exercises" in out
    E.build()
    assert E.main(["check"]) == 0


def _toy(text):
    import jupytext

    return jupytext.reads(text, fmt="py:percent")


def test_a_solution_without_its_check_is_an_error():
    nb = _toy('# %%\nx = 1\n\n# %% tags=["solution"]\ny = x\n\n# %%\nprint(y)\n')
    with pytest.raises(ValueError, match="followed by a code cell tagged 'check'"):
        E.exercises(nb, "toy")


def test_a_lesson_name_the_solution_rebinds_is_not_stubbed():
    nb = _toy('# %%\ngrid = (4, 4)\n\n# %% tags=["solution"]\ngrid = (4, 4)\nanswer = grid[0]\n\n'
              '# %% tags=["check"]\nassert answer is not None and answer == 4, "hint"\n\n# %%\nprint(grid)\n')
    (exercise,) = E.exercises(nb, "toy")
    assert "answer = None" in exercise.stub and "grid = None" not in exercise.stub


def test_a_check_that_compares_a_none_answer_gets_a_guard():
    nb = _toy('# %%\nR = 4\n\n# %% tags=["solution"]\npeak = 2.0\n\n'
              '# %% tags=["check"]\nlimit = R\nassert 1.0 <= peak <= limit, "a peak lies in [1, R]"\n')
    (exercise,) = E.exercises(nb, "toy")
    assert exercise.exercise_check.splitlines() == [
        "limit = R", 'assert peak is not None, "a peak lies in [1, R]"', 'assert 1.0 <= peak <= limit, "a peak lies in [1, R]"']
    namespace = {"R": 4}
    exec(exercise.stub, namespace)
    with pytest.raises(AssertionError, match=r"a peak lies in \[1, R\]"):
        exec(exercise.exercise_check, namespace)


def test_a_check_that_opens_with_its_none_guard_is_left_alone():
    check = 'assert answer is not None and answer == 4, "hint"\nprint(answer)\n'
    assert E.guarded_check(check, ["answer"], "exercise 1") == check
    assert E.guarded_check(check, [], "exercise 1") == check
