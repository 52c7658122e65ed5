"""The package's import graph has no cycle, counting imports inside functions
(deferred imports still tie modules together); a module importing its own
parent package is not an edge: Python initialises parents first."""
import ast
import pathlib

import dare_kernels

ROOT = pathlib.Path(dare_kernels.__file__).parent


def _module(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict:
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if True:
                if isinstance(n, ast.ImportFrom) and n.level:
                    base = package.rsplit(".", n.level - 1)[0] if n.level > 1 else package
                    target = f"{base}.{n.module}" if n.module else base
                    for alias in n.names:
                        sub = f"{target}.{alias.name}"
                        edges.add(sub if sub in modules else target)
                elif isinstance(n, ast.Import):
                    edges.update(a.name for a in n.names if a.name in modules)
                elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("dare_kernels"):
                    edges.add(n.module)
        graph[name] = {e for e in edges if e in modules and not name.startswith(e + ".") and e != name}
    return graph


def test_no_import_cycles():
    graph = _graph()
    assert "dare_kernels.ops" in graph and "dare_kernels.backends" in graph["dare_kernels.ops"]
    state = {}

    def visit(m, path):
        state[m] = "open"
        for e in sorted(graph[m]):
            assert state.get(e) != "open", "import cycle: " + " -> ".join(path + [m, e])
            if e not in state:
                visit(e, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
