#!/usr/bin/env python3
"""A palo-webhooks receiver, Python standard library only.

It is what a customer writes from the spec (webhooks-spec.fr.md, "Bonnes pratiques"):
verify the signatures before anything else, answer 200 at once, deduplicate on
`event_id` (deliveries are at-least-once), then process the event.

    PALO_WEBHOOK_SECRET=<the webhook's secret> python3 examples/receiver.py --port 9000

Every check is over the raw body bytes, before parsing them:
- `X-Palo-Signature: sha256=<hex HMAC-SHA256 of the body>`, with the spec's function;
- the Standard Webhooks `webhook-signature`: one `v1,<base64 HMAC-SHA256 of
  "<webhook-id>.<webhook-timestamp>.<body>">` entry must match (`v1a,` Ed25519 entries are
  skipped);
- `webhook-timestamp` (Unix seconds) within 5 minutes of now, so a captured request cannot
  be replayed later.

During a secret rotation, give both secrets, comma-separated (`--secret new,old`): a
signature that verifies with either is accepted (README, "Secret rotation with overlap").

Prints one line per request: `verified`, `duplicate` or `rejected: <reason>`, then the
event's data for a new event. The same receiver in Node.js, Go and Rust: receiver.js,
receiver.go and receiver.rs beside this file.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 5 * 60  # how far webhook-timestamp may be from now, either way


# The spec's function, unchanged ("Sécurisation des webhooks").
def verify_signature(payload: bytes, signature: str, secret: str) -> bool:
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)


# Standard Webhooks: the HMAC key is the same secret's UTF-8 bytes.
def verify_standard(payload: bytes, headers, secret: str) -> bool:
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + payload
    expected = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest())
    return any(
        hmac.compare_digest(expected, entry[len("v1,"):].encode())
        for entry in headers["webhook-signature"].split(" ")
        if entry.startswith("v1,")
    )


SEEN = set()  # event_ids already processed; a real receiver keeps these in its database
SEEN_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    secrets = []  # the current secret, and the previous one during a rotation

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        payload = self.rfile.read(length)
        reason = self.refusal(payload)
        if reason is None:
            try:
                event = json.loads(payload)
                event_id = event["event_id"]
            except (ValueError, KeyError, TypeError):
                reason = "bad payload"
        if reason is not None:
            self.answer(401, b"rejected")
            print(f"rejected: {reason}", flush=True)
            return
        with SEEN_LOCK:
            duplicate = event_id in SEEN
            SEEN.add(event_id)
        self.answer(200, b"ok")  # answer first, process after (the spec asks for < 5 s)
        status = "duplicate" if duplicate else "verified"
        print(
            f"{status} {event.get('event_type')} {event_id}"
            f" delivery={self.headers.get('X-Palo-Delivery')} attempt={self.headers.get('X-Palo-Attempt')}",
            flush=True,
        )
        if not duplicate:
            print(json.dumps(event.get("data"), ensure_ascii=False), flush=True)

    def refusal(self, payload):
        """Why this request is not a genuine, fresh delivery; None when it is."""
        headers = self.headers
        names = ("X-Palo-Signature", "webhook-id", "webhook-timestamp", "webhook-signature")
        if not all(headers.get(name) for name in names):
            return "missing headers"
        try:
            age = time.time() - int(headers["webhook-timestamp"])
        except ValueError:
            return "bad timestamp"
        if abs(age) > TOLERANCE_S:
            return "stale timestamp"  # a replay (or a clock far off)
        if not any(verify_signature(payload, headers["X-Palo-Signature"], s) for s in self.secrets):
            return "bad signature"
        if not any(verify_standard(payload, headers, s) for s in self.secrets):
            return "bad webhook-signature"
        return None

    def answer(self, status, text):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--secret", default=os.environ.get("PALO_WEBHOOK_SECRET"), help="the webhook's secret, or several comma-separated during a rotation (or PALO_WEBHOOK_SECRET)")
    args = parser.parse_args()
    if not args.secret:
        sys.exit("set PALO_WEBHOOK_SECRET (or --secret) to the webhook's secret")
    Handler.secrets = [s for s in args.secret.split(",") if s]
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"receiver listening on http://127.0.0.1:{server.server_address[1]}/webhook", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
