"""Webhooks, one module per part: ``attempt`` (one attempt read top to bottom: claim,
prepare, send, record), ``http`` (the signed POST), ``pool`` (its connections, pinned to
the address the SSRF guard checked, kept alive, cut at the deadline), ``ledger`` (the
attempt log, claims and in-flight slots in Redis), ``policy`` (when a webhook is retried)
and ``fanout`` (an event's messages to a partner's endpoints, held and recovered)."""
