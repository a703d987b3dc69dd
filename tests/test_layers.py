"""The import graph of bench/, methods/ and metrics/ follows the layers bench/__init__.py declares: every
module is in one layer, no import reaches a later layer, and no import chain is a cycle. Imports inside
functions count: a lazy import is still a dependency."""

import ast
import fnmatch
from collections import defaultdict
from pathlib import Path

from bench import LAYERS

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    out = {}
    for package in ("bench", "methods", "metrics"):
        for f in (ROOT / package).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = f
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its code (a name imported from a package is
    the submodule when there is one of that name)."""
    edges = defaultdict(set)
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        # `if TYPE_CHECKING:` imports are for annotations only, never run: not a dependency.
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges[name].add(t)
    return edges


def layer_of(name: str) -> int | None:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    return None


def test_every_module_is_in_exactly_one_layer():
    mods = [m for m in modules() if m != "bench"]  # the package itself holds only the list
    assert not [m for m in mods if layer_of(m) is None], "place these modules in bench/__init__.py LAYERS"
    for m in mods:
        assert sum(any(fnmatch.fnmatchcase(m, p) for p in patterns) for _, patterns in LAYERS) == 1, m


def test_no_import_reaches_a_later_layer():
    mods = modules()
    upward = [(a, b, LAYERS[layer_of(b)][0]) for a, targets in imports(mods).items() if a != "bench"
              for b in targets if b != "bench" and layer_of(b) > layer_of(a)]
    assert not upward, "imports of a later layer (module -> imported, its layer): " + "; ".join(f"{a} -> {b} ({layer})" for a, b, layer in sorted(upward))


def test_no_import_cycle():
    edges = imports(modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_and_a_cyclic_import(tmp_path, monkeypatch):
    """The walker itself: a lazy import inside a function counts, and a two-module loop is a cycle."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from bench.b import g\n")
    b.write_text("from typing import TYPE_CHECKING\nimport bench.c\nif TYPE_CHECKING:\n    import bench.a\n")
    c = tmp_path / "c.py"
    c.write_text("")
    edges = imports({"bench.a": a, "bench.b": b, "bench.c": c})
    # The lazy import counts; an annotation-only import under TYPE_CHECKING does not.
    assert edges["bench.a"] == {"bench.b"} and edges["bench.b"] == {"bench.c"}
