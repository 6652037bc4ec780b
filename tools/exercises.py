"""Exercise notebooks: each lesson with its outputs cleared and its solutions replaced by stubs.

    python -m tools.exercises build          # write exercises/NN_name.ipynb for every lesson with exercises
    python -m tools.exercises check          # exit 1 when a committed exercise notebook is stale
    python -m tools.exercises verify [NN]    # run each check against the solution (must pass) and the stub (must fail)

A lesson's exercise is a code cell tagged ``solution`` followed by a cell tagged ``check``.
In ``exercises/NN_name.ipynb`` the solution cell becomes a stub (tagged ``exercise``):

* imports of the solution stay (they are not the answer);
* every ``def``/``class`` keeps its decorators, signature and docstring; its body becomes
  ``# TODO`` and ``raise NotImplementedError(...)``;
* every name the solution computes at the top level and the check (or a later cell) reads is
  set to ``None`` under a ``# TODO`` line. ``None`` rather than ``...``: the checks open with
  ``assert answer is not None, "<hint>"``, so an untouched stub shows the hint at once, where
  ``...`` would pass that guard and fail later with an unrelated ``TypeError``. Intermediate
  names the checks do not read, prints and plots of the solution are left out: they are the
  learner's to write.

The check cell stays as it is, with one line added where it needs one: a check must show its
hint on an untouched stub, never an unrelated error. When the first statement of a check that
reads a ``None`` answer is not an ``assert`` opening with ``<answer> is not None``, the exercise
notebook's copy gets ``assert <answers> is not None, <the check's first hint>`` just before it
(lesson 03's checks compare ``1.0 <= peak_raw``, which on ``None`` is a ``TypeError``).

The intro cell links to the full lesson by absolute addresses (GitHub and Colab, from
pyproject's Repository URL): a relative ``../notebooks/`` link does not resolve in Colab.

Output is deterministic (stable cell ids ``cell-NNN``, no
outputs, no execution counts, no volatile metadata), so the committed files change only when
a lesson does.

``verify`` (and ``tests/test_exercises.py``) execute, per lesson, only what the checks need: a
backward slice, statement by statement, of the earlier cells that define the names the
solution and check cells read (no plots, prints or asserts of the lesson), in the smoke
profile with few training steps (:func:`quick_profile`): the checks compare with the library
on small inputs, so they do not need a well-trained model.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import copy
import io
import os
import re
import symtable
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from tools import lessons as L

ROOT = L.ROOT
EXERCISES = ROOT / "exercises"
SOLUTION_TAG, CHECK_TAG, EXERCISE_TAG = "solution", "check", "exercise"
BUILTINS = frozenset(dir(builtins))
# Methods that change the object they are called on: a statement calling one on a name the
# checks need is part of that name's definition (``rows.append(...)`` after ``rows = []``).
MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "update", "setdefault", "add", "pop", "remove", "clear", "sort",
    "discard", "fill_", "zero_", "copy_", "add_", "mul_", "load_state_dict", "requires_grad_",
})


# --------------------------------------------------------------------------------------------
# Which names a piece of code reads and writes at the notebook's top level
# --------------------------------------------------------------------------------------------

@dataclass
class Names:
    loads: list[str] = field(default_factory=list)   # top-level reads, in order
    stores: set[str] = field(default_factory=set)    # top-level bindings
    mutated: set[str] = field(default_factory=set)   # top-level names changed in place
    nested: set[str] = field(default_factory=set)    # globals read inside functions, lambdas, comprehensions


class _Scan(ast.NodeVisitor):
    """Top-level reads and writes of one statement; nested scopes are handed to ``symtable``."""

    def __init__(self):
        self.names = Names()

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load):
            self.names.loads.append(node.id)
        else:
            self.names.stores.add(node.id)

    def _target_base(self, target):
        while isinstance(target, (ast.Attribute, ast.Subscript, ast.Starred)):
            target = target.value
        return target.id if isinstance(target, ast.Name) else None

    def _mark_mutations(self, targets):
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, ast.Store):
                    base = self._target_base(node)
                    if base:
                        self.names.mutated.add(base)

    def visit_Assign(self, node):
        self._mark_mutations(node.targets)
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        self._mark_mutations([node.target])
        if isinstance(node.target, ast.Name):          # x += 1 reads x too
            self.names.loads.append(node.target.id)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._mark_mutations([node.target])
        self.generic_visit(node)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING_METHODS:
            base = self._target_base(node.func.value)
            if base:
                self.names.mutated.add(base)
        self.generic_visit(node)

    def _nested(self, node):
        self.names.nested |= _nested_globals(node)

    def visit_FunctionDef(self, node):
        self.names.stores.add(node.name)
        for expr in [*node.decorator_list, *node.args.defaults, *[d for d in node.args.kw_defaults if d]]:
            self.visit(expr)
        self._nested(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.names.stores.add(node.name)
        for expr in [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]:
            self.visit(expr)
        self._nested(node)

    def visit_Lambda(self, node):
        for expr in [*node.args.defaults, *[d for d in node.args.kw_defaults if d]]:
            self.visit(expr)
        self._nested(node)

    def _comprehension(self, node):
        self.visit(node.generators[0].iter)               # evaluated in the enclosing scope
        self._nested(node)

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_Import(self, node):
        for alias in node.names:
            self.names.stores.add((alias.asname or alias.name).split(".")[0])

    def visit_ImportFrom(self, node):
        for alias in node.names:
            self.names.stores.add(alias.asname or alias.name)

    def visit_ExceptHandler(self, node):
        if node.name:
            self.names.stores.add(node.name)
        self.generic_visit(node)


def _nested_globals(node) -> set[str]:
    """Global names read inside a function, class body, lambda or comprehension."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        source = ast.unparse(node)
    else:
        source = ast.unparse(ast.Expr(node))
    found = set()

    def walk(table):
        for child in table.get_children():
            for sym in child.get_symbols():
                if sym.is_referenced() and sym.is_global():
                    found.add(sym.get_name())
            walk(child)

    walk(symtable.symtable(source, "<cell>", "exec"))
    return found


