"""The built-in tasks' progress numbers agree with their messages: a message that counts
("4 of 10 steps done") counts the same ``current`` and ``total`` as the report it is in
(a newcomer once read ``current 1`` beside "Step 2 of 10")."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tasks.registry import job_types

pytestmark = pytest.mark.unit

PARAMS: dict[str, dict[str, Any]] = {
    "demo.sleep": {"seconds": 0, "steps": 10},
    "demo.once": {"seconds": 0, "steps": 3},
    "documents.process": {
        "documents": [{"name": f"{n}.txt", "text": "a b c d"} for n in "abcde"],
        "chunk_words": 2,
    },
    "texts.embed": {"texts": ["one", "two", "three"], "dimensions": 8},
    "demo.fail": {"message": "boom"},
}


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int, str]] = []

    def __call__(self, current: int, total: int, message: str = "") -> None:
        self.reports.append((current, total, message))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_counts_in_progress_messages_are_the_reported_numbers(name):
    job_type = job_types()[name]
    progress = Recorder()
    params = job_type.params_schema.load(PARAMS[name])
    try:
        job_type.func(progress, **params)
    except Exception:  # noqa: BLE001 - demo.fail fails on purpose; its reports still count
        assert name == "demo.fail"
    assert progress.reports
    for current, total, message in progress.reports:
        assert 0 <= current <= total
        for counted, of in re.findall(r"(\d+) of (\d+)", message):
            assert (int(counted), int(of)) == (current, total), (current, total, message)
    assert progress.reports[-1][0] == progress.reports[-1][1] or name == "demo.fail"
