"""The package's imports form no cycle (a new one fails here, not at some later import order).

Module-level imports across the whole engine; in `engine.solve` also the imports inside functions (a deferred
import hides a cycle from the import order, not from the design: `compiled.py` once imported the solver it
serves inside a function). Only a script's `if __name__ == "__main__":` block is left out: it runs as the module
`__main__`, never while the package imports."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.AST, modules: set[str]) -> set[str]:
    """Engine modules one import statement names (`from engine.solve import compiled` names the module)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return {name for name in names if name in modules}


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`"""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
    )


def _imports(path: Path, modules: set[str], deferred: bool) -> set[str]:
    """Engine modules `path` imports at module level, and with `deferred` inside functions and classes too."""
    found: set[str] = set()
    pending = [node for node in ast.parse(path.read_text()).body if not _is_main_block(node)]
    while pending:
        node = pending.pop()
        found |= _imported(node, modules)
        if deferred:
            pending.extend(ast.iter_child_nodes(node))
    return found


def _graph(deferred_in: str | None = None) -> dict[str, set[str]]:
    """Module → the engine modules it imports; for modules under `deferred_in` (a package prefix) the imports
    inside functions count too, and only edges within that package are kept for them."""
    paths = {_module_name(p): p for p in ENGINE.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        if deferred_in is None:
            graph[name] = _imports(path, modules, deferred=False) - {name}
        elif name.startswith(deferred_in):
            inside = _imports(path, modules, deferred=True) - {name}
            graph[name] = {m for m in inside if m.startswith(deferred_in)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_engine_modules_import_no_cycle() -> None:
    graph = _graph()
    assert len(graph) > 40 and "engine.solve.face_solver" in graph
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_solve_modules_import_no_cycle_even_inside_functions() -> None:
    graph = _graph(deferred_in="engine.solve.")
    assert "engine.solve.compiled" in graph and "engine.solve.kernels" in graph["engine.solve.solver"]
    assert _cycle(graph) is None, " → ".join(_cycle(graph) or [])


def test_the_compiled_kernels_import_nothing_of_the_numpy_side() -> None:
    """The kernels see the solver only through its public tables (`engine/solve/tables.py`)."""
    compiled = ENGINE / "solve" / "compiled.py"
    modules = {_module_name(p) for p in ENGINE.rglob("*.py")}
    allowed = {"engine.solve.tables", "engine.solve.landmark_sets"}
    assert _imports(compiled, modules, deferred=True) <= allowed


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_deferred_imports_are_found(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import engine.a\n"
        "def f():\n    from engine import b\n"
        "class C:\n    def g(self):\n        import engine.c\n"
        "if __name__ == '__main__':\n    import engine.d\n"
    )
    modules = {"engine.a", "engine.b", "engine.c", "engine.d"}
    assert _imports(source, modules, deferred=False) == {"engine.a"}
    assert _imports(source, modules, deferred=True) == {"engine.a", "engine.b", "engine.c"}
