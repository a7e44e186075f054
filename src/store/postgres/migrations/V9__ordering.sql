-- Issue 16: ordering by key. An event's ordering key, copied to each of its deliveries; the
-- partial index lists each webhook's unfinished deliveries of a key in ingest order (event
-- key, then id), which is what a delivery of a webhook with `ordering: "key"` waits behind.
ALTER TABLE events ADD COLUMN ordering_key text COLLATE "C";
ALTER TABLE deliveries ADD COLUMN ordering_key text COLLATE "C";
CREATE INDEX deliveries_ordering ON deliveries (webhook_id, ordering_key, event_key, id)
    WHERE ordering_key IS NOT NULL AND status IN ('pending', 'retrying', 'held');
