"""The built-in job types: two demos, document chunking and text embedding."""

from __future__ import annotations

import time
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from tasks.progress import Progress
from tasks.registry import job_task
from tasks.text import EMBEDDING_MODEL, chunk_text, embed

# Bounds on what one job may produce (the result is kept in Redis and sent in webhooks).
MAX_OUTPUT_WORDS = 2_000_000  # documents.process: words across all chunks
MAX_EMBEDDING_FLOATS = 1_000_000  # texts.embed: len(texts) x dimensions (~10 MB of JSON)


class SleepParams(Schema):
    seconds = fields.Float(
        load_default=1.0,
        validate=validate.Range(min=0, max=3600),
        metadata={"description": "Total time to sleep."},
    )
    steps = fields.Integer(
        load_default=10,
        strict=True,
        validate=validate.Range(min=1, max=10000),
        metadata={"description": "Progress reports, evenly spaced."},
    )


class FailParams(Schema):
    message = fields.String(load_default="Demo failure", validate=validate.Length(max=1000))


class Document(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=256))
    text = fields.String(required=True)


class DocumentsParams(Schema):
    documents = fields.List(
        fields.Nested(Document), required=True, validate=validate.Length(min=1, max=1000)
    )
    chunk_words = fields.Integer(
        load_default=200, strict=True, validate=validate.Range(min=1, max=10000)
    )
    overlap = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0, max=9999))

    @validates_schema
    def _bounded_output(self, data: dict[str, Any], **_: Any) -> None:
        """Overlap repeats words in every chunk: refuse params whose result would balloon."""
        chunk, overlap = data.get("chunk_words", 200), data.get("overlap", 0)
        if overlap >= chunk:
            raise ValidationError("Must be smaller than chunk_words.", "overlap")
        words = sum(len(doc["text"].split()) for doc in data.get("documents", []))
        if words * chunk / (chunk - overlap) > MAX_OUTPUT_WORDS:
            raise ValidationError(
                f"The chunks would hold over {MAX_OUTPUT_WORDS} words; "
                "use a smaller overlap or fewer documents.",
                "overlap",
            )


class EmbedParams(Schema):
    texts = fields.List(
        fields.String(validate=validate.Length(max=100_000)),
        required=True,
        validate=validate.Length(min=1, max=10000),
    )
    dimensions = fields.Integer(
        load_default=256, strict=True, validate=validate.Range(min=8, max=4096)
    )

    @validates_schema
    def _bounded_output(self, data: dict[str, Any], **_: Any) -> None:
        """A few bytes of input must not ask for a huge result: cap texts × dimensions."""
        floats = len(data.get("texts", [])) * data.get("dimensions", 256)
        if floats > MAX_EMBEDDING_FLOATS:
            raise ValidationError(
                f"texts × dimensions must be at most {MAX_EMBEDDING_FLOATS} ({floats} asked).",
                "dimensions",
            )


@job_task(
    "demo.sleep",
    params=SleepParams,
    demo=True,
    description="Sleep for `seconds`, reporting progress `steps` times.",
)
def sleep(progress: Progress, *, seconds: float = 1.0, steps: int = 10) -> dict[str, Any]:
    pause = seconds / steps
    for step in range(steps):
        progress(step, steps, f"{step} of {steps} steps done")
        if pause:
            time.sleep(pause)
    progress(steps, steps, "Done")
    return {"slept": seconds, "steps": steps}


@job_task(
    "demo.once",
    params=SleepParams,
    demo=True,
    retry_on_worker_lost=False,
    description="demo.sleep declared not safe to run twice: if its worker dies, the "
    "job fails with `worker_lost` instead of running again.",
)
def sleep_once(progress: Progress, *, seconds: float = 1.0, steps: int = 10) -> dict[str, Any]:
    return sleep(progress, seconds=seconds, steps=steps)


class DemoFailure(Exception):
    """The error demo.fail raises on purpose."""


@job_task(
    "demo.fail",
    params=FailParams,
    demo=True,
    description="Fail at once with `message` (to try error handling and job.failed).",
)
def fail(progress: Progress, *, message: str = "Demo failure") -> None:
    progress(0, 1, "About to fail")
    raise DemoFailure(message)


@job_task(
    "documents.process",
    params=DocumentsParams,
    description="Split each document into chunks of words; progress per document.",
)
def process_documents(
    progress: Progress, *, documents: list[dict[str, str]], chunk_words: int = 200, overlap: int = 0
) -> dict[str, Any]:
    out = []
    total = len(documents)
    for index, document in enumerate(documents):
        progress(index, total, f"{index} of {total} documents done; next: {document['name']}")
        chunks = chunk_text(document["text"], chunk_words=chunk_words, overlap=overlap)
        out.append(
            {
                "name": document["name"],
                "words": len(document["text"].split()),
                "chunk_count": len(chunks),
                "chunks": chunks,
            }
        )
    progress(len(documents), len(documents), "Done")
    return {"documents": out, "total_chunks": sum(d["chunk_count"] for d in out)}


@job_task(
    "texts.embed",
    params=EmbedParams,
    description="Embed each text with deterministic feature hashing; progress per text.",
)
def embed_texts(progress: Progress, *, texts: list[str], dimensions: int = 256) -> dict[str, Any]:
    vectors = []
    for index, text in enumerate(texts):
        progress(index, len(texts), f"{index} of {len(texts)} texts embedded")
        vectors.append(embed(text, dimensions))
    progress(len(texts), len(texts), "Done")
    return {"model": EMBEDDING_MODEL, "dimensions": dimensions, "embeddings": vectors}