def statement_names(stmt: ast.stmt) -> Names:
    scan = _Scan()
    scan.visit(stmt)
    return scan.names


def statement_free(stmt: ast.stmt, names: Names | None = None) -> set[str]:
    """Names a statement needs from before it (simple statements read before they write)."""
    names = names or statement_names(stmt)
    free = set(names.loads)
    if not isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Assert, ast.Return)):
        free -= names.stores                              # a loop or block may read what it wrote itself
    free |= names.nested - names.stores
    return free - BUILTINS


def cell_free(stmts: list[ast.stmt]) -> set[str]:
    """Names a cell reads that it does not define itself first."""
    defined, free = set(), set()
    for stmt in stmts:
        names = statement_names(stmt)
        free |= statement_free(stmt, names) - defined
        defined |= names.stores
    return free


def parse_cell(source: str, where: str) -> list[ast.stmt]:
    try:
        return ast.parse(source).body
    except SyntaxError as err:
        raise ValueError(f"{where}: cannot parse the cell: {err}") from err


# --------------------------------------------------------------------------------------------
# Stubs
# --------------------------------------------------------------------------------------------

def _signature_end(lines: list[str], node) -> int:
    """The 1-based line holding the colon that ends a def/class header."""
    text = "".join(lines[node.lineno - 1:])
    depth, seen_keyword = 0, False
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.NAME and tok.string in ("def", "class"):
            seen_keyword = True
        elif tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif seen_keyword and depth == 0 and tok.type == tokenize.OP and tok.string == ":":
            return node.lineno + tok.start[0] - 1
    raise ValueError(f"no header colon found for {node.name}")


