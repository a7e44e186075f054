#!/usr/bin/env python3
"""A palo-webhooks receiver, Python standard library only.

It is what a customer writes from the spec (webhooks-spec.fr.md, "Bonnes pratiques"):
verify the HMAC signature before anything else, answer 200 at once, deduplicate on
`event_id` (deliveries are at-least-once), then process the event.

    PALO_WEBHOOK_SECRET=<the webhook's secret> python3 examples/receiver.py --port 9000

During a secret rotation, give both secrets, comma-separated (`--secret new,old`): a
signature that verifies with either is accepted (README, "Secret rotation with overlap").

Prints one line per request: `verified`, `duplicate` or `rejected`, then the event.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


# The spec's function, unchanged ("Sécurisation des webhooks").
def verify_signature(payload: bytes, signature: str, secret: str) -> bool:
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return hmac.compare_digest(f"sha256={expected}", signature)


SEEN = set()  # event_ids already processed; a real receiver keeps these in its database
SEEN_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    secrets = []  # the current secret, and the previous one during a rotation

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        payload = self.rfile.read(length)
        signature = self.headers.get("X-Palo-Signature", "")
        if not any(verify_signature(payload, signature, s) for s in self.secrets):
            self.answer(401)
            print("rejected: bad signature", flush=True)
            return
        event = json.loads(payload)
        with SEEN_LOCK:
            duplicate = event["event_id"] in SEEN
            SEEN.add(event["event_id"])
        self.answer(200)  # answer first, process after (the spec asks for < 5 s)
        status = "duplicate" if duplicate else "verified"
        print(
            f"{status} {event['event_type']} {event['event_id']}"
            f" delivery={self.headers.get('X-Palo-Delivery')} attempt={self.headers.get('X-Palo-Attempt')}",
            flush=True,
        )
        if not duplicate:
            print(json.dumps(event["data"], ensure_ascii=False), flush=True)

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"invalid signature")

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
