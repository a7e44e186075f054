-- Issue 15, item 5: recovery and replay jobs. A job's cursor is the last delivery id
-- (recover) or event key (replay) it looked at; `job_items` lists every delivery it queued
-- (at most once per job), `outstanding` until the job counted how it ended.
CREATE TABLE jobs (
    id              text COLLATE "C" PRIMARY KEY,
    organization_id text COLLATE "C" NOT NULL,
    webhook_id      text COLLATE "C" NOT NULL,
    kind            text NOT NULL,
    statuses        text[] NOT NULL,
    event_types     text[],
    since_ms        bigint NOT NULL,
    until_ms        bigint NOT NULL,
    state           text NOT NULL,
    cursor          text COLLATE "C",
    scan_done       boolean NOT NULL,
    matched         bigint NOT NULL,
    queued          bigint NOT NULL,
    succeeded       bigint NOT NULL,
    failed          bigint NOT NULL,
    created_at_ms   bigint NOT NULL,
    started_at_ms   bigint,
    finished_at_ms  bigint
);
CREATE INDEX jobs_by_organization ON jobs (organization_id, id);
-- The jobs the runner steps: not finished, or cancelled with queued deliveries going on.
CREATE INDEX jobs_active ON jobs (id) WHERE finished_at_ms IS NULL;
CREATE TABLE job_items (
    job_id      text COLLATE "C" NOT NULL,
    delivery_id text COLLATE "C" NOT NULL,
    outstanding boolean NOT NULL,
    PRIMARY KEY (job_id, delivery_id)
);
CREATE INDEX job_items_outstanding ON job_items (job_id, delivery_id) WHERE outstanding;
