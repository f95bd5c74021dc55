"""The layers stay apart: the domain imports neither Flask nor the Celery side nor the
gateway, and the worker side never imports the gateway (no gateway <-> tasks circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

# package -> top-level modules none of its files may import
FORBIDDEN = {
    "jobgate": {"flask", "werkzeug", "gateway", "tasks", "celery", "kombu"},
    "tasks": {"flask", "werkzeug", "gateway"},
    "config": {"flask", "gateway", "tasks", "jobgate", "celery"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_its_layer(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from flask import g\n")
    assert imported_modules(sample) == [(2, "flask")]
