"""A tiny webhook receiver that verifies jobgate's signatures (Standard Webhooks).

pip install standardwebhooks
python examples/receiver.py whsec_...        # listens on 127.0.0.1:9000
"""

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            event = Webhook(sys.argv[1]).verify(body, dict(self.headers))
        except WebhookVerificationError:
            self.send_response(400)
            self.end_headers()
            return
        print(self.headers["webhook-id"], event["type"], event["data"]["status"], flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", 9000), Hook).serve_forever()
