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


def parse(path: Path) -> ast.Module:
    """The file's AST. CPython 3.11 before 3.11.9 keeps the AST constructor's recursion
    depth in state shared by all threads (gh-106905): an ``ast.parse`` in another thread at
    the same moment (a traceback being formatted by an earlier test's background thread)
    makes this one raise ``SystemError: AST constructor recursion depth mismatch``. It
    failed once so in a full CI run; parsing again is then correct."""
    source = path.read_text()
    for attempt in range(3):
        try:
            return ast.parse(source, str(path))
        except SystemError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, including those inside functions."""
    found = []
    for node in ast.walk(parse(path)):
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
