"""Plain text helpers behind the built-in tasks: chunking and a local embedding.

The embedding is *feature hashing* (the "hashing trick", as in scikit-learn's
HashingVectorizer): each lower-cased word and each pair of adjacent words is hashed with
BLAKE2b into one of ``dimensions`` buckets with a hash-derived sign, counts are summed and
the vector is L2-normalised. It needs no model download, is deterministic across
processes and machines, and texts sharing words get a positive cosine similarity. It is
not a semantic model: synonyms do not land near each other.
"""

from __future__ import annotations

import hashlib
import math
import re

WORD = re.compile(r"\w+", re.UNICODE)
EMBEDDING_MODEL = "feature-hashing-blake2b-v1"


def tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def chunk_text(text: str, *, chunk_words: int = 200, overlap: int = 0) -> list[str]:
    """Split text into chunks of at most ``chunk_words`` words (``overlap`` repeated)."""
    if chunk_words <= 0 or not 0 <= overlap < chunk_words:
        raise ValueError("need chunk_words > 0 and 0 <= overlap < chunk_words")
    words = text.split()
    step = chunk_words - overlap
    return (
        [
            " ".join(words[i : i + chunk_words])
            for i in range(0, len(words), step)
            if words[i : i + chunk_words]
        ]
        if words
        else []
    )


def embed(text: str, dimensions: int = 256) -> list[float]:
    """Feature-hashing embedding of ``text``: a unit vector of ``dimensions`` floats."""
    vector = [0.0] * dimensions
    words = tokens(text)
    features = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        vector[value % dimensions] += 1.0 if (value >> 63) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [round(x / norm, 6) for x in vector] if norm else vector
