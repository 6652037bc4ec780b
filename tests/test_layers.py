"""The library's layers, read from its source (nothing is imported or run).

From the bottom up: ``utils``, ``profiles``, ``distributed``; ``models``, ``objectives`` and ``data``
(what is trained, on what, with which loss); ``train``, ``hub`` and ``eval`` (how it is trained,
cached and scored); ``pretrain``, ``adapt``, ``generative`` and ``vlm`` (the lessons' recipes). A
module may import from its own layer and the layers below it, never from above; modules share
only public names; and no two modules need each other at import time.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medmm_lite"

# The layering rule: what a module of each group may not import (top-level or inside a function).
FORBIDDEN = {
    **{low: ("train", "hub", "eval", "pretrain", "adapt", "generative", "vlm") for low in ("models", "objectives", "data")},
    **{mid: ("pretrain", "adapt", "generative", "vlm") for mid in ("train", "hub", "eval")},
}
# Imports that break the rule above and are accepted for now, as (importer, imported) module names,
# each with the reason. Empty: keep it so.
ALLOWED_LAYER_VIOLATIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from (``from ..data import x`` in
    ``medmm_lite.pretrain.clip`` -> ``medmm_lite.data``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, body=None):
    """``(node, imported module, name or None)`` for every import in ``module``: ``from X import a``
    gives X.a when that is a module of the library, else X with name ``a``."""
    nodes = ast.walk(TREES[module]) if body is None else body
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (node, sub, None) if sub in MODULES else (node, source, alias.name)


def _top_level(body):
    """The statements that run when the module is imported: top level, and inside top-level
    ``if``/``try`` blocks (except ``if TYPE_CHECKING:``)."""
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from _top_level(node.body)
                yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _top_level(block)
        else:
            yield node


def _library(name: str) -> bool:
    return name == "medmm_lite" or name.startswith("medmm_lite.")


def _group(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _where(module: str, node) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{node.lineno}"


def test_every_module_is_read():
    assert {"medmm_lite.pretrain.clip", "medmm_lite.data.samplers", "medmm_lite.hub"} <= set(MODULES)


def test_no_module_imports_another_modules_private_names():
    """``from .vit import _pair`` or ``clip._feature_dim``: what two modules share is public."""
    found = []
    for module in MODULES:
        module_aliases = {}  # local names bound to library modules, for attribute access
        for node, target, name in _imports(module):
            if not _library(target):
                continue
            if name is not None and name.startswith("_") and not name.startswith("__"):
                found.append(f"{_where(module, node)} imports {name} from {target}")
            for alias in node.names:
                bound = alias.asname or alias.name
                if isinstance(node, ast.Import):
                    if alias.asname:
                        module_aliases[bound] = alias.name
                elif f"{_resolve(module, node)}.{alias.name}" in MODULES:
                    module_aliases[bound] = f"{_resolve(module, node)}.{alias.name}"
        for node in ast.walk(TREES[module]):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__") and module_aliases[node.value.id] != module):
                found.append(f"{_where(module, node)} reads {module_aliases[node.value.id]}.{node.attr}")
    assert not found, "private names used across modules (make them public):\n" + "\n".join(found)


def test_the_data_layer_imports_nothing_from_eval():
    found = sorted({f"{_where(module, node)} imports {target}"
                    for module in MODULES if module.startswith("medmm_lite.data")
                    for node, target, _ in _imports(module)
                    if target == "medmm_lite.eval" or target.startswith("medmm_lite.eval.")})
    assert not found, "medmm_lite.data must not import medmm_lite.eval:\n" + "\n".join(found)


def import_graph() -> dict[str, set[str]]:
    """Module -> the library modules its top-level statements import. Importing ``a.b.c`` first
    runs the packages ``a`` and ``a.b``, so those count too, except the importer's own packages
    (already running when the importer runs)."""
    graph = {}
    for module in MODULES:
        own = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        edges = set()
        for _, target, _ in _imports(module, _top_level(TREES[module].body)):
            if not _library(target):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in MODULES and step not in own and step != module:
                    edges.add(step)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_no_import_cycle_at_module_level():
    """A cycle makes the import order matter; a function-local import may break a real one."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle (top-level imports): " + " -> ".join(cycle)


def layer_violations() -> dict[tuple[str, str], str]:
    found = {}
    for module in MODULES:
        forbidden = FORBIDDEN.get(_group(module), ())
        for node, target, _ in _imports(module):
            if _library(target) and _group(target) in forbidden:
                found.setdefault((module, target), _where(module, node))
    return found


def test_lower_layers_do_not_import_higher_ones():
    found = layer_violations()
    new = [f"{where}: {module} imports {target}" for (module, target), where in sorted(found.items())
           if (module, target) not in ALLOWED_LAYER_VIOLATIONS]
    assert not new, "imports from a higher layer:\n" + "\n".join(new)
    stale = sorted(set(ALLOWED_LAYER_VIOLATIONS) - set(found))
    assert not stale, f"allowed violations that no longer happen (remove them from the list): {stale}"


@pytest.mark.parametrize("name", ["data_fingerprint", "profile_key", "SameGroupBatches"])
def test_clip_keeps_its_public_names_but_the_library_imports_them_from_their_homes(name):
    """``from medmm_lite.pretrain.clip import data_fingerprint`` still works (the course's API);
    inside the library they come from ``hub`` (cache keys) and ``data.samplers`` (batches)."""
    from medmm_lite.pretrain import clip

    assert name in clip.__all__ and getattr(clip, name) is not None
    found = [f"{_where(module, node)}" for module in MODULES if module != "medmm_lite.pretrain.clip"
             for node, target, imported in _imports(module)
             if target == "medmm_lite.pretrain.clip" and imported == name]
    assert not found, f"import {name} from its home module, not from pretrain.clip: {found}"
