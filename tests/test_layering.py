"""The import rules of docs/DESIGN.md "Layout", read from the source (every import statement,
also inside functions, so a lazy import cannot hide a dependency):

- `model/` imports nothing from `launcher/`, `data/` or `scripts/`; `data/` nothing from `launcher/` or `scripts/`;
- the product (`model/`, `data/`, `launcher/`) never imports `scripts/`, and never edits sys.path (it is installed);
- tests never import the research rooms `scripts/bench` and `scripts/experiments`;
- inside a package no modules import each other, directly or round a circle;
- no `_private` name is imported from another module.

Each checker takes the repository root, so the tests at the end run it on a small tree that breaks the rule.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("model", "data", "launcher")
FORBIDDEN = {"data": {"launcher", "scripts"}, "model": {"launcher", "data", "scripts"}, "launcher": {"scripts"}}
RESEARCH = ("scripts.bench", "scripts.experiments")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(root, path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((module, [a.name for a in node.names]))
    return found


def python_files(root: Path, *folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (root / f).rglob("*.py") if ".venv" not in p.parts)


def layer_violations(root: Path) -> dict[str, list[str]]:
    bad = {}
    for package, forbidden in FORBIDDEN.items():
        for path in python_files(root, package):
            hits = sorted({m for m, _ in imports(root, path) if m.split(".")[0] in forbidden})
            if hits:
                bad[str(path.relative_to(root))] = hits
    return bad


def research_imports_in_tests(root: Path) -> dict[str, list[str]]:
    bad = {}
    for path in python_files(root, "tests"):
        names = [m for m, _ in imports(root, path)]
        # `from scripts import bench` names the research room too.
        names += [f"{m}.{n}" for m, ns in imports(root, path) if m == "scripts" for n in ns]
        hits = sorted({m for m in names if m.startswith(RESEARCH)})
        if hits:
            bad[str(path.relative_to(root))] = hits
    return bad


def sys_path_edits(root: Path) -> list[str]:
    bad = []
    for path in python_files(root, *PRODUCT, "scripts"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append", "extend")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                bad.append(f"{path.relative_to(root)}:{node.lineno}")
    return bad


def import_cycles(root: Path, package: str) -> list[list[str]]:
    """Every circle of imports among the modules of `package` (a module importing itself through others)."""
    modules = {module_name(root, p): p for p in python_files(root, package)}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, names in imports(root, path):
            # `from data import build` imports the module data.build, not only the package.
            for candidate in [module, *(f"{module}.{n}" for n in names)]:
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    targets.add(candidate)
        # A package's __init__ re-exporting its modules is not a circle with them.
        graph[name] = {t for t in targets if not (path.name != "__init__.py" and name.startswith(t + "."))}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def private_imports(root: Path) -> list[str]:
    """`from x import _name` of a module's private name, in product code, scripts and tests."""
    bad = []
    for path in python_files(root, *PRODUCT, "scripts", "tests"):
        for module, names in imports(root, path):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(root)}: from {module} import {n}")
    return bad


# -- the rules on this repository ------------------------------------------------------------------------------------


def test_layers_import_only_what_they_may():
    assert layer_violations(REPO) == {}


def test_tests_never_import_research_code():
    assert research_imports_in_tests(REPO) == {}


def test_nothing_edits_sys_path():
    assert sys_path_edits(REPO) == []


@pytest.mark.parametrize("package", [*PRODUCT, "scripts"])
def test_no_import_circle_inside_a_package(package):
    assert import_cycles(REPO, package) == []


def test_no_private_name_is_imported_from_another_module():
    assert private_imports(REPO) == []


# -- each checker catches a broken tree ------------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for folder in {*PRODUCT, "scripts", "tests"}:
        (root / folder).mkdir(exist_ok=True)
    return root


def test_the_checkers_find_each_broken_rule(tmp_path):
    root = write(tmp_path, {
        "model/__init__.py": "",
        "model/attention.py": "def f():\n    from data.tokenizer import EOT\n",  # lazy, still a layer break
        "data/__init__.py": "",
        "data/build.py": "from data import streaming\n",
        "data/streaming.py": "from .source_config import x\n",
        "data/source_config.py": "def g():\n    from data.build import fetch\n",
        "launcher/__init__.py": "",
        "launcher/train.py": "import sys\nsys.path.insert(0, '.')\nfrom scripts.export_hf import export\n",
        "tests/test_x.py": "from scripts import bench\nfrom scripts.experiments.tasks import rows\n"
                           "from data.build import _guarded\n",
    })
    assert layer_violations(root) == {"launcher/train.py": ["scripts.export_hf"],
                                      "model/attention.py": ["data.tokenizer"]}
    assert research_imports_in_tests(root) == {"tests/test_x.py": ["scripts.bench", "scripts.experiments.tasks"]}
    assert sys_path_edits(root) == ["launcher/train.py:2"]
    assert import_cycles(root, "data") == [["data.build", "data.streaming", "data.source_config", "data.build"]]
    assert private_imports(root) == ["tests/test_x.py: from data.build import _guarded"]


def test_a_package_init_that_reexports_its_modules_is_not_a_circle(tmp_path):
    root = write(tmp_path, {"launcher/probes/__init__.py": "from launcher.probes.items import build\n",
                            "launcher/probes/items.py": "import torch\n",
                            "launcher/probes/run.py": "from launcher.probes import items\n"})
    assert import_cycles(root, "launcher") == []


def shadowed_packages(root: Path) -> list[str]:
    """Product packages that a folder of the same name under scripts/ shadows (`python scripts/X.py` puts scripts/ first
    on sys.path) and whose __init__.py holds code, which would then go missing (docs/DESIGN.md, "Layout")."""
    bad = []
    for package in PRODUCT:
        init = root / package / "__init__.py"
        if (root / "scripts" / package).is_dir() and init.is_file():
            body = [n for n in ast.parse(init.read_text()).body
                    if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]  # a docstring is fine
            if body:
                bad.append(package)
    return bad


def test_a_script_folder_named_like_a_package_shadows_nothing_that_matters(tmp_path):
    assert shadowed_packages(REPO) == []
    root = write(tmp_path, {"scripts/model/__init__.py": "", "model/__init__.py": '"""Doc."""\n'})
    assert shadowed_packages(root) == []
    (root / "model/__init__.py").write_text("from model.config import ModelConfig\n")
    assert shadowed_packages(root) == ["model"]
