"""The package's shape, read from its source with ast: no import circle (an import inside a function counts too: it
still points one module at another, it only runs later), the settings at the bottom, and functions that fit on a
screen."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "cnnlab").rglob("*.py"))}


def _runs(name: str, importer: str) -> set[str]:
    """The package's modules that importing `name` from `importer` runs: the nearest module holding the name and
    the packages above it, less the importer's own packages (they are running already)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    parts = name.split(".") if name else []
    chain = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in chain if m != importer and not importer.startswith(m + ".")}


def imports_of(module: str, source: str) -> set[str]:
    """The package's modules `module` imports anywhere in `source`: at the top, inside functions, under an if."""
    package = module if MODULES.get(module, Path()).name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _runs(alias.name, module)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                above = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(above + ([base] if base else []))
            for alias in node.names:  # `from cnnlab import presets` imports the module cnnlab.presets
                found |= _runs(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {m: imports_of(m, p.read_text(encoding="utf-8")) for m, p in MODULES.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, …, a], or None (a depth-first search that meets a module still on its path)."""
    state, path = {}, []

    def visit(module):
        state[module] = "on the path"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "on the path":
                return path[path.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        path.pop()
        state[module] = "done"
        return None

    return next(filter(None, (visit(m) for m in sorted(graph) if m not in state)), None)


def test_the_graph_counts_imports_inside_functions_and_the_search_finds_a_circle():
    graph = import_graph()
    assert "cnnlab.engine" in graph["cnnlab.sweep"]  # imported inside sweep._train_one only
    assert {"cnnlab.data", "cnnlab.data.stream"} <= graph["cnnlab.run_data"]  # a submodule runs its package too
    assert imports_of("cnnlab.config", "def f():\n    from cnnlab import presets\n") == {"cnnlab.presets"}
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_among_the_modules():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " → ".join(circle)


def test_the_settings_import_nothing_of_cnnlab_but_its_errors():
    # config.py is at the bottom: everything may import it, so it may import nothing that could import it back.
    assert import_graph()["cnnlab.config"] == {"cnnlab.errors"}


def test_every_function_fits_on_a_screen():
    long = [f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for module, path in MODULES.items() for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"split these into named phases: {', '.join(long)}"