def _docstring(node) -> ast.Expr | None:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def _def_stub(node, lines: list[str], label: str, indent: str = "") -> list[str]:
    """Decorators, signature and docstring of a def or class; a TODO body."""
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    end = _signature_end(lines, node)
    doc = _docstring(node)
    if node.body[0].lineno <= end:
        return _def_stub_unparsed(node, label, indent)        # a one-line def: rebuild it
    out = [ln.rstrip("\n") for ln in lines[start - 1:end]]
    body_indent = " " * node.body[0].col_offset
    if doc is not None:
        out += [ln.rstrip("\n") for ln in lines[doc.lineno - 1:doc.end_lineno]]
    if isinstance(node, ast.ClassDef):
        methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for method in methods:
            out += [""] + _def_stub(method, lines, label, body_indent)
        if not methods:
            out += [f"{body_indent}# TODO ({label})", f"{body_indent}pass"]
        return out
    out += [f"{body_indent}# TODO ({label})",
            f'{body_indent}raise NotImplementedError("{label}: write {node.name}")']
    return out


def _def_stub_unparsed(node, label: str, indent: str) -> list[str]:
    node = copy.deepcopy(node)
    doc = _docstring(node)
    body = [doc] if doc is not None else []
    if isinstance(node, ast.ClassDef):
        body += [copy.deepcopy(n) for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for n in body[1 if doc else 0:]:
            n.body = [ast.parse(f'raise NotImplementedError("{label}: write {n.name}")').body[0]]
        node.body = body or [ast.Pass()]
    else:
        node.body = body + [ast.parse(f'raise NotImplementedError("{label}: write {node.name}")').body[0]]
    return [indent + ln if ln else ln for ln in ast.unparse(node).splitlines()]


def make_stub(solution: str, later_reads: set[str], label: str) -> str:
    """The learner's version of a solution cell (see the module docstring)."""
    lines = solution.splitlines(keepends=True)
    stmts = parse_cell(solution, label)
    imports, defs, answers = [], [], []
    for stmt in stmts:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            imports.append(ast.get_source_segment(solution, stmt))
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.append("\n".join(_def_stub(stmt, lines, label)))
        else:
            for name in sorted(statement_names(stmt).stores, key=lambda n: _first_store(stmts, n)):
                if name in later_reads and name not in answers:
                    answers.append(name)
    defined_elsewhere = {n for stmt in stmts if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                                                  ast.AsyncFunctionDef, ast.ClassDef))
                         for n in statement_names(stmt).stores}
    answers = [n for n in answers if n not in defined_elsewhere]
    parts = []
    if imports:
        parts.append("\n".join(imports))
    parts += defs
    if answers:
        todo = "your code here; then set " + ", ".join(f"`{n}`" for n in answers) if len(answers) > 1 else \
            f"your code here; then set `{answers[0]}`"
        parts.append("\n".join([f"# TODO ({label}): {todo}"] + [f"{n} = None" for n in answers]))
    if not parts:
        parts.append(f"# TODO ({label}): your code here")
    return "\n\n\n".join(parts) if defs else "\n\n".join(parts)


def _first_store(stmts, name) -> tuple[int, int]:
    for stmt in stmts:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
                return (node.lineno, node.col_offset)
    return (10**9, 0)


# --------------------------------------------------------------------------------------------
# A lesson's exercises
# --------------------------------------------------------------------------------------------

def tags(cell) -> list[str]:
    return list(cell.metadata.get("tags", []))


@dataclass
class Exercise:
    number: int            # 1, 2, ... in the lesson's order
    solution_cell: int     # index in the notebook's cells
    check_cell: int
    solution: str
    check: str             # the lesson's check cell
    stub: str
    exercise_check: str = ""   # the check as the exercise notebook shows it (a guard added where needed)

    def __post_init__(self):
        if not self.exercise_check:
            self.exercise_check = guarded_check(self.check, stub_answers(self.stub), f"exercise {self.number}")


