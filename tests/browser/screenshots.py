"""Refresh the screenshots in README.md and docs/ from the running app.

    python -m tests.browser.screenshots

runs the browser tests that take them (a real gateway, a real worker and headless
Chromium, as ``python -m pytest -m browser`` does; Redis and the database as for the
suite), then copies each screenshot the docs show from ``tests/artifacts`` to
``docs/img``. ``tests/unit/test_doc_links.py`` checks that every image the docs show is
one this script refreshes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.helpers import ROOT

ARTIFACTS = ROOT / "tests" / "artifacts"
IMAGES = ROOT / "docs" / "img"
# docs/img/<name> <- tests/artifacts/<name>, taken by the test that shows that view.
SHOTS = {
    "status-page.png": "tests/browser/test_status_page.py",
    "dashboard.png": "tests/browser/test_dashboard_page.py",
    "endpoints-page.png": "tests/browser/test_endpoints_page.py",
    "audit-page.png": "tests/browser/test_audit_page.py",
}


def main() -> int:
    tests = sorted(set(SHOTS.values()))
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests])
    if ran.returncode != 0:
        print("screenshots: the browser tests failed; docs/img left as it was", file=sys.stderr)
        return ran.returncode
    IMAGES.mkdir(exist_ok=True)
    for name in SHOTS:
        shutil.copyfile(ARTIFACTS / name, IMAGES / name)
        print(f"docs/img/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
