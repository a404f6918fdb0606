"""Issue 13: shared test helpers live in tests/support/; no test module imports another test
module or a conftest (pytest loads those itself; importing one by name runs it twice under
two names, and ties a module to where pytest happened to put it on sys.path)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def imported_modules(source: str) -> set[str]:
    """Every module a source imports (absolute names as written; `from . import x` none)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def is_test_module(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == "tests":
        return len(parts) > 1 and parts[1] != "support"
    return parts[-1] == "conftest" or parts[-1].startswith("test_")


def offenders(root: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        if "support" in path.relative_to(root).parts:
            continue
        bad = {m for m in imported_modules(path.read_text(encoding="utf-8"))
               if is_test_module(m)}
        if bad:
            found[str(path.relative_to(root))] = bad
    return found


def test_no_test_module_imports_another_or_a_conftest() -> None:
    assert offenders(TESTS) == {}


def test_the_check_sees_each_kind_of_test_import(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text(
        "from conftest import A\nfrom test_b import helper\nimport tests.unit.test_c\n"
        "from tests.support.store import B\nimport sipmask\nfrom . import local\n")
    assert offenders(tmp_path) == {"test_a.py": {"conftest", "test_b", "tests.unit.test_c"}}
