"""``python -m tools.lessons sync-prose``: markdown edits reach the .ipynb only when no code changed."""
from __future__ import annotations

import nbformat

from tools import lessons as L

SOURCE = """# %% [markdown]
# # 99 A lesson
#
# Old prose.

# %%
x = 1 + 1
print(x)
"""


def make_pair(tmp_path, monkeypatch):
    lesson = tmp_path / "99_a_lesson.py"
    lesson.write_text(SOURCE)
    nb = L.read_source(lesson)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    nbformat.write(nb, lesson.with_suffix(".ipynb"))
    monkeypatch.setattr(L, "find_lesson", lambda key: lesson)
    return lesson


def test_prose_edits_are_copied_and_outputs_kept(tmp_path, monkeypatch):
    lesson = make_pair(tmp_path, monkeypatch)
    lesson.write_text(SOURCE.replace("Old prose.", "New prose."))
    assert L.main(["sync-prose", "99"]) == 0
    nb = nbformat.read(lesson.with_suffix(".ipynb"), as_version=4)
    assert "New prose." in nb.cells[0].source
    assert nb.cells[1].outputs[0]["text"] == "2\n", "the outputs of unchanged code stay"


def test_code_edits_are_refused(tmp_path, monkeypatch, capsys):
    lesson = make_pair(tmp_path, monkeypatch)
    before = lesson.with_suffix(".ipynb").read_text()
    lesson.write_text(SOURCE.replace("Old prose.", "New prose.").replace("1 + 1", "1 + 2"))
    assert L.main(["sync-prose", "99"]) == 1
    assert "rebuild" in capsys.readouterr().out
    assert lesson.with_suffix(".ipynb").read_text() == before, "nothing is written when code changed"
