"""Webhooks, one module per part: ``attempt`` (one attempt read top to bottom: claim,
prepare, send, record), ``http`` (the signed POST, pinned to the address the SSRF guard
checked), ``ledger`` (the attempt log, claims and in-flight slots in Redis) and ``policy``
(when a webhook is retried)."""
