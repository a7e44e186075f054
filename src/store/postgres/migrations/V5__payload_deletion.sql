-- Issue 15, item 7: payload deletion. A deleted payload leaves a tombstone: `body` is empty
-- and `payload_deleted_at_ms` says when (ms since the epoch); NULL while the body is kept.
-- No index: deletion finds its event by (event_id, organization_id), and payload retention
-- walks the primary key from where its previous pass stopped.
ALTER TABLE events ADD COLUMN payload_deleted_at_ms bigint;
