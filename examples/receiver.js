#!/usr/bin/env node
// A palo-webhooks receiver for Node.js (18 or later), no dependencies: node:http and
// node:crypto only. The same receiver as examples/receiver.py.
//
//   PALO_WEBHOOK_SECRET=<the webhook's secret> node examples/receiver.js --port 9000
//
// Every check is over the raw body bytes, before parsing them:
// - `X-Palo-Signature: sha256=<hex HMAC-SHA256 of the body>` (the spec's signature);
// - the Standard Webhooks `webhook-signature`: one `v1,<base64 HMAC-SHA256 of
//   "<webhook-id>.<webhook-timestamp>.<body>">` entry must match (`v1a,` Ed25519 entries are
//   skipped);
// - `webhook-timestamp` (Unix seconds) within 5 minutes of now, so a captured request cannot
//   be replayed later.
// Both HMACs are keyed with the UTF-8 bytes of the webhook's secret, and compared in constant
// time. During a secret rotation, give both secrets, comma-separated (`--secret new,old`): a
// signature that verifies with either is accepted.
//
// Then it answers 200 at once and deduplicates on `event_id` (deliveries are at-least-once).
// Prints one line per request: `verified`, `duplicate` or `rejected: <reason>`, then the
// event's data for a new event.
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');
const { parseArgs } = require('node:util');

const TOLERANCE_S = 5 * 60; // how far webhook-timestamp may be from now, either way

// event_ids already processed; a real receiver keeps these in its database. Node runs one
// handler at a time, so a plain Set needs no lock.
const seen = new Set();

function hmacSha256(secret, ...parts) {
  const mac = crypto.createHmac('sha256', Buffer.from(secret, 'utf8'));
  for (const part of parts) mac.update(part);
  return mac.digest();
}

// Constant-time comparison of two strings (timingSafeEqual wants equal lengths).
function safeEqual(a, b) {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

// Why this request is not a genuine, fresh delivery; null when it is.
function refusal(headers, body, secrets) {
  const signature = headers['x-palo-signature'];
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const standard = headers['webhook-signature'];
  if (!signature || !id || !timestamp || !standard) return 'missing headers';
  if (!/^\d+$/.test(timestamp)) return 'bad timestamp';
  if (Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_S) {
    return 'stale timestamp'; // a replay (or a clock far off)
  }
  const palo = secrets.some((s) =>
    safeEqual(`sha256=${hmacSha256(s, body).toString('hex')}`, signature));
  if (!palo) return 'bad signature';
  const entries = standard.split(' ').filter((e) => e.startsWith('v1,')).map((e) => e.slice(3));
  const standardOk = secrets.some((s) => {
    const expected = hmacSha256(s, `${id}.${timestamp}.`, body).toString('base64');
    return entries.some((entry) => safeEqual(expected, entry));
  });
  if (!standardOk) return 'bad webhook-signature';
  return null;
}

function answer(res, status, text) {
  res.writeHead(status, { 'Content-Type': 'text/plain' });
  res.end(text);
}

async function handle(req, res, secrets) {
  if (req.method !== 'POST') return answer(res, 405, 'POST only');
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks); // the raw bytes: the signatures cover exactly these
  let reason = refusal(req.headers, body, secrets);
  let event;
  if (!reason) {
    try {
      event = JSON.parse(body.toString('utf8'));
      if (typeof event.event_id !== 'string') reason = 'bad payload';
    } catch {
      reason = 'bad payload';
    }
  }
  if (reason) {
    answer(res, 401, 'rejected');
    console.log(`rejected: ${reason}`);
    return;
  }
  const duplicate = seen.has(event.event_id);
  seen.add(event.event_id);
  answer(res, 200, 'ok'); // answer first, process after (the spec asks for < 5 s)
  const status = duplicate ? 'duplicate' : 'verified';
  console.log(`${status} ${event.event_type} ${event.event_id}` +
    ` delivery=${req.headers['x-palo-delivery']} attempt=${req.headers['x-palo-attempt']}`);
  if (!duplicate) console.log(JSON.stringify(event.data));
}

function main() {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '9000' }, // 0 picks a free port
      secret: { type: 'string', default: process.env.PALO_WEBHOOK_SECRET || '' },
    },
  });
  const secrets = values.secret.split(',').filter((s) => s);
  if (secrets.length === 0) {
    console.error("set PALO_WEBHOOK_SECRET (or --secret) to the webhook's secret");
    process.exit(2);
  }
  const server = http.createServer((req, res) => {
    handle(req, res, secrets).catch((err) => {
      console.error(err);
      if (!res.headersSent) answer(res, 500, 'error');
    });
  });
  server.listen(Number(values.port), '127.0.0.1', () => {
    console.log(`receiver listening on http://127.0.0.1:${server.address().port}/webhook`);
  });
}

main();
