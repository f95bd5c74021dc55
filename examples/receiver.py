"""A tiny webhook receiver that verifies jobgate's signatures (Standard Webhooks).

pip install standardwebhooks cryptography
python examples/receiver.py whsec_...   # a partner's or hmac endpoint's secret (v1 signatures)
python examples/receiver.py whpk_...    # an ed25519 endpoint's public key (v1a)
                                        # listens on 127.0.0.1:9000 (RECEIVER_PORT=9001: 9001)

The secret is the ``webhook_secret`` of the partner whose jobs it receives (each partner
has its own), or of the endpoint registered for it. A delivery that verifies is printed
and answered 204; one that does not is answered 400 (jobgate retries it) and a line says so.
"""

import base64
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

TOLERANCE = 5 * 60  # seconds: older or newer timestamps are refused (replays)


def verify(key: str, body: bytes, headers: dict) -> dict:
    """The event if one signature checks out with ``key`` (``whsec_`` or ``whpk_``) and the
    timestamp is fresh; raises ``WebhookVerificationError`` otherwise."""
    if not key.startswith("whpk_"):
        return Webhook(key).verify(body, headers)  # HMAC-SHA256, v1
    headers = {name.lower(): value for name, value in headers.items()}
    try:
        msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
        signatures = headers["webhook-signature"].split()
        sent_at = int(timestamp)
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook headers") from None
    if abs(time.time() - sent_at) > TOLERANCE:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key[len("whpk_") :]))
    content = f"{msg_id}.{timestamp}.".encode() + body
    for candidate in signatures:  # two during a key rotation: either may be ours
        version, _, signature = candidate.partition(",")
        if version != "v1a":
            continue
        try:
            public.verify(base64.b64decode(signature), content)
        except (InvalidSignature, ValueError):
            continue
        return json.loads(body)
    raise WebhookVerificationError("no matching v1a signature")


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            event = verify(sys.argv[1], body, dict(self.headers))
        except WebhookVerificationError as exc:
            print(
                f"rejected {self.headers['webhook-id']}: {exc} (is the {sys.argv[1][:5]}… "
                "given the webhook_secret of the partner that submitted the job?)",
                file=sys.stderr,
                flush=True,
            )
            self.send_response(400)
            self.end_headers()
            return
        print(self.headers["webhook-id"], event["type"], event["data"].get("status"), flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass  # one line per delivery, printed above


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].startswith(("whsec_", "whpk_")):
        sys.exit("usage: python examples/receiver.py whsec_...|whpk_...  (the secret or key)")
    HTTPServer(("127.0.0.1", int(os.environ.get("RECEIVER_PORT", "9000"))), Hook).serve_forever()
