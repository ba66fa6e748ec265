"""The spine cli -> generators -> zoo -> wsl -> store points one way (DESIGN.md)."""
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
