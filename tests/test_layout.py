"""The package's joins (issue 17): no module in sorter/ reaches for a sibling's private name, the two
CLIs do not import each other (`sorter train` and the other training verbs reach training/cli.py through
one lazy pass-through in sorter/cli.py, and training/ never imports sorter.cli), and no other runtime
module imports training/, TensorFlow or Keras."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = sorted((ROOT / "sorter").rglob("*.py"))


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the file, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def private_reaches(path: Path) -> list[str]:
    """`from sorter.x import _name`, and `x._name` where x is a sorter module this file imported."""
    tree = ast.parse(path.read_text())
    problems, modules = [], set()
    for module, names in _imports(tree):
        if module.startswith("sorter"):
            problems += [f"imports {module}.{name}" for name in names
                         if name.startswith("_") and not name.startswith("__")]
            if module == "sorter":
                modules |= set(names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name.split(".")[-1] for alias in node.names
                        if alias.name.startswith("sorter.")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(f"uses {node.value.id}.{node.attr}")
    return problems


@pytest.mark.parametrize("path", RUNTIME, ids=[str(p.relative_to(ROOT)) for p in RUNTIME])
def test_no_module_reaches_for_a_siblings_private_name(path):
    assert private_reaches(path) == []


def test_the_check_catches_a_private_reach(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from sorter.store import _pk\nfrom sorter import report\nreport._items(None, '', '')\n")
    assert private_reaches(bad) == ["imports sorter.store._pk", "uses report._items"]


def test_the_two_clis_do_not_import_each_other_and_the_runtime_stays_off_training():
    for path in RUNTIME:
        modules = [module for module, _ in _imports(ast.parse(path.read_text()))]
        allowed = ["training.cli"] if path == ROOT / "sorter" / "cli.py" else []  # the verbs' pass-through
        assert [m for m in modules if m.startswith("training")] == allowed, path
        assert not [m for m in modules if m.split(".")[0] in ("tensorflow", "keras")], path
    for path in sorted((ROOT / "training").glob("*.py")):
        assert "sorter.cli" not in [m for m, _ in _imports(ast.parse(path.read_text()))], path