def stub_answers(stub: str) -> list[str]:
    """The names a stub sets to ``None`` for the learner to fill in, in order."""
    return [stmt.targets[0].id for stmt in ast.parse(stub).body
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Constant) and stmt.value.value is None]


def _opens_with_none_test(test: ast.expr, answers: list[str]) -> bool:
    """``assert <answer> is not None ...``: on a ``None`` answer it fails at once, with its hint."""
    first = test.values[0] if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else test
    return (isinstance(first, ast.Compare) and isinstance(first.left, ast.Name) and first.left.id in answers
            and len(first.ops) == 1 and isinstance(first.ops[0], ast.IsNot)
            and isinstance(first.comparators[0], ast.Constant) and first.comparators[0].value is None)


def guarded_check(check: str, answers: list[str], label: str) -> str:
    """The check with a ``None`` guard before its first use of an answer, where it has none.

    The guard's message is the check's own first hint (the message of its first ``assert`` from
    that point on that reads no answer), so the learner sees the hint, not a ``TypeError``.
    """
    if not answers:
        return check
    stmts = parse_cell(check, label)
    read = [n for n in answers if n in cell_free(stmts)]
    for index, stmt in enumerate(stmts):
        names = statement_names(stmt)
        if not set(read) & (set(names.loads) | names.nested):
            continue
        if isinstance(stmt, ast.Assert) and _opens_with_none_test(stmt.test, read):
            return check
        hint = None
        for later in stmts[index:]:
            if isinstance(later, ast.Assert) and later.msg is not None:
                if not set(read) & set(statement_names(ast.Expr(later.msg)).loads):
                    hint = ast.get_source_segment(check, later.msg)
                break
        if hint is None or "\n" in hint:
            hint = repr(f"{label}: set " + ", ".join(f"`{n}`" for n in read) + " in the cell above")
        condition = " and ".join(f"{n} is not None" for n in read)
        guard = f"assert {condition}, {hint}"
        if len(guard) > 110:
            guard = f"assert {condition}, \\\n    {hint}"
        lines = check.splitlines(keepends=True)
        at = stmt.lineno - 1
        return "".join(lines[:at]) + guard + "\n" + "".join(lines[at:])
    return check


def exercises(nb, where: str = "lesson") -> list[Exercise]:
    """Every (solution, check) pair of a lesson, with the stub that replaces the solution."""
    cells = nb.cells
    found = []
    for i, cell in enumerate(cells):
        if SOLUTION_TAG not in tags(cell):
            continue
        if cell.cell_type != "code" or i + 1 >= len(cells) or CHECK_TAG not in tags(cells[i + 1]):
            raise ValueError(f"{where}: the cell tagged 'solution' at cell {i} must be a code cell "
                             f"followed by a code cell tagged 'check'")
        found.append((i, i + 1))
    for i, cell in enumerate(cells):
        if CHECK_TAG in tags(cell) and (i - 1, i) not in found:
            raise ValueError(f"{where}: the cell tagged 'check' at cell {i} does not follow a 'solution' cell")
    result = []
    for number, (s, c) in enumerate(found, start=1):
        # The stub sets what the check reads, and what later cells read that the lesson had not
        # defined before (a name the solution merely re-binds keeps the lesson's value).
        earlier = {n for cell in cells[:s] if cell.cell_type == "code"
                   for stmt in parse_cell(cell.source, where) for n in statement_names(stmt).stores}
        later_reads = cell_free(parse_cell(cells[c].source, where))
        for cell in cells[c + 1:]:
            if cell.cell_type == "code" and SOLUTION_TAG not in tags(cell):
                later_reads |= cell_free(parse_cell(cell.source, where)) - earlier
        label = f"exercise {number}"
        result.append(Exercise(number, s, c, cells[s].source, cells[c].source,
                               make_stub(cells[s].source, later_reads, label)))
    return result


def lessons_with_exercises() -> list[Path]:
    return [p for p in L.lessons() if exercises(L.read_source(p), p.name)]


