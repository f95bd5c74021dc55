"""mypy passes on the domain package (jobgate) and config, with setup.cfg's [mypy] config.

Deselect with ``-m "not typecheck"``; run by hand with ``python -m mypy jobgate config``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.typecheck


def test_mypy_passes_on_jobgate_and_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "setup.cfg", "jobgate", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = (proc.stdout + proc.stderr).strip()
    print(output)
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{output}"
