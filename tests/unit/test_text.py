"""Chunking and the feature-hashing embedding behind the built-in tasks."""

from __future__ import annotations

import math

import pytest

from tasks.progress import Progress
from tasks.text import chunk_text, embed


def test_chunks_cover_every_word_in_order():
    text = " ".join(str(i) for i in range(45))
    chunks = chunk_text(text, chunk_words=20)
    assert [len(c.split()) for c in chunks] == [20, 20, 5]
    assert " ".join(chunks) == text


def test_overlap_repeats_words_and_bad_sizes_refused():
    assert chunk_text("a b c d e", chunk_words=3, overlap=1) == ["a b c", "c d e", "e"]
    assert chunk_text("   ", chunk_words=3) == []
    with pytest.raises(ValueError):
        chunk_text("a", chunk_words=2, overlap=2)


def test_embedding_is_deterministic_unit_length_and_similarity_aware():
    a, b, c = embed("the cat sat on the mat"), embed("the cat sat on a mat"), embed("GDP rose")
    assert a == embed("the cat sat on the mat")
    assert len(a) == 256
    assert math.isclose(math.sqrt(sum(x * x for x in a)), 1.0, rel_tol=1e-4)

    def cos(u, v):
        return sum(x * y for x, y in zip(u, v, strict=True))

    assert cos(a, b) > 0.5 > abs(cos(a, c))
    assert embed("", 16) == [0.0] * 16


def test_progress_helper_records_reports_without_services():
    progress = Progress()
    progress(1, 4, "a quarter")
    assert progress.reports == [{"current": 1, "total": 4, "percent": 25, "message": "a quarter"}]