def target(lesson: Path) -> Path:
    return EXERCISES / f"{lesson.stem}.ipynb"


def colab_url(lesson: Path) -> str:
    """Where the lesson's exercise notebook opens in Colab."""
    return L.colab_url(lesson).replace(f"/notebooks/{lesson.stem}.ipynb", f"/exercises/{lesson.stem}.ipynb")


def colab_badge(lesson: Path) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(lesson)})"


def lesson_url(lesson: Path) -> str:
    """The full lesson on the repository's site: an absolute link, which resolves in Colab too."""
    return f"{L.repository_url()}/blob/main/notebooks/{lesson.stem}.ipynb"


def intro(lesson: Path, count: int) -> str:
    plural = "s" if count != 1 else ""
    return (
        f"**Exercise notebook.** This is lesson {lesson.stem[:2]} with its outputs cleared and the "
        f"solution{plural} of its {count} checked exercise{plural} taken out. Each cell marked `# TODO` is "
        "yours to fill in; the cell after it checks your answer and, when it is wrong, says what to look at. "
        "Run the lesson from the top (the exercises need its data and models; *Run all* stops at the first "
        "exercise you have not solved yet), then work through the exercises at the end.\n\n"
        f"The full lesson, with outputs and solutions: [notebooks/{lesson.stem}.ipynb]({lesson_url(lesson)}) "
        f"([open it in Colab]({L.colab_url(lesson)}))."
    )


def exercise_notebook(lesson: Path):
    """The exercise version of a lesson, deterministic to the byte."""
    import nbformat

    source = L.read_source(lesson)
    found = {e.solution_cell: e for e in exercises(source, lesson.name)}
    checks = {e.check_cell: e for e in found.values()}
    cells = []
    for i, cell in enumerate(source.cells):
        cell_tags = tags(cell)
        text = cell.source
        if i == 0:
            text = text.replace(L.colab_badge(lesson), colab_badge(lesson))
        if i in found:
            text = found[i].stub
            cell_tags = [EXERCISE_TAG if t == SOLUTION_TAG else t for t in cell_tags]
        if i in checks:
            text = checks[i].exercise_check
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(text)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(text)
        else:
            new = nbformat.v4.new_raw_cell(text)
        if cell_tags:
            new.metadata["tags"] = cell_tags
        cells.append(new)
        if i == 0:
            cells.append(nbformat.v4.new_markdown_cell(intro(lesson, len(found))))
    for index, cell in enumerate(cells):
        cell["id"] = f"cell-{index:03d}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "medmm": {"exercises_of": f"notebooks/{lesson.stem}.py"},
    }
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def render(lesson: Path) -> str:
    import nbformat

    return nbformat.writes(exercise_notebook(lesson)) + "\n"


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def build() -> list[Path]:
    EXERCISES.mkdir(exist_ok=True)
    written = []
    wanted = {target(p) for p in lessons_with_exercises()}
    for lesson in lessons_with_exercises():
        path = target(lesson)
        text = render(lesson)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
            print(f"wrote {_rel(path)}")
    for stale in sorted(EXERCISES.glob("*.ipynb")):
        if stale not in wanted:
            stale.unlink()
            print(f"removed {_rel(stale)} (its lesson has no exercises any more)")
    return written


def stale() -> list[str]:
    """What ``build`` would change, as messages."""
    problems = []
    wanted = set()
    for lesson in lessons_with_exercises():
        path = target(lesson)
        wanted.add(path)
        if not path.exists():
            problems.append(f"{_rel(path)} is missing")
        elif path.read_text() != render(lesson):
            problems.append(f"{_rel(path)} is stale (its lesson changed)")
    if EXERCISES.exists():
        for extra in sorted(set(EXERCISES.glob("*.ipynb")) - wanted):
            problems.append(f"{_rel(extra)} has no lesson with exercises")
    return problems


