-- Issue 15: a lifecycle change moves a webhook's deliveries a chunk per transaction. A row
-- here means a webhook has deliveries left to hold (disabled), release (enabled) or cancel
-- (held deliveries with an id up to `discard_through`, which an enable discarded).
CREATE TABLE held_sweeps (
    webhook_id      text COLLATE "C" PRIMARY KEY REFERENCES webhooks (id) ON DELETE CASCADE,
    discard_through text COLLATE "C"
);
