"""The layer rules of DESIGN.md "Layout": `data/` imports nothing from `launcher/` (the data layer must not depend
on the trainer), and `model/` imports nothing from `launcher/`, `data/` or `scripts/`. Read from the source (every
import statement, also inside functions), so a lazy import cannot hide a dependency."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = {"data": {"launcher", "scripts"}, "model": {"launcher", "data", "scripts"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package):
    bad = {str(p.relative_to(REPO)): sorted(imported_packages(p) & FORBIDDEN[package])
           for p in sorted((REPO / package).rglob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}, f"{package}/ must not import {sorted(FORBIDDEN[package])}"