# --------------------------------------------------------------------------------------------
# Running the checks cheaply
# --------------------------------------------------------------------------------------------

@dataclass
class Step:
    kind: str                   # "setup" (sliced lesson statements) or "exercise"
    code: object                # a compiled code object (setup) or an Exercise
    text: str = ""              # the setup's source, for error messages


def check_program(lesson: Path) -> list[Step]:
    """The statements the lesson's exercises need, in order, with the exercises in between.

    A backward slice: starting from what the solution and check cells read, keep each earlier
    top-level statement that binds (or changes in place) a needed name, then what it reads,
    and so on. The parameters cell is always kept. Plots, prints and the lesson's own asserts
    bind nothing the checks read and drop out.
    """
    nb = L.read_source(lesson)
    found = {e.solution_cell: e for e in exercises(nb, lesson.name)}
    checks = {e.check_cell for e in found.values()}
    items = []                                   # (cell index, statements, is_exercise)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or i in checks:
            continue
        if i in found:
            stmts = parse_cell(found[i].solution, lesson.name) + parse_cell(found[i].check, lesson.name)
            items.append((i, stmts, True))
        else:
            items.append((i, parse_cell(cell.source, lesson.name), False))
    if not found:
        return []
    last = max(found)
    items = [it for it in items if it[0] <= last]
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in tags(c))
    need: set[str] = set()
    keep: dict[int, list[ast.stmt]] = {}
    for i, stmts, is_exercise in reversed(items):
        if is_exercise:
            keep[i] = stmts
            need = (need - {n for s in stmts for n in statement_names(s).stores}) | cell_free(stmts)
            continue
        kept = []
        for stmt in reversed(stmts):
            names = statement_names(stmt)
            if i == params or names.stores & need or names.mutated & need:
                kept.append(stmt)
                need = (need - names.stores) | statement_free(stmt, names)
        keep[i] = list(reversed(kept))
    steps = []
    for i, _, is_exercise in items:
        if is_exercise:
            steps.append(Step("exercise", found[i]))
        elif keep.get(i):
            module = ast.Module(body=keep[i], type_ignores=[])
            text = ast.unparse(module)
            if i == params:                      # as papermill would inject it
                text += "\nPROFILE = 'smoke'"
                if _QUICK_STEPS and re.search(r"^STEPS\s*=", text, re.M):
                    text += f"\nSTEPS = {_QUICK_STEPS}"   # a lesson with its own step budget (10)
            steps.append(Step("setup", compile(text, f"<{lesson.stem} cell {i}, sliced>", "exec"), text))
    return steps


_QUICK_STEPS: int | None = None   # set by quick_profile: a lesson's own STEPS parameter gets it too


@contextlib.contextmanager
def quick_profile(steps: int = 12):
    """``medmm_lite.profile`` returns the smoke profile with ``steps`` training steps (and a lesson
    whose parameters cell sets its own ``STEPS``, lesson 10's capstone, gets ``STEPS = steps``).

    Use it with an empty, throw-away ``MEDMM_DATA``: library caches do not all key on the
    number of steps, and a briefly trained model must never be served to a real run.
    """
    import medmm_lite

    real = medmm_lite.profile

    def profile(name="auto"):
        return real("smoke").with_(steps=steps, probe_steps=steps)

    global _QUICK_STEPS
    medmm_lite.profile = profile
    _QUICK_STEPS = steps
    try:
        yield profile
    finally:
        medmm_lite.profile = real
        _QUICK_STEPS = None


