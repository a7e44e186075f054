-- Issue 15: a webhook the daemon disabled, its failing streak, and the held deliveries.
-- `disabled` is JSON text: {"reason","at_ms","delivery_id","status_code","failing_since_ms",
-- "last_error"}; NULL while the webhook is enabled.
ALTER TABLE webhooks ADD COLUMN disabled text;
ALTER TABLE webhooks ADD COLUMN failing_since_ms bigint;
-- A held delivery keeps the due time it had here (and none in `next_attempt_at_ms`), so it
-- is out of the retry index and enabling puts it back in due order.
ALTER TABLE deliveries ADD COLUMN held_due_ms bigint;
CREATE INDEX webhook_held ON deliveries (webhook_id, held_due_ms, id)
    WHERE held_due_ms IS NOT NULL;
