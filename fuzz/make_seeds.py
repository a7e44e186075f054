#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target to fuzz/corpus/<target>/seed-*.

Text seeds (event and webhook JSON, URLs) are the spec's examples and a few edge cases.
Binary seeds are encoded by hand here: stored records in postcard's format (varint
integers, length-prefixed strings, the enum variant index first), and store_model
operation lists in the `arbitrary` crate's format (a "keep going" byte before each
element, a little-endian u32 scaled to the variant count for each enum, raw bytes for
integers, the low bit of a byte for a bool). Run it again after changing a record layout
or the `Op` enum of store_model.rs: `python3 fuzz/make_seeds.py`.
"""

import json
import pathlib
import struct

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (directory / f"seed-{name}").write_bytes(data)


# --- event_ingest: POST /api/events bodies (spec "Événements disponibles") -----------------

SPEC_DATA = {
    "ticket.created": {"ticket_id": "TKT-00512", "title": "...", "priority": "p3",
                       "project_id": "...", "created_by": "user_id"},
    "ticket.status_changed": {"ticket_id": "TKT-00512", "old_status": "open",
                              "new_status": "in_progress", "changed_by": "user_id"},
    "ticket.resolved": {"ticket_id": "TKT-00512", "resolved_by": "user_id",
                        "resolution_time_hours": 2.5},
    "system.incident": {"incident_id": "INC-001", "severity": "critical",
                        "affected_services": ["api", "ui"], "status": "investigating"},
}

for event_type, data in SPEC_DATA.items():
    body = {"event_id": "evt_01HX", "event_type": event_type,
            "timestamp": "2026-02-19T10:30:00Z", "organization_id": "org_1", "data": data}
    write("event_ingest", event_type, json.dumps(body, ensure_ascii=False, indent=2))
write("event_ingest", "generated-id-and-time",
      '{"event_type":"ticket.resolved","data":{"ticket_id":"T","resolved_by":"u",'
      '"resolution_time_hours":12345678901234567890123e-5}}')
write("event_ingest", "offset-and-unicode",
      '\ufeff{"event_id":"evt:1.a-b_c","event_type":"ticket.created",'
      '"timestamp":"2026-02-19T11:30:00.123456+01:00","organization_id":"org_1",'
      '"data":{ "title" : "Cr\\u00e8me \\"br\u00fbl\u00e9e\\" \U0001F389", "ticket_id":"T",'
      '"priority":"p3","project_id":"p","created_by":"u","extra":[null,true,{"a":-0.0}]}}')
write("event_ingest", "duplicate-key",
      '{"event_type":"ticket.created","event_type":"system.incident","data":{}}')

# --- webhook_json: POST /api/webhooks bodies (spec "Créer un webhook") -----------------------

write("webhook_json", "spec", json.dumps({
    "url": "https://votre-serveur.com/palo-webhook",
    "events": ["ticket.created", "ticket.resolved", "system.incident"],
    "secret": "votre_secret_hmac_32_chars_min",
    "active": True,
    "description": "Webhook production",
}, indent=2))
write("webhook_json", "star-http-fragment",
      '{"url":"http://127.0.0.1:8080/hook?x=1#frag","events":["*"]}')
write("webhook_json", "ipv6-port-admin",
      '{"url":"https://[::1]:8443/h","events":["ticket.created","ticket.created"],'
      '"organization_id":"org_1","active":false}')
write("webhook_json", "userinfo", '{"url":"https://user:pw@example.com/","events":[]}')
# Issue 16: delivery options.
write("webhook_json", "options", json.dumps({
    "url": "https://example.com/hook", "events": ["ticket.*", "system.incident"],
    "ordering": "key", "ordering_hold_max": "30m", "max_in_flight": 4, "rate_limit": 20,
    "filter": {"$or": [{"data.priority": {"$in": ["p1", "p2"]}}, {"data.count": {"$gt": 3}}]},
    "headers": [{"name": "X-Tenant", "value": "acme"}, {"name": "X-Key", "value": "k", "secret": True}],
    "auth": {"type": "basic", "username": "u", "password": "p"},
    "proxy": "none", "signature_scheme": ["hmac", "ed25519"],
}, separators=(",", ":")))
write("webhook_json", "options-bad-filter",
      '{"url":"https://example.com/h","events":["*"],"filter":{"data.p":{"$regex":"x"}}}')

# --- url_policy: webhook URLs ------------------------------------------------------------

for i, url in enumerate([
    "https://votre-serveur.com/palo-webhook",
    "http://localhost:8080/hook",
    "https://[2001:db8::1]:443/path?query=1#fragment",
    "https://example.com:0/",
    "https://example.com:65536/",
    "https://user@example.com/",
    "ftp://example.com/",
    "https://xn--bcher-kva.example/",
]):
    write("url_policy", str(i), url)

# --- signature_header: free-form bytes (secret, body, header, position, flip) ------------------

write("signature_header", "rfc4231", b"Jefe\x00what do ya want for nothing?\x00sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843\x07\x01")
write("signature_header", "spec-body", b"votre_secret_hmac_32_chars_min" + json.dumps(
    {"event_id": "evt_01HX", "data": SPEC_DATA["system.incident"]}).encode() + b"sha256=\x10\x20")

# --- record_decode: postcard records --------------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def text(s):
    raw = s.encode()
    return varint(len(raw)) + raw


def option(value):
    return b"\x00" if value is None else b"\x01" + value


def boolean(b):
    return b"\x01" if b else b"\x00"


ULID = 0x0197_2A5E_0C2B_7E3A_9D41_5F10_AB12_CD34
webhook = (varint(0) + text("org_1") + text("https://example.com/hook")
           + option(varint(2) + text("ticket.created") + text("system.incident"))
           + text("s" * 32) + boolean(True) + text("") + varint(1_771_497_000_000) * 2)
body = b'{"event_id":"evt_1","event_type":"ticket.created","data":{}}'
event = (varint(0) + text("evt_1") + text("ticket.created") + text("2026-02-19T10:30:00Z")
         + text("org_1") + varint(1_771_497_000_000) + varint(len(body)) + body
         + bytes(range(32)) + varint(2) + varint(ULID) + varint(ULID + 1))
delivery = (varint(0) + text("org_1") + varint(ULID) + varint(ULID - 5) + text("evt_1")
            + text("ticket.created") + text("retrying") + varint(2) + varint(2)
            + option(varint(1_771_497_300_000)) + varint(1_771_497_000_000) * 2)
attempt_v1 = (varint(0) + varint(1_771_497_000_000) + varint(10_000) + option(None)
              + option(text("timeout")) + text("") + boolean(False) + text("scheduled"))
attempt_v2 = (varint(1) + varint(1_771_497_000_000) + varint(35) + option(varint(429))
              + option(None) + text("slow down") + boolean(True) + text("manual")
              + option(varint(120_000)))
# V3: V2's fields, then the transport error in words (issue 5).
attempt_v3 = (varint(2) + varint(1_771_497_000_000) + varint(12) + option(None)
              + option(text("tls")) + text("") + boolean(False) + text("scheduled")
              + option(None) + option(text("certificate expired")))
# V2 (secret rotation): V1's fields, then the previous secret and its expiry, if any.
webhook_v2 = (varint(1) + webhook[1:] + option(text("p" * 32) + varint(1_771_497_600_000)))
# V2 (issue 15): V1's fields, then the last attempt's outcome, if any.
delivery_v2 = varint(1) + delivery[1:] + option(text("5xx"))
# V2 (payload deletion, issue 15): V1's fields, then when the payload was deleted; a
# tombstone's body is empty.
event_v2 = (varint(1) + text("evt_1") + text("ticket.created") + text("2026-02-19T10:30:00Z")
            + text("org_1") + varint(1_771_497_000_000) + varint(0)
            + bytes(range(32)) + varint(2) + varint(ULID) + varint(ULID + 1)
            + option(varint(1_771_500_000_000)))
api_key = varint(0) + text("org_1") + text("ci key") + varint(1_771_497_000_000) + bytes([7] * 32)
for name, record in [("webhook", webhook), ("webhook-v2", webhook_v2), ("event", event),
                     ("event-v2", event_v2), ("delivery", delivery),
                     ("delivery-v2", delivery_v2),
                     ("attempt-v1", attempt_v1), ("attempt-v2", attempt_v2), ("attempt-v3", attempt_v3),
                     ("api-key", api_key)]:
    write("record_decode", name, record)
write("record_decode", "huge-length", varint(0) + varint(2**63))

# --- store_model: operation lists -------------------------------------------------------------


def variant(index, count):
    """The u32 that `arbitrary`'s derive maps to variant `index` of `count`."""
    return struct.pack("<I", -(-(index << 32) // count))


def op(index, *fields):
    return b"\x01" + variant(index, 7) + b"".join(fields)


def u8(n):
    return bytes([n])


def u16(n):
    return struct.pack("<H", n)


def create_webhook(org, active=True, only_ticket_created=False):
    return op(0, u8(org), boolean(active), boolean(only_ticket_created))


def set_active(webhook, active):
    return op(1, u8(webhook), boolean(active))


def delete_webhook(webhook):
    return op(2, u8(webhook))


def accept(org, event_id, kind=0, second_variant=False, timestamp=0):
    return op(3, u8(org), u8(event_id), variant(kind, 2), boolean(second_variant),
              variant(timestamp, 4))


def attempt(delivery, outcome=1, manual=False, retry_after_seconds=0):
    extra = u16(retry_after_seconds) if outcome == 2 else b""
    return op(4, u8(delivery), variant(outcome, 4) + extra, boolean(manual))


def postpone(delivery, by_seconds):
    return op(5, u8(delivery), u16(by_seconds))


def advance(seconds):
    return op(6, u16(seconds))


write("store_model", "retries-until-failed", b"".join([
    create_webhook(0), accept(0, 0), attempt(0), advance(1), attempt(0, outcome=2,
    retry_after_seconds=90), advance(90), attempt(0, outcome=3), attempt(0), attempt(0),
    attempt(0, outcome=0, manual=True),
]))
write("store_model", "replay-conflict-fan-out", b"".join([
    create_webhook(1), create_webhook(1, only_ticket_created=True), create_webhook(1, False),
    create_webhook(2), accept(1, 0, timestamp=1), accept(1, 0, timestamp=2),
    accept(1, 0, second_variant=True), accept(1, 1, kind=1), accept(2, 0),
]))
write("store_model", "delete-postpone-deactivate", b"".join([
    create_webhook(0), create_webhook(0), accept(0, 0), accept(0, 1, kind=1), advance(5),
    postpone(0, 30), postpone(1, 0), attempt(2, outcome=1), set_active(1, False),
    accept(0, 2), delete_webhook(0), attempt(0, outcome=0), delete_webhook(0),
    attempt(1, outcome=0, manual=True),
]))
# A long, mixed sequence: libFuzzer starts with inputs no longer than the longest seed and
# lengthens them only slowly, and store_model runs few inputs a second, so without this one
# its sequences would stay at about 20 operations.
long_mix = [create_webhook(0), create_webhook(1, only_ticket_created=True), create_webhook(2)]
for i in range(60):
    step = [accept(i % 3, i % 5, kind=i % 2, second_variant=i % 7 == 0, timestamp=i % 4),
            attempt(i, outcome=i % 4, manual=i % 5 == 0, retry_after_seconds=30 * i),
            advance(1 + 7 * i), postpone(i // 2, 5 * i), set_active(i, i % 3 != 0),
            create_webhook(i % 3, active=i % 4 != 0), delete_webhook(i)][i % 7]
    long_mix.append(step)
write("store_model", "long-mix", b"".join(long_mix))
