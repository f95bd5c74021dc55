"""A tiny webhook receiver that verifies jobgate's signatures (Standard Webhooks).

pip install standardwebhooks
python examples/receiver.py whsec_...   # listens on 127.0.0.1:9000 (RECEIVER_PORT=9001: 9001)

The secret is the ``webhook_secret`` of the partner whose jobs it receives (each partner
has its own). A delivery that verifies is printed and answered 204; one that does not is
answered 400 (jobgate retries it) and a line says so.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            event = Webhook(sys.argv[1]).verify(body, dict(self.headers))
        except WebhookVerificationError as exc:
            print(
                f"rejected {self.headers['webhook-id']}: {exc} (is {sys.argv[1][:12]}… the "
                "webhook_secret of the partner that submitted the job?)",
                file=sys.stderr,
                flush=True,
            )
            self.send_response(400)
            self.end_headers()
            return
        print(self.headers["webhook-id"], event["type"], event["data"]["status"], flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass  # one line per delivery, printed above


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].startswith("whsec_"):
        sys.exit("usage: python examples/receiver.py whsec_...  (the partner's webhook_secret)")
    HTTPServer(("127.0.0.1", int(os.environ.get("RECEIVER_PORT", "9000"))), Hook).serve_forever()
