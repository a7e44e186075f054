-- Issue 15: a lifecycle change or a deletion moves a webhook's deliveries a chunk per
-- transaction. A row here means a webhook has deliveries left to hold (disabled), release
-- (enabled) or cancel (held deliveries with an id up to `discard_through`, which an enable
-- discarded; every unfinished one of a deleted webhook, which is why there is no foreign key).
CREATE TABLE held_sweeps (
    webhook_id      text COLLATE "C" PRIMARY KEY,
    discard_through text COLLATE "C"
);
