"""The spine cli -> generators -> zoo -> wsl -> store points one way (docs/design.md)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "store": set(),
    "wsl": {"store"},
    "zoo": {"wsl", "store"},
    "generators": {"zoo", "wsl", "store"},
    "cli": {"generators", "zoo", "wsl", "store"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(ALLOWED)


def test_packages_import_only_downwards():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for f in sorted((ROOT / pkg).rglob("*.py")):
            for imp in _imports(f) - allowed - {pkg}:
                bad.append(f"{f.relative_to(ROOT)} imports {imp}")
    assert not bad, "imports against the spine cli -> generators -> zoo -> wsl -> store:\n" + "\n".join(bad)


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node that can run: all of the file except `if TYPE_CHECKING:` blocks (annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _internal_imports(path: Path, package: str, modules: set[str], root: Path = ROOT) -> set[str]:
    """Modules of `package` that `path` imports anywhere it runs (top level or inside a function)."""
    me = _module_name(path, root)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a name inside a module -> that module
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == package and t != me:
                found.add(t)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return cycles


def _graph(root: Path, package: str) -> dict[str, set[str]]:
    files = sorted((root / package).rglob("*.py"))
    modules = {_module_name(f, root) for f in files}
    return {_module_name(f, root): _internal_imports(f, package, modules, root) for f in files}


def test_no_import_cycle_inside_generators():
    graph = _graph(ROOT, "generators")
    assert "generators.registry" in graph and "generators.interface" in graph
    # nothing inside the package imports the package's own __init__ (it imports the methods)
    importers = sorted(m for m, deps in graph.items() if "generators" in deps)
    assert not importers, f"import the module, not the package `generators`: {importers}"
    cycles = _cycles(graph)
    assert not cycles, "import cycles inside generators/:\n" + "\n".join(cycles)


def test_the_cycle_check_sees_a_lazy_cycle(tmp_path):
    """The check above can fail: an import inside a function is an edge like a top-level one."""
    pkg = tmp_path / "generators"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from generators.b import x\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from generators import c\n"
                              "def x():\n    from generators import a\n")
    (pkg / "c.py").write_text("import generators.b\n")
    graph = _graph(tmp_path, "generators")
    assert graph["generators.a"] == {"generators.b"} and graph["generators.b"] == {"generators.a"}
    assert _cycles(graph) == ["generators.a -> generators.b -> generators.a"]
