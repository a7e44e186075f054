-- The searchable delivery log (issue 15, item 6): each delivery's last attempt's outcome,
-- and the indexes behind `GET /api/deliveries`. Every search is per organization, newest
-- first by (created_at_ms, id); each index ends in those columns, so a filter is an index
-- range read in order and a page stops after its rows.

-- The outcome of an attempt, as `AttemptOutcome::of` (src/model.rs) classifies it: the
-- transport error when there is one, else the status class; neither (never written) is `io`.
CREATE FUNCTION palo_attempt_outcome(status_code integer, error text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN error IS NOT NULL THEN error
        WHEN status_code IS NULL THEN 'io'
        WHEN status_code BETWEEN 200 AND 299 THEN '2xx'
        WHEN status_code BETWEEN 300 AND 399 THEN '3xx'
        WHEN status_code BETWEEN 400 AND 499 THEN '4xx'
        WHEN status_code BETWEEN 500 AND 599 THEN '5xx'
        ELSE 'other_status'
    END
$$;

-- NULL until the first attempt; then the outcome of the attempt numbered attempt_count.
ALTER TABLE deliveries ADD COLUMN last_outcome text;
UPDATE deliveries d SET last_outcome = palo_attempt_outcome(a.status_code, a.error)
    FROM attempts a WHERE a.delivery_id = d.id AND a.number = d.attempt_count;

CREATE INDEX deliveries_search_organization
    ON deliveries (organization_id, created_at_ms, id);
CREATE INDEX deliveries_search_status
    ON deliveries (organization_id, status, created_at_ms, id);
CREATE INDEX deliveries_search_webhook
    ON deliveries (webhook_id, created_at_ms, id);
CREATE INDEX deliveries_search_event_type
    ON deliveries (organization_id, event_type, created_at_ms, id);
CREATE INDEX deliveries_search_outcome
    ON deliveries (organization_id, last_outcome, created_at_ms, id)
    WHERE last_outcome IS NOT NULL;
-- Two pairs of filters whose rows are often disjoint by construction (a status and the
-- outcome that led to it; a webhook and its health): asking for both is one index range,
-- not a scan of one filter's rows that finds none of the other's.
CREATE INDEX deliveries_search_status_outcome
    ON deliveries (organization_id, status, last_outcome, created_at_ms, id)
    WHERE last_outcome IS NOT NULL;
CREATE INDEX deliveries_search_webhook_status
    ON deliveries (webhook_id, status, created_at_ms, id);
