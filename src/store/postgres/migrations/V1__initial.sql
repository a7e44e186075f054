-- palo-webhooks on PostgreSQL: the initial schema (issue 14).
-- Ids are the API's own text forms (`wh_<ULID>`, `dlv_<ULID>`, `evk_<ULID>`, `key_<ULID>`)
-- compared bytewise (COLLATE "C"), so ordering by id is ordering by creation time, as on
-- the file backend. Times are ms since the Unix epoch (bigint).

CREATE TABLE webhooks (
    id                    text COLLATE "C" PRIMARY KEY,
    organization_id       text COLLATE "C" NOT NULL,
    url                   text NOT NULL,
    -- NULL: every public event type ("*"); else the subscribed types.
    event_types           text[],
    -- Sealed with the secrets key when one is set (never plain text then).
    secret                text NOT NULL,
    previous_secret       text,
    previous_expires_at_ms bigint,
    active                boolean NOT NULL,
    description           text NOT NULL,
    created_at_ms         bigint NOT NULL,
    updated_at_ms         bigint NOT NULL
);
CREATE INDEX webhooks_by_organization ON webhooks (organization_id, id);

CREATE TABLE events (
    key             text COLLATE "C" PRIMARY KEY,
    organization_id text COLLATE "C" NOT NULL,
    event_id        text COLLATE "C" NOT NULL,
    event_type      text NOT NULL,
    "timestamp"     text NOT NULL,
    received_at_ms  bigint NOT NULL,
    body            bytea NOT NULL,
    content_hash    bytea NOT NULL,
    delivery_ids    text[] NOT NULL
);
-- Idempotency: one event per (event_id, organization).
CREATE UNIQUE INDEX events_idempotency ON events (event_id, organization_id);
CREATE INDEX events_by_organization ON events (organization_id, key);

CREATE TABLE deliveries (
    id                 text COLLATE "C" PRIMARY KEY,
    organization_id    text COLLATE "C" NOT NULL,
    webhook_id         text COLLATE "C" NOT NULL,
    event_key          text COLLATE "C" NOT NULL,
    event_id           text NOT NULL,
    event_type         text NOT NULL,
    status             text NOT NULL,
    attempt_count      integer NOT NULL,
    scheduled_attempts integer NOT NULL,
    -- The retry index: set exactly when the delivery is not final.
    next_attempt_at_ms bigint,
    created_at_ms      bigint NOT NULL,
    updated_at_ms      bigint NOT NULL
);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_by_event ON deliveries (event_key);
-- The retry index, in due order, and its per-webhook twin the scheduler reads.
CREATE INDEX retry_index ON deliveries (next_attempt_at_ms, id)
    WHERE next_attempt_at_ms IS NOT NULL;
CREATE INDEX webhook_due ON deliveries (webhook_id, next_attempt_at_ms, id)
    WHERE next_attempt_at_ms IS NOT NULL;

CREATE TABLE attempts (
    delivery_id             text COLLATE "C" NOT NULL,
    number                  integer NOT NULL,
    started_at_ms           bigint NOT NULL,
    duration_ms             bigint NOT NULL,
    status_code             integer,
    error                   text,
    response_body           text NOT NULL,
    response_body_truncated boolean NOT NULL,
    trigger                 text NOT NULL,
    retry_after_ms          bigint,
    error_detail            text,
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE api_keys (
    id              text COLLATE "C" PRIMARY KEY,
    organization_id text NOT NULL,
    description     text NOT NULL,
    created_at_ms   bigint NOT NULL,
    key_hash        bytea NOT NULL UNIQUE
);

-- The daemons sharing this database, and which of them serves each webhook (issue 14,
-- item 3): a lease is held until `expires_at` (the database's clock) and renewed by its
-- holder; an expired lease may be taken by any live daemon.
CREATE TABLE daemons (
    id           text COLLATE "C" PRIMARY KEY,
    address      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE webhook_leases (
    webhook_id text COLLATE "C" PRIMARY KEY,
    owner      text COLLATE "C" NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX webhook_leases_by_owner ON webhook_leases (owner);
