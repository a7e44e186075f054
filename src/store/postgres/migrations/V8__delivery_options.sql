-- Issue 16: a webhook's delivery options (ordering, limits, filter, headers, receiver
-- authentication, signature schemes) as one JSON document, credentials sealed like the
-- secret; '' for none. Kept as text: the daemon reads and writes it whole.
ALTER TABLE webhooks ADD COLUMN options text NOT NULL DEFAULT '';