@dataclass
class Outcome:
    lesson: str
    number: int
    solution_error: BaseException | None     # must be None: the check passes on the solution
    stub_error: BaseException | None         # must not be None: the check fails on the stub
    stub_raised_in: str = ""                 # where the stub's error came from: "check", "stub" or a file

    @property
    def label(self) -> str:
        return f"{self.lesson} exercise {self.number}"

    @property
    def shows_hint(self) -> bool:
        """On the stub the learner sees a hint: the check's own assert message, or the stub's
        ``NotImplementedError("exercise N: write f")``; never an error from elsewhere."""
        err = self.stub_error
        if isinstance(err, AssertionError):
            return self.stub_raised_in == "check" and bool(str(err).strip())
        if isinstance(err, NotImplementedError):
            return self.stub_raised_in == "stub" and str(err).startswith(f"exercise {self.number}: write")
        return False


def _raised_in(err: BaseException, where: str) -> str:
    """``check`` or ``stub`` when the innermost frame is in that cell's code, else the file."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename if tb is not None else ""
    for kind in ("check", "stub"):
        if filename == f"{where} {kind}>":
            return kind
    return filename


def _run(code, namespace, where):
    exec(compile(code, where, "exec") if isinstance(code, str) else code, namespace)


def run_checks(lesson: Path) -> list[Outcome]:
    """Run each exercise's check on its stub (in a copy of the state) and on its solution.

    The caller sets the environment: an empty ``MEDMM_DATA`` and :func:`quick_profile`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    namespace = {"__name__": "__main__"}
    outcomes = []
    try:
        for step in check_program(lesson):
            if step.kind == "setup":
                try:
                    _run(step.code, namespace, lesson.stem)
                except Exception as err:
                    raise RuntimeError(f"{lesson.stem}: the setup the exercises need failed in\n{step.text}\n"
                                       f"{type(err).__name__}: {err}") from err
                continue
            ex = step.code
            where = f"<{lesson.stem} exercise {ex.number}"
            stub_ns = dict(namespace)
            stub_raised_in = ""
            try:                                 # the exercise notebook's cells: stub, then its check
                _run(ex.stub, stub_ns, where + " stub>")
                _run(ex.exercise_check, stub_ns, where + " check>")
                stub_error = None
            except Exception as err:
                stub_error, stub_raised_in = err, _raised_in(err, where)
            try:
                _run(ex.solution, namespace, where + " solution>")
                _run(ex.exercise_check, namespace, where + " check>")
                solution_error = None
            except Exception as err:
                solution_error = err
            outcomes.append(Outcome(lesson.stem, ex.number, solution_error, stub_error, stub_raised_in))
            plt.close("all")
    finally:
        plt.close("all")
    return outcomes


def verify(keys: list[str]) -> int:
    import tempfile

    targets = [L.find_lesson(k) for k in keys] if keys else lessons_with_exercises()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="medmm-exercises-") as tmp:
        os.environ["MEDMM_DATA"] = tmp
        with quick_profile():
            for lesson in targets:
                for o in run_checks(lesson):
                    sol = "passes" if o.solution_error is None else f"FAILS ({type(o.solution_error).__name__}: {o.solution_error})"
                    stub = (("fails with the hint: " if o.shows_hint else "fails WITHOUT its hint: ")
                            + f"{type(o.stub_error).__name__}: {o.stub_error}"
                            if o.stub_error is not None else "PASSES (the check cannot fail)")
                    print(f"{o.label}: solution {sol}; stub {stub}")
                    bad += o.solution_error is not None or o.stub_error is None or not o.shows_hint
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.exercises", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="write exercises/NN_name.ipynb from the lessons")
    sub.add_parser("check", help="exit 1 when exercises/ is not what build would write")
    p_verify = sub.add_parser("verify", help="each check passes on the solution and fails on the stub")
    p_verify.add_argument("lessons", nargs="*", help="lesson numbers or names (default: all with exercises)")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ValueError as err:                    # a lesson whose exercise cells are malformed
        print(f"error: {err}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "build":
        build()
        return 0
    if args.command == "check":
        problems = stale()
        for p in problems:
            print(p)
        if problems:
            print("run: make exercises")
            return 1
        print("exercises/ is up to date")
        return 0
    return verify(args.lessons)


if __name__ == "__main__":
    sys.exit(main())
