"""The import map of the library has no circles and no import that runs upward.

Read from the source (``ast``), not by importing: every ``import`` that can run counts, at module level and
inside functions alike (a function-level import only postpones the dependency; it is still one). Not counted:
imports under ``if TYPE_CHECKING:`` (never run) and under ``if __name__ == "__main__":`` (they run in the
program ``__main__``, a different module from the one the graph names).

Layers, from the bottom: the general library (``rlhf`` top level, ``rlhf/<general>/``, ``reward_models``); the
stage packages (``rlhf/rl``, ``rlhf/sft``, ``rlhf/dpo``) and the stage scripts (``pipelines/``); the composition
root (``rlhf/stages.py``, the stage registry, and ``rlhf/cli.py``), which alone may load the scripts.
An upward import: a general module importing a stage package, or any library module importing ``pipelines/``,
``tests/`` or ``benchmarks/``.

``python tests/test_import_graph.py`` prints the cycles, the upward imports and (for information) the imports
between stage packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlhf", "reward_models", "pipelines")
STAGE_PACKAGES = ("rlhf.rl", "rlhf.sft", "rlhf.dpo", "pipelines")
COMPOSITION_ROOT = ("rlhf.stages", "rlhf.cli")
NEVER_IMPORTED = ("tests", "benchmarks")  # by the library
# Upward imports another #27 branch removes: the concepts branch moves the shipped prompt sources into the one
# source registry (rlhf.data.sources). Exactly these are tolerated; once one is gone, its entry must go too.
KNOWN_UPWARD: set[str] = set()


def module_files(root: Path = ROOT) -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def _skipped(test: ast.expr) -> bool:
    text = ast.unparse(test)
    return "TYPE_CHECKING" in text or text.replace("'", '"') == '__name__ == "__main__"'


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(dotted name, line) of every import that can run in ``module``'s source; relative imports resolved."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _skipped(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
            found.extend((f"{origin}.{alias.name}", node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, dict[str, int]], list[tuple[str, str, int]]]:
    """module -> {imported module of ours: line}, and (module, outside name, line) for tests/benchmarks imports."""
    files = module_files(root)
    graph: dict[str, dict[str, int]] = {}
    outside: list[tuple[str, str, int]] = []
    for module, path in files.items():
        edges: dict[str, int] = {}
        for name, line in imported_names(path.read_text(encoding="utf-8"), module, path.name == "__init__.py"):
            if name.split(".")[0] in NEVER_IMPORTED:
                outside.append((module, name, line))
            target = name
            while target and target not in files:  # `from a.b import C` names a.b; `import a.b` names a.b
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph, outside


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def stage_package(module: str) -> str | None:
    return next((p for p in STAGE_PACKAGES if module == p or module.startswith(p + ".")), None)


def upward_imports(graph: dict[str, dict[str, int]], outside: list[tuple[str, str, int]]) -> list[str]:
    found = [f"{module}:{line} imports {name}" for module, name, line in outside]
    for module, edges in sorted(graph.items()):
        if module in COMPOSITION_ROOT:
            continue
        own = stage_package(module)
        for target, line in sorted(edges.items()):
            into = stage_package(target)
            if into and into != own and (own is None or into == "pipelines"):
                found.append(f"{module}:{line} imports {target}")
    return found


def between_stages(graph: dict[str, dict[str, int]]) -> list[str]:
    """Imports from one stage package into another (pipelines/ into the stage libraries aside): not failed."""
    return [f"{module}:{line} imports {target}" for module, edges in sorted(graph.items())
            for target, line in sorted(edges.items())
            if stage_package(module) not in (None, "pipelines") and stage_package(target) not in (None, stage_package(module))]


def test_no_import_circles():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_upward_imports():
    graph, outside = import_graph()
    assert {entry.split(":")[0] + " imports " + entry.split(" imports ")[1]
            for entry in upward_imports(graph, outside)} == KNOWN_UPWARD


def test_the_scan_finds_circles_and_upward_imports(tmp_path):  # the two tests above must be able to fail
    for path, text in {"rlhf/__init__.py": "", "rlhf/a.py": "def f():\n    from rlhf import b\n",
                       "rlhf/b.py": "from rlhf.a import f\nfrom tests.helpers import x\n",
                       "rlhf/rl/__init__.py": "", "rlhf/rl/maths.py": "",
                       "rlhf/c.py": "from .rl.maths import g\nif __name__ == '__main__':\n    import rlhf.a\n",
                       "rlhf/stages.py": "import pipelines.sft\n", "reward_models/__init__.py": "",
                       "pipelines/__init__.py": "", "pipelines/sft.py": "import rlhf.rl.maths\n"}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    graph, outside = import_graph(tmp_path)
    assert cycles(graph) == [["rlhf.a", "rlhf.b"]]
    assert upward_imports(graph, outside) == ["rlhf.b:2 imports tests.helpers.x", "rlhf.c:1 imports rlhf.rl.maths"]


if __name__ == "__main__":
    graph, outside = import_graph()
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports (module- and function-level)")
    found = cycles(graph)
    print(f"cycles: {len(found)}")
    for component in found:
        print("  " + " <-> ".join(component))
        for module in component:
            print("".join(f"    {module}:{line} imports {t}\n" for t, line in graph[module].items() if t in component),
                  end="")
    upward = upward_imports(graph, outside)
    print(f"upward imports: {len(upward)}", *("  " + u for u in upward), sep="\n")
    sideways = between_stages(graph)
    print(f"imports between stage packages (not failed): {len(sideways)}", *("  " + s for s in sideways), sep="\n")
